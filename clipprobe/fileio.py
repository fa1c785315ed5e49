"""Atomic writes: everything is written to a temporary name in the same folder, then renamed.

A crash or a bad input never leaves a half-written file where a finished one is expected.

Files get the mode ``0666 & ~umask`` and folders ``0777 & ~umask``, as with ``open`` and ``mkdir``:
temporaries are created with ``os.open(..., O_EXCL, 0o666)`` and ``os.mkdir(..., 0o777)``, so the
kernel applies the umask (and a folder's default ACL) itself; nothing reads or changes the umask.

Temporary names hold the host and the process id: ``.NAME.HOST-PID.RANDOM.tmp`` (a file),
``.NAME.HOST-PID.RANDOM.partial`` (a staged folder), ``.NAME.HOST-PID.RANDOM.old`` (the folder being
replaced). A process killed with SIGKILL leaves them behind; the next write of the same ``NAME``
removes the stale ones (see :func:`clean_stale`) and never a live one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from clipprobe.errors import UserError

STALE_AFTER_S = 24 * 3600  # a temporary of another host (its process cannot be checked) is stale after this
REUSED_PID_AFTER_S = 7 * 24 * 3600  # a temporary whose pid runs here is stale after this (the pid was reused)
_NAME_MAX = 120  # characters of NAME kept in a temporary name (file names are limited to 255 bytes)
_NAME_BYTES = 255  # the longest file name most file systems take


def host_name() -> str:
    """This host's name as it appears in temporary names (letters, digits and ``-``)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _temp_name(name: str, kind: str) -> str:
    return f".{name[:_NAME_MAX]}.{host_name()}-{os.getpid()}.{secrets.token_hex(4)}.{kind}"


def _temp_pattern(name: str) -> re.Pattern[str]:
    """Temporary names of ``name``: clipprobe's (host, pid) and, before them, ``tempfile``'s (8 random chars)."""
    base = re.escape(name[:_NAME_MAX])
    return re.compile(
        rf"^\.{base}\.(?:(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[0-9a-f]{{8}}\.(?P<kind>tmp|partial|old)"
        rf"|[a-z0-9_]{{8}}\.(?P<legacy>tmp|partial))$"
    )


_ANY_TMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[0-9a-f]{8}\.(?P<kind>tmp)$")
_SWEPT: set[str] = set()  # folders whose stale temporary files this process has removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, OSError):
        return False
    return True


def _is_stale(match: re.Match[str], age_s: float) -> bool:
    if match.groupdict().get("legacy") or match["host"] != host_name():
        return age_s > STALE_AFTER_S
    return not _pid_alive(int(match["pid"])) or age_s > REUSED_PID_AFTER_S


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def clean_stale(path: str | os.PathLike, every_file: bool = False) -> list[Path]:
    """Remove the stale temporaries of ``path`` left in its folder by killed processes.

    A temporary is stale when its process (host and pid in its name) is no longer running on this
    host, or, where that cannot be checked (another host sharing the folder, names from before pids
    were recorded), when it is older than :data:`STALE_AFTER_S`. A stale ``.old`` folder (the previous
    contents of ``path``, moved aside just before the new ones were renamed in) is moved back to
    ``path`` if ``path`` is missing, else removed.

    Args:
        path: the file or folder that is about to be written.
        every_file: also remove the stale temporary files (``.tmp``) of every other file in the folder.

    Returns:
        The temporaries removed or restored.
    """
    path = Path(os.path.abspath(path))
    pattern = _temp_pattern(path.name)
    now = time.time()
    found = []
    try:
        with os.scandir(path.parent) as entries:
            for entry in entries:
                match = pattern.match(entry.name) or (_ANY_TMP.match(entry.name) if every_file else None)
                if match is None:
                    continue
                try:
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                if _is_stale(match, age):
                    found.append((match["kind"], Path(entry.path)))
    except OSError:  # the folder does not exist yet or cannot be listed: nothing to clean
        return []
    for kind, stale in sorted(found, key=lambda f: f[0] != "old"):  # restore before anything else
        if kind == "old" and not os.path.lexists(path):
            with contextlib.suppress(OSError):  # if the move fails, leave the old contents where they are
                os.replace(stale, path)
            continue
        _remove(stale)
    return [p for _, p in found]


def _create_temp_file(path: Path) -> tuple[int, Path]:
    while True:
        tmp = path.with_name(_temp_name(path.name, "tmp"))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through: a temporary in the same folder, renamed on success.

    On any error the temporary is removed and ``path`` is left as it was. The file gets the mode
    ``0666 & ~umask``. The first write into a folder (outside staging folders, which are new) removes
    the stale temporaries left there by killed processes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.path.abspath(path.parent)
    if folder not in _SWEPT and not any(p.startswith(".") and p.endswith(".partial") for p in Path(folder).parts):
        clean_stale(path, every_file=True)  # once per folder and process (a folder of many files: once, not each)
        _SWEPT.add(folder)
    fd, tmp = _create_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically (same object, same bytes)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def check_writable(path: str | os.PathLike, what: str, fix: str) -> None:
    """Refuse a path that cannot be created: a file where a folder must be on the way to it, or a folder
    this process may not write in (the first one that exists; for root only a read-only file system).

    ``path`` itself is not checked (it may be replaced); the folder it goes in is.

    Args:
        path: the file or folder to be written.
        what: how to name it in the message, e.g. ``--out``.
        fix: what the user should do instead, e.g. ``choose another --out``.

    Raises:
        UserError: naming the file in the way or the folder without write permission.
    """
    target = Path(os.path.abspath(path))
    long = next((p for p in target.parts if len(os.fsencode(p)) > _NAME_BYTES), None)
    if long is not None:
        raise UserError(f"cannot write {what} {path}: the name {long[:40]}... is over {_NAME_BYTES} bytes; {fix}")
    for folder in target.parents:
        if not os.path.lexists(folder):
            continue
        if not folder.is_dir():
            raise UserError(f"cannot write {what} {path}: {folder} is a file, not a folder; {fix}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"cannot write {what} {path}: no permission to write in {folder}; {fix}")
        return


def check_output_dir(out: str | os.PathLike, overwrite: bool, option: str = "--out") -> Path:
    """Refuse a non-empty output folder unless ``overwrite``; a file in its place is always refused, and so
    are a folder that cannot be written (see :func:`check_writable`) and the current folder or one above it.

    Stale temporaries of ``out`` left by killed runs are removed first (see :func:`clean_stale`).
    """
    out = Path(out)
    fix = f"choose another {option}"
    check_writable(out, option, fix)
    clean_stale(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder; {fix}")
    absolute = Path(os.path.abspath(out))
    if absolute == Path(absolute.anchor) or Path.cwd() == absolute or absolute in Path.cwd().parents:
        raise UserError(f"{option} {out} is the current folder or holds it; name a new folder, e.g. {option} ./out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder {out} is not empty; pass --overwrite true or {fix}")
    return out


def check_not_input(out: str | os.PathLike, inputs: list[str | os.PathLike], option: str = "--out") -> None:
    """Refuse an output folder that is, or holds, one of the command's inputs (it would be replaced).

    Args:
        out: the output folder.
        inputs: local input files and folders (missing ones are ignored).
        option: the option ``out`` came from, named in the message.

    Raises:
        UserError: naming the input that would be lost.
    """
    target = Path(out).resolve()
    if not target.exists():
        return
    for item in inputs:
        path = Path(item).resolve()
        if path.exists() and (path == target or target in path.parents):
            raise UserError(
                f"{option} {out} holds the input {item}, which writing it would delete; choose another {option}"
            )


def check_output_file(path: str | os.PathLike, option: str = "--out", suffix: str | None = None) -> Path:
    """Refuse an output file path that is a folder, has the wrong suffix, or cannot be written.

    Args:
        path: the file to be written.
        option: the option it came from, named in messages.
        suffix: the suffix it must have (e.g. ``.png``; any case), or None.

    Raises:
        UserError: naming the problem and the fix.
    """
    path = Path(path)
    if path.is_dir():
        hint = f", e.g. {option} {path / ('out' + (suffix or ''))}" if suffix else ""
        raise UserError(f"{option} {path} is a folder; give the file to write{hint}")
    if suffix is not None and path.suffix.lower() != suffix.lower():
        raise UserError(f"{option} {path} must end in {suffix} (the file written is {suffix[1:].upper()})")
    check_writable(path, option, f"choose another {option}")
    return path


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary sibling name; on success it replaces ``out`` in one rename.

    On any error the staging folder is removed and ``out`` is left as it was. The folder gets the mode
    ``0777 & ~umask``. Stale staging folders of ``out`` left by killed runs are removed first.
    """
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    while True:
        stage = out.with_name(_temp_name(out.name, "partial"))
        try:
            stage.mkdir(0o777)
            break
        except FileExistsError:
            continue
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(out):
        old = out.with_name(_temp_name(out.name, "old"))
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        _remove(old)


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime) within the process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def folder_sha256(path: str | os.PathLike) -> str:
    """SHA-256 over every file's relative path and content hash (:func:`file_sha256`, remembered within the
    process): a model folder whose weights were replaced by others of the same size gets another hash."""
    base = Path(path)
    digest = hashlib.sha256()
    for p in sorted(q for q in base.rglob("*") if q.is_file()):
        digest.update(f"{p.relative_to(base).as_posix()}:{file_sha256(p)}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (made if missing) for the block: processes sharing a folder
    (the tasks of a SLURM array generating one corpus) take turns. ``fcntl.flock``, which local file systems and
    the usual cluster ones (Lustre, GPFS, NFSv4) honour."""
    import fcntl

    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
