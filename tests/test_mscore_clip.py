"""The CLIP zero-shot judge's plumbing, with a tiny random CLIP model built from a config (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.judges import ClipJudge, class_index, concept_probs
from fmn_patch.evaluation.mscore import judged
from fmn_patch.toy.vocab import build_tokenizer


def tiny_clip_judge(tmp_path: Path) -> ClipJudge:
    tokenizer = build_tokenizer(tmp_path)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tokenizer.model_max_length = 64
    return ClipJudge(
        model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer), load_bench("real")
    )


def test_clip_judge_returns_a_distribution_per_category(tmp_path: Path) -> None:
    judge = tiny_clip_judge(tmp_path)
    images = torch.rand(3, 3, 48, 48)
    bench = judge.bench
    for category in ("object", "style", "identity"):
        probs = judge.category_probs(images, category)
        assert probs.shape == (3, len(bench.of_category(category)))
        assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)
    p = concept_probs(judge, images, bench.concept("Van Gogh"))
    m, acc = judged(judge, images, bench.concept("Van Gogh"))
    probs = judge.category_probs(images, "style")
    index = class_index(judge, bench.concept("Van Gogh"))
    assert p.shape == (3,) and torch.equal(p, probs[:, index])
    assert m == pytest.approx(float(probs[:, index].mean()))
    assert acc == pytest.approx(float((probs.argmax(-1) == index).float().mean()))
