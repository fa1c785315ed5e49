"""What the report's plots show, computed from records without matplotlib (drawn by :mod:`.plots`).

- bar figures: per (probe, target, variant, n, family), a group of bars per standalone model and per
  series' last point, a bar per key, with Wilson intervals and the study's values;
- curve figures: per series, (target, probe, variant, family): a panel per n, a line per key against
  samples seen (or step), with Wilson bands;
- index figures: per series and (target, probe): the bias index and the hit rate, a line per (variant, n);
- the summary figure of a series with standard records: a panel per bias (target, probe) with its headline
  (``closest`` of the first or large object) per n, and a ``zero-shot`` panel (top-1 accuracy per
  classification dataset, recall@1 per retrieval dataset and direction);
- the bias-against-accuracy figure of a series: the headline bias (y) against zero-shot top-1 accuracy (x),
  a point per step joined in step order and coloured by samples seen.

Shares among hits resting on fewer than ``min_count`` cases are left out (NaN), so no 100% bar stands on
one case; chance comes from :attr:`Metric.chance`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from clipprobe.evaluation.records import Record
from clipprobe.evaluation.structure import (
    CLASSIFICATION,
    INDEX_FAMILIES,
    Series,
    display_label,
    entries,
    entry_key,
    headline_entries,
    is_percent,
    is_standard,
    is_thin,
    options_label,
    probe_rank,
    sections,
    series_axis,
    series_of,
    standard_headline,
    x_value,
)
from clipprobe.evaluation.study import study_value
from clipprobe.probes.base import Metric

NAN = math.nan


@dataclass
class Line:
    """One line of a panel: values and band (``lo``..``hi``) at each x; NaN = no point.

    ``band`` says what the band is: ``wilson`` (95% interval of one run) or ``spread`` (min-max across seeds);
    ``chance`` the line's own chance level, drawn when the panel has no common one.
    """

    label: str
    xs: list[float]
    ys: list[float]
    lo: list[float]
    hi: list[float]
    band: str = "wilson"
    chance: float | None = None


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
class Trace:
    """One path of a :class:`TracePanel`: a point (``xs``, ``ys``) per step in step order, ``progress`` its
    samples seen (or step); ``chance`` the y chance level."""

    label: str
    xs: list[float]
    ys: list[float]
    progress: list[float]
    chance: float | None = None


@dataclass
class TracePanel:
    """One axes of paths: ``xchance`` the x chance level; ``percent`` = both axes proportions (in percent)."""

    title: str
    traces: list[Trace]
    xlabel: str
    ylabel: str
    xchance: float | None = None
    percent: bool = True


@dataclass
class TraceFigure:
    """A grid of :class:`TracePanel` (``columns`` a row), points coloured by ``progress`` (its axis: ``xkey``)."""

    name: tuple[str, ...]
    title: str
    panels: list[TracePanel]
    columns: int
    xkey: str


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


def _option_groups(records: Sequence[Record], xkey: str,
                   min_points: int) -> list[tuple[str, str, str, list[tuple[float, Record]]]]:  # fmt: skip
    """(target, probe, options label, points) of a series per (target, probe[, options]) with at least
    ``min_points`` points, probes in report order (bias probes, then the standard tasks)."""
    out = []
    for (target, probe), option_sets in sorted(_by_options(records).items(), key=lambda kv: (probe_rank(kv[0][1]),
                                                                                           kv[0][0])):  # fmt: skip
        for i, members in enumerate(option_sets):
            pts = _points(members, xkey)
            if len(pts) >= max(1, min_points):
                out.append((target, probe, f"opts{i + 1}" if len(option_sets) > 1 else "", pts))
    return out


def _selected(pts: Sequence[tuple[float, Record]], select: Callable[[Record], list[Metric]]) -> dict[
        tuple[str | None, int | None, str, str | None], str]:  # fmt: skip
    """The places (:func:`entry_key`) of the entries ``select`` picks at any point, with the first name read; by n
    (entries without one first), then in the order written."""
    found: dict[tuple[str | None, int | None, str, str | None], str] = {}
    for _, r in pts:
        for m in select(r):
            found.setdefault(entry_key(m), m.name)
    return dict(sorted(found.items(), key=lambda kv: -1 if kv[0][1] is None else kv[0][1]))


def summary_figure(records: Sequence[Record], x: str = "samples_seen", min_count: int = 30,
                   min_points: int = 1) -> CurveFigure | None:  # fmt: skip
    """The summary of ONE series with standard records: a panel per bias (target, probe[, options]) with its
    headline entries (a line per n), then a ``zero-shot`` panel with each standard record's headline (top-1
    accuracy, recall@1) per dataset; each line with its own chance level. None without standard lines."""
    xkey = series_axis(records, x)
    panels, zero, zero_seen = [], [], []
    for target, probe, opts, pts in _option_groups(records, xkey, min_points):
        standard = is_standard(pts[0][1])
        lines, seen = [], []
        for where, name in _selected(pts, standard_headline if standard else headline_entries).items():
            label = " ".join(p for p in (target if standard else "", opts, name) if p)
            line, ms = _line(label, pts, where, min_count)
            line.chance = common_chance(ms)
            lines.append(line)
            seen += ms
        if standard:
            zero += lines
            zero_seen += seen
        elif lines:
            percent = all(is_percent(m.family) for m in seen)
            panels.append(Panel(" · ".join(p for p in (target, probe, opts) if p), lines, xkey, percent,
                                common_chance(seen)))  # fmt: skip
    if not zero:
        return None
    panels.append(
        Panel("zero-shot", zero, xkey, all(is_percent(m.family) for m in zero_seen), common_chance(zero_seen))
    )
    return CurveFigure(("summary",), "headline bias and zero-shot evaluation", panels)


def bias_accuracy_figure(records: Sequence[Record], x: str = "samples_seen", min_points: int = 1) -> TraceFigure | None:
    """Headline bias against zero-shot top-1 accuracy of ONE series: a panel per (classification dataset, bias
    (target, probe)), a path per headline entry (n) through the steps where both were measured, in step
    order; points carry their samples seen (or step). None when the series lacks either."""
    xkey = series_axis(records, x)
    groups = _option_groups(records, xkey, 1)
    axes, biases = [], []
    for target, probe, opts, pts in groups:
        if probe == CLASSIFICATION:
            for where, name in _selected(pts, standard_headline).items():
                at = {pos: m for pos, r in pts if (m := entries(r).get(where)) is not None}
                axes.append((" ".join(p for p in (target, opts, name, "(zero-shot)") if p), at))
        elif not is_standard(pts[0][1]) and (wheres := _selected(pts, headline_entries)):
            biases.append((" · ".join(p for p in (target, probe, opts) if p), pts, wheres))
    panels = []
    for xlabel, accuracy in axes:
        for title, pts, wheres in biases:
            traces = []
            for where, name in wheres.items():
                pairs = [(accuracy[pos], m, pos) for pos, r in pts
                         if pos in accuracy and (m := entries(r).get(where)) is not None
                         and math.isfinite(accuracy[pos].value) and math.isfinite(m.value)]  # fmt: skip
                if len(pairs) >= max(1, min_points):
                    traces.append(Trace(name, [a.value for a, _, _ in pairs], [m.value for _, m, _ in pairs],
                                        [pos for _, _, pos in pairs], common_chance([m for _, m, _ in pairs])))  # fmt: skip
            if traces:
                xchance = common_chance(list(accuracy.values()))
                panels.append(TracePanel(title, traces, xlabel, "headline bias (closest)", xchance))
    if not panels:
        return None
    columns = min(len(panels), len(biases))
    return TraceFigure(("bias_vs_accuracy",), "headline bias against zero-shot top-1 accuracy", panels, columns, xkey)
