"""Outputs appear whole or not at all: interrupts, races, full and read-only disks, stale temps, file modes.

The full-disk and read-only checks mount a tiny tmpfs inside a user namespace (``unshare -rm``), where no root is
needed; where that cannot be made they are skipped with the reason.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import random_patch
from PIL import Image
from test_cli import run

from fmn_patch.errors import OutputError, OutputExistsError
from fmn_patch.evaluation.grid import save_image
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import save_pipeline
from fmn_patch.files import TMP_TAG, atomic_folder, atomic_write, check_output, remove_stale_temps, slug
from fmn_patch.format import Patch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TMP_TAG in p.name or "fmnpatch-probe" in p.name)


# ------------------------------------------------------------------------------------------------ interrupts
def test_sigint_during_apply_exits_130_and_writes_nothing(pipeline_dirs, sd1, tmp_path):
    patch = random_patch(sd1).save(tmp_path / "p.safetensors")
    grid, fused = tmp_path / "grid.png", tmp_path / "fused"
    args = [str(pipeline_dirs["sd1"]), str(patch), "--prompt", "a circle", "--steps", "900"]
    child = subprocess.Popen(
        [sys.executable, "-m", "fmn_patch", "apply", *args, "--grid", str(grid), "--output", str(fused)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=tmp_path,
        # Ctrl-C as a terminal sends it: a suite started in the background of a non-interactive shell (`make test
        # &`) ignores SIGINT, and a child inherits that, finishes the render and exits 0
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert child.stderr is not None
    for line in child.stderr:  # wait until it renders, then press Ctrl-C
        if "rendering" in line:
            break
    time.sleep(0.2)  # inside the render (2 x 900 steps of the tiny pipeline)
    child.send_signal(signal.SIGINT)  # once: a second press during the exit would kill it by the signal
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-1000:]
    assert "fmnpatch: interrupted; nothing was written" in err and "Traceback" not in err
    assert out == "" and not grid.exists() and not fused.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]


@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_ctrl_c_while_the_cli_imports_its_libraries_exits_130_in_one_line(entry, tmp_path):
    """The CLI's first seconds import torch and diffusers, before main() can catch KeyboardInterrupt: a press there
    exits 130 with one line, no traceback, and nothing written."""
    script = Path(sys.executable).with_name("fmnpatch")
    if entry == "console script" and not script.exists():
        pytest.skip("the package is not installed with its console script here")
    head = [str(script)] if entry == "console script" else [sys.executable, "-m", "fmn_patch"]
    out_file = tmp_path / "p.safetensors"
    child = subprocess.Popen(
        [*head, "train", "circle", "--base", "toy", "-o", str(out_file)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's Ctrl-C (see above)
    )
    time.sleep(0.5)  # importing torch alone takes longer
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-1000:]
    assert err == "fmnpatch: interrupted while starting; nothing was written\n" and out == ""
    assert list(tmp_path.iterdir()) == []


def test_the_startup_guard_is_for_the_cli_alone_and_main_gives_ctrl_c_back():
    code = (
        "import signal, fmn_patch, fmn_patch.startup as s; "
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler; "  # a library import: untouched
        "s.sys.argv[0] = 'fmnpatch'; s.guard(); assert signal.getsignal(signal.SIGINT) is s._exit; "
        "s.release(); assert signal.getsignal(signal.SIGINT) is signal.default_int_handler; "
        "signal.signal(signal.SIGINT, signal.SIG_IGN); s.guard(); "  # started in the background: stays ignored
        "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Python's handler, as in a terminal
    )
    assert done.returncode == 0, done.stderr[-1000:]


def test_ctrl_c_in_merge_exits_130(capsys, sd1, tmp_path, monkeypatch):
    a = random_patch(sd1, seed=1).save(tmp_path / "a.safetensors")
    b = random_patch(sd1, seed=2).save(tmp_path / "b.safetensors")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fmn_patch.cli.merge.merge_patches", interrupted)
    code, out, err = run(capsys, "merge", str(a), str(b), "-o", str(tmp_path / "m.safetensors"))
    assert (
        code == 130
        and out == ""
        and err.strip().splitlines()[-1] == "fmnpatch: interrupted; nothing was written"
    )
    assert not (tmp_path / "m.safetensors").exists()


# ----------------------------------------------------------------------------------------------------- races
@pytest.mark.parametrize("folder", [False, True])
def test_two_writers_racing_give_one_result_and_one_exists_error(tmp_path, folder):
    """Both pass the existence check, both write, then both publish: one wins, the other is told, and the
    winner's output is not replaced."""
    target = tmp_path / ("out" if folder else "out.txt")
    barrier = threading.Barrier(2)
    outcomes: dict[int, str] = {}

    def writer(i: int) -> None:
        def write(tmp: Path) -> None:
            if folder:
                (tmp / "who").write_text(str(i))
            else:
                tmp.write_text(str(i))
            barrier.wait(timeout=30)  # both are past the check and hold a written temp

        try:
            (atomic_folder if folder else atomic_write)(target, write, overwrite=False)
            outcomes[i] = "ok"
        except OutputExistsError as e:
            outcomes[i] = f"exists: {e}"

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, o in outcomes.items() if o == "ok"]
    assert len(winners) == 1, outcomes
    (loser,) = set(outcomes) - set(winners)
    assert "already exists" in outcomes[loser] and "another process" in outcomes[loser]
    content = (target / "who" if folder else target).read_text()
    assert content == str(winners[0])
    assert _temps(tmp_path) == []


def test_two_cli_merges_to_one_name_one_succeeds(sd1, tmp_path):
    a = random_patch(sd1, seed=1).save(tmp_path / "a.safetensors")
    b = random_patch(sd1, seed=2).save(tmp_path / "b.safetensors")
    out = tmp_path / "same.safetensors"
    command = [sys.executable, "-m", "fmn_patch", "merge", str(a), str(b), "-o", str(out)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)]
    children.append(
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    )
    results = [(c.wait(timeout=300), c.stderr.read() if c.stderr else "") for c in children]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    (error,) = [err for code, err in results if code == 2]
    assert "already exists" in error and len(error.strip().splitlines()) == 1
    assert Patch.load(out).rank == 4 and _temps(tmp_path) == []


def test_save_pipeline_never_replaces_without_overwrite(sd1, tmp_path):
    target = save_pipeline(sd1, tmp_path / "fused")
    marker = target / "model_index.json"
    before = marker.read_bytes()
    with pytest.raises(OutputExistsError):
        save_pipeline(sd1, target)
    assert marker.read_bytes() == before
    (target / "extra.txt").write_text("from before")
    save_pipeline(sd1, target, overwrite=True)  # replaced whole: nothing of the old folder is left
    assert not (target / "extra.txt").exists() and marker.exists() and _temps(tmp_path) == []


# --------------------------------------------------------------------------------------------- stale temps
def test_temps_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    from fmn_patch.files import _host

    target = tmp_path / "p.safetensors"
    stale = tmp_path / f".p.safetensors.{_host()}-{pid}.deadbeef{TMP_TAG}"
    stale.write_bytes(b"x" * 1000)
    stale_dir = tmp_path / f".p.safetensors.{_host()}-{pid}.cafe{TMP_TAG}"
    stale_dir.mkdir()
    live = tmp_path / f".p.safetensors.{_host()}-{os.getpid()}.f00d{TMP_TAG}"
    live.write_bytes(b"mine")
    other_host = tmp_path / f".p.safetensors.00000000-{pid}.beef{TMP_TAG}"
    other_host.write_bytes(b"not ours to judge")
    removed = remove_stale_temps(target)
    assert sorted(removed) == sorted([stale, stale_dir])
    assert live.exists() and other_host.exists() and not stale.exists()


def test_sigkill_mid_write_leaves_a_temp_that_the_next_write_removes(tmp_path):
    target = tmp_path / "big.bin"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from fmn_patch.files import atomic_write
        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(b"x" * 1_000_000)
                f.flush()
                time.sleep(60)
        atomic_write(Path({str(target)!r}), write, overwrite=False)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], env=ENV)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.stat().st_size for p in tmp_path.glob(f"*{TMP_TAG}")):
        time.sleep(0.1)
    child.kill()
    child.wait()
    assert len(_temps(tmp_path)) == 1 and not target.exists()
    atomic_write(target, lambda tmp: tmp.write_bytes(b"done"), overwrite=False)
    assert target.read_bytes() == b"done" and _temps(tmp_path) == []


# ---------------------------------------------------------------------------------------------- file modes
@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(sd1, tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        patch = random_patch(sd1).save(tmp_path / "p.safetensors")
        fused = save_pipeline(sd1, tmp_path / "fused")
        image = save_image(Image.new("RGB", (4, 4)), tmp_path / "g.png")
    finally:
        os.umask(old)
    assert patch.stat().st_mode & 0o777 == file_mode
    assert image.stat().st_mode & 0o777 == file_mode
    assert fused.stat().st_mode & 0o777 == dir_mode
    for inside in fused.rglob("*"):  # safetensors makes its files 0600 by itself: the publish fixes that
        assert inside.stat().st_mode & 0o777 == (dir_mode if inside.is_dir() else file_mode), inside


# ------------------------------------------------------------------------------------------ file systems
def test_filesystem_errors_are_one_line(capsys, sd1, tmp_path):
    a = random_patch(sd1, seed=1).save(tmp_path / "a.safetensors")
    b = random_patch(sd1, seed=2).save(tmp_path / "b.safetensors")
    for target, cause in [
        ("/proc/m.safetensors", "/proc"),
        (str(a) + "/m.safetensors", "is a file"),
        ("x" * 300 + ".safetensors", "longer than the file system allows"),
    ]:
        code, out, err = run(capsys, "merge", str(a), str(b), "-o", target)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert cause in err and "Traceback" not in err
    code, _, err = run(capsys, "export", str(a), "-o", "/proc/k.safetensors")
    assert code == 2 and "/proc" in err
    with pytest.raises(OutputError, match="cannot write /proc/x: "):
        check_output("/proc/x", overwrite=False)


def test_long_concepts_get_short_default_names(capsys, pipeline_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    huge = "very long concept " * 600  # 10,800 characters: no file system takes that as a name
    assert len(slug(huge)) <= 60 and slug(huge) != slug(huge + "x")
    base = str(pipeline_dirs["sd1"])
    code, out, err = run(capsys, "edit", huge, "--base", base, "--category", "object", "--rank", "2")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused for its length in tokens, cleanly, before writing
    long = "elon musk " * 30  # 300 characters that fit the text encoder: "forget-" + it is too long a name
    code, out, err = run(capsys, "edit", long, "--base", base, "--category", "identity", "--rank", "2")
    assert code == 0, err[-500:]
    written = Path(out.strip())
    assert written.exists() and len(written.name) <= 90 and written.name.startswith("forget-elon-musk-elon")
    assert Patch.load(written).concept_names == [long.strip()]


def _namespace_mount(tmp_path: Path, options: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (Python) with a fresh tmpfs mounted at tmp_path/mnt (``options``) in a user namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: no small file system can be made here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "script.py").write_text(textwrap.dedent(script))
    shell = f"mount -t tmpfs -o {options} tmpfs {mnt} && exec {sys.executable} {tmp_path / 'script.py'} {mnt}"
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces are not available here ({probe.stderr.decode().strip()})")
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, env=ENV, timeout=300
    )


def test_a_full_disk_leaves_the_existing_file_intact(tmp_path):
    result = _namespace_mount(
        tmp_path,
        "size=128k",
        """
        import json, os, sys
        from pathlib import Path
        from PIL import Image
        from fmn_patch.errors import OutputError
        from fmn_patch.evaluation.grid import save_image
        from fmn_patch.files import atomic_write
        mnt = Path(sys.argv[1])
        good = save_image(Image.new("RGB", (8, 8), "red"), mnt / "grid.png")
        before = good.read_bytes()
        (mnt / "filler").write_bytes(b"x" * (120 * 1024 - len(before)))  # the disk is (nearly) full
        noise = Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3))  # a PNG that cannot fit
        out = {}
        try:
            save_image(noise, good, overwrite=True)
            out["grid"] = "written"
        except OutputError as e:
            out["grid"] = str(e)
        try:
            atomic_write(mnt / "new.bin", lambda tmp: tmp.write_bytes(b"y" * 200_000), overwrite=False)
            out["new"] = "written"
        except OutputError as e:
            out["new"] = str(e)
        out["intact"] = good.read_bytes() == before
        out["left"] = sorted(p.name for p in mnt.iterdir())
        print(json.dumps(out))
        """,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["intact"] is True
    assert "no space left on device" in out["grid"] and "nothing was written" in out["grid"]
    assert "no space left on device" in out["new"]
    assert out["left"] == ["filler", "grid.png"], "no temp file, no partial output"


def test_a_read_only_mount_is_one_line(tmp_path, sd1):
    a = random_patch(sd1, seed=1).save(tmp_path / "a.safetensors")
    b = random_patch(sd1, seed=2).save(tmp_path / "b.safetensors")
    result = _namespace_mount(
        tmp_path,
        "size=64k,ro",
        f"""
        import sys
        from fmn_patch.cli.app import main
        try:
            main(["merge", {str(a)!r}, {str(b)!r}, "-o", sys.argv[1] + "/m.safetensors"])
        except SystemExit as e:
            print("exit", e.code)
        """,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "exit 2"
    errors = [line for line in result.stderr.splitlines() if line.startswith("fmnpatch:")]
    assert len(errors) == 1 and "read-only file system" in errors[0], result.stderr[-2000:]


def test_interrupted_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = atomic_write(tmp_path / "keep.txt", lambda tmp: tmp.write_text("old"), overwrite=False)

    def interrupted(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted, overwrite=True)
    assert target.read_text() == "old" and _temps(tmp_path) == []


def test_grid_path_is_checked_before_rendering(capsys, pipeline_dirs, sd1, tmp_path, monkeypatch):
    patch = random_patch(sd1).save(tmp_path / "p.safetensors")
    rendered = []
    monkeypatch.setattr("fmn_patch.cli.apply.preview", lambda *a, **k: rendered.append(1))
    for grid in ("out.gif", "noextension", str(patch) + "/g.png"):
        code, _, err = run(capsys, "apply", str(pipeline_dirs["sd1"]), str(patch), "-p", "x", "--grid", grid)
        assert code == 2 and ("--grid" in err or "cannot write" in err), err
    assert rendered == []


def test_base_hash_does_not_depend_on_the_load_dtype(capsys, pipeline_dirs, tmp_path):
    folder = str(pipeline_dirs["sd1"])
    f32 = load_base(folder)
    patch = random_patch(f32).save(tmp_path / "p.safetensors")
    for dtype in ("bfloat16", "float16"):
        assert (
            load_base(folder, dtype=dtype).family.identity.target_hash() == f32.family.identity.target_hash()
        ), dtype
    code, _, err = run(
        capsys, "apply", folder, str(patch), "--dtype", "bfloat16", "--strict", "-o", str(tmp_path / "f")
    )
    assert code == 0, err
    # a base whose weights really differ (a patch fused in) still hashes differently in bfloat16
    changed = load_base(folder, dtype="bfloat16")
    with torch.no_grad():
        next(iter(changed.family.adapters.targets().values())).weight.add_(1.0)
    assert changed.family.identity.target_hash() != f32.family.identity.target_hash()


@pytest.mark.parametrize("fallback", ["link", "placeholder"])
def test_the_no_replace_publish_without_renameat2(tmp_path, monkeypatch, fallback):
    """Where the C library or file system has no renameat2: a hard link, else an O_EXCL placeholder replaced."""
    import fmn_patch.files as files

    monkeypatch.setattr(files, "_renameat2", lambda *a: False)
    if fallback == "placeholder":

        def no_links(src, dst):
            raise OSError(errno.EPERM, "hard links not supported")

        monkeypatch.setattr(files.os, "link", no_links)
    target = atomic_write(tmp_path / "a.txt", lambda t: t.write_text("first"), overwrite=False)
    with pytest.raises(OutputExistsError):
        atomic_write(target, lambda t: t.write_text("second"), overwrite=False)
    assert target.read_text() == "first"
    folder = atomic_folder(tmp_path / "f", lambda t: (t / "x").write_text("1"), overwrite=False)
    with pytest.raises(OutputExistsError):
        atomic_folder(folder, lambda t: (t / "y").write_text("2"), overwrite=False)
    atomic_folder(folder, lambda t: (t / "y").write_text("2"), overwrite=True)  # the rename dance
    assert sorted(p.name for p in folder.iterdir()) == ["y"] and _temps(tmp_path) == []
