"""The kohya / AUTOMATIC1111 / ComfyUI LoRA layout of a patch's tensors and header.

Keys: ``<kohya name>.lora_down.weight`` (= A), ``.lora_up.weight`` (= B) and ``.alpha``; the loaders scale by
alpha / rank, and since our alpha is folded into B the exported alpha equals the rank (scale 1). Which kohya name a
module gets is the model family's knowledge (``Family.kohya_names``); this module only lays the tensors out.
``ss_network_*`` header keys tell the UIs what the file is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch

from ..errors import FmnPatchError
from .patch import Patch
from .targets import kind_for


def to_kohya(
    patch: Patch, names: Mapping[str, str], base_model_version: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of the kohya form of ``patch``; ``names`` maps each module to its kohya key stem
    (e.g. ``lora_unet_down_blocks_0_..._attn2_to_k``), ``base_model_version`` is kohya's ``ss_base_model_version``."""
    missing = [m for m in patch.modules if m not in names]
    if missing:
        raise FmnPatchError(f"no kohya name for modules {missing[:3]}; the family does not export them")
    taken: dict[str, str] = {}
    for module in patch.modules:
        other = taken.setdefault(names[module], module)
        if other != module:
            raise FmnPatchError(
                f"kohya names collide: {other} and {module} both map to {names[module]}; check the block layout "
                "(e.g. --layers-per-block) so that every module keeps its own weight"
            )
    return layout({names[m]: patch.factors[m] for m in patch.modules}, patch, base_model_version)


def layout(
    stems: Mapping[str, tuple[torch.Tensor, torch.Tensor]], patch: Patch, base_model_version: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header for kohya stems and their (down, up) factors, with ``patch``'s header. A family whose
    UIs fuse projections (Flux's text q/k/v) builds the fused factors and calls this."""
    tensors: dict[str, torch.Tensor] = {}
    for key, (a, b) in stems.items():
        tensors[f"{key}.lora_down.weight"] = a.contiguous()
        tensors[f"{key}.lora_up.weight"] = b.contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(a.shape[0]))  # alpha / rank = 1: alpha is folded into B
    rank = max(a.shape[0] for a, _ in stems.values())
    source = patch.header()
    kind = kind_for(patch.component, patch.modules)
    header = {k: v for k, v in source.items() if k.startswith(("modelspec.", "fmn_patch."))}
    header.update(
        {
            "format": "pt",
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(rank),
            "ss_network_alpha": str(rank),
            "ss_network_args": json.dumps({"target": ",".join(_short(kind.regex, kind.projections))}),
            "ss_base_model_version": base_model_version,
            "ss_output_name": source["modelspec.title"],
        }
    )
    return tensors, header


def _short(regex: str, projections: tuple[str, ...]) -> list[str]:
    """``attn2.to_k,attn2.to_v`` from a target regex like ``.*\\.attn2\\.(to_k|to_v)``."""
    stem = regex.removeprefix(r".*\.").split(r"\.(")[0].replace("\\.", ".")
    return [f"{stem}.{p}" for p in projections]
