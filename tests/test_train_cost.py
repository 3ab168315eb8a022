"""What a training step costs, and that the cheaper ways give the patch they promise.

- Gradient checkpointing recomputes the forward in backward: the same patch, bit for bit, with every attention layer
  run twice per step.
- A sample pool computes the base's guided targets once: the denoiser runs ceil(pool / batch) times before the first
  step and once per step after it, instead of twice per step; the pool's targets are the base's own (adapter off).
- ``train_size`` runs the steps on area-downsampled latents; a size that does not divide the base's is refused;
  a folder's images are encoded one at a time.
- A half-precision base trains float32 factors and writes the same patch format.
- ``micro_batch`` runs a batch in chunks whose gradients add up: the same loss and patch (to float rounding), with
  no denoiser pass holding more than a chunk.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import BaseMismatchWarning, apply_patches, remove_patches
from fmn_patch.format import Patch
from fmn_patch.methods.dataset import smaller
from fmn_patch.methods.lora import lora_adapter
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.methods.samples import guided_targets, sample_pool

FAST = dict(
    steps=3, images_per_prompt=1, image_steps=2, batch_size=2, bench="toy", seed=3, pool=0, init="zero"
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path_factory.getbasetemp() / "refcache"))


def _counting(monkeypatch, role, method: str) -> list[tuple]:
    calls: list[tuple] = []
    real = getattr(role, method)

    def counted(*args, **kwargs):
        calls.append(tuple(a.shape for a in args if isinstance(a, torch.Tensor)))
        return real(*args, **kwargs)

    monkeypatch.setattr(role, method, counted)
    return calls


def test_checkpointing_gives_the_same_patch_and_recomputes_the_forward(pipeline_dirs, monkeypatch):
    plain = load_base(str(pipeline_dirs["sd1"]))
    a = train_patch(plain, ["circle"], TrainConfig(**FAST), progress=False)
    pipe = load_base(str(pipeline_dirs["sd1"]))
    seen: list[str] = []
    real = pipe.family.noise.capture_attention

    def counting_capture(sink):  # every call the processors make, the recomputation in backward included
        return real(lambda name, probs: (seen.append(name), sink(name, probs)))

    monkeypatch.setattr(pipe.family.noise, "capture_attention", counting_capture)
    b = train_patch(pipe, ["circle"], TrainConfig(**{**FAST, "checkpointing": True}), progress=False)
    assert a.tensor_hash() == b.tensor_hash() and a.info.extra["loss_curve"] == b.info.extra["loss_curve"]
    layers = len(pipe.family.adapters.targets()) // 2
    # per step: the no-grad target passes (capture on, nothing recorded), the forward, its recomputation
    assert len(seen) == FAST["steps"] * 3 * layers
    assert not pipe.family.adapters.denoiser.is_gradient_checkpointing  # the denoiser's own setting is back


@pytest.mark.parametrize("micro", [1, 3])
def test_micro_batches_add_up_to_the_whole_batch(pipeline_dirs, monkeypatch, micro):
    config = TrainConfig(**FAST | {"batch_size": 4, "micro_batch": 4})
    whole = train_patch(load_base(str(pipeline_dirs["sd1"])), ["circle"], config, progress=False)
    pipe = load_base(str(pipeline_dirs["sd1"]))
    real, passes = pipe.family.noise.denoise, []

    def counted(x_t, *args, **kwargs):
        passes.append(
            (len(x_t), torch.is_grad_enabled())
        )  # the guided target's no-grad passes hold two halves
        return real(x_t, *args, **kwargs)

    monkeypatch.setattr(pipe.family.noise, "denoise", counted)
    chunked = train_patch(pipe, ["circle"], dataclasses.replace(config, micro_batch=micro), progress=False)
    trained = [n for n, grad in passes if grad]
    assert trained == [micro, 4 - micro] * 3 if micro == 3 else [1] * 12  # 4 = 3 + 1: unequal shares
    assert max(n for n, grad in passes if not grad) == 2 * micro
    assert chunked.info.extra["loss_curve"] == pytest.approx(whole.info.extra["loss_curve"], rel=1e-5)
    assert chunked.info.extra["loss_terms"] == pytest.approx(whole.info.extra["loss_terms"], rel=1e-5)
    for name in whole.modules:
        torch.testing.assert_close(chunked.delta(name), whole.delta(name), rtol=1e-4, atol=1e-5)
    with pytest.raises(FmnPatchError, match="micro_batch"):
        TrainConfig(micro_batch=0)


def test_a_pool_computes_the_targets_once(pipeline_dirs, monkeypatch):
    pipe = load_base(str(pipeline_dirs["sd1"]))
    fresh = _counting(monkeypatch, pipe.family.noise, "denoise")
    train_patch(pipe, ["circle"], TrainConfig(**FAST), progress=False)
    # per step: concept + anchor together (no grad), then the trained one
    assert len(fresh) == 2 * FAST["steps"]
    pipe = load_base(str(pipeline_dirs["sd1"]))
    pooled = _counting(monkeypatch, pipe.family.noise, "denoise")
    config = TrainConfig(**{**FAST, "steps": 6, "pool": 5})
    a = train_patch(pipe, ["circle"], config, progress=False)
    assert len(pooled) == math.ceil(5 / FAST["batch_size"]) + 6
    assert [s[0][0] for s in pooled[:3]] == [4, 4, 2]  # two samples' concept + anchor, the last one alone
    b = train_patch(load_base(str(pipeline_dirs["sd1"])), ["circle"], config, progress=False)
    assert a.tensor_hash() == b.tensor_hash()
    pipe = load_base(str(pipeline_dirs["sd1"]))
    capped = _counting(monkeypatch, pipe.family.noise, "denoise")
    train_patch(pipe, ["circle"], dataclasses.replace(config, pool=1000), progress=False)
    assert len(capped) == 6 + 6  # never more targets than the steps draw: 6 steps x 2 = 12 samples, 6 chunks
    bigger = dataclasses.replace(config, pool=6)
    other = train_patch(load_base(str(pipeline_dirs["sd1"])), ["circle"], bigger, progress=False)
    assert other.tensor_hash() != a.tensor_hash()


def test_pool_targets_are_the_bases_own_whatever_the_adapter(sd1):
    from fmn_patch.concepts.bench import load_bench
    from fmn_patch.concepts.prompts import plan, resolve
    from fmn_patch.methods.resteer import prepare

    bench = load_bench("toy")
    config = TrainConfig(**FAST)
    batch, _ = prepare(
        sd1, [plan(c, bench, None) for c in resolve(["circle"], bench, None)], bench, config, None
    )
    with lora_adapter(sd1, 2, seed=0) as session:
        pool = sample_pool(session, batch, 3, seed=1, chunk=2, targets=True)
        for p in session.params:  # an adapter far from zero must not change the targets
            p.data.normal_(0, 1.0)
        again = guided_targets(session, batch, pool, chunk=3)
        assert pool.target is not None and torch.allclose(pool.target, again, atol=1e-5)
        cond = batch.concept.select(pool.prompt)
        patched = sd1.family.noise.denoise(pool.x_t, pool.t, cond)
        with session.disabled():
            own = sd1.family.noise.denoise(pool.x_t, pool.t, cond)
        assert not torch.allclose(patched, own, atol=1e-3)  # the adapter does change the prediction


@settings(max_examples=25, deadline=None)
@given(
    side=st.sampled_from([8, 16, 32]),
    factor=st.sampled_from([1, 2, 3, 4, 8]),
    channels=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_smaller_averages_whole_blocks(side, factor, channels, seed):
    latents = torch.randn(3, channels, side, side, generator=torch.Generator().manual_seed(seed))
    pixels = side * 8
    if side % factor:
        with pytest.raises(FmnPatchError, match="train_size"):
            smaller(latents, pixels, pixels // factor)
        return
    small = smaller(latents, pixels, pixels // factor)
    assert small.shape == (3, channels, side // factor, side // factor)
    i, j = seed % (side // factor), (seed // 7) % (side // factor)
    block = latents[:, :, i * factor : (i + 1) * factor, j * factor : (j + 1) * factor]
    torch.testing.assert_close(small[:, :, i, j], block.mean((-1, -2)))
    assert smaller(latents, pixels, None) is latents and smaller(latents, pixels, pixels * 2) is latents


def test_train_size_runs_the_steps_smaller_and_refuses_a_bad_size(sd1, monkeypatch):
    shapes = _counting(monkeypatch, sd1.family.noise, "denoise")
    side = sd1.family.images.pixel_size()
    train_patch(sd1, ["circle"], TrainConfig(**{**FAST, "train_size": side // 2}), progress=False)
    full = sd1.family.adapters.denoiser.config.sample_size
    assert {s[0][-1] for s in shapes} == {full // 2}
    with pytest.raises(FmnPatchError, match=r"train_size=24 must divide the base's image side"):
        train_patch(sd1, ["circle"], TrainConfig(**{**FAST, "train_size": 24}), progress=False)
    with pytest.raises(FmnPatchError, match="train_size=4"):
        TrainConfig(train_size=4)
    with pytest.raises(FmnPatchError, match="pool=-1"):
        TrainConfig(pool=-1)


def test_bfloat16_base_trains_float32_factors_in_the_same_format(pipeline_dirs, tmp_path):
    half = load_base(str(pipeline_dirs["sd1"]), dtype="bfloat16")
    assert half.family.adapters.dtype == torch.bfloat16
    with lora_adapter(half, 2, seed=0) as session:
        assert session.params and {p.dtype for p in session.params} == {torch.float32}
        assert {p.dtype for n, p in half.family.adapters.denoiser.named_parameters() if "lora_" not in n} == {
            torch.bfloat16
        }
    patch = train_patch(half, ["circle"], TrainConfig(**{**FAST, "pool": 4}), progress=False)
    assert all(a.dtype == b.dtype == torch.float32 for a, b in patch.factors.values())
    full = train_patch(load_base(str(pipeline_dirs["sd1"])), ["circle"], TrainConfig(**FAST), progress=False)
    assert set(patch.factors) == set(full.factors)
    assert {m: (a.shape, b.shape) for m, (a, b) in patch.factors.items()} == {
        m: (a.shape, b.shape) for m, (a, b) in full.factors.items()
    }
    assert all(torch.isfinite(b).all() for _, b in patch.factors.values())
    assert any(b.abs().max() > 0 for _, b in patch.factors.values())  # it trained
    path = patch.save(tmp_path / "half.safetensors")
    loaded = Patch.load(path)
    assert loaded.tensor_hash() == patch.tensor_hash() and loaded.info.method == "resteer"
    remove_patches(half, apply_patches(half, [loaded]))
    full_pipe = load_base(str(pipeline_dirs["sd1"]))
    # the header's target hash is of the stored float32 weights the bf16 base was loaded from: the same files in
    # float32 take the patch without a base-mismatch warning
    assert loaded.info.base_hash == full_pipe.family.identity.target_hash()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseMismatchWarning)
        remove_patches(full_pipe, apply_patches(full_pipe, [loaded]))


def test_train_cli_with_bfloat16(capsys, pipeline_dirs, tmp_path):
    import json

    from test_cli import run

    out = tmp_path / "half.safetensors"
    args = ["train", "circle", "--base", str(pipeline_dirs["sd1"]), "--steps", "2", "--batch-size", "2"]
    code, stdout, err = run(capsys, *args, "--bench", "toy", "--dtype", "bfloat16", "-o", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["output"] == str(out)
    assert {a.dtype for f in Patch.load(out).factors.values() for a in f} == {torch.float32}


def test_training_starts_from_the_edit_where_the_family_offers_it(sd1, monkeypatch):
    import fmn_patch.methods.resteer as resteer

    edits: list[int] = []
    real = resteer.start_factors
    monkeypatch.setattr(resteer, "start_factors", lambda *a: edits.append(1) or real(*a))
    auto = train_patch(sd1, ["circle"], TrainConfig(**{**FAST, "init": "auto"}), progress=False)
    assert edits == [1] and auto.info.extra["start"] == "edit"
    zero = train_patch(sd1, ["circle"], TrainConfig(**{**FAST, "init": "zero"}), progress=False)
    assert edits == [1] and zero.info.extra["start"] == "zero"
    # --robust under auto starts from zero (from the edit it held less well); an explicit edit start is kept
    robust = {**FAST, "init": "auto", "robust_rounds": 2, "robust_attack_steps": 1, "robust_attack_batch": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the zero-start warning is for families without the edit, not this
        assert (
            train_patch(sd1, ["circle"], TrainConfig(**robust), progress=False).info.extra["start"] == "zero"
        )
    assert edits == [1]
    edited = train_patch(sd1, ["circle"], TrainConfig(**{**robust, "init": "edit"}), progress=False)
    assert edits == [1, 1] and edited.info.extra["start"] == "edit"
    with pytest.raises(FmnPatchError, match="init='closed' is not one of auto, zero, edit"):
        TrainConfig(init="closed")  # type: ignore[arg-type]


def test_kv_inversion_needs_no_denoiser_and_finds_the_concepts_keys(sd1, monkeypatch):
    """The robust rounds' cheaper inner attack (``robust_attack="kv"``): a token whose keys/values through the
    patch match the base's for the concept's own prompts.
    It runs the text encoder and the projections only, and lowers its loss."""
    from fmn_patch.concepts.bench import load_bench
    from fmn_patch.concepts.prompts import plan, resolve
    from fmn_patch.methods.kv_attack import kv_inversion

    bench = load_bench("toy")
    (pl,) = [plan(c, bench, None) for c in resolve(["circle"], bench, None)]
    patch = train_patch(sd1, ["circle"], TrainConfig(**FAST), progress=False)
    reference = sd1.family.text.encode(list(pl.prompts))
    denoised = _counting(monkeypatch, sd1.family.noise, "denoise")
    with lora_adapter(sd1, 4, seed=0, start=dict(patch.factors)) as session:
        found = kv_inversion(session, pl, reference, "<adv>", pl.anchor, steps=30, lr=5e-2, seed=0)
    assert denoised == []
    assert found.embeddings.shape[0] == max(1, len(sd1.family.text.token_ids("circle")))
    assert len(found.losses) == 30 and found.losses[-1] < 0.5 * found.losses[0]
    assert "<adv>" not in sd1.pipe.tokenizer.get_vocab()  # the token is gone again


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    vocab=st.integers(2, 60),
    count=st.integers(1, 4),
    length=st.integers(1, 20),
)
def test_kv_inversion_reads_the_same_new_rows_from_a_sparse_table_gradient(seed, vocab, count, length):
    """kv inversion grows the table with a sparse gradient (only the rows a prompt used, not the whole vocabulary):
    the new rows' gradient is the dense table's, repeated tokens summed."""
    from fmn_patch.methods.inversion import _new_rows

    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab + count, 8, generator=gen)
    ids = torch.randint(vocab + count, (2, length), generator=gen)
    upstream = torch.randn(2, length, 8, generator=gen)
    grads = []
    for sparse in (False, True):
        table = torch.nn.Embedding(vocab + count, 8, _weight=weight.clone(), sparse=sparse)
        (table(ids) * upstream).sum().backward()
        assert table.weight.grad is not None and table.weight.grad.is_sparse == sparse
        grads.append(_new_rows(table.weight.grad, vocab, count))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-6)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 40), scale=st.floats(1e-3, 10.0))
def test_preservation_through_the_rank_is_the_mean_square_of_the_change(sd1, seed, rows, scale):
    """The preservation term never builds the (M, out) change of the preserve set (gigabytes at SD-1.5 size): its
    value and gradient are those of the change's mean square."""
    gen = torch.Generator().manual_seed(seed)
    with lora_adapter(sd1, 3, seed=seed) as session:
        for m in session.modules.values():
            for name, p in m.named_parameters():
                if "lora_" in name:
                    with torch.no_grad():
                        p.copy_(torch.randn(p.shape, generator=gen) * scale)
        name = sorted(session.modules)[seed % len(session.modules)]
        x = torch.randn(rows, session.modules[name].in_features, generator=gen)
        cheap = session.delta_square_mean(name, x)
        (g_cheap,) = torch.autograd.grad(cheap, session.modules[name].lora_B["fmn_train"].weight)
        full = session.delta(name, x).square().mean()
        (g_full,) = torch.autograd.grad(full, session.modules[name].lora_B["fmn_train"].weight)
    # float32 sums in another order: relative to the largest entry (a gradient entry near 0 differs by ~1e-7)
    torch.testing.assert_close(cheap, full, rtol=1e-4, atol=1e-6 * float(full.abs()))
    torch.testing.assert_close(g_cheap, g_full, rtol=1e-4, atol=1e-5 * float(g_full.abs().max()))


def test_textual_inversion_optimises_the_new_rows_alone(sd1, monkeypatch):
    """Concept Inversion, --ti and --robust's inner attack: the optimiser holds the new rows (count, d), never the
    whole table (CLIP-L: 49,408 rows, 150 MB per copy of its gradient or moments), and the table comes back."""
    import fmn_patch.methods.loop as loop
    from fmn_patch.methods.inversion import InversionConfig, learn_tokens

    shapes: list[list[torch.Size]] = []
    real = torch.optim.AdamW

    def recording(params, **kw):
        params = list(params)
        shapes.append([p.shape for p in params])
        return real(params, **kw)

    monkeypatch.setattr(loop.torch.optim, "AdamW", recording)
    table = sd1.family.text.token_table().detach().clone()
    unet = sd1.pipe.unet.config
    latents = torch.randn(
        3, unet.in_channels, unet.sample_size, unet.sample_size, generator=torch.Generator()
    )
    config = InversionConfig(num_tokens=2, steps=3, batch_size=2, template="a {}", seed=0)
    learned = learn_tokens(sd1, latents, "<t>", "circle", config, progress=False)
    assert shapes == [[torch.Size([2, table.shape[1]])]]
    assert learned.embeddings.shape == (2, table.shape[1]) and len(learned.losses) == 3
    assert torch.equal(sd1.family.text.token_table(), table)  # the tokens are gone, the old rows untouched
    again = learn_tokens(sd1, latents, "<t>", "circle", config, progress=False)
    assert torch.equal(again.embeddings, learned.embeddings)  # same inputs and seed, same tensors


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 20), near=st.integers(1, 20), factor=st.integers(1, 5)
)
def test_a_neighbour_row_counts_as_factor_copies_of_itself(sd1, seed, rows, near, factor):
    """The neighbours' preservation rows, kept apart and weighted ``factor`` times, give the term the rows would give
    written out ``factor`` times among the others: the same value, hence the same gradient."""
    from fmn_patch.methods.lora import preservation_loss

    gen = torch.Generator().manual_seed(seed)
    with lora_adapter(sd1, 2, seed=seed) as session:
        for m in session.modules.values():
            with torch.no_grad():
                m.lora_B["fmn_train"].weight.copy_(
                    torch.randn(m.lora_B["fmn_train"].weight.shape, generator=gen)
                )
        width = next(iter(session.modules.values())).in_features
        x = torch.randn(rows, width, generator=gen)
        y = torch.randn(near, width, generator=gen)
        apart = preservation_loss(session, x, torch.device("cpu"), y, float(factor))
        written = preservation_loss(session, torch.cat([x, *[y] * factor]), torch.device("cpu"))
        alone = preservation_loss(session, x, torch.device("cpu"), y, 0.0)
        torch.testing.assert_close(apart, written, rtol=1e-5, atol=0.0)
        torch.testing.assert_close(
            alone, preservation_loss(session, x, torch.device("cpu")), rtol=0.0, atol=0.0
        )
