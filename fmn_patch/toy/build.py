"""Build a toy model with its card: `python -m fmn_patch.toy.build [--family unet|sd3]` (what `make toy-model` runs
for both, `make toy-sd3` for the MMDiT).

The model trains on one core (`fmn_patch.toy.train`, always one thread, so the weights are the same bits on any
machine with the same torch). A family that trains its own VAE (the UNet toy) also gets the judge: as soon as the
VAE is saved, `fmn_patch.toy.train_judge` (which also learns from VAE reconstructions) starts on the other core in
its own process; the other families are judged by the committed judge. Then the card is measured on both cores
(`fmn_patch.toy.card`). Each part runs at the thread count it always uses, so the weights are the same bits as
running the commands one after another; only the wall time changes. Timings go to `build.json` beside the card
and into the card itself.

    python -m fmn_patch.toy.build                              # the committed toy (16,000 UNet steps: hours)
    python -m fmn_patch.toy.build --family sd3                 # the committed toy MMDiT, on the UNet toy's VAE
    python -m fmn_patch.toy.build --data /tmp/toy --quick      # a tiny end-to-end smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fmn_patch.evaluation.provenance import provenance
from fmn_patch.toy import card as toy_card
from fmn_patch.toy.config import TrainConfig
from fmn_patch.toy.family import FAMILIES, UNET, ToyFamily, family_of
from fmn_patch.toy.options import log
from fmn_patch.toy.paths import toy_judge_path
from fmn_patch.toy.train import train
from fmn_patch.toy.train_judge import JudgeTrainConfig

#: Settings of `--quick` beside each family's own (`ToyFamily.quick`): a smoke run, not a usable model.
QUICK_JUDGE = {"images": 256, "heldout": 64, "steps": 3}
QUICK_CARD = ["--seeds", "1", "--steps", "2"]


@dataclass(frozen=True)
class BuildConfig:
    """Where a toy goes and how each part is made; the type of `train` names the family."""

    data: Path = UNET.data_dir  # pipeline/, card.json, README.md, build.json (and the judge, if trained)
    train: Any = field(default_factory=TrainConfig)  # a family's training options (fmn_patch.toy.config)
    judge: JudgeTrainConfig | None = field(default_factory=JudgeTrainConfig)  # None: the committed judge
    card_args: tuple[str, ...] = ()  # extra arguments for `python -m fmn_patch.toy.card`

    @classmethod
    def of(cls, family: ToyFamily, data: Path | None = None, quick: bool = False) -> BuildConfig:
        """The build of `family` into `data` (default: its committed folder), at full size or `quick`."""
        judge = None
        if family.trains_judge:
            judge = JudgeTrainConfig(**QUICK_JUDGE) if quick else JudgeTrainConfig()  # type: ignore[arg-type]
        return cls(
            data=family.data_dir if data is None else data,
            train=family.quick_config() if quick else family.config(),
            judge=judge,
            card_args=tuple(QUICK_CARD) if quick else (),
        )

    @property
    def family(self) -> ToyFamily:
        return family_of(self.train)

    def resolved(self) -> BuildConfig:
        """The same build with every output path under `data`."""
        pipeline, judge = self.data / "pipeline", self.data / "judge.safetensors"
        return replace(
            self,
            train=replace(self.train, out=pipeline),
            judge=None if self.judge is None else replace(self.judge, out=judge, vae=pipeline / "vae"),
        )


def _judge_command(cfg: JudgeTrainConfig) -> list[str]:
    args = [sys.executable, "-m", "fmn_patch.toy.train_judge"]
    for name, value in vars(cfg).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def build(cfg: BuildConfig) -> dict:
    """Train the model and (alongside, if the build has one) the judge, measure the card; return and write the
    build record."""
    cfg = cfg.resolved()
    family = cfg.family
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    env = dict(os.environ)
    # the judge's process imports this same package, wherever it lies
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    judge: subprocess.Popen[bytes] | None = None
    judge_started = 0.0

    def start_judge(vae: Path) -> None:
        nonlocal judge, judge_started
        assert cfg.judge is not None
        log(f"VAE saved at {vae}: starting the judge alongside")
        judge_started = time.perf_counter()
        judge = subprocess.Popen(_judge_command(cfg.judge), env=env)

    cfg.data.mkdir(parents=True, exist_ok=True)
    train(cfg.train, on_vae=None if cfg.judge is None else start_judge)
    t_train = time.perf_counter() - t0
    timings: dict[str, float] = {"train": t_train}
    judge_path = toy_judge_path()
    if cfg.judge is not None:
        if judge is None:
            raise RuntimeError("the model trained but the judge never started (no VAE was saved)")
        if judge.wait() != 0:
            raise SystemExit(f"the judge failed (exit code {judge.returncode}); see its log above")
        judge_path = cfg.judge.out
        timings["judge"] = json.loads(judge_path.with_suffix(".json").read_text())["train_s"]  # its own clock
        timings["judge_started_after"] = judge_started - t0  # the wait for it is in "train" or "card"
    t_card = time.perf_counter()
    card_args = ["--family", family.key, "--pipeline", str(cfg.train.out), "--judge", str(judge_path)]
    toy_card.main([*card_args, "--out", str(cfg.data), *cfg.card_args])
    total = time.perf_counter() - t0
    timings |= {"card": total - (t_card - t0), "total": total}
    record = {
        **provenance(["-m", "fmn_patch.toy.build", *sys.argv[1:]]),
        "family": family.key,
        "load_before": load_before,
        "timings_s": timings,
    }
    (cfg.data / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    toy_card.write_readme(cfg.data, cfg.train.out, judge_path, family)
    log(f"built {family.name} in {total / 60:.1f} min: {cfg.data}")
    return record


def parse_args(argv: list[str] | None = None) -> BuildConfig:
    parser = argparse.ArgumentParser(
        prog="python -m fmn_patch.toy.build",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )
    parser.add_argument("--family", choices=FAMILIES, default=UNET.key, help="which toy (default unet)")
    parser.add_argument("--data", type=Path, help="output folder (default: the family's committed one)")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run: a few steps of every phase")
    args = parser.parse_args(argv)
    family = FAMILIES[args.family]
    data = args.data or family.data_dir
    if args.quick and data.resolve() == family.data_dir.resolve():
        parser.error(
            f"--quick would overwrite the committed {family.name} in {family.data_dir}; add --data DIR"
        )
    return BuildConfig.of(family, data, args.quick)


def main(argv: list[str] | None = None) -> None:
    build(parse_args(argv))


if __name__ == "__main__":
    main()
