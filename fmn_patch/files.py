"""Files: outputs that appear whole or not at all, never replace one another by accident, and read the umask.

Every output, file or folder, is written under a temp name in its own directory and then published in one step:
with ``overwrite`` by ``os.replace`` (a folder by an atomic exchange), otherwise by a primitive that fails when the
name exists (``renameat2(RENAME_NOREPLACE)``, else ``os.link``), so two writers racing for one name give one result
and one ``OutputExistsError``, never a silent replacement. Temp files are created with mode 0666 (folders 0777)
less the umask, as other tools do. A temp name records the host and process that made it; temps left by a dead
process on this host (SIGKILL, power loss) are removed by the next write to the same name. ``OSError`` becomes a
one-line ``OutputError`` naming the path and the cause, and the existing file is left intact.

Also here: whole-line appends to logs that several processes share, and the one reader of line-per-entry text
files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from .errors import FmnPatchError, OutputError, OutputExistsError, StorageError
from .oserrors import describe_os_error, os_error_in, write_fix

TMP_TAG: Final = ".fmnpatch-tmp"
#: What a refused write says of its output; a batch that wrote other files says what it did write instead.
NOTHING_WRITTEN: Final = "nothing was written"
_NAME_KEEP: Final = 80  # characters of the target's name kept in its temp names (NAME_MAX is 255 bytes)
_log = logging.getLogger("fmn_patch")

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_APPEND alone
    fcntl = None  # type: ignore[assignment]


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(path: Path) -> Path:
    """A fresh temp name beside ``path``: ``.NAME.HOST-PID.RANDOM.fmnpatch-tmp``."""
    return path.parent / f".{path.name[:_NAME_KEEP]}.{_host()}-{os.getpid()}.{secrets.token_hex(4)}{TMP_TAG}"


# ------------------------------------------------------------------------------------------ checking
def check_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    folder: bool = False,
    suffixes: Sequence[str] = (),
    what: str = "output",
) -> Path:
    """Refuse, before any work is done, an output that cannot be written: it exists (and not ``overwrite``), it is
    a folder where a file goes (or the reverse), its name is too long, a suffix is not one of ``suffixes``, or its
    nearest existing parent is a file or cannot be written (a probe file is created there and removed)."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(f"{what} {str(path)!r} must end in {' or '.join(suffixes)}")
    if not path.name or path.name in (".", ".."):
        raise OutputError(
            f"{what} {str(path)!r} names no file; give a path such as out/name{''.join(suffixes[:1])}"
        )
    if len(os.fsencode(path.name)) > _name_max(path):
        raise OutputError(
            f"{what} name {path.name[:40]!r}... is {len(os.fsencode(path.name))} bytes, longer than the file "
            f"system allows ({_name_max(path)}); choose a shorter name"
        )
    if path.is_symlink() or path.exists():
        if not overwrite:
            raise OutputExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
        if folder and not path.is_dir():
            raise OutputError(f"{what} {path} is a file; give a folder path")
        if not folder and path.is_dir():
            raise OutputError(f"{what} {path} is a folder; give a file path{_suffix_hint(suffixes)}")
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():
            raise OutputError(f"cannot write {path}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")
    probe = parent / f".{_host()}-{os.getpid()}.{secrets.token_hex(4)}.fmnpatch-probe"
    try:  # the one sure test (a read-only mount, /proc, permissions, even for root): create a file there
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as e:
        fix = f"; {write_fix(e)}" if write_fix(e) else ""
        raise OutputError(f"cannot write {path}: {describe_os_error(e)} ({parent}){fix}") from e
    return path


def check_apart(
    output: str | os.PathLike[str], source: str | os.PathLike[str], *, what: str = "--output"
) -> None:
    """Refuse an output that is the input folder ``source``, a folder above it, or a path inside it: writing it
    would replace or change the input (``apply BASE p --output BASE --overwrite``), whatever ``--overwrite`` says."""
    # as written and with every link followed: a folder that holds a link to the base holds the base too
    pairs = [
        (Path(os.path.abspath(output)), Path(os.path.abspath(source))),
        (Path(output).resolve(), Path(source).resolve()),
    ]
    for out, src in pairs:
        if out == src or src.is_relative_to(out):
            where = "is the base folder" if out == src else "holds the base folder"
            raise OutputError(
                f"{what} {str(output)!r} {where} ({source}); writing it would replace the base: give another folder"
            )
        if out.is_relative_to(src):
            raise OutputError(
                f"{what} {str(output)!r} is inside the base folder ({source}); writing there would change the "
                "base: give a path outside it"
            )


def _suffix_hint(suffixes: Sequence[str]) -> str:
    return f" ending in {suffixes[0]}" if suffixes else ""


def _name_max(path: Path) -> int:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        return int(os.pathconf(parent, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


# ------------------------------------------------------------------------------------------- writing
def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any], *, overwrite: bool) -> Path:
    """Run ``write(tmp)`` on a fresh temp file beside ``path``, then publish it as ``path`` in one step.

    The temp name has no meaningful suffix: ``write`` must say the format (``image.save(tmp, format="PNG")``).
    An exception, Ctrl-C or a full disk leaves no partial file and the existing ``path`` intact; ``path`` is only
    replaced when ``overwrite``, and a writer that loses a race to the same name gets ``OutputExistsError``.
    """
    path = check_output(path, overwrite=overwrite)
    with _os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        tmp = temp_path(path)
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies
    try:
        with _os_errors(path):
            write(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # a writer may have made its own file (safetensors: 0600)
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
            _publish(tmp, path, overwrite=overwrite, folder=False)
    finally:
        tmp.unlink(missing_ok=True)  # after a link-publish, or on failure
    _sync_dir(path.parent)
    return path


def atomic_folder(path: str | os.PathLike[str], write: Callable[[Path], Any], *, overwrite: bool) -> Path:
    """``atomic_write`` for a folder: ``write(tmp)`` fills a fresh temp folder that is then published whole."""
    path = check_output(path, overwrite=overwrite, folder=True)
    with _os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        tmp = temp_path(path)
        os.mkdir(tmp, 0o777)  # the umask applies
    try:
        with _os_errors(path):
            write(tmp)
            _honour_umask(tmp)
            _publish(tmp, path, overwrite=overwrite, folder=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a replaced folder ends up here after the exchange
    _sync_dir(path.parent)
    return path


def atomic_files(
    folder: str | os.PathLike[str], writers: Mapping[str, Callable[[Path], Any]], *, overwrite: bool
) -> dict[str, Path]:
    """Several files in ``folder`` (``writers``: file name -> ``write(tmp)``) as one set: all of them appear, or
    none does and the files there before stay as they were.

    A new folder is filled under a temp name and published whole. In an existing one every file is written to its
    temp first (a full disk fails here, before anything is published), then each temp is renamed over its name;
    if a rename fails or Ctrl-C comes meanwhile, the ones already renamed are put back (the old files were kept
    as hard links, or copies where the file system has no links)."""
    folder = Path(folder)
    check_output(folder, overwrite=True, folder=True)
    targets = {name: check_output(folder / name, overwrite=overwrite) for name in writers}
    if not folder.exists():

        def fill(tmp: Path) -> None:
            for name, write in writers.items():
                write(tmp / name)

        atomic_folder(folder, fill, overwrite=False)
        return targets
    temps: dict[str, Path] = {}
    kept: dict[str, Path] = {}  # name -> the old file, kept until the whole set is published
    published: list[str] = []
    try:
        with _os_errors(folder):
            for name, write in writers.items():
                remove_stale_temps(targets[name])
                temps[name] = tmp = temp_path(targets[name])
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies
                write(tmp)
                os.chmod(tmp, 0o666 & ~_umask())
                with tmp.open("rb+") as f:
                    os.fsync(f.fileno())
            for name, target in targets.items():
                if target.exists():
                    kept[name] = temp_path(target)
                    try:
                        os.link(target, kept[name])
                    except OSError:
                        shutil.copy2(target, kept[name])
            try:
                for name, tmp in temps.items():
                    _publish(tmp, targets[name], overwrite=overwrite, folder=False)
                    published.append(name)
            except BaseException:
                for name in reversed(published):  # put the set back as it was
                    if name in kept:
                        os.replace(kept.pop(name), targets[name])
                    else:
                        targets[name].unlink(missing_ok=True)
                raise
    finally:
        for path in [*temps.values(), *kept.values()]:
            path.unlink(missing_ok=True)
    _sync_dir(folder)
    return targets


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting it, and put it back at once
    os.umask(mask)
    return mask


def _honour_umask(folder: Path) -> None:
    """Give a written folder tree the modes a plain ``open``/``mkdir`` would: some writers (safetensors) create
    their files 0600 whatever the umask."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextlib.contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except FileExistsError as e:
        names = {os.fspath(n) for n in (e.filename, e.filename2) if n is not None}
        if names and os.fspath(path) not in names:
            raise OutputError(
                f"cannot write {path}: {e.filename} is in the way ({describe_os_error(e)})"
            ) from e
        raise OutputExistsError(
            f"{path} already exists (written by another process meanwhile); pass --overwrite to replace it"
        ) from e
    except Exception as e:  # an OSError, or a writer's own error wrapping one (safetensors' SafetensorError)
        cause = None if isinstance(e, FmnPatchError) else os_error_in(e)
        if cause is None:
            raise
        shown = os.fspath(cause.filename) if cause.filename is not None else ""
        where = f" ({shown})" if shown and shown != os.fspath(path) and TMP_TAG not in shown else ""
        fix = f"; {write_fix(cause)}" if write_fix(cause) else ""
        raise (StorageError if fix else OutputError)(
            f"cannot write {path}: {describe_os_error(cause)}{where}; {NOTHING_WRITTEN}{fix}"
        ) from e


# ------------------------------------------------------------------------------------------ publishing
_RENAME_NOREPLACE: Final = 1
_RENAME_EXCHANGE: Final = 2
_AT_FDCWD: Final = -100
_UNSUPPORTED: Final = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EXDEV}


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux's ``renameat2``; False where the C library or the file system does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(dst))


def _publish(tmp: Path, path: Path, *, overwrite: bool, folder: bool) -> None:
    if not overwrite:
        if _renameat2(tmp, path, _RENAME_NOREPLACE):
            return
        if not folder:
            try:
                os.link(tmp, path)  # fails if path exists; the temp name is unlinked by the caller
                return
            except OSError as e:
                if e.errno not in _UNSUPPORTED | {errno.EMLINK}:
                    raise
            # no hard links here (some network and FUSE file systems): reserve the name, then replace it
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        else:
            os.mkdir(path)  # reserve the name (FileExistsError if taken); rename replaces an empty folder
        os.replace(tmp, path)
        return
    if not folder or not path.exists():
        os.replace(tmp, path)
        return
    if _renameat2(tmp, path, _RENAME_EXCHANGE):
        return  # the old folder is now at tmp, removed by the caller
    old = temp_path(path)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _sync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------ stale temps
def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temps of ``path`` left by dead processes of this host; report (not touch) any other stale one.

    Returns the removed paths."""
    return _remove_stale(path.parent, f".{path.name[:_NAME_KEEP]}.")


def remove_stale_temps_in(folder: Path) -> list[Path]:
    """``remove_stale_temps`` for every name in ``folder``: what a killed run left there, whatever it was writing."""
    return _remove_stale(folder, ".")


def _remove_stale(folder: Path, prefix: str) -> list[Path]:
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    host = _host()
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(TMP_TAG)):
            continue
        parts = entry.name[: -len(TMP_TAG)].rsplit(".", 2)  # .NAME . HOST-PID . RANDOM (NAME may hold dots)
        owner_host, _, pid = parts[1].partition("-") if len(parts) == 3 else ("", "", "")
        if owner_host != host or not pid.isdecimal() or _alive(int(pid)):
            continue
        stale = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        if not stale.exists():
            removed.append(stale)
            _log.warning("fmnpatch: removed %s, left by process %s that no longer runs", stale, pid)
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


# ------------------------------------------------------------------------------------------- reading
def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` (created if missing) in one write, under an exclusive lock, and
    flush it to disk: processes appending to the same log never interleave their lines. A line is half there only
    if the machine dies inside the one write; the next append starts on a new line, and readers skip the torn one."""
    if "\n" in line:
        raise ValueError("append_line writes one line; the text holds a newline")
    path = Path(path)
    with _os_errors(path):  # a full disk or a read-only folder: one line, as for every other write
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (line + "\n").encode("utf-8")
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line: do not glue this one to it
                data = b"\n" + data
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The entries of a text file, one per line: ``#`` starts a comment, blank lines are skipped, ends stripped.

    Every list file (``--preserve-file``, ``--from-file``) is read by this one function. The text is UTF-8 (a
    leading byte-order mark is dropped) and lines end at ``\n`` or ``\r\n`` only: a form feed or U+2028 inside a
    line is part of it, not a second entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FmnPatchError(f"{path} is not a file; give a text file with one entry per line")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FmnPatchError(
            f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
        ) from e
    except OSError as e:
        raise FmnPatchError(f"cannot read {path}: {describe_os_error(e)}") from e
    lines = (line.split("#", 1)[0].strip() for line in text.split("\n"))
    return [line for line in lines if line]


def slug(text: str, limit: int = 60) -> str:
    """``text`` as a file-name part: lower-case ASCII letters and digits joined by ``-``, at most ``limit``
    characters (a longer one is cut and ends in 8 hex digits of its hash, so two long names stay apart)."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(base) <= limit:
        return base
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{base[: limit - 9].rstrip('-')}-{digest}"


def check_input(path: str | os.PathLike[str], *, folder: bool = False, what: str = "input") -> Path:
    """Refuse, before any work, an input that is missing, or a file where a folder is wanted (or the reverse)."""
    path = Path(path)
    if not path.exists():
        raise FmnPatchError(f"{what} {str(path)!r} does not exist; check the path")
    if folder and not path.is_dir():
        raise FmnPatchError(f"{what} {str(path)!r} is a file; give a folder")
    if not folder and path.is_dir():
        raise FmnPatchError(f"{what} {str(path)!r} is a folder; give a file")
    return path
