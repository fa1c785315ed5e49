"""What the report's plots show, computed from records without matplotlib (drawn by :mod:`.plots`).

- bar figures: per (probe, target, variant, n, family), a group of bars per standalone model and per
  series' last point, a bar per key, with Wilson intervals and the study's values;
- curve figures: per series, (target, probe, variant, family): a panel per n, a line per key against
  samples seen (or step), with Wilson bands;
- index figures: per series and (target, probe): the bias index and the hit rate, a line per (variant, n).

Shares among hits resting on fewer than ``min_count`` cases are left out (NaN), so no 100% bar stands on
one case; chance comes from :attr:`Metric.chance`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from clipprobe.evaluation.records import Record
from clipprobe.evaluation.structure import (
    INDEX_FAMILIES,
    Series,
    display_label,
    entries,
    is_percent,
    is_thin,
    options_label,
    sections,
    series_axis,
    series_of,
    x_value,
)
from clipprobe.evaluation.study import study_value
from clipprobe.probes.base import Metric

NAN = math.nan


@dataclass
class Line:
    """One line of a panel: values and band (``lo``..``hi``) at each x; NaN = no point.

    ``band`` says what the band is: ``wilson`` (95% interval of one run) or ``spread`` (min-max across seeds).
    """

    label: str
    xs: list[float]
    ys: list[float]
    lo: list[float]
    hi: list[float]
    band: str = "wilson"


@dataclass
class Panel:
    """One axes: lines against ``xlabel``; ``percent`` = proportions drawn in percent (0-100)."""

    title: str
    lines: list[Line]
    xlabel: str
    percent: bool
    chance: float | None = None


@dataclass
class CurveFigure:
    """A figure of panels side by side; ``name`` = the parts of its file name."""

    name: tuple[str, ...]
    title: str
    panels: list[Panel]


@dataclass
class BarGroup:
    """The bars of one model: a value and interval per key, and the study's values (None = not published)."""

    label: str
    values: list[float]
    lo: list[float]
    hi: list[float]
    study: list[float | None] = field(default_factory=list)


@dataclass
class BarFigure:
    """A bar chart: ``ticks`` (keys) on x, a :class:`BarGroup` per model; ``name`` = the parts of its file name."""

    name: tuple[str, ...]
    title: str
    ticks: list[str]
    groups: list[BarGroup]
    percent: bool
    chance: float | None = None


def shown_value(m: Metric | None, min_count: int) -> tuple[float, float, float]:
    """(value, lo, hi) of an entry as plotted: NaN when absent or a share among too few hits."""
    if m is None or is_thin(m, min_count):
        return (NAN, NAN, NAN)
    return (m.value, *m.interval)


def common_chance(metrics: Sequence[Metric]) -> float | None:
    """The chance level of a panel's entries, when they all agree on one."""
    levels = {m.chance for m in metrics if m.chance is not None}
    return next(iter(levels)) if len(levels) == 1 else None


def group_series(records: Sequence[Record]) -> tuple[list[Record], dict[Series, list[Record]]]:
    """(standalone records, series -> its records), in report order."""
    alone: list[Record] = []
    series: dict[Series, list[Record]] = defaultdict(list)
    for r in records:
        s = series_of(r)
        if s is None:
            alone.append(r)
        else:
            series[s].append(r)
    return alone, dict(sorted(series.items(), key=lambda kv: (kv[0].label, kv[0].folder, kv[0].model, kv[0].source)))


def bar_records(records: Sequence[Record]) -> list[Record]:
    """Standalone models and the last point (by step) of each series, per (probe, target)."""
    alone, series = group_series(records)
    last: dict[tuple[Series, str, str, str], Record] = {}
    for s, members in series.items():
        for r in members:
            k = (s, r.probe, r.target, options_label(r))
            if k not in last or (r.step or -1) >= (last[k].step or -1):
                last[k] = r
    return alone + list(last.values())


def bar_figures(records: Sequence[Record], min_count: int = 30) -> list[BarFigure]:
    """One figure per keyed table of each (probe, target), over :func:`bar_records`."""
    out = []
    for sec in sections(bar_records(records)):
        for table, columns in sec.tables:
            if table.family is None:
                continue
            groups, seen = [], []
            for r in sec.records:
                found = entries(r)
                ms = [found.get((table.variant, table.n, c.family, c.key)) for c in columns]
                if all(m is None for m in ms):
                    continue
                seen += [m for m in ms if m is not None]
                vals = [shown_value(m, min_count) for m in ms]
                step = f" (step {r.step})" if r.step is not None else ""
                study = [study_value(r, c.family, c.key, table.n, table.variant) for c in columns]
                label = f"{r.model} {display_label(r)}{step}"
                groups.append(BarGroup(label, [v[0] for v in vals], [v[1] for v in vals], [v[2] for v in vals], study))
            if not any(math.isfinite(v) for g in groups for v in g.values):
                continue  # nothing left to draw (every share rests on too few cases)
            n = "" if table.n is None else f"n{table.n}"
            title = " · ".join(
                p for p in (sec.probe, sec.target, table.variant, n and f"n={table.n}", table.family) if p
            )
            name = ("bars", sec.target, sec.probe, table.variant or "", n, table.family)
            ticks = [c.title for c in columns]
            out.append(BarFigure(name, title, ticks, groups, is_percent(table.family), common_chance(seen)))
    return out


def _by_options(members: Sequence[Record]) -> dict[tuple[str, str], list[list[Record]]]:
    """(target, probe) -> records of each option set (usually one), in order."""
    groups: dict[tuple[str, str], dict[str, list[Record]]] = defaultdict(dict)
    for r in members:
        groups[(r.target, r.probe)].setdefault(options_label(r), []).append(r)
    return {k: list(v.values()) for k, v in groups.items()}


def _points(records: Sequence[Record], xkey: str) -> list[tuple[float, Record]]:
    """(x, record) sorted by x (numbers, not names); at one x the last record read wins."""
    at: dict[float, Record] = {}
    for r in records:
        x = x_value(r, xkey)
        if x is not None:
            at[x] = r
    return sorted(at.items(), key=lambda p: p[0])


def _line(label: str, pts: Sequence[tuple[float, Record]], where: tuple[str | None, int | None, str, str | None],
          min_count: int) -> tuple[Line, list[Metric]]:  # fmt: skip
    """The line of the entry at ``where`` over the points, and the entries found."""
    ms = [entries(r).get(where) for _, r in pts]
    vals = [shown_value(m, min_count) for m in ms]
    line = Line(label, [x for x, _ in pts], [v[0] for v in vals], [v[1] for v in vals], [v[2] for v in vals])
    return line, [m for m in ms if m is not None]


def curve_figures(records: Sequence[Record], x: str = "samples_seen", min_count: int = 30,
                  min_points: int = 1) -> list[CurveFigure]:  # fmt: skip
    """Curve figures of ONE series: per (target, probe[, options], variant, family) a panel per n, a line per key.

    Args:
        records: the series' records.
        x: ``samples_seen`` (falls back to ``step`` when a record lacks it) or ``step``.
        min_count: shares among hits on fewer cases are left out.
        min_points: figures with fewer distinct x values are not made.
    """
    xkey = series_axis(records, x)
    out = []
    for (target, probe), option_sets in _by_options(records).items():
        for i, members in enumerate(option_sets):
            pts = _points(members, xkey)
            if len(pts) < max(1, min_points):
                continue
            opts = f"opts{i + 1}" if len(option_sets) > 1 else ""
            figs: dict[tuple[str | None, str], dict[int | None, dict[str | None, None]]] = {}
            for _, r in pts:
                for m in r.metrics:
                    if m.family not in INDEX_FAMILIES:
                        figs.setdefault((m.variant, m.family), {}).setdefault(m.n, {})[m.key] = None
            for (variant, family), by_n in figs.items():
                panels = []
                for n, keys in sorted(by_n.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
                    lines, seen = [], []
                    for key in keys:
                        line, ms = _line(family if key is None else key, pts, (variant, n, family, key), min_count)
                        lines.append(line)
                        seen += ms
                    panels.append(Panel("" if n is None else f"n={n}", lines, xkey, is_percent(family),
                                        common_chance(seen)))  # fmt: skip
                title = " · ".join(p for p in (target, probe, opts, variant, family) if p)
                out.append(CurveFigure(("curves", target, probe, opts, variant or "", family), title, panels))
    return out


def index_figures(records: Sequence[Record], x: str = "samples_seen", min_points: int = 1) -> list[CurveFigure]:
    """The bias index and hit rate of ONE series per (target, probe[, options]): a line per (variant, n)."""
    xkey = series_axis(records, x)
    out = []
    for (target, probe), option_sets in _by_options(records).items():
        for i, members in enumerate(option_sets):
            pts = _points(members, xkey)
            if len(pts) < max(1, min_points):
                continue
            panels = []
            for family in INDEX_FAMILIES:
                wheres = {(m.variant, m.n, m.family, m.key): None for _, r in pts for m in r.metrics
                          if m.family == family}  # fmt: skip
                lines, seen = [], []
                for where in wheres:
                    label = " ".join(
                        p for p in (where[0], None if where[1] is None else f"n={where[1]}", where[3]) if p
                    )
                    line, ms = _line(label or family, pts, where, 0)
                    lines.append(line)
                    seen += ms
                if lines:
                    panels.append(Panel(family, lines, xkey, is_percent(family), common_chance(seen)))
            if panels:
                opts = f"opts{i + 1}" if len(option_sets) > 1 else ""
                title = " · ".join(p for p in (target, probe, opts, "bias index / hit rate") if p)
                out.append(CurveFigure(("index", target, probe, opts), title, panels))
    return out
