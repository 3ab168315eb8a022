"""``rank="auto"``: the smallest rank per layer within a residual target, for edits and merges."""

from __future__ import annotations

import json
import math

import pytest
import safetensors
import torch
from conftest import random_patch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmn_patch.cli.app import main
from fmn_patch.concepts.bench import load_bench
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import apply_patches
from fmn_patch.format import Patch
from fmn_patch.format.lowrank import (
    MAX_RESIDUAL,
    factorize,
    factorize_products,
    factorize_products_within,
    rank_for,
    spectra_of_products,
    spectrum,
)
from fmn_patch.format.merge import merge_patches
from fmn_patch.methods.edit import EditConfig, edit_patch, edit_patches
from fmn_patch.values import MAX_RANK


def _relative(s: list[float], rank: int, outside: float) -> float:
    """The brute-force relative residual of the truncation to ``rank``."""
    total = math.fsum(x * x for x in s) + outside
    return math.sqrt((math.fsum(x * x for x in s[rank:]) + outside) / total)


spectra = st.lists(st.floats(0, 1e6, allow_nan=False), min_size=0, max_size=40).map(
    lambda xs: sorted(xs, reverse=True)
)


@settings(max_examples=300, deadline=None)
@given(spectra, st.floats(1e-6, 1 - 1e-6), st.one_of(st.just(0.0), st.floats(0, 1e6)))
def test_rank_for_is_the_smallest_rank_within_the_target(s, target, outside):
    r = rank_for(s, target, outside)
    assert 0 <= r <= len(s)
    if math.fsum(x * x for x in s) + outside == 0:
        assert r == 0
        return
    slack = 1e-9
    if _relative(s, r, outside) <= target * (1 + slack):  # r is within the target ...
        assert r == 0 or _relative(s, r - 1, outside) > target * (1 - slack)  # ... and one less is not
    else:  # no rank reaches it (the energy outside the spectrum is too large): all of it
        assert r == len(s) and _relative(s, len(s), outside) > target * (1 - slack)


def test_rank_for_takes_a_tensor_and_counts_the_energy_outside():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])
    # relative residuals at ranks 0 .. 4: 1, 0.497, 0.243, 0.108, 0
    assert [rank_for(s, t) for t in (0.999, 0.5, 0.3, 0.2, 0.1)] == [1, 1, 2, 3, 4]
    assert rank_for(s, 0.3, outside=1.0) == 3  # what lies outside the spectrum counts in the residual
    assert rank_for(s, 0.2, outside=1.0) == 4  # out of reach: all of it
    assert rank_for([], 0.5) == 0 and rank_for([0.0, 0.0], 0.5) == 0


def _low_rank_products(seed: int = 0):
    """Three layers of different widths whose deltas W P have decaying spectra."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(96, 96, generator=g, dtype=torch.float64))[0]
    p = u @ torch.diag(0.8 ** torch.arange(96, dtype=torch.float64)) @ u.T  # (in, in), spectrum 0.8^j
    ws = [torch.randn(out, 96, generator=g, dtype=torch.float64) for out in (40, 96, 160)]
    return ws, p


def test_spectra_give_the_fixed_rank_factors():
    ws, p = _low_rank_products()
    for sp, fixed in zip(spectra_of_products(ws, p, 12), factorize_products(ws, p, 12), strict=True):
        a, b, res, total = sp.factors(12)
        assert torch.equal(a, fixed[0]) and torch.equal(b, fixed[1]) and (res, total) == fixed[2:]
    d = ws[1] @ p
    full = spectrum(d, 8, exact=True)
    assert full.outside == 0 and full.s.numel() == 96
    assert math.isclose(full.residual(5), factorize(d, 5, exact=True)[2], rel_tol=1e-9)


def test_products_within_meet_the_target_at_the_smallest_rank():
    ws, p = _low_rank_products()
    for target in (0.3, 0.1, 0.03):
        for w, (a, _, res, total) in zip(ws, factorize_products_within(ws, p, target, cap=40), strict=True):
            d = w @ p
            r = a.shape[0]
            exact = factorize(d, r, exact=True)
            measured = math.sqrt(exact[2] / exact[3])
            assert measured <= target * 1.05 and math.sqrt(res / total) <= target  # estimate and truth
            below = factorize(d, r - 1, exact=True) if r > 1 else None
            assert below is None or math.sqrt(below[2] / below[3]) > target * 0.95  # one less is not enough


@pytest.mark.parametrize("exact", [True, False])
def test_spectrum_of_a_formed_delta_reports_what_it_misses(exact):
    ws, p = _low_rank_products()
    d = (ws[2] @ p).float()
    sp = spectrum(d, 10, exact=exact)
    assert math.isclose(sp.total, float(d.double().square().sum()), rel_tol=1e-5)
    a, b, res, _ = sp.factors(10)
    assert a.dtype == torch.float32
    assert math.isclose(res, float((d.double() - b.double() @ a.double()).square().sum()), rel_tol=1e-3)


# ------------------------------------------------------------------------------------------- edits and merges
TARGET = 0.1


@pytest.fixture(scope="module")
def toy():
    return load_base("toy")


@pytest.fixture(scope="module")
def toy_names(toy) -> list[str]:
    return [c.name for c in load_bench(toy.bench).concepts]


def _worst(patch: Patch) -> float:
    return max(patch.info.extra["residuals"].values())


def _truth(patch: Patch, reference: Patch) -> dict[str, float]:
    """Each module's ||D - B A|| / ||D||, with D the (full-rank) reference patch's delta."""
    return {
        m: float((reference.delta(m) - patch.delta(m)).norm() / reference.delta(m).norm())
        for m in patch.modules
    }


def test_auto_edit_meets_its_target_per_layer_at_the_smallest_size(toy, toy_names, tmp_path):
    auto = edit_patch(toy, toy_names, config=EditConfig(rank="auto", max_residual=TARGET))
    full = edit_patch(toy, toy_names, config=EditConfig(rank=MAX_RANK))  # every layer exact: the delta itself
    assert len(set(auto.ranks.values())) > 1  # the layers need different ranks
    assert all(r <= TARGET for r in auto.info.extra["residuals"].values())
    assert all(r <= TARGET + 1e-5 for r in _truth(auto, full).values())
    top = max(auto.ranks.values())  # the smallest fixed rank with the same worst residual ...
    fixed = edit_patch(toy, toy_names, config=EditConfig(rank=top))
    below = edit_patch(toy, toy_names, config=EditConfig(rank=top - 1))
    assert _worst(fixed) <= TARGET < _worst(below)
    assert auto.num_parameters() < fixed.num_parameters()  # ... is larger
    auto_file, fixed_file = (
        auto.save(tmp_path / "auto.safetensors"),
        fixed.save(tmp_path / "fixed.safetensors"),
    )
    assert auto_file.stat().st_size < fixed_file.stat().st_size
    assert auto.info.config["rank"] == "auto" and auto.info.config["max_residual"] == TARGET


def test_auto_edit_ranks_round_trip_through_the_file(toy, toy_names, tmp_path):
    patch = edit_patch(toy, toy_names[:5], config=EditConfig(rank="auto", max_residual=0.05))
    path = patch.save(tmp_path / "p.safetensors")
    loaded = Patch.load(path)
    assert loaded.ranks == patch.ranks and loaded.tensor_hash() == patch.tensor_hash() and loaded.verified
    header = safetensors.safe_open(str(path), "pt").metadata()
    assert json.loads(header["fmn_patch.ranks"]) == patch.ranks
    assert int(header["fmn_patch.rank"]) == max(patch.ranks.values())
    config = json.loads(header["lora_adapter_metadata"])
    assert config["unet.rank_pattern"] == config["unet.alpha_pattern"] == patch.ranks
    assert loaded.info.config["rank"] == "auto"


def test_auto_patch_loads_in_stock_diffusers_to_the_same_delta(pipeline_dirs, tmp_path):
    folder = str(pipeline_dirs["sd1"])
    sd1 = load_base(folder)
    patch = edit_patch(
        sd1, ["circle", "bob"], config=EditConfig(rank="auto", max_residual=0.05), category="object"
    )
    assert len(set(patch.ranks.values())) > 1
    path = patch.save(tmp_path / "p.safetensors")
    base = {name: layer.weight.detach().clone() for name, layer in sd1.family.adapters.targets().items()}
    stock = load_base(folder)  # stock diffusers: load_lora_weights, then fuse into the weights
    stock.pipe.load_lora_weights(str(path))
    stock.pipe.fuse_lora(components=["unet"])
    ours = load_base(folder)  # the package's apply path (load_lora_weights with the header's LoraConfig)
    apply_patches(ours, [Patch.load(path)])
    x = torch.randn(3, next(iter(base.values())).shape[1], generator=torch.Generator().manual_seed(0))
    for name, layer in stock.family.adapters.targets().items():
        expected = base[name] + patch.delta(name)
        torch.testing.assert_close(layer.weight.detach(), expected, rtol=0, atol=1e-5)
        ours_layer = ours.pipe.unet.get_submodule(name)
        torch.testing.assert_close(ours_layer(x), x @ expected.T, rtol=0, atol=1e-5)


def test_auto_merge_meets_its_target_at_the_smallest_size(sd1):
    parents = [random_patch(sd1, rank=4, seed=s) for s in (1, 2, 3)]
    weights = [1.0, 0.5, 0.8]
    auto, report = merge_patches(parents, weights, rank="auto", max_residual=0.25)
    exact, _ = merge_patches(parents, weights)
    assert all(r <= 0.25 for r in report.residuals.values())
    assert all(r <= 0.25 + 1e-5 for r in _truth(auto, exact).values())
    assert max(auto.ranks.values()) < exact.rank == 12
    top = max(auto.ranks.values())
    fixed, fixed_report = merge_patches(parents, weights, rank=top)
    _, below = merge_patches(parents, weights, rank=top - 1)
    assert max(fixed_report.residuals.values()) <= 0.25 < max(below.residuals.values())
    assert auto.num_parameters() <= fixed.num_parameters()
    assert auto.info.config["rank"] == "auto" and auto.info.config["max_residual"] == 0.25
    lossless, report = merge_patches(parents, weights, rank="auto", max_residual=1e-6)
    assert report.total < 1e-5 and max(lossless.ranks.values()) <= 12  # never above the parents' sum


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: EditConfig(rank="bogus"), "rank='bogus' must be a whole number from 1 to 4096 or 'auto'"),
        (lambda: EditConfig(rank=0), "rank=0"),
        (
            lambda: EditConfig(rank="auto", max_residual=1.0),
            "max_residual=1.0 must be a finite number > 0 and < 1",
        ),
        (lambda: EditConfig(rank="auto", max_residual=0), "max_residual=0"),
    ],
)
def test_bad_ranks_and_targets_are_refused(call, message):
    with pytest.raises(FmnPatchError) as e:
        call()
    assert message in str(e.value)


# ------------------------------------------------------------------------------------------------ the CLI
def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def test_cli_edit_and_merge_rank_auto_report_ranks_and_size(capsys, pipeline_dirs, tmp_path):
    base = ["--base", str(pipeline_dirs["sd1"]), "--category", "object"]
    paths = []
    for name in ("circle", "bob"):
        paths.append(tmp_path / f"{name}.safetensors")
        args = [
            "edit",
            name,
            *base,
            "--rank",
            "auto",
            "--max-residual",
            "0.05",
            "-o",
            str(paths[-1]),
            "--json",
        ]
        code, out, err = run(capsys, *args)
        assert code == 0, err
        data = json.loads(out)
        patch = Patch.load(paths[-1])
        assert data["ranks"] == patch.rank_summary() and data["rank"] == patch.rank
        assert data["bytes"] == paths[-1].stat().st_size and max(data["residuals"].values()) <= 0.05
        assert "each layer within 0.05" in err
    merged = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "merge", *map(str, paths), "--rank", "auto", "-o", str(merged), "--json")
    assert code == 0, err
    data = json.loads(out)
    patch = Patch.load(merged)
    assert data["ranks"] == patch.rank_summary() and data["bytes"] == merged.stat().st_size
    assert patch.info.config["max_residual"] == MAX_RESIDUAL
    assert max(data["residuals"].values()) <= MAX_RESIDUAL


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rank", "0"], "rank=0 must be a whole number from 1 to 4096"),
        (["--rank", "bogus"], "--rank 'bogus' is not a rank; give a whole number from 1 to 4096"),
        (
            ["--rank", "auto", "--max-residual", "1.5"],
            "--max-residual=1.5 must be a finite number > 0 and < 1",
        ),
        (["--rank", "auto", "--max-residual", "0"], "--max-residual=0.0 must be"),
        (["--rank", "8", "--max-residual", "0.1"], "--max-residual 0.1 only applies to --rank auto"),
    ],
)
@pytest.mark.parametrize("command", ["edit", "merge"])
def test_cli_bad_ranks_and_targets_are_one_line(capsys, pipeline_dirs, tmp_path, args, message, command):
    sd1 = load_base(str(pipeline_dirs["sd1"]))
    if command == "edit":
        head = ["edit", "circle", "--base", str(pipeline_dirs["sd1"]), "--category", "object"]
    else:
        parents = [random_patch(sd1, seed=s).save(tmp_path / f"{s}.safetensors") for s in (1, 2)]
        head = ["merge", *map(str, parents)]
    code, out, err = run(capsys, *head, *args, "-o", str(tmp_path / "out.safetensors"))
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_exact_merge_refuses_a_residual_target(capsys, sd1, tmp_path):
    parents = [str(random_patch(sd1, seed=s).save(tmp_path / f"{s}.safetensors")) for s in (1, 2)]
    code, _, err = run(
        capsys, "merge", *parents, "--max-residual", "0.1", "-o", str(tmp_path / "m.safetensors")
    )
    assert code == 2 and "only applies to --rank auto" in err and "exact merge" in err


def test_one_stream_factors_several_configs_as_separate_edits_do(toy, toy_names):
    configs = [EditConfig(rank=4), EditConfig(rank="auto"), EditConfig(rank=8, exact_svd=True)]
    together = edit_patches(toy, toy_names[:4], configs=configs)
    for config, patch in zip(configs, together, strict=True):
        alone = edit_patch(toy, toy_names[:4], config=config)
        assert patch.tensor_hash() == alone.tensor_hash() and patch.info.config == alone.info.config
        assert patch.info.extra["residuals"] == alone.info.extra["residuals"]
    with pytest.raises(FmnPatchError, match="may differ only in rank, max_residual, exact_svd"):
        edit_patches(toy, ["circle"], configs=[EditConfig(), EditConfig(lam=1.0)])
