"""Bounds on what a size option may cost: refuse in one line before allocating or writing anything.

Each generator estimates the memory its options would take (and, where it writes much, the disk) and
calls :func:`check_memory` / :func:`check_disk`, which name the estimate, the limit and the fix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from clipprobe.errors import UserError

MAX_MEMORY = 8 * 2**30  # never plan to take more than this, nor more than half the machine's memory


def format_bytes(n: float) -> str:
    """``"512 B"``, ``"3.4 MiB"``, ``"1.2 TiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # unreachable


def memory_limit() -> int:
    """The most memory a command may plan to take: :data:`MAX_MEMORY` or half the machine's, if less."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MAX_MEMORY
    return min(MAX_MEMORY, total // 2) if total > 0 else MAX_MEMORY


def check_memory(estimate: int, what: str, fix: str) -> None:
    """Refuse options that would take more than :func:`memory_limit` bytes.

    Args:
        estimate: the bytes the options would take.
        what: the options and their values, e.g. ``--tile 100000 with --columns 6``.
        fix: what to lower, e.g. ``lower --tile``.

    Raises:
        UserError: ``"<what> would take about <estimate> of memory (limit <limit>); <fix>"``.
    """
    limit = memory_limit()
    if estimate > limit:
        raise UserError(
            f"{what} would take about {format_bytes(estimate)} of memory (limit {format_bytes(limit)}); {fix}"
        )


def check_disk(estimate: int, where: str | os.PathLike, what: str, fix: str) -> None:
    """Refuse options whose output would not fit in the free space where it goes.

    Args:
        estimate: a lower bound of the bytes to be written (so that a refusal is never wrong).
        where: the output path (it need not exist yet; its first existing folder is measured).
        what: the options and their values.
        fix: what to change.

    Raises:
        UserError: ``"<what> would write at least <estimate> but only <free> are free in <folder>; <fix>"``.
    """
    folder = Path(os.path.abspath(where))
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if estimate > free:
        raise UserError(
            f"{what} would write at least {format_bytes(estimate)} but only {format_bytes(free)} are free in "
            f"{folder}; {fix}"
        )


MIN_WORKER_LIMIT = 64  # --workers up to this is always accepted
WORKERS_PER_CORE = 4  # beyond MIN_WORKER_LIMIT, at most this many processes per core


def check_workers(workers: int, cores: int, option: str = "--workers") -> None:
    """Refuse a worker count below 1, or so far above the cores that it would only exhaust memory.

    Raises:
        UserError: naming the count, the cores and the limit.
    """
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise UserError(f"{option} must be a whole number of processes, got {workers!r}")
    if workers < 1:
        raise UserError(f"{option} must be at least 1, got {workers}; leave it out to use all cores")
    limit = max(MIN_WORKER_LIMIT, WORKERS_PER_CORE * cores)
    if workers > limit:
        raise UserError(
            f"{option} {workers} is more processes than {cores} cores can use (limit {limit}); lower {option} "
            "or leave it out to use all cores"
        )


def choose_workers(workers: int | None, cores: int, per_worker: int, what: str, fix: str) -> int:
    """The number of worker processes: ``workers`` if given and affordable, else as many as the cores and
    the memory limit allow.

    Args:
        workers: the user's ``--workers``, or None for the default.
        cores: the cores this process may use.
        per_worker: the bytes one worker takes at most.
        what: the options that set ``per_worker``, e.g. ``--image-size 4096``.
        fix: what to lower besides ``--workers``.

    Raises:
        UserError: a worker count below 1 or far above the cores, or more memory than the limit.
    """
    if workers is None:
        check_memory(per_worker, f"{what} (one worker)", fix)
        return max(1, min(cores, memory_limit() // max(1, per_worker)))
    check_workers(workers, cores)
    check_memory(workers * per_worker, f"{what} with --workers {workers}", f"lower --workers or {fix}")
    return workers
