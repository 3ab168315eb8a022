"""The methods the mass-erasure bench (bench/mass_erasure.py) compares, and the world they share: each makes
one model that forgets the drawn names (`edit`, `train`, `fmn`, and the peers `uce`, `speed` and `mace` of
bench/peers/).

A module of that bench, not a script."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmn_patch import load_base
from fmn_patch.concepts.bench import Bench
from fmn_patch.evaluation.mscore import SamplerConfig
from fmn_patch.format import Patch
from fmn_patch.methods.baseline import FMNConfig, train_fmn_baseline
from fmn_patch.methods.edit import EditConfig, edit_patch
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge


@dataclass(frozen=True)
class World:
    """What every run shares: the base's folder, its bench and judge, the sampler and the base's scores."""

    pipeline: str
    bench: Bench
    bench_path: str
    judge: ToyJudge
    sampler: SamplerConfig
    base: dict[str, float]  # the base's accuracy on every concept
    neighbours: dict[str, list[str]]


#: A method: (world, erased names) -> (a model that forgets them, the patch or None, seconds).
Method = Callable[[World, list[str]], tuple[Any, Patch | None, float]]


def _timed(make: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    made = make()
    return made, time.perf_counter() - started


def _patched(world: World, make: Callable[[Any], Patch]) -> tuple[Any, Patch | None, float]:
    base = load_base(world.pipeline)
    patch, seconds = _timed(lambda: make(base))
    return base, patch, seconds


def edit(
    world: World, names: list[str], erase_weight: float | None = None
) -> tuple[Any, Patch | None, float]:
    weight: dict[str, Any] = {} if erase_weight is None else {"erase_weight": erase_weight}
    config = EditConfig(bench=world.bench_path, **weight)
    return _patched(world, lambda base: edit_patch(base, names, config=config))


def edit_variant(weight: float) -> tuple[str, Method]:
    """`--erase-weights`: the edit at another erase weight, a method of its own name (``edit w=1.41``)."""
    return f"edit w={weight:g}", lambda world, names: edit(world, names, erase_weight=weight)


def train(world: World, names: list[str]) -> tuple[Any, Patch | None, float]:
    config = TrainConfig(bench=world.bench_path)
    return _patched(world, lambda base: train_patch(base, names, config, progress=False))


def fmn(world: World, names: list[str]) -> tuple[Any, Patch | None, float]:
    base = load_base(world.pipeline)  # trained in place: a fresh copy each run
    pairs = [(n, world.bench.concept(n).category) for n in names]
    report = train_fmn_baseline(base, pairs, FMNConfig(), progress=False)
    return base, None, report.seconds


def uce(world: World, names: list[str]) -> tuple[Any, Patch | None, float]:
    from peers.uce import uce_patch

    anchor = world.bench.anchors["identity"]
    preserve = [c.name for c in world.bench.concepts if c.name not in names]
    return _patched(world, lambda base: uce_patch(base, names, anchor, preserve))


def speed(world: World, names: list[str]) -> tuple[Any, Patch | None, float]:
    from peers.speed import MULTI_CONCEPT, SpeedConfig, speed_patch

    anchor = world.bench.anchors["identity"]
    preserve = [c.name for c in world.bench.concepts if c.name not in names]
    config = MULTI_CONCEPT if len(names) > 1 else SpeedConfig()  # SPEED's README: its multi-concept settings
    return _patched(world, lambda base: speed_patch(base, names, anchor, preserve, config))


def mace(world: World, names: list[str]) -> tuple[Any, Patch | None, float]:
    from peers.mace import for_concepts, mace_patch
    from peers.mace_toy import toy_captions, toy_references, toy_templates

    from fmn_patch.toy.world import NAME as WORLD

    # the toy's world: its training config's "world" (the toy world's when it names none); mace_toy refuses any other
    trained = Path(world.pipeline) / "training.json"
    record = json.loads(trained.read_text()) if trained.is_file() else {}
    version = record.get("config", {}).get("world", WORLD)
    category = {n: world.bench.concept(n).category for n in names}
    anchors = [world.bench.anchor(category[n]) for n in names]
    preserve = [c.name for c in world.bench.concepts if c.name not in names]

    def make(base: Any) -> Patch:  # MACE's data preparation (renders, masks, captions) counts in its time
        refs = {n: toy_references(n, category[n], version, seed=i) for i, n in enumerate(names)}
        templates = {n: toy_templates(world.bench, category[n]) for n in names}
        config = for_concepts(len(names))  # the celebrity config's preserve_weight for this N
        return mace_patch(base, names, anchors, refs, preserve, toy_captions(version), templates, config)

    return _patched(world, make)


REGISTRY: dict[str, Method] = {
    "edit": edit,
    "train": train,
    "fmn": fmn,
    "uce": uce,
    "speed": speed,
    "mace": mace,
}
