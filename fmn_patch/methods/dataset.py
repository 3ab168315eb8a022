"""What the training loop samples from, prepared once: the concepts' prompts and their anchors encoded, the token
positions the re-steering loss reads, reference latents, and the preserve prompts' text states."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..concepts.prompts import split_neighbours
from ..errors import FmnPatchError
from ..families.base import Base
from ..families.conditioning import Conditioning
from ..families.references import folder_latents, generated_latents


@dataclass
class TrainingSet:
    """Everything a step samples from (re-steering builds one from concept plans, correction from variants)."""

    concept: Conditioning  # (P, T, D) the prompts that name the concepts
    anchor: Conditioning  # (P, T, D) the same prompts with the anchor (or, for correction, the variant)
    masks: torch.Tensor  # (P, T) positions the re-steering loss reads
    latents: torch.Tensor  # (L, C, h, w) reference latents
    latent_prompt: torch.Tensor  # (L,) which prompt each latent belongs to
    preserve: torch.Tensor | dict[str, torch.Tensor]  # (M, D) what the targets read for the preserve prompts,
    # one tensor for all targets (UNet) or one per target (MMDiT: the text stream at each block)
    concepts: int  # how many concepts the patch forgets
    eta: torch.Tensor  # (P,) negative guidance of each prompt's denoising target
    preserve_weight: float  # w_p for this patch
    # What the targets read for the neighbours' prompts (the bench's other concepts of an erased one's category), kept
    # apart from ``preserve``: each of their rows counts ``neighbour_weight`` times in the preservation term
    neighbours: torch.Tensor | dict[str, torch.Tensor] | None = None
    neighbour_weight: float = 1.0

    def with_prompts(
        self, concept: Conditioning, anchor: Conditioning, masks: torch.Tensor, source: TrainingSet
    ) -> TrainingSet:
        """These prompts added, each on ``source``'s latents, anchors and eta (the robust rounds' erase set)."""
        return dataclasses.replace(
            self,
            concept=self.concept.cat(concept),
            anchor=self.anchor.cat(anchor),
            masks=torch.cat([self.masks, masks]),
            latents=torch.cat([self.latents, source.latents]),
            latent_prompt=torch.cat([self.latent_prompt, source.latent_prompt + len(self.concept)]),
            eta=torch.cat([self.eta, source.eta]),
        )


def reference_latents(
    base: Base,
    prompts: Sequence[str],
    images_per_prompt: int,
    *,
    steps: int,
    guidance: float,
    images: str | None = None,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference latents (L, C, h, w) and the prompt each belongs to (L,): a folder's images spread over the
    prompts in turn, or ``images_per_prompt`` drawn by the base for each prompt (cached). ``size``: the image side
    the latents are for, when below the base's: the latents are area-downsampled to it."""
    pixels = base.family.images.pixel_size()
    if images is not None:
        latents = smaller(folder_latents(base, images), pixels, size)
        return latents, torch.arange(len(latents)) % len(prompts)
    seeds = list(range(images_per_prompt))
    latents = generated_latents(base, prompts, seeds, steps=steps, guidance=guidance)
    return smaller(latents, pixels, size), torch.arange(len(prompts)).repeat_interleave(len(seeds))


def concept_masks(base: Base, prompts: Sequence[str], words: Sequence[str], after: bool) -> torch.Tensor:
    """(P, T) 1 at each prompt's concept positions (and, with ``after``, the positions after it)."""
    family = base.family
    masks = torch.zeros(len(prompts), family.text.max_length)
    for i, (prompt, word) in enumerate(zip(prompts, words, strict=True)):
        masks[i, list(family.text.place(prompt, word).positions(after=after))] = 1.0
    return masks


def preserve_states(
    base: Base, prompts: Sequence[str], latents: torch.Tensor | None = None, padding: bool | None = True
) -> torch.Tensor | dict[str, torch.Tensor]:
    """What the targets read for every token of every preserve prompt (``Noise.preserve_inputs``): the text
    states for a UNet; for an MMDiT the text stream at each block, recorded on ``latents`` noised at random.
    ``padding`` False: each prompt's rows BOS .. EOS only, as the closed-form edit preserves them (families with
    true-length text states; the others refuse in one line); None: False where the family has them, else True."""
    if padding:
        return base.family.noise.preserve_inputs(prompts, latents)
    try:
        text = base.family.text.text_states()
    except FmnPatchError:
        if padding is None:
            return base.family.noise.preserve_inputs(prompts, latents)
        raise FmnPatchError(
            f"preserve_padding=False reads each prompt's states at its true length, which {base.family.name} "
            "models do not have (their text stream depends on the image); leave preserve_padding True"
        ) from None
    return torch.cat([text.rows(prompts[i : i + 64], 0) for i in range(0, len(prompts), 64)])


def encode_set(
    base: Base,
    prompts: list[str],
    anchors: list[str],
    words: list[str],
    latents: torch.Tensor,
    latent_prompt: torch.Tensor,
    keep: list[str],
    *,
    after: bool,
    etas: list[float],
    preserve_weight: float,
    seen: list[str] | None = None,
    near: Sequence[str] = (),
    neighbour_weight: float = 1.0,
    padding: bool | None = True,
) -> TrainingSet:
    """``seen``: the prompts as the tokenizer sees them after the pipeline's own rewriting (default: ``prompts``).
    ``near``: those of ``keep`` whose rows count ``neighbour_weight`` times (none when it is 1); ``padding``: as in
    ``preserve_states``."""
    masks = concept_masks(base, seen or prompts, words, after)
    rest, close = split_neighbours(keep, near if neighbour_weight != 1 else ())
    preserve = preserve_states(base, rest, latents, padding)
    near_states = preserve_states(base, close, latents, padding) if close else None
    concepts = len(dict.fromkeys(words))  # distinct words; the textual-inversion stage corrects it
    return TrainingSet(
        base.family.text.encode(prompts),
        base.family.text.encode(anchors),
        masks,
        latents,
        latent_prompt,
        preserve,
        concepts,
        torch.tensor(etas, dtype=torch.float32),
        preserve_weight,
        near_states,
        neighbour_weight,
    )


def smaller(latents: torch.Tensor, pixels: int, size: int | None) -> torch.Tensor:
    """Latents (L, C, h, w) of ``pixels``-side images area-downsampled to the latents of ``size``-side ones (None,
    or a size not below ``pixels``: unchanged). The factor must be a whole number that divides the latent side."""
    check_size(latents.shape[-1], pixels, size)
    if size is None or size >= pixels:
        return latents
    return F.avg_pool2d(latents.float(), pixels // size)


def check_size(side: int, pixels: int, size: int | None) -> None:
    """Refuse a ``size`` that does not divide the base's ``pixels`` by a whole number that also divides the latent
    ``side``."""
    if size is None or size >= pixels:
        return
    factor, rest = divmod(pixels, size)
    if rest or side % factor:
        raise FmnPatchError(
            f"train_size={size} must divide the base's image side {pixels} by a whole number that also divides "
            f"its latent side {side}, e.g. {pixels // 2}"
        )
