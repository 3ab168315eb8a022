"""The resumable state of a toy trainer: what its loop carries from one step to the next, saved beside each
checkpoint so that `--resume` continues a run bit for bit (same seed and thread count).

The toy trainer (`fmn_patch.toy.train`) uses it for every family.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch

from fmn_patch import files
from fmn_patch.errors import FmnPatchError

if TYPE_CHECKING:
    from fmn_patch.toy.train import Ema

#: Options that may differ between the parts of one resumed run; every other one must match.
PER_PART = ("resume", "stop_at", "state", "threads", "max_minutes")
#: What a record that lacks an option ran with, where that is not today's default: runs recorded before the
#: `world` option trained v1's world.
BEFORE_OPTION = {"world": "v1"}


def state_dir(out: Path, state: Path | None, kind: str) -> Path:
    """The folder of a run's training state: `state`, else under $FMNPATCH_CACHE (or ~/.cache/fmn-patch), named
    after the output folder, so that it never lands in the package's data folder."""
    if state is not None:
        return state
    from fmn_patch.families.references import cache_dir

    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]
    return cache_dir().parent / f"{kind}-train" / key


def save_state(
    folder: Path, step: int, params: list, opt: Any, ema: Ema, gen: torch.Generator, losses: list
) -> None:
    """Everything the loop carries from one step to the next, as safetensors (never pickled): the live weights,
    the EMA's shadow and start, AdamW's moments and step counts, the data generator's and the global RNG's states
    (dropout draws from the latter), and the loss history. Written aside and swapped in whole."""
    tensors: dict[str, torch.Tensor] = {
        "gen_state": gen.get_state(),
        "global_rng": torch.get_rng_state(),
        "losses": torch.tensor(losses, dtype=torch.float64),
    }
    for i, p in enumerate(params):
        tensors[f"param.{i}"] = p.detach().clone()
        tensors[f"ema.shadow.{i}"] = ema.shadow[i]
        tensors[f"ema.initial.{i}"] = ema.initial[i]
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                tensors[f"opt.{key}.{i}"] = torch.as_tensor(state[key]).clone()

    def write(tmp: Path) -> None:
        safetensors.torch.save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "ema_steps": ema.steps}) + "\n")

    files.atomic_folder(folder, write, overwrite=True)


def load_state(folder: Path, params: list, opt: Any, ema: Ema, gen: torch.Generator) -> tuple[int, list]:
    """Put the state `save_state` wrote back into the loop's objects; return (steps done, loss history)."""
    meta = json.loads((folder / "state.json").read_text())
    tensors = safetensors.torch.load_file(str(folder / "state.safetensors"))
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param.{i}"])
            ema.shadow[i].copy_(tensors[f"ema.shadow.{i}"])
            ema.initial[i].copy_(tensors[f"ema.initial.{i}"])
            if f"opt.step.{i}" in tensors:
                opt.state[p] = {
                    key: tensors[f"opt.{key}.{i}"].clone() for key in ("step", "exp_avg", "exp_avg_sq")
                }
    ema.steps = int(meta["ema_steps"])
    gen.set_state(tensors["gen_state"])
    torch.set_rng_state(tensors["global_rng"])
    return int(meta["step"]), [float(x) for x in tensors["losses"]]


def resumable_record(cfg: Any, out: Path, folder: Path) -> dict:
    """The training record of the run `cfg` resumes, after checking that it can: its state exists and every
    option outside PER_PART is the same. Raises FmnPatchError naming what to do otherwise."""
    if not (folder / "state.json").exists() or not (out / "training.json").exists():
        raise FmnPatchError(f"--resume: no training state in {folder}; start without --resume")
    done = json.loads((out / "training.json").read_text())

    def fixed(config: dict) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in config.items() if k not in PER_PART}

    # an option the record lacks is newer than the run, which then ran as its default did
    recorded = {**fixed(asdict(type(cfg)())), **BEFORE_OPTION, **fixed(done["config"])}
    differ = sorted(k for k, v in fixed(asdict(cfg)).items() if recorded.get(k) != v)
    if differ:
        raise FmnPatchError(
            f"--resume: {', '.join(differ)} differ from the run being resumed (see {out / 'training.json'}); "
            "resume with the same options"
        )
    return done
