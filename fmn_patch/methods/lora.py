"""A trainable LoRA adapter on a family's targets, for the length of a ``with`` block.

On entry: a rank-r adapter (alpha = r, so its scale is 1) on every target of the base's family, through peft's
public ``add_adapter``, initialised from a seeded RNG fork (or from given factors), and made the only active
adapter; every other parameter frozen. The factors are float32 whatever the base's dtype (peft's layers cast their
input to the factors' dtype and the sum back to the base's). On exit, whatever happened: the adapter is deleted
(the peft wrappers go too when no adapter is left), and the caller's active adapters, ``requires_grad`` flags and
train/eval mode are restored, and the global RNG state is as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import FmnPatchError
from ..families.base import Base
from ..families.grads import frozen

ADAPTER = "fmn_train"
FactorMap = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LoraSession:
    """The adapter being trained: its wrapped target layers and trainable parameters."""

    base: Base
    modules: dict[str, Any]  # target name -> peft layer (``get_base_layer()`` is the frozen projection)
    params: list[nn.Parameter]

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Within the block the denoiser runs without any adapter: the base model's own prediction."""
        denoiser: Any = self.base.family.adapters.denoiser
        denoiser.disable_adapters()
        try:
            yield
        finally:
            denoiser.enable_adapters()

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """What the adapter adds to target ``name``'s output for inputs ``x`` (M, in), in float32: the patch's own
        change of those keys/values, without the base projection (so no difference of two large numbers)."""
        layer = self.modules[name]
        a, b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        return b(a(x.to(a.weight.dtype))) * layer.scaling[ADAPTER]

    def delta_square_mean(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``delta(name, x).square().mean()`` without the (M, out) change: with z = A x s (M, r) and the (r, r)
        Gram matrix of B, each row's |B z|^2 is z^T (B^T B) z. The preserve set's change on every target would
        otherwise take gigabytes at SD-1.5 size (16k token states x 32 targets of up to 1280 outputs)."""
        layer = self.modules[name]
        a, b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        z = a(x.to(a.weight.dtype)) * layer.scaling[ADAPTER]  # (M, r)
        gram = b.weight.T @ b.weight  # (r, r)
        return ((z @ gram) * z).sum() / (z.shape[0] * b.weight.shape[0])

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The trained factors as (A, B) copies, alpha folded into B."""
        from peft import get_peft_model_state_dict

        denoiser: Any = self.base.family.adapters.denoiser
        config = denoiser.peft_config[ADAPTER]
        scale = config.lora_alpha / config.r
        state = get_peft_model_state_dict(denoiser, adapter_name=ADAPTER)
        out = {}
        for key, a in state.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key.removesuffix(".lora_A.weight")
            b = state[f"{module}.lora_B.weight"]
            out[module] = (a.detach().float().clone(), (b.detach().float() * scale).clone())
        return out


def check_rank(base: Base, rank: int) -> None:
    """Refuse a LoRA rank above min(in, out) of the narrowest target: the extra rank cannot change anything and
    only costs time and memory."""
    shapes = base.family.adapters.target_shapes()
    most = min((min(shape) for shape in shapes.values()), default=rank)
    if rank > most:
        raise FmnPatchError(
            f"rank={rank} is more than this base's narrowest target layer can use (min(in, out) = {most}); "
            f"give --rank {most} or less"
        )


@contextlib.contextmanager
def lora_adapter(
    base: Base, rank: int, *, seed: int, start: FactorMap | None = None, train_values: bool = True
) -> Iterator[LoraSession]:
    """A fresh trainable adapter on the family's targets (see the module docstring for what is restored)."""
    from peft import LoraConfig, set_peft_model_state_dict

    check_rank(base, rank)
    family = base.family
    denoiser: Any = family.adapters.denoiser
    active = family.adapters.active_adapters()
    was_training = denoiser.training
    if ADAPTER in family.adapters.adapter_names():
        family.adapters.delete_adapters([ADAPTER])
    with frozen(denoiser):
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=family.adapters.targets_kind.regex, init_lora_weights=True
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # peft draws lora_A from the global RNG: seeded here, restored after
            denoiser.add_adapter(config, adapter_name=ADAPTER)
        try:
            denoiser.set_adapters([ADAPTER])
            # a base in half precision trains float32 factors, as diffusers' own LoRA training scripts cast them
            for p in denoiser.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
            if start is not None:  # alpha == r, so the adapter's scale is 1 and the factors load as they are
                state = {
                    f"{m}.lora_{k}.weight": t for m, (a, b) in start.items() for k, t in (("A", a), ("B", b))
                }
                set_peft_model_state_dict(denoiser, state, adapter_name=ADAPTER)
            modules = {
                n: m
                for n, m in denoiser.named_modules()
                if family.adapters.is_target(n) and hasattr(m, "get_base_layer")
            }
            if (
                not train_values
            ):  # an ablation: the value projections (the kind's last projection) stay at start
                value = "." + family.adapters.targets_kind.projections[-1]
                for name, layer in modules.items():
                    if name.endswith(value):
                        for p_name, p in layer.named_parameters():
                            if "lora_" in p_name:
                                p.requires_grad_(False)
            params = [p for p in denoiser.parameters() if p.requires_grad]
            denoiser.train()
            yield LoraSession(base, modules, params)
        finally:
            denoiser.train(was_training)
            family.adapters.delete_adapters([ADAPTER])
            family.adapters.activate([n for n in active if n in family.adapters.adapter_names()])


def preservation_loss(
    session: LoraSession,
    inputs: torch.Tensor | dict[str, torch.Tensor],
    device: torch.device,
    near: torch.Tensor | dict[str, torch.Tensor] | None = None,
    factor: float = 1.0,
) -> torch.Tensor:
    """Mean over targets of how far each patched projection moves the keys/values of its preserve inputs
    (``losses.preservation``): the adapter's own float32 change (no difference of two large half-precision
    numbers), its mean square taken through the factors' rank (``LoraSession.delta_square_mean``). ``near``: more
    inputs (the erased concepts' neighbours), each row counting ``factor`` times one of ``inputs``."""

    def rows(group: torch.Tensor | dict[str, torch.Tensor], name: str) -> torch.Tensor:
        return (group if isinstance(group, torch.Tensor) else group[name]).to(device)

    def one(name: str) -> torch.Tensor:
        x = rows(inputs, name)
        if near is None or factor == 0:
            return session.delta_square_mean(name, x)
        y = rows(near, name)
        m, n = len(x), factor * len(y)  # the weighted mean of the two groups' squared changes
        return (m * session.delta_square_mean(name, x) + n * session.delta_square_mean(name, y)) / (m + n)

    return torch.stack([one(n) for n in session.modules]).mean()
