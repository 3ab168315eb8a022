"""The web page in a real browser: headless Chromium (the system's, e.g. Debian's ``chromium``) driven by Playwright
opens the page, forgets ``circle`` with the edit, waits for the before/after grid, downloads the patch and reads it;
a corrupted upload to Inspect shows one line in the page, not a traceback. Screenshots land in out/.

A missing browser fails this test (``.ci/run`` installs Chromium and sets FMNPATCH_REQUIRE_BROWSER=1); a developer
without one may skip it explicitly with FMNPATCH_NO_BROWSER=1, which CI does not honour.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the ui extra (pip install 'fmn-patch[ui]') is not installed")
from playwright.sync_api import Browser, Page, expect, sync_playwright

from fmn_patch import Patch
from fmn_patch.ui import PageConfig, serve

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "out" / "ui"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
JOB_SECONDS = 240  # the toy's edit and its grid, on a loaded two-core machine


def chromium() -> str:
    """The system's Chromium: FMNPATCH_CHROMIUM, else the first on PATH; missing is a failure unless skipped."""
    found = os.environ.get("FMNPATCH_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if found:
        return found
    if os.environ.get("FMNPATCH_NO_BROWSER") and not os.environ.get("FMNPATCH_REQUIRE_BROWSER"):
        pytest.skip("FMNPATCH_NO_BROWSER is set: the browser test is skipped")
    pytest.fail(
        "no Chromium for the browser test: install it (apt-get install chromium) or name it with FMNPATCH_CHROMIUM; "
        "to skip this test locally set FMNPATCH_NO_BROWSER=1"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FMNPATCH_CACHE", str(tmp_path_factory.mktemp("refcache")))
        env.setenv("HF_HUB_OFFLINE", "1")
        page, ctx = serve(PageConfig(port=free_port()), block=False)
        try:
            yield page.local_url
        finally:
            page.close()
            ctx.sessions.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium()
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, url: str) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 1400})
    opened = context.new_page()
    opened.goto(url)
    try:
        yield opened
    finally:
        context.close()


def test_forget_circle_in_the_browser_and_download_the_patch(page: Page, tmp_path: Path):
    page.get_by_label("Concepts").fill("circle")
    page.get_by_label("edit", exact=True).check()
    page.locator("#forget-go").click()
    grid = page.locator("#forget-grid img")
    expect(grid).to_be_visible(timeout=JOB_SECONDS * 1000)
    status = page.locator("#forget-status textarea").input_value()
    assert status.startswith("forgot circle with edit on toy"), status
    link = page.locator('#forget-files a[download="forget-circle.safetensors"]')
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "forget-circle.safetensors"
    assert Patch.load(saved, require_hash=True).concept_names == ["circle"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "forget.png"), full_page=True)


def test_a_corrupted_upload_to_inspect_is_one_line_in_the_page(page: Page, tmp_path: Path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"{not a header")
    page.get_by_role("tab", name="Inspect").click()
    page.locator("#inspect-upload input[type=file]").set_input_files(str(bad))
    message = page.get_by_test_id("toast-text").first  # Gradio's error toast
    expect(message).to_contain_text("broken.safetensors", timeout=60_000)
    text = message.inner_text().strip()
    assert "\n" not in text and "Traceback" not in page.content() and "/tmp" not in text, text
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "inspect-error.png"))  # the viewport, where the message shows


def test_every_tab_works_in_the_browser_and_is_pictured(page: Page, tmp_path: Path):
    """Forget, then each tab on that patch; a screenshot of each (docs/ui/ holds the committed ones)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.get_by_label("Concepts").fill("circle")
    page.locator("#forget-go").click()
    expect(page.locator("#forget-grid img")).to_be_visible(timeout=JOB_SECONDS * 1000)
    page.screenshot(path=str(SHOTS / "forget.png"), full_page=True)

    page.get_by_role("tab", name="Try").click()
    page.locator("#try-go").click()
    expect(page.locator("#try-grid img")).to_be_visible(timeout=JOB_SECONDS * 1000)
    page.screenshot(path=str(SHOTS / "try.png"), full_page=True)

    page.get_by_role("tab", name="Attack").click()
    page.get_by_label("inversion", exact=True).uncheck()  # paraphrases alone: seconds on the toy
    page.locator("#attack-go").click()
    expect(page.locator("#attack-grid img")).to_be_visible(timeout=JOB_SECONDS * 1000)
    expect(page.locator("#attack-report")).to_contain_text("paraphrase")
    page.screenshot(path=str(SHOTS / "attack.png"), full_page=True)

    page.get_by_role("tab", name="Share").click()
    page.get_by_role("textbox", name="Hub repo", exact=True).fill("your-name/forget-circle")
    page.locator("#share-preview").click()
    expect(page.locator("#share-card")).to_contain_text("forget circle", timeout=60_000)
    page.locator("#share-push").click()  # no token typed: one line, nothing sent
    expect(page.get_by_test_id("toast-text").first).to_contain_text(
        "needs a Hugging Face token", timeout=60_000
    )
    page.screenshot(path=str(SHOTS / "share.png"), full_page=True)

    with page.expect_download() as download:
        page.get_by_role("tab", name="Forget").click()
        page.locator('#forget-files a[download="forget-circle.safetensors"]').click()
    saved = tmp_path / "forget-circle.safetensors"
    download.value.save_as(saved)
    page.get_by_role("tab", name="Inspect").click()
    page.locator("#inspect-upload input[type=file]").set_input_files(str(saved))
    expect(page.locator("#inspect-card")).to_contain_text("circle (object)", timeout=60_000)
    page.screenshot(path=str(SHOTS / "inspect.png"), full_page=True)
