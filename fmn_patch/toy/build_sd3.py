"""Build the toy MMDiT: `python -m fmn_patch.toy.build_sd3` (what `make toy-sd3` runs; `make toy-model` runs it
after the UNet toy, whose VAE it reuses).

Trains the transformer and its text encoders on one core (`fmn_patch.toy.train_sd3`, always one thread, so the
weights are the same bits on any machine with the same torch), then measures the card on two
(`fmn_patch.toy.card_sd3`). Timings go to `build.json` beside the card and into the card itself.

    python -m fmn_patch.toy.build_sd3                        # the committed toy-sd3 (about an hour of one core)
    python -m fmn_patch.toy.build_sd3 --data /tmp/t --quick  # a tiny end-to-end smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from fmn_patch.evaluation.provenance import provenance
from fmn_patch.toy import card_sd3
from fmn_patch.toy.paths import SD3_DATA_DIR
from fmn_patch.toy.train_sd3 import Sd3TrainConfig, train

#: Settings of `--quick`: a few steps on a few images (a smoke run, not a usable model).
QUICK_TRAIN = {"images": 256, "steps": 3, "save_every": 1000}
QUICK_CARD = ["--seeds", "1", "--steps", "2"]


@dataclass(frozen=True)
class Sd3BuildConfig:
    data: Path = SD3_DATA_DIR  # pipeline/, card.json, README.md, build.json
    train: Sd3TrainConfig = field(default_factory=Sd3TrainConfig)
    card_args: tuple[str, ...] = ()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(cfg: Sd3BuildConfig) -> dict:
    """Train the model and measure its card; return and write the build record."""
    pipeline = cfg.data / "pipeline"
    cfg = replace(cfg, train=replace(cfg.train, out=pipeline))
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    cfg.data.mkdir(parents=True, exist_ok=True)
    train(cfg.train)
    t_train = time.perf_counter() - t0
    card_sd3.main(["--pipeline", str(pipeline), "--out", str(cfg.data), *cfg.card_args])
    total = time.perf_counter() - t0
    record = {
        **provenance(["-m", "fmn_patch.toy.build_sd3", *sys.argv[1:]]),
        "load_before": load_before,
        "timings_s": {"train": t_train, "card": total - t_train, "total": total},
    }
    (cfg.data / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    card_sd3.write_readme(cfg.data, pipeline)
    log(f"built the toy MMDiT in {total / 60:.1f} min: {cfg.data}")
    return record


def parse_args(argv: list[str] | None = None) -> Sd3BuildConfig:
    parser = argparse.ArgumentParser(
        prog="python -m fmn_patch.toy.build_sd3",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )
    parser.add_argument(
        "--data", type=Path, default=SD3_DATA_DIR, help=f"output folder (default {SD3_DATA_DIR})"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run: a few steps of every phase")
    args = parser.parse_args(argv)
    if args.quick and args.data.resolve() == SD3_DATA_DIR.resolve():
        parser.error(f"--quick would overwrite the committed toy MMDiT in {SD3_DATA_DIR}; add --data DIR")
    if not args.quick:
        return Sd3BuildConfig(data=args.data)
    return Sd3BuildConfig(
        data=args.data,
        train=Sd3TrainConfig(**QUICK_TRAIN),  # type: ignore[arg-type]
        card_args=tuple(QUICK_CARD),
    )


def main(argv: list[str] | None = None) -> None:
    build(parse_args(argv))


if __name__ == "__main__":
    main()
