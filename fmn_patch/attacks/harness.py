"""The attack harness: how much of an erased concept can a user still get out of a patched model?

Erasure is known to be easy to undo, so it is measured, not assumed. ``run_attacks`` runs the chosen registered
attacks, plus the bench's own prompts unchanged (``direct``, the starting point), on the patched model and on the
base (the ceiling each attack can reach). Each ends in images judged as ConceptBench judges them (see
``fmn_patch.evaluation.mscore``): **acc**, the share of images the judge calls the concept (attack success), and
the **M-Score**, the judge's mean probability of it. Budgets are explicit and go into the report. The same seed
gives the same report, except that a search stopped by its seconds depends on the machine's speed.

Attacks: ``paraphrase`` (serves every family), ``inversion`` and ``search`` (families with one text encoder). A new
attack is a module that calls ``register_attack``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch

from ..concepts.bench import Bench, Concept
from ..errors import FmnPatchError
from ..evaluation.batches import ModelStates
from ..evaluation.judges import Judge
from ..families.base import Base
from ..families.references import folder_latents, generated_latents
from ..families.stack import apply_patches, remove_patches
from ..families.threads import sized_threads
from ..format.patch import Patch
from ..processes import run_shared
from .attack import DIRECT, AttackContext, AttackPlan, direct_attack, get_attack, judge_plans
from .config import AttackConfig
from .report import AttackReport, attack_grid


def reference_latents(
    base: Base,
    concept: Concept,
    bench: Bench,
    count: int,
    *,
    steps: int,
    guidance: float,
    images: str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``count`` latents (N, C, h, w) of the concept: the first of a folder, or drawn by the base (cached) from the
    bench's prompts, every prompt once per seed so that any prefix covers the prompts evenly. One pipeline call per
    prompt, the prompts shared between the job's processes (a collective call)."""
    if images is not None:
        return folder_latents(base, images)[:count]
    prompts = bench.prompts(concept)
    per_prompt = -(-count // len(prompts))
    seeds = list(range(per_prompt))
    drawn, _ = run_shared(
        prompts,
        lambda p: generated_latents(base, [p], seeds, steps=steps, guidance=guidance),
        size=lambda _p: per_prompt,
        what=f"pictures of {concept.name}",
        unit="images",
        progress=progress,
    )
    latents = torch.cat(drawn)  # prompt-major
    seed_major = torch.arange(len(latents)).view(len(prompts), per_prompt).T.flatten()
    return latents[seed_major[:count]]


@contextmanager
def patched(base: Base, patches: Sequence[Patch | str | Path]) -> Iterator[list[str]]:
    """Within the block, ``patches`` are stacked on the base at weight 1: our ``Patch`` objects through
    ``apply_patches``, paths (third-party diffusers/kohya LoRA files) through diffusers' loader. Removed on exit."""
    family = base.family
    ours = [p for p in patches if isinstance(p, Patch)]
    names = apply_patches(base, ours) if ours else []
    try:
        for k, path in enumerate(Path(p) for p in patches if not isinstance(p, Patch)):
            if not path.is_file():
                raise FmnPatchError(f"LoRA file {str(path)!r} does not exist; give a .safetensors LoRA file")
            family.adapters.load_lora_file(str(path), f"attack_lora_{k}")
            names.append(f"attack_lora_{k}")
        if len(names) > len(ours):
            family.adapters.set_adapters(names, [1.0] * len(names))
        yield names
    finally:
        if names:
            remove_patches(base, names)


@sized_threads
def run_attacks(
    base: Base,
    patches: Sequence[Patch | str | Path],
    concept: str | Concept,
    judge: Judge,
    bench: Bench,
    config: AttackConfig | None = None,
    *,
    patch_names: Sequence[str] | None = None,
    progress: bool = True,
) -> AttackReport:
    """Attack the base with ``patches`` stacked (and the base alone, if ``config.attack_base`` or no patch is given).

    Pictures of the concept for the attacks that learn from them are drawn by the base before any patch is applied
    (or read from ``config.images``). The base is left unpatched.

    Under ``accelerate launch`` the work is shared: the pictures by prompt, the attacks' learned parts (inversion,
    search) by (model, attack), each run whole by one process, and the drawing and judging of every attack's
    prompts by batch. Every process gets the whole report; apart from the timings and a search stopped by its
    seconds, it is the same as one process's.
    """
    config = config or AttackConfig()
    if isinstance(concept, str):
        concept = bench.concept(concept)
    started = time.perf_counter()
    attacks = [get_attack(name) for name in config.attacks]
    for attack in attacks:
        if attack.one_encoder:
            base.family.text.require_one_encoder(f"the {attack.name} attack")
    count = max((a.latents(config) for a in attacks), default=0)
    latents = torch.empty(0)
    if count:
        latents = reference_latents(
            base,
            concept,
            bench,
            count,
            steps=config.image_steps,
            guidance=config.image_guidance,
            images=config.images,
            progress=progress,
        )
    models = (["base"] if config.attack_base or not patches else []) + (["patched"] if patches else [])
    states: dict[str, Callable[[], AbstractContextManager[Any]]] = {
        "base": contextlib.nullcontext,
        "patched": lambda: patched(base, patches),
    }
    tasks = [(model, name) for model in models for name in (DIRECT, *config.attacks)]
    held = ModelStates(states)

    def learn(task: tuple[str, str]) -> AttackPlan:
        model, name = task
        held.use(model)
        ctx = AttackContext(base, concept, bench, judge, latents, config)
        return direct_attack(ctx) if name == DIRECT else get_attack(name).run(ctx)

    # the attacks that learn from pictures (inversion, search) are the long ones: share them apart from the rest, so
    # that each process gets its part of them (a contiguous share of all the tasks could give one process all)
    learning = [t for t in tasks if t[1] != DIRECT and get_attack(t[1]).latents(config) > 0]
    others = [t for t in tasks if t not in learning]
    try:
        learned, _ = run_shared(learning, learn, what="attacks", unit="attacks", progress=progress)
        planned, _ = run_shared(others, learn, progress=False)
    finally:
        held.close()
    plans = dict(zip(learning, learned, strict=True)) | dict(zip(others, planned, strict=True))
    entries = [(model, name, plans[model, name]) for model, name in tasks]
    results = judge_plans(base, entries, concept, judge, config, states, progress=progress)
    names = list(patch_names) if patch_names is not None else [_patch_name(p) for p in patches]
    report = AttackReport(concept, bench.name, names, config, results, time.perf_counter() - started)
    report.grid = attack_grid(results, config.grid_images)
    return report


def _patch_name(patch: Patch | str | Path) -> str:
    if isinstance(patch, Patch):
        return patch.info.title or "forget " + ", ".join(patch.concept_names)
    return str(patch)
