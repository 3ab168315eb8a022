"""The processes of one job: this process alone, or the N that ``accelerate launch`` started.

A plain run is one process and never imports accelerate. Under ``accelerate launch --num_processes N`` every process
runs the same command, and ``current()`` wraps accelerate's ``PartialState``: ``share`` gives each process a
contiguous part of the work (``split_between_processes``), ``gather`` brings everyone's results to every process
(``gather_object``), and the main process alone writes files and prints results.

``run_shared`` is the one loop over shared work. Results equal a single process's, whatever the number of
processes, when each unit's result depends on the unit alone (evaluation: one pipeline call of fixed images, each
from its own seeded generator): units are fixed by the work, never by the number of processes, and results come
back in unit order. ``gather_object`` pickles results between the processes of the one job; nothing read from a
file is ever unpickled.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import FmnPatchError
from .progress import Phase, phase
from .text import printable

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Processes:
    """Which process this is, of how many; ``state`` is accelerate's ``PartialState`` under a launcher."""

    count: int = 1
    index: int = 0
    local_index: int = 0  # on this machine: which accelerator a ``cuda`` device means
    state: Any = field(default=None, repr=False, compare=False)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def share(self, n: int) -> list[int]:
        """This process's unit indices of ``range(n)``: a contiguous run, sizes differing by at most one."""
        if self.state is None:
            return list(range(n))
        with self.state.split_between_processes(list(range(n))) as mine:
            return list(mine)

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's ``items``, concatenated in process order, on every process (a collective call)."""
        if self.state is None:
            return list(items)
        from accelerate.utils import gather_object

        return list(gather_object(list(items)))

    def wait(self) -> None:
        """Until every process gets here (a collective call)."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def device(self, requested: str) -> str:
        """The torch device this process uses for ``requested``: a bare ``cuda`` means this process's own GPU."""
        if self.state is not None and requested == "cuda":
            return f"cuda:{self.local_index}"
        return requested


_CURRENT: list[Processes] = []


def current() -> Processes:
    """The processes of this job (one without a launcher); the first call under a launcher joins the group."""
    if not _CURRENT:
        _CURRENT.append(_detect())
    return _CURRENT[0]


def joined() -> Processes | None:
    """The processes of this job if ``current()`` has found them (None before, or when the environment was
    refused): which process an error line comes from, without starting anything."""
    return _CURRENT[0] if _CURRENT else None


#: Where launchers put the number of processes: torchrun (under `accelerate launch`), then MPI's (under mpirun).
SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_size() -> int:
    """How many processes the launcher says this job has (1 without a launcher)."""
    for name in SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


#: What torchrun (and so `accelerate launch`) sets in every process it starts; a plain run has none of them.
LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: MPI's launchers: the size variable and the rank variable each sets (PMI: MPICH and Intel MPI).
MPI_VARIABLES = (
    ("PMI_SIZE", "PMI_RANK"),
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"),
)


def check_launcher_environment(env: Mapping[str, str] | None = None) -> None:
    """Refuse, in one line, a launcher's variables without the launcher: a stray ``WORLD_SIZE=2`` (or ``RANK``,
    ``LOCAL_RANK``) left in a shell would make this process wait for peers that never come. A launcher sets the
    whole set, consistently: torchrun ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; MPI its size and rank variables together."""
    env = os.environ if env is None else env
    mpi = [(size, rank) for size, rank in MPI_VARIABLES if env.get(size) or env.get(rank)]
    if mpi:  # started by mpirun: its own pair of variables must be whole
        for size, rank in mpi:
            if not _ranked(env.get(size), env.get(rank)):
                _refuse(env, [size, rank])
        return
    given = [n for n in ("WORLD_SIZE", "RANK", "LOCAL_RANK") if n in env]
    if not given:
        return
    missing = [n for n in LAUNCHER_VARIABLES if not env.get(n, "").strip()]
    numbers_ok = _ranked(env.get("WORLD_SIZE"), env.get("RANK")) and _ranked(
        env.get("WORLD_SIZE"), env.get("LOCAL_RANK")
    )
    port = env.get("MASTER_PORT", "")
    if missing or not numbers_ok or not (port.isdecimal() and 0 < int(port) < 65536):
        _refuse(env, [n for n in LAUNCHER_VARIABLES if n in env or n in given])


def _ranked(size: str | None, rank: str | None) -> bool:
    """Whether ``size`` and ``rank`` are whole numbers with 0 <= rank < size."""
    if size is None or rank is None or not size.isdecimal() or not rank.isdecimal():
        return False
    return 0 <= int(rank) < int(size)


def _refuse(env: Mapping[str, str], names: list[str]) -> None:
    shown = ", ".join(f"{n}={printable(env.get(n, ''), 20)!r}" for n in names if n in env) or "none"
    raise FmnPatchError(
        f"the environment holds a launcher's process variables ({shown}) but no launcher started this process "
        f"(a launcher sets all of {', '.join(LAUNCHER_VARIABLES)}, consistently); run `unset "
        f"{' '.join(n for n in names if n in env)}` to run one process, or start several with `accelerate launch`"
    )


def _detect() -> Processes:
    check_launcher_environment()
    size = launched_size()
    if size <= 1:
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") and not os.environ.get("RANK"):
            print(
                "fmnpatch: one process: `accelerate launch --cpu` starts several only through MPI "
                "(--mpirun_hostfile); on CPUs use `accelerate launch --multi_gpu --num_processes N` (torchrun)",
                file=sys.stderr,
            )
        return Processes()
    try:
        import torch
        from accelerate import PartialState
    except ImportError as e:
        raise FmnPatchError(
            f"this process is one of {size} but accelerate is not installed; pip install 'fmn-patch[scale]'"
        ) from e
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)  # no GPU: the processes talk over gloo on the CPU
    return Processes(state.num_processes, state.process_index, state.local_process_index, state)


@dataclass
class Throughput:
    """How much a shared piece of work did, how fast, and each process's share of it."""

    what: str
    unit: str  # "images", "patches", ...
    per_process: list[int]  # units of `unit` done by each process
    seconds: float  # wall time on the main process

    @property
    def total(self) -> int:
        return sum(self.per_process)

    def rate(self, per: float = 1.0) -> float:
        """``unit`` per ``per`` seconds (3600: per hour)."""
        return self.total / self.seconds * per if self.seconds > 0 else float("nan")

    def line(self, per: str = "s") -> str:
        scale = 3600.0 if per == "h" else 1.0
        rate = f"{self.rate(scale):.2f} {self.unit}/{per}"
        text = f"{self.what}: {self.total} {self.unit} in {self.seconds:.1f} s ({rate})"
        if len(self.per_process) > 1:
            shares = ", ".join(
                f"process {i}: {n} ({n / self.total:.0%})" if self.total else f"process {i}: {n}"
                for i, n in enumerate(self.per_process)
            )
            text += f"; {shares}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "total": self.total,
            "seconds": self.seconds,
            "per_process": self.per_process,
        }


def run_shared(
    units: Sequence[T],
    work: Callable[[T], R],
    *,
    size: Callable[[T], int] = lambda _unit: 1,
    what: str = "work",
    unit: str = "units",
    progress: bool = True,
    processes: Processes | None = None,
) -> tuple[list[R], Throughput]:
    """``[work(u) for u in units]``, the units shared between the processes, the results on every process.

    Processes go in rounds, one unit each, and count together after each round: the main process reports one
    phase for the whole job on the progress channel, with each process's count. ``size(u)``: what a unit counts
    for (images).
    """
    procs = processes or current()
    started = time.perf_counter()
    mine = procs.share(len(units))
    rounds = math.ceil(len(units) / procs.count)
    total = sum(size(u) for u in units)
    shown = progress and procs.is_main
    done, results = 0, []
    with phase(what, total, unit) if shown else contextlib.nullcontext() as bar:
        for r in range(rounds):
            if r < len(mine):
                results.append((mine[r], work(units[mine[r]])))
                done += size(units[mine[r]])
            if procs.count == 1:
                counts = [done]
            elif progress:  # every process runs the same command, so all of them take part in this gather
                counts = procs.gather([done])
            if isinstance(bar, Phase):
                note = " ".join(f"p{i} {n}" for i, n in enumerate(counts)) if procs.count > 1 else ""
                bar.advance(sum(counts) - bar.done, note=note)
    gathered = procs.gather(results) if procs.count > 1 else results
    per_process = procs.gather([done]) if procs.count > 1 else [done]
    ordered = [r for _, r in sorted(gathered, key=lambda pair: pair[0])]
    return ordered, Throughput(what, unit, per_process, time.perf_counter() - started)
