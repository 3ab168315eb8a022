"""Faults outside the input files (issue 29): Hub references with dot segments and an unreachable Hub, through
the real huggingface_hub client against a closed local port, in this process and in a real one. As in
test_fault_outputs: exit 2, one error line, no traceback, nothing written (the shared helpers: faults).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from faults import ROOT, _quiet_phases, inputs, refused, run  # noqa: F401  (the fixtures)

# ------------------------------------------------------------------------------------------------- the Hub
HUB_REFS = [  # (a "/./" segment is dropped by the Path-typed arguments: tested on the parser below)
    "hf://a/b/../../c.safetensors",
    "hf://a/b@main/../x.safetensors",
    "hf://a/b/x/../../../etc/passwd.safetensors",
]


@pytest.mark.parametrize("ref", HUB_REFS)
@pytest.mark.parametrize(
    "argv",
    [
        ["pull", "{ref}"],
        ["apply", "toy", "{ref}"],
        ["inspect", "{ref}"],
        ["export", "{ref}", "-o", "k.safetensors"],
        ["merge", "{ref}", "{ref}", "-o", "m.safetensors"],
        ["eval", "toy", "{ref}"],
    ],
    ids=lambda a: a[0],
)
def test_a_hub_reference_with_dot_segments_is_one_line(capsys, tmp_path, monkeypatch, ref, argv):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *[a.format(ref=ref) for a in argv])
    line = refused(code, err)
    assert "'.' or '..' segment" in line and "hf://ORG/NAME" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ref", [*HUB_REFS, "hf://a/b/./c.safetensors", "a/b/sub/../c.safetensors"])
def test_the_parser_refuses_dot_segments(ref):
    from fmn_patch.hub.errors import HubError
    from fmn_patch.hub.refs import HubRef

    with pytest.raises(HubError, match=r"'\.' or '\.\.' segment"):
        HubRef.parse(ref)


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """The real huggingface_hub client, its endpoint a closed local port, its waits between retries cut short;
    its own log lines collected (none may get through)."""
    import logging
    import time

    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils._http import default_client_factory

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is: connections are refused
    huggingface_hub.set_client_factory(default_client_factory)
    huggingface_hub.close_session()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_write")
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the retries run, without their waits

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    collect = Collect()
    logger = logging.getLogger("huggingface_hub")
    logger.addHandler(collect)
    level = logger.level
    logger.setLevel(logging.WARNING)  # huggingface_hub's default
    yield collect
    logger.setLevel(level)
    logger.removeHandler(collect)
    huggingface_hub.close_session()


@pytest.mark.parametrize(
    "argv",
    [
        ["pull", "hf://acme/x"],
        ["apply", "toy", "hf://acme/x", "-p", "x"],
        ["inspect", "hf://acme/x"],
        ["search", "circle"],
        ["push", "{circle}", "acme/x"],
        ["pull", "acme/x", "-o", "got"],
    ],
    ids=lambda a: "-".join(a[:2]),
)
def test_an_unreachable_hub_is_one_line_without_the_librarys_own(
    capsys, tmp_path, monkeypatch, unreachable_hub, inputs, argv
):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    code, _, err = run(capsys, *[a.format(circle=inputs["circle"]) for a in argv])
    line = refused(code, err)
    assert "cannot reach the Hub (http://127.0.0.1:" in line, line
    assert "thrown while requesting" not in err and "Retrying" not in err
    assert unreachable_hub.lines == [], "huggingface_hub's own lines got through"
    assert os.listdir(tmp_path / "work") == []


@pytest.mark.slow
def test_an_unreachable_hub_in_a_real_process(tmp_path):
    """The whole CLI, HF_ENDPOINT a closed port, the library's real waits between retries: one line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HOME": str(tmp_path / "hf"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-m", "fmn_patch", "pull", "hf://acme/x"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [
        line for line in result.stderr.splitlines() if not line.endswith(" ...")
    ]  # progress: "downloading"
    assert result.returncode == 2 and len(lines) == 1 and "cannot reach the Hub" in lines[0], result.stderr
