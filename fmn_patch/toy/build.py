"""Build the whole toy world on two cores: `python -m fmn_patch.toy.build` (what `make toy-model` runs).

The model trains on one core (`fmn_patch.toy.train`); as soon as its VAE is saved, the judge
(`fmn_patch.toy.train_judge`, which also learns from VAE reconstructions) starts on the other core in its own
process; when both are done the model card is measured on both cores (`fmn_patch.toy.card`). Each part runs at
the thread count it always uses, so the weights are the same bits as running the three commands one after
another; only the wall time changes. Timings go to `build.json` beside the card and into the card itself.

    python -m fmn_patch.toy.build                    # the committed toy world (about an hour on 2 cores)
    python -m fmn_patch.toy.build --data /tmp/toy --quick   # a tiny end-to-end smoke run (about a minute)
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

from fmn_patch.evaluation.provenance import provenance
from fmn_patch.toy import card as toy_card
from fmn_patch.toy.paths import DATA_DIR
from fmn_patch.toy.train import TrainConfig, train
from fmn_patch.toy.train_judge import JudgeTrainConfig

#: Settings of `--quick`: every phase runs a few steps on a few images (a smoke run, not a usable model).
QUICK_TRAIN = {"images": 512, "vae_steps": 3, "unet_steps": 3, "save_every": 1000}
QUICK_JUDGE = {"images": 256, "heldout": 64, "steps": 3}
QUICK_CARD = ["--seeds", "1", "--steps", "2"]


@dataclass(frozen=True)
class BuildConfig:
    """Where the toy world goes and how each part is made."""

    data: Path = DATA_DIR  # pipeline/, judge.safetensors, card.json, README.md, build.json
    train: TrainConfig = field(default_factory=TrainConfig)
    judge: JudgeTrainConfig = field(default_factory=JudgeTrainConfig)
    card_args: tuple[str, ...] = ()  # extra arguments for `python -m fmn_patch.toy.card`

    def resolved(self) -> BuildConfig:
        """The same build with every output path under `data`."""
        pipeline, judge = self.data / "pipeline", self.data / "judge.safetensors"
        return replace(
            self,
            train=replace(self.train, out=pipeline),
            judge=replace(self.judge, out=judge, vae=pipeline / "vae"),
        )


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _judge_command(cfg: JudgeTrainConfig) -> list[str]:
    args = [sys.executable, "-m", "fmn_patch.toy.train_judge"]
    for name, value in vars(cfg).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def build(cfg: BuildConfig) -> dict:
    """Train the model and (alongside) the judge, measure the card; return and write the build record."""
    cfg = cfg.resolved()
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
        log(f"VAE saved at {vae}: starting the judge alongside")
        judge_started = time.perf_counter()
        judge = subprocess.Popen(_judge_command(cfg.judge), env=env)

    cfg.data.mkdir(parents=True, exist_ok=True)
    train(cfg.train, on_vae=start_judge)
    t_train = time.perf_counter() - t0
    if judge is None:
        raise RuntimeError("the model trained but the judge never started (no VAE was saved)")
    if judge.wait() != 0:
        raise SystemExit(f"the judge failed (exit code {judge.returncode}); see its log above")
    t_judge_done = time.perf_counter()
    judge_s = json.loads(cfg.judge.out.with_suffix(".json").read_text())["train_s"]  # its own clock
    card_args = ["--pipeline", str(cfg.train.out), "--judge", str(cfg.judge.out), "--out", str(cfg.data)]
    toy_card.main([*card_args, *cfg.card_args])
    total = time.perf_counter() - t0
    record = {
        **provenance(["-m", "fmn_patch.toy.build", *sys.argv[1:]]),
        "load_before": load_before,
        "timings_s": {
            "train": t_train,
            "judge": judge_s,  # alongside the UNet phase; the wait for it is in "train" or "card"
            "judge_started_after": judge_started - t0,
            "card": total - (t_judge_done - t0),
            "total": total,
        },
    }
    (cfg.data / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    toy_card.write_readme(cfg.data, cfg.train.out, cfg.judge.out)
    log(f"built the toy world in {total / 60:.1f} min: {cfg.data}")
    return record


def parse_args(argv: list[str] | None = None) -> BuildConfig:
    parser = argparse.ArgumentParser(
        prog="python -m fmn_patch.toy.build",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )
    parser.add_argument("--data", type=Path, default=DATA_DIR, help=f"output folder (default {DATA_DIR})")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run: a few steps of every phase")
    args = parser.parse_args(argv)
    if args.quick and args.data.resolve() == DATA_DIR.resolve():
        parser.error(f"--quick would overwrite the committed toy world in {DATA_DIR}; add --data DIR")
    if not args.quick:
        return BuildConfig(data=args.data)
    return BuildConfig(
        data=args.data,
        train=TrainConfig(**QUICK_TRAIN),  # type: ignore[arg-type]
        judge=JudgeTrainConfig(**QUICK_JUDGE),  # type: ignore[arg-type]
        card_args=tuple(QUICK_CARD),
    )


def main(argv: list[str] | None = None) -> None:
    build(parse_args(argv))


if __name__ == "__main__":
    main()
