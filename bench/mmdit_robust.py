"""Can adversarial rounds (`--robust`) hold a concept on the toy MMDiT? One patch per run, one variant per row.

    python bench/mmdit_robust.py plain                 # the default from-zero patch, no rounds
    python bench/mmdit_robust.py adversarial           # + 3 rounds: Concept Inversion, then 50 steps with its token
    python bench/mmdit_robust.py adversarial --set '{"rank": 16}'
    python bench/mmdit_robust.py --list                # every variant, one line each
    python bench/mmdit_robust.py --probe pooled        # where an attack's circle comes from (pooled or text)

Every variant trains `toy-sd3` on one concept (default circle). Round 0 is the plain patch (the from-zero budget:
150 steps of 8 from a pool of 256, preservation 100); each later round first learns a Concept Inversion token
against the patch as it stands (the `--robust` inner attack, 100 x 2 unless --set changes it), then trains the
patch on for 50 steps on the concept's prompts plus what the variant adds. Scored like bench/robust_ablation.py:
Acc_erased, Acc_kept ratio, and Concept Inversion (the harness's default budget, from the anchor) at 1x and 2x.

`train_patch` refuses `--robust` on MMDiT bases because of what these rows measured; this script lifts the
refusal for its own process. Some variants change more than `TrainConfig` can: "pooled-lora" adds a LoRA on the
pooled-text projection (`time_text_embed.text_embedder.linear_1`), which is not a patch target of the package (this
process widens the MMDiT target kind to measure it). Appends the row, with its command and machine, to
bench/results/mmdit_robust.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from record import RESULTS, machine, write_json
from render import write_markdown
from robust_ablation import changes_of, scores
from robust_quality import make_world, measure

from fmn_patch import apply_patches, load_base
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.prompts import ConceptPlan
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import Base
from fmn_patch.families.checkpointing import gradient_checkpointing
from fmn_patch.families.conditioning import Conditioning
from fmn_patch.families.stack import apply_patches as apply_factors
from fmn_patch.families.stack import remove_patches
from fmn_patch.format.header import PatchInfo
from fmn_patch.format.patch import Patch
from fmn_patch.methods import robust, samples
from fmn_patch.methods.dataset import TrainingSet
from fmn_patch.methods.inversion import LearnedTokens
from fmn_patch.methods.lora import lora_adapter
from fmn_patch.methods.losses import guided_target
from fmn_patch.methods.resteer import TrainConfig, TrainReport, run_steps, train_patch

LATER = (
    50  # steps of every round after the first (which trains the plain budget: config.steps, 150 by default)
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """What a row changes: rounds (1 = the plain patch), what the later rounds add to the concept's prompts, and the
    extras TrainConfig has no field for."""

    about: str
    rounds: int = 4
    adds: str = (
        "attack"  # attack: the attack's prompts; all: every round's so far; none: nothing (a control);
    )
    # anchor-text: the anchor's text states with the attack prompts' pooled embeddings, no re-steering positions
    changes: tuple[tuple[str, Any], ...] = ()
    name_target: bool = False  # the attack prompts' guided target from the name's prompt, not their own
    pooled_mix: bool = False  # every round: also the anchor's text states with the name's pooled embedding
    pooled_lora: bool = False  # also a LoRA on the pooled-text projection


VARIANTS: dict[str, Variant] = {
    "plain": Variant("the default from-zero patch", rounds=1),
    "plain-seed1": Variant("the same, seed 1", rounds=1, changes=(("seed", 1),)),
    "plain-eta4": Variant("the same, negative guidance 4", rounds=1, changes=(("eta", 4.0),)),
    "plain-pooled-mix": Variant(
        "plain, plus the anchor's text with the name's pooled embedding", rounds=1, pooled_mix=True
    ),
    "plain-pooled-lora": Variant(
        "plain, plus a LoRA on the pooled-text projection", rounds=1, pooled_lora=True
    ),
    "finetune": Variant("3 more rounds on the concept's prompts alone (attacks run, unused)", adds="none"),
    "adversarial": Variant("3 rounds, each with the latest attack's prompts"),
    "adversarial-all": Variant("3 rounds, each with every attack's prompts so far", adds="all"),
    "adversarial-no-resteer": Variant(
        "adversarial, re-steering weight 0", changes=(("resteer_weight", 0.0),)
    ),
    "adversarial-strong": Variant(
        "adversarial, inner attack 200 x 8 (the measuring attack's budget)",
        changes=(("robust_attack_steps", 200), ("robust_attack_batch", 8)),
    ),
    "adversarial-rank16": Variant("adversarial, rank 16", changes=(("rank", 16),)),
    "adversarial-name-target": Variant(
        "adversarial, the attack prompts' target from the name's", name_target=True
    ),
    "adversarial-anchor-text": Variant(
        "the attack prompts' pooled embeddings with the anchor's text states", adds="anchor-text"
    ),
    "adversarial-anchor-text-pooled-lora": Variant(
        "the same, plus a LoRA on the pooled-text projection", adds="anchor-text", pooled_lora=True
    ),
}


def rounds(
    base: Base,
    plans: list[ConceptPlan],
    batch: TrainingSet,
    config: TrainConfig,
    report: TrainReport,
    progress: bool,
    start: Any,
    variant: Variant,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``methods.robust.robust_rounds`` with the plain budget first and the variant's later rounds."""
    owner = torch.tensor([k for k, pl in enumerate(plans) for _ in pl.prompts])[batch.latent_prompt]
    original = batch
    if variant.pooled_mix:
        cond = batch.anchor
        mixed = Conditioning(cond.states, {**(cond.added or {}), "pooled": _pooled(batch.concept)})
        batch = original.with_prompts(mixed, original.anchor, torch.zeros_like(original.masks), original)
    first = batch
    with name_targets(len(original.concept)) if variant.name_target else contextlib.nullcontext():
        return _rounds(base, plans, original, first, owner, config, report, progress, start, variant)


def _rounds(
    base: Base,
    plans: list[ConceptPlan],
    original: TrainingSet,
    first: TrainingSet,
    owner: torch.Tensor,
    config: TrainConfig,
    report: TrainReport,
    progress: bool,
    factors: Any,
    variant: Variant,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    batch, fresh = first, {}
    for r in range(variant.rounds):
        steps = config.steps if r == 0 else LATER  # resolved: the from-zero budget unless --set gives steps
        step_config = dataclasses.replace(config, steps=steps)
        with lora_adapter(
            base, config.rank, seed=config.seed, start=factors, train_values=config.train_values
        ) as session:
            report.add(
                run_steps(session, batch, step_config, steps * batch.concepts, progress), config.batch_size
            )
            fresh = session.factors()
        if r == variant.rounds - 1:
            break
        factors = dict(fresh)
        names = apply_factors(
            base, [Patch(fresh, PatchInfo(architecture=base.architecture), base.family.adapters.component)]
        )
        tick = time.perf_counter()
        try:
            with gradient_checkpointing(base.family, config.checkpointing):
                found = robust.inner_attack(base, plans, original.latents, owner, r, config, progress)
        finally:
            remove_patches(base, names)
        spent = len(plans) * config.robust_attack_steps * config.robust_attack_batch
        report.spend("attacks", time.perf_counter() - tick, spent)
        if variant.adds == "none":
            batch = first
        elif variant.adds == "anchor-text":
            batch = _anchor_text(base, first, original, plans, found)
        else:
            batch = robust.with_adversarial(
                base, batch if variant.adds == "all" else first, original, plans, found, config
            )
    return fresh


def _pooled(cond: Conditioning) -> torch.Tensor:
    assert cond.added is not None, "an MMDiT conditioning carries its pooled embeddings"
    return cond.added["pooled"]


def _anchor_text(
    base: Base,
    batch: TrainingSet,
    original: TrainingSet,
    plans: list[ConceptPlan],
    found: list[LearnedTokens],
) -> TrainingSet:
    """``batch`` plus the anchor's text states with the attack prompts' pooled embeddings (no re-steering)."""
    attacked, _ = robust.encode_attacked(base, plans, found, after=True)
    anchor = original.anchor
    mixed = Conditioning(anchor.states, {**(anchor.added or {}), "pooled": _pooled(attacked)})
    return batch.with_prompts(mixed, original.anchor, torch.zeros_like(original.masks), original)


@contextlib.contextmanager
def name_targets(prompts: int) -> Iterator[None]:
    """The base's concept prediction for prompt i taken from prompt i mod ``prompts`` (the name's prompt)."""
    own = samples.guided_targets

    @torch.no_grad()
    def targets(
        session: Any, batch: TrainingSet, s: samples.Samples, chunk: int, on_chunk: Any = None
    ) -> torch.Tensor:
        family = session.base.family
        parts = []
        for i in range(0, len(s), chunk):
            part = s.select(slice(i, i + chunk))
            with session.disabled():
                both = batch.concept.select(part.prompt % prompts).cat(batch.anchor.select(part.prompt))
                x, t = torch.cat([part.x_t, part.x_t]), torch.cat([part.t, part.t])
                eps_c, eps_a = family.noise.denoise(x, t, both).chunk(2)
            eta = batch.eta[part.prompt].to(eps_c).view(-1, *[1] * (eps_c.ndim - 1))
            parts.append(guided_target(eps_c, eps_a, eta))
            if on_chunk is not None:  # sample_pool's progress phase, as samples.guided_targets reports it
                on_chunk(len(part))
        return torch.cat(parts)

    samples.guided_targets = targets  # type: ignore[assignment]  # a variant by patching: issue 28 wants a hook
    try:
        yield
    finally:
        samples.guided_targets = own


@contextlib.contextmanager
def pooled_lora() -> Iterator[None]:
    """The MMDiT target kind widened to the pooled-text projection, its preservation inputs flattened per row."""
    from fmn_patch.families import mmdit
    from fmn_patch.methods import lora, steps

    kind = mmdit.MMDIT_TARGETS
    regex, compiled = kind.regex, kind._compiled
    wide = regex + r"|time_text_embed\.text_embedder\.linear_1"
    layers, preservation = mmdit.MMDiTAdapters.attention_layers, steps.preservation_loss

    def attention_layers(self: Any) -> list[str]:
        return [n for n in layers(self) if n.endswith("attn")]

    def preserve(
        session: Any,
        inputs: dict[str, torch.Tensor],
        device: torch.device,
        near: dict[str, torch.Tensor] | None = None,
        factor: float = 1.0,
    ) -> torch.Tensor:
        widths = {n: m.in_features for n, m in session.base.family.adapters.targets().items()}

        def flat(group: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {n: x.reshape(-1, widths[n]) for n, x in group.items()}

        return lora.preservation_loss(session, flat(inputs), device, near and flat(near), factor)

    object.__setattr__(kind, "regex", wide)
    object.__setattr__(kind, "_compiled", re.compile(wide))
    mmdit.MMDiTAdapters.attention_layers = attention_layers  # type: ignore[method-assign]
    steps.preservation_loss = preserve  # type: ignore[assignment]  # as above
    try:
        yield
    finally:
        object.__setattr__(kind, "regex", regex)
        object.__setattr__(kind, "_compiled", compiled)
        mmdit.MMDiTAdapters.attention_layers = layers  # type: ignore[method-assign]
        steps.preservation_loss = preservation


def run_variant(name: str, concept: str, extra: dict[str, Any]) -> dict[str, Any]:
    variant = VARIANTS[name]
    changes = {**dict(variant.changes), **extra}
    pipe = load_base("toy-sd3")
    world = make_world(pipe, concept, [1, 2], seeds=2)
    config = TrainConfig(robust_rounds=variant.rounds, **changes)
    own = robust.robust_rounds

    def patched_rounds(*args: Any) -> Any:
        return rounds(*args, variant=variant)  # type: ignore[misc]  # robust_rounds' 7 arguments

    with contextlib.ExitStack() as stack:
        if variant.pooled_lora:
            stack.enter_context(pooled_lora())
        robust.robust_rounds = patched_rounds  # type: ignore[assignment]  # train_patch imports it when it runs
        # train_patch refuses --robust on MMDiT (Family.require_robust): these are the rounds that refusal rests on
        family = pipe.family
        family.require_robust = lambda: None  # type: ignore[method-assign]
        stack.callback(delattr, family, "require_robust")
        stack.callback(setattr, robust, "robust_rounds", own)
        tick = time.perf_counter()
        patch = train_patch(pipe, [concept], config, progress=False)
        seconds = time.perf_counter() - tick
        apply_patches(pipe, [patch])
        scored = measure(pipe, name, concept, world, seconds, patch.info.extra["cost"]["samples"])
    return {
        "variant": name,
        "about": variant.about,
        "concept": concept,
        "changes": changes,
        **scores(scored),
    }


@torch.no_grad()
def pooled_probe(concept: str) -> dict[str, Any]:
    """Train the plain patch, learn the measuring Concept Inversion token against it, then draw the bench's prompts
    with text states and pooled embeddings taken from different prompts: the attack's, the name's, the anchor's."""
    from fmn_patch.attacks import InversionAttackConfig, reference_latents
    from fmn_patch.attacks.inversion import inversion_plan
    from fmn_patch.concepts.bench import load_bench
    from fmn_patch.evaluation.judges import load_judge
    from fmn_patch.evaluation.mscore import judged

    pipe = load_base("toy-sd3")
    bench = load_bench("toy")
    judge = load_judge(bench)
    c = bench.concept(concept)
    with torch.enable_grad():
        patch = train_patch(pipe, [concept], TrainConfig(), progress=False)
    apply_patches(pipe, [patch])
    attack = InversionAttackConfig()
    latents = reference_latents(pipe, c, bench, attack.images, steps=20, guidance=5.0)
    with torch.enable_grad():
        plan = inversion_plan(pipe, c, bench, latents, attack, 0)
    family = pipe.family
    assert plan.tokens is not None
    with family.text.added_tokens(plan.tokens.names, plan.tokens.embeddings):
        attacked = family.text.encode(plan.prompts)
    named = family.text.encode(bench.prompts(c))
    anchored = family.text.encode(bench.prompts(c, bench.anchor(c.category)))
    empty = family.text.encode([""] * len(named))
    kwargs = {k: v for k, v in family.images.sampler_kwargs().items() if k != "max_sequence_length"}

    def drawn(text: Conditioning, pooled: Conditioning) -> torch.Tensor:
        images = [
            pipe.pipe(
                prompt_embeds=text.states,
                pooled_prompt_embeds=_pooled(pooled),
                negative_prompt_embeds=empty.states,
                negative_pooled_prompt_embeds=_pooled(empty),
                num_inference_steps=20,
                guidance_scale=5.0,
                generator=[torch.Generator().manual_seed(seed) for _ in range(len(text))],
                output_type="pt",
                **kwargs,
            ).images.float()
            for seed in (0, 1)
        ]
        return torch.cat(images)

    rows = []
    conds = {"attack": attacked, "name": named, "anchor": anchored}
    for text, pooled in [
        ("attack", "attack"),
        ("attack", "anchor"),
        ("anchor", "attack"),
        ("name", "name"),
        ("name", "anchor"),
        ("anchor", "name"),
        ("anchor", "anchor"),
    ]:
        m_score, acc = judged(judge, drawn(conds[text], conds[pooled]), c)
        rows.append({"text": text, "pooled": pooled, "acc": acc, "m_score": round(m_score, 4)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"concept": concept, "images": 2 * len(named), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variant", nargs="?", choices=sorted(VARIANTS))
    parser.add_argument("--concept", default="circle")
    parser.add_argument(
        "--set", type=changes_of, default={}, help="TrainConfig fields over the variant's, as JSON"
    )
    parser.add_argument("--probe", choices=["pooled"], help="run a probe instead of a variant")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.list:
        for name, v in VARIANTS.items():
            print(f"{name:40s} {v.about}")
        return
    if (args.variant is None) == (args.probe is None):
        parser.error("give one variant (see --list) or --probe pooled")
    if args.variant is not None:
        try:
            TrainConfig(**{**dict(VARIANTS[args.variant].changes), **args.set})
        except FmnPatchError as e:
            parser.error(f"--set: {e}")
    torch.set_num_threads(args.threads)
    quiet_libraries()
    meta = machine() | {"command": "python bench/mmdit_robust.py " + shlex.join(sys.argv[1:])}
    if args.probe:
        key, result = "probes", pooled_probe(args.concept)
    else:
        key, result = "rows", run_variant(args.variant, args.concept, args.set)
        print(json.dumps(result))
    path = RESULTS / "mmdit_robust.json"  # read after the run: runs in parallel append, not overwrite
    record = json.loads(path.read_text()) if path.exists() else {"rows": [], "probes": []}
    record[key].append({"meta": meta, **result})
    write_json(path, record)
    write_markdown()


if __name__ == "__main__":
    main()
