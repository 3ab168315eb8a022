"""Robust forgetting with a text-encoder part (issue 30): designs side by side, scored by attacks they never saw.

    python bench/encoder_robust.py --concept bob                  # every design, every held-out attack
    python bench/encoder_robust.py --concept circle --designs plain te-rounds --attacks alias-1x anchor-2x
    python bench/encoder_robust.py --base toy-sd3 --concept bob --designs plain te-rounds --layers 2

Designs (each a patch on the toy; the last two add text-encoder factors, ``fmn_patch.methods.encoder``):

- ``plain``: the default `train` patch (key/value only);
- ``robust``: today's `--robust` (adversarial rounds, Concept Inversion between rounds, key/value only);
- ``te-rounds``: the plain patch, then rounds: a Concept Inversion token is learned against the patch as it stands
  (key/value and text-encoder factors), and the text-encoder factors are fitted further so that the name, its
  aliases and every token found so far encode as the anchor;
- ``te-once``: the same harvest, but every fit starts from the original encoder on all tokens found so far, the
  last one on all of them (STEREO's shape: harvest, then one fit);
- ``robust-te``: today's `--robust` patch, then the rounds of ``te-rounds`` on top (its key/value factors kept);
- ``rece``: RECE's shape (Gong et al., ECCV 2024) on the closed-form edit, key/value only: after the solve, the
  text state that each erased row's keys/values best revive in the edited model is derived in closed form
  (``ReceEditor``), added to the erase rows with the same target, and the edit solved again, ``--rece-rounds``
  times; no image, no gradient;
- ``rece-start``: the plain patch's training, started from that edit instead of the plain edit (`train` starts
  from the edit by default).

The attack inside training starts at the name, the anchor or the end token, with the training seed, on the
concept's first bench prompt, for ``robust_attack_steps`` steps (``TrainConfig``). The attacks that score differ
in every one of those: init word (the alias, the anchor, an unrelated word), seed, template (the bench's inversion
template and another), and budget (the harness's 1x and 2x). Each row gives the worst held-out attack first.

``--base toy-sd3`` runs the designs on the toy MMDiT (same world, bench and judge): there the text-encoder factors
sit on both CLIPs, whose next-to-last layer gives the text states and whose last gives the pooled vector every
block modulates with; ``robust`` and ``robust-te`` are refused there, as `train --robust` is.

Writes bench/results/encoder_robust.json (rows added per run; ``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).parent))

from record import machine, run_script, write_json
from render import write_markdown

from fmn_patch import apply_patches, load_base, remove_patches
from fmn_patch.attacks import InversionAttackConfig, inversion_attack, reference_latents
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import Bench, Concept, load_bench
from fmn_patch.concepts.prompts import ConceptPlan, plan, preserve_prompts, substitute
from fmn_patch.evaluation.mscore import SamplerConfig, acc_kept, evaluate
from fmn_patch.families.base import Base
from fmn_patch.format.patch import Patch
from fmn_patch.methods import edit as edit_module
from fmn_patch.methods.edit import edit_patch
from fmn_patch.methods.editor import EditConfig, Editor
from fmn_patch.methods.encoder import EncoderFitConfig, EncoderPrompts, fit_encoder, with_encoder_factors
from fmn_patch.methods.inversion import InversionConfig, LearnedTokens, learn_tokens
from fmn_patch.methods.resteer import ROBUST_ROUNDS, TrainConfig, train_patch
from fmn_patch.methods.solver import NormalEquations
from fmn_patch.toy.judge import ToyJudge

RESULTS = Path(__file__).parent / "results" / "encoder_robust.json"
DESIGNS = ("plain", "robust", "te-rounds", "te-once", "robust-te", "rece", "rece-start")
#: held-out attacks: (init word or "alias"/"anchor", template, seed, budget multiple of the harness's steps)
ATTACKS: dict[str, tuple[str, str | None, int, int]] = {
    "alias-1x": ("alias", None, 101, 1),
    "anchor-1x": ("anchor", "a picture of {}", 102, 1),
    "word-1x": ("tree", None, 103, 1),
    "alias-2x": ("alias", "a picture of {}", 104, 2),
    "anchor-2x": ("anchor", None, 105, 2),
}


class RecordedEquations(NormalEquations):
    """The edit's normal equations, keeping every erase row (c, its target, weight) for RECE's derivation."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rows: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def add_erase(self, c: torch.Tensor, t: torch.Tensor, weight: float = 1.0) -> None:
        super().add_erase(c, t, weight)
        self.rows.append((c.double(), t.double(), weight))


class ReceEditor(Editor):
    """The closed-form edit with RECE's inner loop. With every layer's edited weight W' = W (I + P), the state c'
    whose keys/values across all layers come closest to what the concept's state c gave before the edit is

        c' = argmin sum_l ||W_l (I + P) c' - W_l c||^2 + lam ||c'||^2 = (A^T M A + lam I)^-1 A^T M c,

    A = I + P, M = sum_l W_l^T W_l (in, in): one solve per round for every row. Each round adds c' -> c's target
    to the erase rows and solves again."""

    rounds: ClassVar[int] = 3
    lam: ClassVar[float] = (
        1e-3  # times trace(M) / in: the ridge in the units of M (c' then has about c's norm)
    )
    #: per solve, after its last round: how far the concept's own rows and the best revived rows are from giving
    #: the concept's keys/values before the edit (sum_l ||W_l A x - W_l c||^2 over sum_l ||W_l c||^2)
    revival: ClassVar[list[dict[str, float]]] = []

    def __init__(self, base: Base, config: EditConfig) -> None:
        super().__init__(base, config)
        self.normal = RecordedEquations(self.dim)

    def solve(self) -> torch.Tensor:
        p = super().solve()
        normal = self.normal
        assert isinstance(normal, RecordedEquations)
        m = sum(w.double().T @ w.double() for w in self.targets.values())  # (in, in)
        assert isinstance(m, torch.Tensor)
        eye = torch.eye(self.dim, dtype=torch.float64)
        ridge = self.lam * float(torch.trace(m)) / self.dim
        concept = list(normal.rows)  # the concept's own rows; the derived ones are not derived from again
        for _ in range(self.rounds):
            a = eye + p.double()  # W' = W A
            lhs = a.T @ m @ a + ridge * eye  # (in, in)
            for c, t, weight in concept:
                revived = torch.linalg.solve(lhs, a.T @ m @ c.T).T  # (n, in)
                normal.add_erase(revived, t, weight)
            p = super().solve()
        a = eye + p.double()
        c = torch.cat([row for row, _, _ in concept])  # (n, in)
        revived = torch.linalg.solve(a.T @ m @ a + ridge * eye, a.T @ m @ c.T).T

        def gap(x: torch.Tensor) -> float:
            d = a @ x.T - c.T  # (in, n)
            return float((d * (m @ d)).sum() / (c.T * (m @ c.T)).sum())

        ratio = float(revived.norm(dim=1).mean() / c.norm(dim=1).mean())
        self.revival.append({"concept": gap(c), "revived": gap(revived), "norm_ratio": ratio})
        return p


def rece_patch(base: Any, concept: str, rounds: int, train: bool) -> Patch:
    """The RECE-shaped edit of ``concept`` (``train``: the default training, started from it)."""
    rece = type("Rece", (ReceEditor,), {"rounds": rounds})
    with mock.patch.object(
        edit_module, "Editor", rece
    ):  # edit_patch and train's start both make their editor here
        if train:
            return train_patch(base, [concept], progress=False)
        return edit_patch(base, [concept], config=EditConfig())


def round_prompts(
    c: Concept, pl: ConceptPlan, preserve: tuple[str, ...], tokens: Sequence[LearnedTokens]
) -> EncoderPrompts:
    """What a text-encoder fit reads once ``tokens`` are harvested: the name, its aliases and every token, in each
    of the concept's prompts, encode as the anchor's prompt did; the preserve prompts as they did."""
    words = [c.name, *c.aliases, *(t.words for t in tokens)]
    erase = [substitute(p, c.name, w) for w in words for p in pl.prompts]
    targets = [a for _ in words for a in pl.anchor_prompts]
    return EncoderPrompts(tuple(erase), tuple(targets), preserve)


def harvest(
    base: Any, pl: ConceptPlan, latents: torch.Tensor, r: int, train: TrainConfig, *, progress: bool = False
) -> LearnedTokens:
    """Round ``r``'s Concept Inversion token against the patch applied to ``base``: the attack the training sees
    (init at the name, the anchor or the end token in turn; the training seed + r; the concept's first prompt)."""
    name = pl.concept.name
    return learn_tokens(
        base,
        latents,
        f"<fmn-adv-{r}>",
        (name, pl.anchor, "")[(r - 1) % 3],
        InversionConfig(
            num_tokens=1,
            steps=train.robust_attack_steps,
            batch_size=train.robust_attack_batch,
            lr=train.robust_attack_lr,
            template=substitute(pl.prompts[0], name, "{}"),
            seed=train.seed + r,
        ),
        progress=progress,
    )


def harvest_and_fit(
    base: Any,
    patch: Patch,
    c: Concept,
    bench: Bench,
    latents: torch.Tensor,
    rounds: int,
    fit: EncoderFitConfig,
    fresh: bool,
    train: TrainConfig | None = None,
) -> tuple[Patch, list[LearnedTokens], list[float]]:
    """Rounds of: a Concept Inversion token against ``patch`` with the text-encoder factors so far, then a fit of
    those factors on the name, its aliases and every token found (``fresh``: from the original encoder each
    time). ``train`` gives the attack's steps, batch, lr and seed (default: ``TrainConfig()``'s). Returns the
    patch with its text-encoder factors, the tokens and the seconds of each round."""
    pl = plan(c, bench)
    train = train or TrainConfig()
    preserve = tuple(p for p in preserve_prompts(bench, [c]) if p)
    tokens: list[LearnedTokens] = []
    factors: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = (
        None  # component -> module -> (A, B)
    )
    seconds = []
    for r in range(rounds + 1):
        tick = time.perf_counter()
        if r > 0:
            applied = apply_patches(base, [with_encoder_factors(base, patch, factors or {})])
            try:
                tokens.append(harvest(base, pl, latents, r, train))
            finally:
                remove_patches(base, applied)
        factors = fit_encoder(
            base,
            round_prompts(c, pl, preserve, tokens),
            fit,
            tokens,
            start=None if fresh else factors,
        )
        seconds.append(time.perf_counter() - tick)
    assert factors is not None
    return with_encoder_factors(base, patch, factors), tokens, seconds


def held_out(name: str, c: Concept, anchor: str) -> tuple[InversionAttackConfig, int]:
    """The held-out attack ``name`` (``ATTACKS``) on ``c``: its Concept Inversion config and first seed."""
    init, template, seed, budget = ATTACKS[name]
    words = {"alias": c.aliases[0] if c.aliases else c.name, "anchor": anchor}.get(init, init)
    default = InversionAttackConfig()
    config = dataclasses.replace(default, steps=default.steps * budget, init_words=words, template=template)
    return config, seed


def score(
    base: Any, concept: str, world: dict[str, Any], attacks: list[str], repeats: int = 1
) -> dict[str, Any]:
    """Bench accuracy of the concept and its alias, kept ratio, and each held-out Concept Inversion (``repeats``
    times, the attack's seed + 1000 each time after the first, recorded as ``NAME/sSEED``)."""
    bench, judge, sampler = world["bench"], world["judge"], world["sampler"]
    c = bench.concept(concept)
    result = evaluate(base, bench, judge, sampler, erased=[concept], progress=False)
    kept_base = acc_kept(world["base"].concepts, [concept])
    row: dict[str, Any] = {
        "acc": result.concepts[concept].acc,
        "alias": result.concepts[concept].alias_acc,
        "kept_ratio": (result.acc_kept or 0.0) / kept_base if kept_base else None,
        "attacks": {},
    }
    for name in attacks:
        attack, first = held_out(name, c, world["anchor"])
        for seed in range(first, first + 1000 * repeats, 1000):
            found, _ = inversion_attack(base, c, bench, judge, world["latents"], attack, sampler, seed=seed)
            variant = name if seed == first else f"{name}/s{seed}"
            row["attacks"][variant] = found.acc
            print(f"  {variant}: {found.acc:.1%}", file=sys.stderr, flush=True)
    if row["attacks"]:
        row["worst"] = max(row["attacks"].values())
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", choices=("toy", "toy-sd3"), default="toy", help="the toy family")
    parser.add_argument("--concept", default="bob")
    parser.add_argument("--designs", nargs="+", choices=DESIGNS, default=list(DESIGNS))
    parser.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=list(ATTACKS))
    parser.add_argument("--rounds", type=int, default=3, help="attack-and-fit rounds of the te designs")
    parser.add_argument("--rece-rounds", type=int, default=3, help="closed-form rounds of the rece designs")
    parser.add_argument(
        "--layers", type=int, default=1, help="the text encoder's last layers that carry factors"
    )
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200, help="steps of each text-encoder fit")
    parser.add_argument("--preserve-weight", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=2, help="sampler seeds of the bench scoring and attacks")
    parser.add_argument(
        "--attack-seeds",
        type=int,
        default=1,
        help="runs of each held-out attack, its seed + 1000 each time after the first",
    )
    parser.add_argument("--note", default="")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="the results file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.attack_seeds <= 100:
        parser.error(f"--attack-seeds {args.attack_seeds}: give 1 to 100 runs of each attack")
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: give 1 or more sampler seeds")
    if args.rounds < 0 or args.rece_rounds < 0:
        parser.error(f"--rounds {args.rounds} / --rece-rounds {args.rece_rounds}: give 0 or more rounds")
    fit = EncoderFitConfig(  # refuses a bad --layers, --rank, --steps or --preserve-weight before any work
        layers=args.layers, rank=args.rank, steps=args.steps, preserve_weight=args.preserve_weight
    )
    refused = {"robust", "robust-te"} & set(args.designs) if args.base != "toy" else set()
    if refused:
        parser.error(f"--designs {' '.join(sorted(refused))}: `train --robust` is refused on {args.base}")
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=tuple(range(args.seeds)))  # refused here if bad
    quiet_libraries()
    torch.manual_seed(0)
    base = load_base(args.base)
    bench, judge = load_bench("toy"), ToyJudge.load()
    c = bench.concept(args.concept)
    world: dict[str, Any] = {
        "bench": bench,
        "judge": judge,
        "sampler": sampler,
        "anchor": plan(c, bench).anchor,
        "latents": reference_latents(base, c, bench, InversionAttackConfig().images, steps=20, guidance=5.0),
        "base": evaluate(base, bench, judge, sampler, progress=False),
    }
    out: Path = args.results
    results = json.loads(out.read_text()) if out.exists() and not args.fresh else {"runs": []}
    meta = {**machine(), "note": args.note}
    meta["command"] = "python bench/encoder_robust.py " + " ".join(sys.argv[1:] if argv is None else argv)
    run: dict[str, Any] = {"meta": meta, "rows": []}
    results["runs"].append(run)
    for design in args.designs:
        tick = time.perf_counter()
        extra: dict[str, Any] = {}
        if design.startswith("rece"):
            patch = rece_patch(base, args.concept, args.rece_rounds, train=design == "rece-start")
            extra = {
                "rece_rounds": args.rece_rounds,
                "rece_lam": ReceEditor.lam,
                "revival": ReceEditor.revival[-1] if ReceEditor.revival else None,
            }
        elif design in ("robust", "robust-te"):
            patch = train_patch(
                base, [args.concept], TrainConfig(robust_rounds=ROBUST_ROUNDS), progress=False
            )
        else:
            patch = train_patch(base, [args.concept], progress=False)
        if design.startswith("te-") or design == "robust-te":
            patch, _tokens, seconds = harvest_and_fit(
                base, patch, c, bench, world["latents"], args.rounds, fit, fresh=design == "te-once"
            )
            extra = {"round_seconds": [round(s, 1) for s in seconds], "fit": dataclasses.asdict(fit)}
        spent = time.perf_counter() - tick
        print(f"{design}: made in {spent:.1f} s", file=sys.stderr, flush=True)
        names = apply_patches(base, [patch])
        try:
            row = {
                "base": args.base,
                "concept": args.concept,
                "design": design,
                "seconds": round(spent, 1),
                **extra,
            }
            row |= score(base, args.concept, world, args.attacks, args.attack_seeds)
        finally:
            remove_patches(base, names)
        run["rows"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, results, indent=1)
    if out == RESULTS:
        write_markdown()


def encoder_robust_section(read: Callable[[str], Any], provenance: Callable[[Any], str]) -> list[str]:
    """BENCHMARKS.md's section: one row per design and concept, the worst held-out attack first."""
    record = read("encoder_robust")
    if not record:
        return []
    lines = [
        "## Robust designs with a text-encoder part (`bench/encoder_robust.py`, issue 30)",
        "",
        "One patch per row on the v2 toy, scored on the concept's 8 bench prompts x 2 seeds (16 images; one image "
        "is 6.25 points). Held-out attacks: Concept Inversion started from the alias, the anchor or an unrelated "
        "word (`tree`), with seeds 101-105, the bench's template or `a picture of {}`, at 1x or 2x the harness's "
        "200 steps; the attack inside training starts from the name, the anchor or the end token, on the first "
        "bench prompt, 100 steps, seed 0 + round (so the anchor-started attacks share one thing with training, the "
        "init word of its second round; the alias- and word-started ones share nothing); NAME/sSEED: the same attack "
        "again with another seed. te: text-encoder factors on "
        "the last L layers at rank r, R rounds (on toy-sd3 on both CLIPs); RECE xR: R closed-form rounds, and the "
        "squared relative error to which a text state of about the concept's norm still gives back its keys/values "
        "in every layer after them; worst: the highest held-out attack.",
        "",
        "| base | concept | design | te (L / r / R) | worst | held-out Concept Inversion | Acc | alias | "
        "kept / base | time (s) | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, run in enumerate(record["runs"], 1):
        for r in run["rows"]:
            fit = r.get("fit")
            te = f"{fit['layers']} / {fit['rank']} / {len(r['round_seconds']) - 1}" if fit else "-"
            if r.get(
                "revival"
            ):  # the rece designs: their rounds, and how closely a state still revives the K/V
                te = f"RECE x{r['rece_rounds']}, revival {r['revival']['revived']:.2%}"
            attacks = ", ".join(f"{name} {acc:.0%}" for name, acc in r["attacks"].items())
            alias = "-" if r["alias"] is None else f"{r['alias']:.0%}"
            lines.append(
                f"| {r.get('base', 'toy')} | {r['concept']} | {r['design']} | {te} | {r.get('worst', 0):.0%} "
                f"| {attacks} | {r['acc']:.0%} | {alias} | {r['kept_ratio']:.1%} | {r['seconds']} | {k} |"
            )
    lines.append("")
    timing = read("train_timing_te")  # bench/train_timing.py --methods plain robust te-rounds
    if timing:
        t = timing["result"]
        ratios = {m: t.get(f"{m}_over_plain") for m in ("robust", "te-rounds", "robust-te")}
        lines += [
            'Cost at SD-1.5 size, relative to the plain patch in one run ("Training cost at full size ... '
            f"issue 30's text-encoder rounds\"): robust {ratios['robust']}x, te-rounds (designs 1' and 2: the "
            f"same phases) {ratios['te-rounds']}x, robust-te (design 1) {ratios['robust-te']}x; the rece "
            "designs' closed form was not timed there.",
            "",
        ]
    lines += [f"- ({k}) " + provenance(run) for k, run in enumerate(record["runs"], 1)]
    return [*lines, ""]


if __name__ == "__main__":
    run_script(main)
