"""Host memory of a process tree (a fit's main process, its loader workers and the W&B service), read from /proc.

Linux only: elsewhere every reader returns None. ``rss`` is each process's resident set summed over the tree
(pages shared between a parent and its forked workers are counted in each); ``pss`` divides shared pages among
the processes sharing them, so its sum is the tree's real footprint. RSS is cheap to read (``statm``, every few
training steps); PSS walks the page tables (``smaps_rollup``, for a benchmark's sampler).
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children of children...), through ``/proc/<pid>/task/*/children``.

    Processes that exit while being read are left out; an empty list when ``pid`` is gone or /proc has no
    children files (a kernel without ``CONFIG_PROC_CHILDREN``: then the tree is found from every ``stat``'s parent).
    """
    if not (PROC / str(pid)).is_dir():
        return []
    tree, todo = [], [pid]
    by_parent: dict[int, list[int]] | None = None
    while todo:
        p = todo.pop()
        tree.append(p)
        kids = _children(p)
        if kids is None:
            by_parent = _parents() if by_parent is None else by_parent
            kids = by_parent.get(p, [])
        todo.extend(k for k in kids if k not in tree)
    return tree


def _children(pid: int) -> list[int] | None:
    tasks = PROC / str(pid) / "task"
    try:
        files = [t / "children" for t in tasks.iterdir()]
    except OSError:
        return []
    if not files or not files[0].exists():
        return None
    kids: list[int] = []
    for f in files:
        try:
            kids.extend(int(k) for k in f.read_text().split())
        except OSError:
            continue
    return kids


def _parents() -> dict[int, list[int]]:
    by_parent: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])  # after "pid (comm) state"
        by_parent.setdefault(ppid, []).append(int(entry.name))
    return by_parent


def process_memory(pid: int, pss: bool = False) -> int | None:
    """Resident bytes of one process (RSS from ``statm``, or PSS from ``smaps_rollup``); None once it is gone."""
    try:
        if not pss:
            pages = int((PROC / str(pid) / "statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE")
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def tree_memory(pid: int | None = None, pss: bool = False) -> tuple[int, int] | None:
    """(bytes, processes) summed over ``pid`` (default: this process) and its descendants; None without /proc."""
    pid = os.getpid() if pid is None else pid
    if not PROC.is_dir():
        return None
    total, count = 0, 0
    for p in descendants(pid):
        value = process_memory(p, pss)
        if value is not None:
            total, count = total + value, count + 1
    return (total, count) if count else None
