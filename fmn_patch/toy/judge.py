"""The toy world's judge: a small CNN with one head per attribute of the toy world, trained on rendered images
(``python -m fmn_patch.toy.train_judge``), stored as safetensors with the world it judges in its header.
Registered as the judge ``toy``, which the toy bench names.

Its heads are subject (an object or ``person``), style, colour and one head per attribute of a person's look
(hair, headwear, face, top); an identity is not a head but follows from the look (``identity_probs``), so the
category ``identity`` is judged over the world's 96 names. A judge of another world (v1's, whose file names no world
or ``v1``) is refused: its heads are not these."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import FmnPatchError, UnknownNameError
from . import world
from .paths import toy_judge_path

#: What is drawn (an object or a person), its style and colour, and one head per attribute of a person's look.
PERSON = "person"
TOY_HEADS: dict[str, tuple[str, ...]] = {
    "subject": (*world.OBJECTS, PERSON),
    "style": world.STYLES,
    "colour": world.COLOURS,
    **world.ATTRIBUTES,
}
#: Which toy head decides each ConceptBench category (a head's own name works too: ``colour``); the category
#: ``identity`` has no head: it is judged over the world's identities from the look (``identity_probs``).
TOY_HEAD_OF_CATEGORY: dict[str, str] = {"object": "subject", "style": "style"}
IDENTITY = "identity"


def identity_probs(probs: dict[str, torch.Tensor]) -> torch.Tensor:
    """P(identity) from head probabilities: P(person) x the product of each attribute head's P(value).

    probs: {head: (N, classes)} -> (N, identities) in the order of ``world.IDENTITIES``; rows sum to P(person).
    """
    person = probs["subject"][:, TOY_HEADS["subject"].index(PERSON)]  # (N,)
    columns = []
    for name in world.IDENTITIES:
        p = person
        for head, value in zip(world.ATTRIBUTES, world.LOOKS[name].values(), strict=True):
            p = p * probs[head][:, world.ATTRIBUTES[head].index(value)]
        columns.append(p)
    return torch.stack(columns, dim=1)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class ToyJudgeNet(nn.Module):
    """CNN over square images: size -> size/2 -> size/4 -> pooled features, one linear head per attribute.

    `heads` maps each head to its classes (the toy judge's by default); `size` is the side images are resized to.
    """

    def __init__(
        self, width: int = 32, heads: dict[str, tuple[str, ...]] | None = None, size: int = 32
    ) -> None:
        super().__init__()
        heads = TOY_HEADS if heads is None else heads
        self.size = size
        self.features = nn.Sequential(
            _block(3, width),  # (N, w, size, size)
            nn.MaxPool2d(2),
            _block(width, 2 * width),  # (N, 2w, size/2, size/2)
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),  # (N, 4w, size/4, size/4)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (N, 4w)
        )
        self.heads = nn.ModuleDict({k: nn.Linear(4 * width, len(v)) for k, v in heads.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (N, 3, H, W) in [0, 1] -> logits per head."""
        if images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="area")
        h = self.features(images * 2 - 1)
        return {k: head(h) for k, head in self.heads.items()}


class ToyJudge:
    """The toy world's judge; `load()` reads the committed weights (or a file), whose header names the world."""

    def __init__(self, net: ToyJudgeNet, device: str | torch.device = "cpu") -> None:
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.world = world.NAME
        self.heads = TOY_HEADS

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> ToyJudge:
        path = Path(path) if path is not None else toy_judge_path()
        if not path.exists():
            raise FmnPatchError(f"no toy judge at {path}; build it with `make toy-model`")
        with safe_open(str(path), "pt") as f:
            named = (f.metadata() or {}).get("world")  # judges written before v2 name no world
        if named != world.NAME:
            raise FmnPatchError(
                f"the toy judge {path} judges the world {named or 'v1'}, not this version's {world.NAME}; "
                "rebuild it with `make toy-model`"
            )
        with torch.device(
            "meta"
        ):  # no initialisation drawn from the global RNG: the weights come from the file
            net = ToyJudgeNet()
        net.load_state_dict(load_file(str(path)), assign=True)
        return cls(net, device)

    def save(self, path: str | Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        metadata = {"format": "pt", "world": self.world, "heads": json.dumps(self.heads)}
        save_file(state, str(path), metadata=metadata)

    @torch.no_grad()
    def probs(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Softmax per head: {head: (N, classes)}."""
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in self.heads}
        for i in range(0, len(images), batch_size):
            logits = self.net(images[i : i + batch_size].to(self.device, torch.float32))
            for k, v in logits.items():
                outs[k].append(v.softmax(-1).cpu())
        return {k: torch.cat(v) for k, v in outs.items()}

    def predict(self, images: torch.Tensor) -> dict[str, list[str]]:
        """The most likely class per head, by name."""
        return {k: [self.heads[k][int(i)] for i in p.argmax(-1)] for k, p in self.probs(images).items()}

    def classes(self, category: str) -> tuple[str, ...]:
        if category == IDENTITY:
            return world.IDENTITIES
        return self.heads[self._head(category)]

    def category_probs(self, images: torch.Tensor, category: str) -> torch.Tensor:
        if category == IDENTITY:
            return identity_probs(self.probs(images))  # (N, identities)
        return self.probs(images)[self._head(category)]

    def _head(self, category: str) -> str:
        if category in self.heads:
            return category
        if category not in TOY_HEAD_OF_CATEGORY:
            names = ", ".join([*TOY_HEAD_OF_CATEGORY, IDENTITY, *self.heads])
            raise UnknownNameError(f"the toy judge has no head for category {category!r}; use one of {names}")
        return TOY_HEAD_OF_CATEGORY[category]
