"""Can the toy model's size and recipe learn the v2 world? Judge a pilot v2 pipeline concept by concept.

    python -m fmn_patch.toy.train --out /tmp/v2 [--max-minutes M]              # the pilot model
    python bench/toy_v2_resolution.py --size 32 --save /tmp/judge_v2.safetensors  # the v2 judge
    python bench/toy_v2_pilot.py --pipeline /tmp/v2 --judge /tmp/judge_v2.safetensors

Generates every identity as "{name} in {colour}", every object as "a {colour} {object}" and every style as
"a {colour} {style} {object}" over four objects, with the card's sampler (DDIM 20 steps, guidance 5), and judges
them with the v2 heads: an identity counts when "person" and all four attributes are right. The card's bar for v2
is every concept >= 90%. Adds its row to bench/results/toy_v2_pilot.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from toy_v2_resolution import scores, targets  # noqa: E402  (a sibling script module)

from fmn_patch.evaluation.mscore import SamplerConfig, generate  # noqa: E402
from fmn_patch.toy import world  # noqa: E402
from fmn_patch.toy.judge import TOY_HEADS, ToyJudgeNet, identity_probs  # noqa: E402
from fmn_patch.toy.train_judge import reconstruct, to_unit  # noqa: E402

NAME = "toy_v2_pilot"
BAR = 0.9
STYLE_OBJECTS = ("square", "circle", "diamond", "heart")
#: The picture's rows: v1 and v2 objects, v1's two people, and a v2 person with neighbours (6 seeds each).
GRID_PROMPTS = (
    "a red square",
    "a blue star",
    "a green circle",
    "a yellow hourglass",
    "bob in red",
    "alice in blue",
    "tabor in green",
    "mober in yellow",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", type=Path, required=True, help="a v2 toy pipeline folder")
    parser.add_argument(
        "--judge", type=Path, required=True, help="v2 judge weights (toy_v2_resolution --save)"
    )
    parser.add_argument("--seeds", type=int, default=2, help="images per prompt (default 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="what the pilot model is (its training command)")
    args = parser.parse_args()
    if args.seeds < 1 or args.threads < 1:
        parser.error("--seeds and --threads take 1 or more")
    if not (args.pipeline / "model_index.json").is_file():
        parser.error(
            f"--pipeline {args.pipeline}: no model_index.json; train one with fmn_patch.toy.train first"
        )
    if not args.judge.is_file():
        parser.error(f"--judge {args.judge}: no such file; make it with bench/toy_v2_resolution.py --save")
    from diffusers import StableDiffusionPipeline
    from record import machine, write_json  # bench/record.py: provenance
    from render import write_markdown

    torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    with torch.device("meta"):
        net = ToyJudgeNet(size=32)
    net.load_state_dict(load_file(str(args.judge)), assign=True)
    net.eval()
    sampler = SamplerConfig(20, 5.0, tuple(range(args.seeds)), 64)
    t0 = time.perf_counter()

    def judged(prompts: list[str]) -> dict[str, torch.Tensor]:
        images = generate(pipe, prompts, sampler, desc="pilot")
        with torch.no_grad():
            logits = [net(images[i : i + 256]) for i in range(0, len(images), 256)]
        return {h: torch.cat([part[h] for part in logits]).softmax(-1) for h in TOY_HEADS}

    colours = world.COLOURS
    per: dict[str, dict[str, float]] = {"identity": {}, "object": {}, "style": {}}
    probs = judged([f"{name} in {c}" for name in world.IDENTITIES for c in colours])
    hits = identity_probs(probs).argmax(-1).view(len(world.IDENTITIES), -1)  # (identities, colours x seeds)
    attribute_hits: dict[str, list[float]] = {head: [] for head in world.ATTRIBUTES}
    for i, name in enumerate(world.IDENTITIES):
        per["identity"][name] = float((hits[i] == i).float().mean())
        rows = slice(i * len(colours) * args.seeds, (i + 1) * len(colours) * args.seeds)
        for head, value in zip(world.ATTRIBUTES, world.LOOKS[name].values(), strict=True):
            right = probs[head][rows].argmax(-1) == world.ATTRIBUTES[head].index(value)
            attribute_hits[head].append(float(right.float().mean()))
    probs = judged([f"a {c} {o}" for o in world.OBJECTS for c in colours])
    subject = probs["subject"].argmax(-1).view(len(world.OBJECTS), -1)
    for i, name in enumerate(world.OBJECTS):
        per["object"][name] = float((subject[i] == i).float().mean())
    styles = [s for s in world.STYLES if s != "plain"]
    probs = judged([f"a {c} {s} {o}" for s in styles for o in STYLE_OBJECTS for c in colours])
    style = probs["style"].argmax(-1).view(len(styles), -1)
    for i, name in enumerate(styles):
        per["style"][name] = float((style[i] == world.STYLES.index(name)).float().mean())
    picture = generate(pipe, list(GRID_PROMPTS), SamplerConfig(20, 5.0, tuple(range(6)), 64), progress=False)
    grid = picture.view(len(GRID_PROMPTS), 6, 3, 32, 32).permute(0, 3, 1, 4, 2).reshape(-1, 6 * 32, 3)
    big = (6 * 128, len(GRID_PROMPTS) * 128)  # each pixel a 4 x 4 block, as drawn
    image = Image.fromarray((grid.numpy() * 255).round().astype(np.uint8))
    image.resize(big, Image.Resampling.NEAREST).save(HERE / "results" / f"{NAME}.png")
    # the judge on held-out renders passed through the pilot's own VAE: what the decoder alone keeps of each head
    test_images, test_labels = world.dataset(2_000, 1001)
    x_test = to_unit(test_images)
    vae_scores = scores(net, reconstruct(pipe.vae, x_test), targets(test_labels), test_labels)
    row: dict[str, Any] = {
        "pipeline": str(args.pipeline),
        "vae": vae_scores,
        "note": args.note,
        "seeds": args.seeds,
        "seconds": round(time.perf_counter() - t0, 1),
        "summary": {
            cat: {
                "mean": sum(v.values()) / len(v),
                "min": min(v.values()),
                "at_bar": sum(x >= BAR for x in v.values()),
                "concepts": len(v),
            }
            for cat, v in per.items()
        },
        "attributes": {head: sum(v) / len(v) for head, v in attribute_hits.items()},
        "concepts": per,
        "meta": machine() | {"command": "python bench/toy_v2_pilot.py " + shlex.join(sys.argv[1:])},
    }
    print(json.dumps({k: row[k] for k in ("summary", "attributes", "vae", "seconds")}, indent=2), flush=True)
    out = HERE / "results" / f"{NAME}.json"
    record = json.loads(out.read_text()) if out.exists() else {"rows": []}
    record["rows"].append(row)
    write_json(out, record)
    write_markdown()


def pilot_section(read: Any, provenance: Any) -> list[str]:
    """BENCHMARKS.md's section, from bench/results/toy_v2_pilot.json."""
    record = read(NAME)
    if not record:
        return []
    lines = [
        "## ConceptBench-toy v2: can a pilot model draw it?",
        "",
        "A v2 pipeline judged concept by concept (`bench/toy_v2_pilot.py`): identities as '{name} in {colour}'",
        "(all four attributes and 'person' right), objects as 'a {colour} {object}', styles as",
        f"'a {{colour}} {{style}} {{object}}' over {', '.join(STYLE_OBJECTS)}. The card's bar is every concept",
        f">= {BAR:.0%}. The last column judges 2,000 held-out renders passed through the pilot's own VAE: what",
        "its decoder alone keeps.",
        "",
        "| pilot | identities: mean / min / at bar | objects | styles | hair | headwear | face | top | "
        "identity through its VAE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        s, a = row["summary"], row["attributes"]

        def cell(cat: str, s: dict[str, Any] = s) -> str:
            c = s[cat]
            return f"{c['mean']:.1%} / {c['min']:.0%} / {c['at_bar']} of {c['concepts']}"

        lines.append(
            f"| {row['note'] or row['pipeline']} | {cell('identity')} | {cell('object')} | {cell('style')} | "
            f"{a['hair']:.1%} | {a['headwear']:.1%} | {a['face']:.1%} | {a['top']:.1%} | "
            f"{row['vae']['identity']:.1%} |"
        )
    lines += [
        "",
        f"The last pilot's samples, 6 seeds a row ({'; '.join(GRID_PROMPTS)}):",
        "",
        f"![v2 pilot samples](bench/results/{NAME}.png)",
        "",
    ]
    for row in record["rows"]:
        m = row["meta"]
        lines.append(
            f"- `{m['command']}`, {m['date']}, {m['machine']}, git {m['git_revision']}: {row['seconds']:.0f} s."
        )
    lines.append("")
    return lines


if __name__ == "__main__":
    main()
