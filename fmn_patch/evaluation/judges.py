"""Judges: per-image probabilities that generated images show a concept, found through a registry by name.

- ``clip``: ``ClipJudge``, zero-shot CLIP for real checkpoints; the user supplies the CLIP weights (a Hub id or a
  path). The probability of a concept is CLIP's softmax over the bench's concepts of the same category.
- worlds register their own: ``toy`` is the toy world's CNN (``fmn_patch.toy.judge``).

A bench names the judge that scores it (``Bench.judge``); ``load_judge`` resolves it. Images are float tensors
(N, 3, H, W) in [0, 1], as ``pipe(..., output_type="pt").images`` returns them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..concepts.bench import Bench, Concept
from ..errors import FmnPatchError, UnknownNameError

#: A judge loader: (bench, device, weights or None) -> judge.
JudgeLoader = Callable[[Bench, str, "str | None"], "Judge"]
_JUDGES: dict[str, JudgeLoader] = {}


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
        raise UnknownNameError(
            f"the judge does not know the {concept.category} {concept.name!r}; it knows {', '.join(classes)}"
        )
    return classes.index(concept.name)


def register_judge(name: str, loader: JudgeLoader) -> None:
    """Make ``load_judge`` resolve benches whose ``judge`` is ``name`` (worlds register theirs at import)."""
    _JUDGES[name] = loader


def judge_names() -> list[str]:
    return sorted(_JUDGES)


def load_judge(bench: Bench, device: str = "cpu", *, clip: str | None = None) -> Judge:
    """The judge that scores ``bench``: CLIP with the given weights when ``clip`` is set, else the bench's own."""
    if clip is not None:
        return ClipJudge.from_pretrained(clip, bench, device)
    if bench.judge == "clip":
        raise FmnPatchError(
            f"bench {bench.name!r} is judged by CLIP: pass --clip MODEL_ID_OR_PATH (clip= in Python)"
        )
    loader = _JUDGES.get(bench.judge)
    if loader is None:
        raise UnknownNameError(
            f"bench {bench.name!r} names the judge {bench.judge!r}, which is not registered; known: "
            f"{', '.join(['clip', *judge_names()])}"
        )
    return loader(bench, device, None)


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

        try:
            model = CLIPModel.from_pretrained(str(name_or_path))
            processor = CLIPProcessor.from_pretrained(str(name_or_path))
        except (OSError, ValueError) as e:
            raise FmnPatchError(
                f"cannot load CLIP weights {str(name_or_path)!r}: {str(e).splitlines()[0]}; give a Hub id you can "
                "reach (offline: one in the Hugging Face cache) or a local folder"
            ) from e
        return cls(model, processor, bench, device)

    @torch.no_grad()
    def _text_features(self, category: str) -> torch.Tensor:
        if category not in CLIP_PROMPTS:
            raise UnknownNameError(
                f"the CLIP judge has no prompt for category {category!r}; it judges {', '.join(CLIP_PROMPTS)}"
            )
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
