"""The web page through its API, as a client program drives it: a real Gradio server on 127.0.0.1 with the toy
model, driven by gradio_client. A patch made in the page loads in fmn_patch and in stock diffusers; every bad
input is one visible line, nothing is written, and the server answers the next request."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

gr = pytest.importorskip("gradio", reason="the ui extra (pip install 'fmn-patch[ui]') is not installed")
from gradio_client import Client, handle_file  # noqa: E402  (after the extra's check)
from gradio_client.exceptions import AppError  # noqa: E402
from test_hub import hub  # noqa: E402, F401  (the in-process Hub)

from fmn_patch import Patch, PatchFileError  # noqa: E402
from fmn_patch.families.registry import named_base  # noqa: E402
from fmn_patch.ui import PageConfig, serve  # noqa: E402
from fmn_patch.ui.context import PageContext  # noqa: E402

#: The Forget tab's fields in order: base, concepts, category, anchor, preset, method, rank, steps, seed.
EDIT_CIRCLE = ("toy", "circle", "(the bench's)", "", "(none)", "edit", 2, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, PageContext]]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FMNPATCH_CACHE", str(tmp_path_factory.mktemp("refcache")))
        env.setenv("HF_HUB_OFFLINE", "1")  # a Hub id is looked up in the cache only
        page, ctx = serve(PageConfig(port=free_port(), max_upload_mb=1), block=False)
        try:
            yield page.local_url, ctx
        finally:
            page.close()
            ctx.sessions.close()


def files_of(ctx: PageContext) -> list[Path]:
    return sorted(p for p in ctx.sessions.root.rglob("*") if p.is_file())


def forget_fields(**changes: object) -> tuple[object, ...]:
    names = ("base", "concepts", "category", "anchor", "preset", "method", "rank", "steps", "seed")
    fields = dict(zip(names, EDIT_CIRCLE, strict=True))
    fields.update(changes)
    return tuple(fields.values())


def test_edit_circle_downloads_a_patch_that_fmn_patch_and_stock_diffusers_load(served):
    url, ctx = served
    client = Client(url, verbose=False)
    status, files, card, grid, *_ = client.predict(*EDIT_CIRCLE, api_name="/forget")
    assert status.startswith("forgot circle with edit on toy") and grid is not None
    native, kohya = (Path(f) for f in files)
    assert native.name == "forget-circle.safetensors" and kohya.name == "forget-circle.kohya.safetensors"
    patch = Patch.load(native, require_hash=True)
    assert patch.concept_names == ["circle"] and patch.rank == 2
    assert "circle (object)" in card and "rank         2" in card
    # the page wrote them to this visitor's folder, and nowhere else
    assert [p.name for p in files_of(ctx)] == ["forget-circle.kohya.safetensors", "forget-circle.safetensors"]

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(named_base("toy").locate()))
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0))
    before = pipe("a red circle", **kwargs).images
    pipe.load_lora_weights(str(native))
    kwargs["generator"] = torch.Generator().manual_seed(0)
    after = pipe("a red circle", **kwargs).images
    assert not torch.allclose(before, after, atol=1e-3)  # stock diffusers applied it


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 10**9, "method": "train"}, "steps"),  # absurd steps
        ({"concepts": "   "}, "no concept given"),  # an empty concept
        ({"rank": -1}, "rank -1 is not a whole number of at least 0"),
        ({"method": "erase"}, "'erase'"),  # Gradio's own check of the choices
        ({"base": "no/such-model-here", "concepts": "circle"}, "no/such-model-here"),
        ({"concepts": "\x1b[31mred\x1b[0m"}, "\\x1b[31mred"),  # terminal escapes in a name: shown, not obeyed
        ({"base": "<img src=x onerror=alert(1)>"}, "&lt;img"),  # HTML: shown as text, not rendered
    ],
)
def test_bad_input_is_one_visible_line_writes_nothing_and_the_server_goes_on(served, changes, message):
    url, ctx = served
    client = Client(url, verbose=False)
    before = files_of(ctx)
    with pytest.raises(AppError) as e:
        client.predict(*forget_fields(**changes), api_name="/forget")
    text = str(e.value)
    assert message in text and "\n" not in text.strip() and "Traceback" not in text
    assert "\x1b" not in text and "<img" not in text
    assert files_of(ctx) == before  # nothing written
    assert client.predict("toy", api_name="/family").startswith("**Family:**")  # the server answers on


def test_inspect_refuses_what_is_not_a_patch_and_what_is_too_large(served, tmp_path):
    url, _ = served
    client = Client(url, verbose=False)
    pickle_like = tmp_path / "model.ckpt"
    pickle_like.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle's opening bytes: never unpickled
    with pytest.raises(AppError, match=r"model\.ckpt") as e:
        client.predict(handle_file(str(pickle_like)), api_name="/inspect")
    assert str(tmp_path) not in str(e.value) and "/tmp/gradio" not in str(e.value)  # no server paths
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\x00" * (2 * 2**20))  # over the page's 1 MiB cap
    import httpx2

    with big.open("rb") as f:  # past the client's own check: the server refuses to take it
        response = httpx2.post(f"{url}gradio_api/upload", files={"files": (big.name, f)}, timeout=60)
    assert response.status_code == 413, response.text[:300]
    _, ctx = served
    with pytest.raises(PatchFileError, match=r"big\.safetensors is 2 MiB, over this page's 1 MiB limit"):
        ctx.upload(big)  # and the page's own check, were a larger one to arrive


def test_cancel_stops_a_training_and_it_writes_nothing(served):
    url, ctx = served
    client = Client(url, verbose=False)
    before = files_of(ctx)
    job = client.submit(*forget_fields(method="train", steps=5000), api_name="/forget")
    while not job.status().progress_data:  # the job reports: it has begun
        assert not job.done(), job.result()
        time.sleep(0.2)
    client.predict(api_name="/cancel")
    with pytest.raises(AppError, match="cancelled; nothing was written"):
        job.result(timeout=300)
    assert files_of(ctx) == before


def test_try_and_attack_use_the_patch_made_on_the_page(served):
    url, _ = served
    client = Client(url, verbose=False)
    client.predict(*EDIT_CIRCLE, api_name="/forget")  # the session's patch
    grid = client.predict("toy", True, [], "", "1", "0, 1", 4, "a red circle", api_name="/try")
    assert Path(grid).stat().st_size > 0
    with pytest.raises(AppError, match="2 weights for 1 patches"):
        client.predict("toy", True, [], "", "1, 0.5", "0", 4, "a red circle", api_name="/try")
    report, image = client.predict("toy", "circle", True, None, ["paraphrase"], 2, 2, api_name="/attack")
    assert "| paraphrase |" in report and image is not None
    with pytest.raises(AppError, match="not in ConceptBench 'toy'"):
        client.predict("toy", "zebra", True, None, ["paraphrase"], 2, 2, api_name="/attack")


def test_share_pushes_with_the_typed_token_only_and_pulls_back(served, hub, tmp_path, monkeypatch):
    from test_hub import TOKEN

    url, ctx = served
    client = Client(url, verbose=False)
    client.predict(*EDIT_CIRCLE, api_name="/forget")
    card = client.predict(None, True, "acme/forget-circle", api_name="/card")
    assert "# forget circle" in card
    # the server's own login (HF_TOKEN) is never used for a visitor's push
    with pytest.raises(AppError, match="needs a Hugging Face token"):
        client.predict(None, True, "acme/forget-circle", "", False, api_name="/push")
    assert hub.repos == {}
    status = client.predict(None, True, "acme/forget-circle", TOKEN, False, api_name="/push")
    assert status.startswith("pushed pytorch_lora_weights.safetensors to acme/forget-circle")
    assert "acme/forget-circle" in hub.repos
    rows = client.predict("circle", "object", "", api_name="/search")
    assert [r[0] for r in rows["data"]] == ["acme/forget-circle"]
    path, pulled_card, *_ = client.predict("hf://acme/forget-circle", api_name="/pull")
    assert Patch.load(path).concept_names == ["circle"] and "circle (object)" in pulled_card
    # the token went to the Hub in the request, and nowhere on disk
    written = [p for root in (ctx.sessions.root, Path(gr.utils.get_upload_folder())) for p in root.rglob("*")]
    assert not any(TOKEN.encode() in p.read_bytes() for p in written if p.is_file())


def test_the_space_example_is_a_hosted_page_that_refuses_local_folders(tmp_path):
    import dataclasses
    import runpy

    space = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "space" / "app.py"), run_name="space")
    config = space["CONFIG"]
    assert config.public and not config.local_paths and not config.share
    here = dataclasses.replace(
        config, host="127.0.0.1", port=free_port()
    )  # this test serves this machine only
    page, ctx = serve(here, block=False)
    try:
        client = Client(page.local_url, verbose=False)
        for api, args in (("/forget", forget_fields(base=str(tmp_path))), ("/family", (str(tmp_path),))):
            with pytest.raises(AppError, match="does not read local folders; give toy or a Hub repo id"):
                client.predict(*args, api_name=api)
        assert files_of(ctx) == []
    finally:
        page.close()
        ctx.sessions.close()


def test_fmnpatch_ui_states_its_flags_and_refuses_a_public_host_without_public(capsys):
    from test_cli import run

    code, out, _ = run(capsys, "ui", "--help")
    assert code == 0
    for flag in ("--host", "--port", "--public", "--share", "--no-local-paths", "--max-upload-mb"):
        assert flag in out, flag
    assert "127.0.0.1" in out
    code, out, err = run(capsys, "ui", "--host", "0.0.0.0")
    assert (
        code == 2
        and out == ""
        and err.strip().splitlines()
        == [
            "fmnpatch: error: --host 0.0.0.0 serves the page to every machine that reaches this one; add --public to "
            "mean it, or leave --host out for 127.0.0.1"
        ]
    )
