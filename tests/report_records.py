"""Result records built in memory for the report, plot and view tests (entries written by the probes' own
writers, :func:`clipprobe.probes.stats.put_position_shares`). Not a test module."""

from __future__ import annotations

from typing import Any

from clipprobe.evaluation.records import Record
from clipprobe.probes.base import Metric, ProbeResult
from clipprobe.probes.stats import put_position_shares, wilson

PROBE_SET = {"name": "comco", "kind": "comco", "path": "/sets/comco", "manifest_sha256": "ab" * 32}


def position_entries(first: float, n: int = 4, total: int = 100, hits: int | None = None,
                     roles: list[str] | None = None, variant: str | None = None) -> list[Metric]:  # fmt: skip
    """The entries of a tally of ``total`` queries where position 1 is nearest (and top-1) in ``first`` of
    them, the rest shared evenly; ``hits`` queries are hits (default all)."""
    hits = total if hits is None else hits
    rest = (1 - first) / (n - 1)
    closest = [round(first * total)] + [round(rest * total)] * (n - 1)
    top_hits = [round(first * hits)] + [round(rest * hits)] * (n - 1)
    counts = {"total": total, "hits": hits, "top1_hits": top_hits, "top1_all": top_hits, "closest": closest}
    result = ProbeResult("x")
    put_position_shares(result, counts, variant=variant, roles=roles)
    return result.entries


def record(probe: str = "tor", metrics: list[Metric] | None = None, *, model: str = "clipprobe-tiny",
           weights: dict[str, Any] | None = None, step: int | None = None, seen: int | None = None,
           run: dict[str, Any] | None = None, source: str = "eval", target: str = "comco",
           options: dict[str, Any] | None = None) -> Record:  # fmt: skip
    return Record(
        model=model, weights=weights or {"kind": "random", "seed": 0}, probe=probe, probe_version=1,
        options=options or {"run_seed": 0}, target=target, metrics=metrics or position_entries(0.5),
        probe_set=dict(PROBE_SET), step=step, samples_seen=seen, run=run, source=source,
        timestamp="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


def tag(name: str) -> dict[str, Any]:
    return {"kind": "tag", "tag": name}


def run_record(run: str, step: int, first: float, probe: str = "tor", *, source: str = "callback",
               extra: dict[str, Any] | None = None, hits: int | None = None) -> Record:  # fmt: skip
    """A training run's record at ``step`` (64 samples a step)."""
    roles = ["large", "small_1", "small_2", "small_3"] if probe == "ior" else None
    weights = {"kind": "run", "run": run, "step": step}
    return record(probe, position_entries(first, 4, 100, hits, roles), weights=weights, step=step, seen=64 * step,
                  run={"dir": run, **(extra or {})}, source=source)  # fmt: skip


def single(name: str, family: str, value: float, count: int, *, n: int | None = 3, key: str | None = None,
           variant: str | None = None, chance: float | None = None) -> Metric:  # fmt: skip
    """One share entry with its Wilson interval."""
    return Metric(name, family, value, count, wilson(value * count, count), n, key, variant, chance)
