"""Judges: per-image probabilities that generated images show a concept.

- `ToyJudge`: a small CNN with one head per attribute of the toy world (subject = object or identity, style,
  colour), trained on rendered images (`python -m fmn_patch.toy.train_judge`), stored as safetensors.
- `ClipJudge`: zero-shot CLIP for real checkpoints; the user supplies the CLIP weights (a hub id or a path).
  The probability of a concept is CLIP's softmax over the bench's concepts of the same category.

Images are float tensors (N, 3, H, W) in [0, 1], as `pipe(..., output_type="pt").images` returns them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fmn_patch.conceptbench import Bench, Concept
from fmn_patch.toy.paths import toy_judge_path
from fmn_patch.toy.world import COLOURS, STYLES, SUBJECTS

#: Heads of the toy judge and their classes, in output order.
TOY_HEADS: dict[str, tuple[str, ...]] = {"subject": SUBJECTS, "style": STYLES, "colour": COLOURS}
#: Which toy head decides each ConceptBench category.
TOY_HEAD_OF_CATEGORY: dict[str, str] = {"object": "subject", "identity": "subject", "style": "style"}


class Judge(Protocol):
    """Anything that classifies images among the concepts of a category."""

    def classes(self, category: str) -> tuple[str, ...]:
        """The class names the judge tells apart for `category`."""
        ...

    def category_probs(self, images: torch.Tensor, category: str) -> torch.Tensor:
        """(N, len(classes(category))) probabilities."""
        ...


def concept_probs(judge: Judge, images: torch.Tensor, concept: Concept) -> torch.Tensor:
    """(N,) probability that each image shows `concept`."""
    return judge.category_probs(images, concept.category)[:, class_index(judge, concept)]


def class_index(judge: Judge, concept: Concept) -> int:
    classes = judge.classes(concept.category)
    if concept.name not in classes:
        raise KeyError(f"the judge does not know the {concept.category} {concept.name!r}; it knows {classes}")
    return classes.index(concept.name)


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
    """CNN over 32x32 images: 32 -> 16 -> 8 -> pooled features, one linear head per attribute."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(3, width),  # (N, w, 32, 32)
            nn.MaxPool2d(2),
            _block(width, 2 * width),  # (N, 2w, 16, 16)
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),  # (N, 4w, 8, 8)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (N, 4w)
        )
        self.heads = nn.ModuleDict({k: nn.Linear(4 * width, len(v)) for k, v in TOY_HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (N, 3, H, W) in [0, 1] -> logits per head."""
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(images, size=(32, 32), mode="area")
        h = self.features(images * 2 - 1)
        return {k: head(h) for k, head in self.heads.items()}


class ToyJudge:
    """The toy world's judge; `load()` reads the committed weights."""

    def __init__(self, net: ToyJudgeNet, device: str | torch.device = "cpu") -> None:
        self.net = net.to(device).eval()
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> ToyJudge:
        path = Path(path) if path is not None else toy_judge_path()
        if not path.exists():
            raise FileNotFoundError(
                f"no toy judge at {path}; train one with `python -m fmn_patch.toy.train_judge`"
            )
        net = ToyJudgeNet()
        net.load_state_dict(load_file(str(path)))
        return cls(net, device)

    def save(self, path: str | Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt", "heads": repr(TOY_HEADS)})

    @torch.no_grad()
    def probs(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Softmax per head: {head: (N, classes)}."""
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in TOY_HEADS}
        for i in range(0, len(images), batch_size):
            logits = self.net(images[i : i + batch_size].to(self.device, torch.float32))
            for k, v in logits.items():
                outs[k].append(v.softmax(-1).cpu())
        return {k: torch.cat(v) for k, v in outs.items()}

    def predict(self, images: torch.Tensor) -> dict[str, list[str]]:
        """The most likely class per head, by name."""
        return {k: [TOY_HEADS[k][int(i)] for i in p.argmax(-1)] for k, p in self.probs(images).items()}

    def classes(self, category: str) -> tuple[str, ...]:
        return TOY_HEADS[self._head(category)]

    def category_probs(self, images: torch.Tensor, category: str) -> torch.Tensor:
        return self.probs(images)[self._head(category)]

    @staticmethod
    def _head(category: str) -> str:
        if category not in TOY_HEAD_OF_CATEGORY:
            raise KeyError(
                f"the toy judge has no head for category {category!r}; use {list(TOY_HEAD_OF_CATEGORY)}"
            )
        return TOY_HEAD_OF_CATEGORY[category]


#: Zero-shot text prompts describing each category's concepts to CLIP.
CLIP_PROMPTS: dict[str, str] = {
    "object": "a photo of a {name}",
    "identity": "a photo of {name}",
    "style": "a painting in the style of {name}",
}


class ClipJudge:
    """Zero-shot CLIP judge over a bench's concepts; p(concept) = softmax over concepts of its category."""

    def __init__(
        self, model: nn.Module, processor: object, bench: Bench, device: str | torch.device = "cpu"
    ) -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.bench = bench
        self.device = torch.device(device)
        self._text: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, bench: Bench, device: str | torch.device = "cpu"
    ) -> ClipJudge:
        """Load CLIP weights by hub id (e.g. `openai/clip-vit-large-patch14`) or local path."""
        from transformers import CLIPModel, CLIPProcessor

        return cls(
            CLIPModel.from_pretrained(str(name_or_path)),
            CLIPProcessor.from_pretrained(str(name_or_path)),
            bench,
            device,
        )

    @torch.no_grad()
    def _text_features(self, category: str) -> torch.Tensor:
        if category not in self._text:
            texts = [CLIP_PROMPTS[category].format(name=c.name) for c in self.bench.of_category(category)]
            tokens = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")  # type: ignore[attr-defined]
            feats = self.model.get_text_features(**tokens.to(self.device))  # type: ignore[operator]
            feats = getattr(feats, "pooler_output", feats)
            self._text[category] = F.normalize(feats, dim=-1)
        return self._text[category]

    @torch.no_grad()
    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        arrays = list(images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())
        pixels = self.processor.image_processor(arrays, do_rescale=False, return_tensors="pt")  # type: ignore[attr-defined]
        feats = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))  # type: ignore[operator]
        feats = getattr(feats, "pooler_output", feats)
        return F.normalize(feats, dim=-1)

    @torch.no_grad()
    def category_probs(self, images: torch.Tensor, category: str) -> torch.Tensor:
        """(N, concepts of `category`) zero-shot probabilities."""
        scale = self.model.logit_scale.exp()  # type: ignore[operator]
        logits = scale * self._image_features(images) @ self._text_features(category).T
        return logits.softmax(-1).cpu()

    def classes(self, category: str) -> tuple[str, ...]:
        return tuple(c.name for c in self.bench.of_category(category))
