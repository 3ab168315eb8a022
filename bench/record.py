"""A bench run's record: where results live, the machine and revision they came from, and reading and writing
them. Every bench script saves through here; `bench/render.py` reads the records back into BENCHMARKS.md."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmn_patch.evaluation.provenance import provenance

HERE = Path(__file__).parent
RESULTS = HERE / "results"
#: TrainConfig's defaults before issue 16 (150 steps x batch 8 from zero, fresh samples every step at the base's
#: size, 100-step inner attacks of batch 8): the quality benches train them beside today's defaults.
OLD_DEFAULTS: dict[str, Any] = {
    "steps": 150,
    "batch_size": 8,
    "lr": 3e-3,
    "init": "zero",
    "pool": 0,
    "train_size": None,
    "checkpointing": False,
    "robust_attack": "inversion",
    "robust_attack_steps": 100,
    "robust_attack_batch": 8,
    "robust_attack_lr": 5e-3,
}


def machine() -> dict[str, Any]:
    return {**provenance(), "device": "cpu"}


def read_result(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def percent(x: float | None) -> str:
    """A share for a table cell, one decimal; "-" where there is none."""
    return "-" if x is None else f"{x:.1%}"


def provenance_line(record: dict[str, Any]) -> str:
    m = record["meta"]
    return (
        f"`{m['command']}` on {m['date']}, {m['machine']}, torch {m['torch']} ({m['torch_threads']} threads), "
        f"git {m['git_revision']}." + (f" ({m['note']})" if m.get("note") else "")
    )


def write_json(path: Path, data: Any, indent: int = 2) -> None:
    """``data`` as JSON at ``path``, in one step: a run stopped midway (Ctrl-C, a full disk) leaves the file as it
    was, never half of it."""
    from fmn_patch.files import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=indent) + "\n"), overwrite=True)


def save(name: str, result: dict[str, Any]) -> None:
    record = {"meta": machine(), "result": result}
    if "rows" in result:
        record["rows"] = result["rows"]
    write_json(RESULTS / f"{name}.json", record)
    print(f"wrote {RESULTS / name}.json", file=sys.stderr)


def run_script(
    main: Callable[[], None], interrupted: str = "interrupted; results written so far are kept"
) -> None:
    """Run a bench script's ``main`` as the CLI runs a command: a refusal (``SystemExit`` with a message, or the
    library's ``FmnPatchError``) ends in one line and exit 2, Ctrl-C in one line (``interrupted``) and exit 130."""
    from fmn_patch.errors import FmnPatchError

    script = Path(sys.argv[0]).name
    try:
        main()
    except SystemExit as refused:
        if not isinstance(refused.code, str):
            raise
        print(f"{script}: error: {refused.code}", file=sys.stderr)
        raise SystemExit(2) from None
    except FmnPatchError as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{script}: {interrupted}", file=sys.stderr)
        raise SystemExit(130) from None
