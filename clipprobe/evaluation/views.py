"""Experiment views: conditions compared on chosen metrics, from the same records the report reads.

A :class:`PanelSpec` selects one metric entry per record by its fields (probe, family, n, key, variant, and
optionally target). :func:`condition_curves` draws one panel per spec, one line per condition
(``run["condition"]``); :func:`final_table` gives the last step's values. Several seeds of a condition
(``run["seed"]``) are averaged: the mean, with the min-max spread across seeds as its band; a single run
shows its Wilson 95% band.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipprobe.evaluation.figures import CurveFigure, Line, Panel
from clipprobe.evaluation.plots import draw_curves
from clipprobe.evaluation.records import Record
from clipprobe.evaluation.structure import (
    condition,
    display_label,
    finite,
    is_percent,
    run_dir,
    seed,
    series_axis,
    x_value,
)
from clipprobe.evaluation.tables import fmt_number, fmt_value
from clipprobe.probes.base import Metric


@dataclass(frozen=True)
class PanelSpec:
    """Which entry a panel (or table column) shows: fields compared for equality (None matches None),
    except ``target``, where None means any target.

    Attributes:
        probe: the record's probe (``tor``).
        family: the entry's family (``closest``).
        n: the entry's number of objects (None for entries without one).
        key: the entry's key (``"1"``, ``large``; None for keyless entries).
        variant: the entry's variant (None for none).
        title: the panel title (default: built from the fields).
        target: the record's target, or None for any.
    """

    probe: str
    family: str
    n: int | None = None
    key: str | None = None
    variant: str | None = None
    title: str = ""
    target: str | None = None

    @property
    def label(self) -> str:
        """The title, else ``probe [variant] family_key n=N``."""
        if self.title:
            return self.title
        parts = [self.probe, self.variant, self.family + ("" if self.key is None else f"_{self.key}")]
        return " ".join(p for p in parts if p) + ("" if self.n is None else f" n={self.n}")

    def find(self, r: Record) -> Metric | None:
        """The record's entry this spec selects, or None."""
        if r.probe != self.probe or (self.target is not None and r.target != self.target):
            return None
        found = r.find(family=self.family, n=self.n, key=self.key, variant=self.variant)
        return found[0] if found else None


def by_condition(records: Sequence[Record]) -> dict[str, dict[str, list[Record]]]:
    """condition -> run (seed, else run folder) -> records, conditions and runs in the order first read.

    A record without a condition is its own condition, named by its run folder or weights.
    """
    out: dict[str, dict[str, list[Record]]] = {}
    for r in records:
        name = condition(r) or (Path(run_dir(r) or "").name or display_label(r))
        who = f"seed {seed(r)}" if seed(r) is not None else (run_dir(r) or display_label(r))
        out.setdefault(name, {}).setdefault(who, []).append(r)
    return out


def trajectory(records: Sequence[Record], spec: PanelSpec, x: str) -> list[tuple[float, Metric, Record]]:
    """(x, entry, record) of one run, sorted by x as numbers; at one x the last record read wins."""
    at: dict[float, tuple[Metric, Record]] = {}
    for r in records:
        m, pos = spec.find(r), x_value(r, x)
        if m is not None and pos is not None:
            at[pos] = (m, r)
    return [(pos, m, r) for pos, (m, r) in sorted(at.items(), key=lambda p: p[0])]


def condition_line(name: str, runs: dict[str, list[Record]], spec: PanelSpec, x: str) -> tuple[Line, list[Metric]]:
    """One condition's line: a run with its Wilson band, or several seeds' mean with their min-max spread."""
    paths = [p for p in (trajectory(recs, spec, x) for recs in runs.values()) if p]
    found = [m for p in paths for _, m, _ in p]
    if len(paths) <= 1:
        pts = paths[0] if paths else []
        ms = [m for _, m, _ in pts]
        return Line(name, [pos for pos, _, _ in pts], [m.value for m in ms], [m.interval[0] for m in ms],
                    [m.interval[1] for m in ms]), found  # fmt: skip
    xs = sorted({pos for p in paths for pos, _, _ in p})
    at = [[m.value for p in paths for pos, m, _ in p if pos == at_x and finite(m.value)] for at_x in xs]
    nan = float("nan")
    mean = [statistics.fmean(v) if v else nan for v in at]
    lo, hi = [min(v) if v else nan for v in at], [max(v) if v else nan for v in at]
    return Line(f"{name} ({len(paths)} seeds)", xs, mean, lo, hi, band="spread"), found


def chance_of(metrics: Sequence[Metric]) -> float | None:
    """The first chance level the entries give, or None."""
    return next((m.chance for m in metrics if m.chance is not None), None)


def condition_curves(records: list[Record], panels: list[PanelSpec], path: Path, x: str = "samples_seen") -> Path:
    """One figure, one panel per spec, one line per condition against ``x``; chance dashed; same input, same bytes.

    Args:
        records: the experiment's records (every run's ``probes.jsonl``).
        panels: what each panel shows.
        path: the PNG to write (its folder is made).
        x: ``samples_seen`` (falls back to ``step`` when a record lacks it) or ``step``.

    Returns:
        ``path``.
    """
    xkey = series_axis(records, x)
    groups = by_condition(records)
    out = []
    for spec in panels:
        lines, seen = [], []
        for name, runs in groups.items():
            line, found = condition_line(name, runs, spec, xkey)
            if line.xs:
                lines.append(line)
                seen += found
        out.append(Panel(spec.label, lines, xkey, is_percent(spec.family), chance_of(seen)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return draw_curves(CurveFigure((), "", out), Path(path))


def last_point(records: Sequence[Record], spec: PanelSpec) -> tuple[Metric, Record] | None:
    """The entry of a run's last evaluation (by step, then samples seen) that has it, or None."""
    found = [(r, m) for r in records if (m := spec.find(r)) is not None]
    if not found:
        return None
    r, m = max(reversed(found), key=lambda p: (p[0].step or -1, p[0].samples_seen or -1))
    return m, r


def final_cell(runs: dict[str, list[Record]], spec: PanelSpec) -> tuple[str, int | None]:
    """(cell, samples seen) of a condition's last step: ``value [lo, hi]`` for one run; with several seeds the
    mean over seeds, their range and the median half-width of the runs' own 95% intervals
    ``(min–max, k seeds; run ±h)``: a range much wider than ±h means the seeds differ more than sampling does."""
    last = [p for p in (last_point(recs, spec) for recs in runs.values()) if p is not None]
    seen = [r.samples_seen for _, r in last if r.samples_seen is not None]
    most = max(seen) if seen else None
    if len(last) <= 1:
        return (fmt_value(last[0][0]) if last else "–"), most
    values = [m.value for m, _ in last if finite(m.value)]
    if not values:
        return "–", most
    mean, lo, hi = statistics.fmean(values), min(values), max(values)
    halves = [(m.interval[1] - m.interval[0]) / 2 for m, _ in last if all(map(finite, m.interval))]
    mean_text, lo_text, hi_text = (fmt_number(v, spec.family) for v in (mean, lo, hi))
    run = f"; run ±{fmt_number(statistics.median(halves), spec.family)}" if halves else ""
    return f"{mean_text} ({lo_text}–{hi_text}, {len(values)} seeds{run})", most


def final_table(records: list[Record], columns: list[PanelSpec]) -> str:
    """Markdown: one row per condition, the last step's value per column.

    One run: ``value [lo, hi]`` (95% interval). Several seeds: ``mean (min–max, k seeds)``. Proportions
    are in percent (as in ``results.md``).
    """
    heads = [c.label for c in columns]
    lines = ["| condition | samples seen | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
    chance: dict[str, float] = {}
    for name, runs in by_condition(records).items():
        cells, seen = [], []
        for spec in columns:
            cell, s = final_cell(runs, spec)
            cells.append(cell)
            seen += [] if s is None else [s]
            level = chance_of([m for recs in runs.values() for r in recs if (m := spec.find(r)) is not None])
            if level is not None:
                chance.setdefault(spec.label, level)
        lines.append(f"| {name} | {f'{max(seen):,}' if seen else ''} | " + " | ".join(cells) + " |")
    lines += ["", "Last step of each run; proportions in percent; [lo, hi]: 95% interval of one run; "
              "(min–max, k seeds; run ±h): range of the seeds' values around their mean, and the median half-width "
              "of one run's 95% interval."]  # fmt: skip
    if chance:
        spec_of = {c.label: c for c in columns}
        lines.append(
            "Chance: " + "; ".join(f"{k} = {fmt_number(v, spec_of[k].family)}" for k, v in chance.items()) + "."
        )
    return "\n".join(lines) + "\n"
