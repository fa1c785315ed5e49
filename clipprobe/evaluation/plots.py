"""Drawing the report's figures (:mod:`.figures`) as PNG files with matplotlib (Agg, imported inside the
functions). PNGs carry no version stamp: the same figure gives the same bytes."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipprobe.evaluation.figures import (
    BarFigure,
    CurveFigure,
    TraceFigure,
    bar_figures,
    bias_accuracy_figure,
    curve_figures,
    group_series,
    index_figures,
    summary_figure,
)
from clipprobe.evaluation.records import Record


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def file_name(*parts: Any) -> str:
    """``a__b__c.png`` from the non-empty parts, each made file-name safe."""
    safe = (re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(p)).strip("-") or "x" for p in parts if p not in ("", None))
    return "__".join(safe) + ".png"


def save_png(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG (100 dpi, no ``Software`` stamp) atomically, close it, and return ``path``."""
    from clipprobe.fileio import atomic_write_bytes

    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _scaled(values: Sequence[float], percent: bool) -> list[float]:
    """Values in percent for proportions."""
    return [100 * v if percent else v for v in values]


def draw_curves(figure: CurveFigure, path: Path) -> Path:
    """A figure of panels side by side: each line with its band (Wilson: light; spread across seeds: darker),
    chance dashed (the panel's, else each line's in its colour), proportions in percent."""
    plt = pyplot()
    count = max(1, len(figure.panels))
    fig, axes = plt.subplots(1, count, figsize=(3.8 * count + 0.8, 3.4), squeeze=False)
    for ax, panel in zip(axes[0], figure.panels, strict=False):
        for line in panel.lines:
            drawn = ax.plot(line.xs, _scaled(line.ys, panel.percent), marker="o", markersize=3, label=line.label)[0]
            lo, hi = _scaled(line.lo, panel.percent), _scaled(line.hi, panel.percent)
            if any(math.isfinite(v) for v in lo + hi):
                ax.fill_between(line.xs, lo, hi, alpha=0.3 if line.band == "spread" else 0.15,
                                color=drawn.get_color(), linewidth=0)  # fmt: skip
            if panel.chance is None and line.chance is not None:
                ax.axhline(100 * line.chance if panel.percent else line.chance, color=drawn.get_color(),
                           linestyle="--", linewidth=0.8, alpha=0.7)  # fmt: skip
        if panel.chance is not None:
            ax.axhline(100 * panel.chance if panel.percent else panel.chance, color="grey", linestyle="--",
                       linewidth=1, label="chance")  # fmt: skip
        if not panel.lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        if panel.percent:
            ax.set_ylim(0, 100)
            ax.set_ylabel("%")
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel(panel.xlabel.replace("_", " "))
        if panel.lines:
            ax.legend(fontsize=6)
    if figure.title:
        fig.suptitle(figure.title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def draw_bars(figure: BarFigure, path: Path) -> Path:
    """Grouped bars: keys on x, a bar per model with its interval, the study's values as black ticks."""
    plt = pyplot()
    groups, ticks = figure.groups, figure.ticks
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(ticks) * max(1, len(groups)) ** 0.5 + 2), 3.4))
    width = 0.8 / max(1, len(groups))
    study_label: str | None = "study (published)"
    for i, g in enumerate(groups):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(ticks))]
        vals = _scaled(g.values, figure.percent)
        lo, hi = _scaled(g.lo, figure.percent), _scaled(g.hi, figure.percent)
        err = [[max(0.0, v - a) if math.isfinite(v - a) else 0.0 for v, a in zip(vals, lo, strict=True)],
               [max(0.0, b - v) if math.isfinite(b - v) else 0.0 for v, b in zip(vals, hi, strict=True)]]  # fmt: skip
        ax.bar(xs, vals, width, yerr=err, capsize=2, label=g.label)
        pts = [(x, 100 * v) for x, v in zip(xs, g.study, strict=False) if v is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker="_", s=300, color="black", zorder=3, label=study_label)
            study_label = None  # one legend entry
    if figure.chance is not None:
        level = 100 * figure.chance if figure.percent else figure.chance
        ax.axhline(level, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(ticks)), ticks)
    if figure.percent:
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
    ax.set_title(figure.title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def _compact(value: float) -> str:
    """``0``, ``640``, ``12.8k``, ``1.3M``: a number of samples or steps, short."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def draw_traces(figure: TraceFigure, path: Path) -> Path:
    """A grid of panels of paths: each path a line in its colour through its points in step order, the points
    coloured by progress (one colour bar), its first and last point labelled; the path's y chance dashed in its
    colour, the x chance dashed grey; proportions in percent."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    plt = pyplot()
    columns = max(1, figure.columns)
    rows = max(1, math.ceil(len(figure.panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns + 1.2, 3.6 * rows), squeeze=False,
                             layout="constrained")  # fmt: skip
    progress = [p for panel in figure.panels for t in panel.traces for p in t.progress]
    lo, hi = min(progress, default=0.0), max(progress, default=1.0)
    norm = Normalize(lo, hi if hi > lo else lo + 1)
    for ax in axes.flat[len(figure.panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, figure.panels, strict=False):
        scale = 100 if panel.percent else 1
        for trace in panel.traces:
            xs, ys = [scale * v for v in trace.xs], [scale * v for v in trace.ys]
            drawn = ax.plot(xs, ys, linewidth=1.2, label=trace.label, zorder=2)[0]
            ax.scatter(xs, ys, c=trace.progress, cmap="viridis", norm=norm, s=28, edgecolors=drawn.get_color(),
                       linewidths=1.0, zorder=3)  # fmt: skip
            for i in sorted({0, len(xs) - 1}):
                ax.annotate(_compact(trace.progress[i]), (xs[i], ys[i]), textcoords="offset points", xytext=(4, 4),
                            fontsize=6)  # fmt: skip
            if trace.chance is not None:
                ax.axhline(scale * trace.chance, color=drawn.get_color(), linestyle="--", linewidth=0.8, alpha=0.7)
        if panel.xchance is not None:
            ax.axvline(scale * panel.xchance, color="grey", linestyle="--", linewidth=1, label="chance")
        if panel.percent:
            ax.set_ylim(0, 100)
        unit = " (%)" if panel.percent else ""
        ax.set_xlabel(panel.xlabel + unit, fontsize=8)
        ax.set_ylabel(panel.ylabel + unit, fontsize=8)
        ax.set_title(panel.title, fontsize=9)
        ax.legend(fontsize=6)
    fig.colorbar(ScalarMappable(norm, "viridis"), ax=axes, label=figure.xkey.replace("_", " "), shrink=0.8)
    if figure.title:
        fig.suptitle(figure.title, fontsize=10)
    return save_png(fig, path)


def series_plots(records: Sequence[Record], out: Path, x: str = "samples_seen", min_count: int = 30,
                 min_points: int = 1, prefix: str = "") -> list[Path]:  # fmt: skip
    """Figures of ONE series (e.g. a run's ``probes.jsonl``) into ``out``: curves and index figures; with
    standard records also the summary (bias headlines next to a zero-shot panel) and the headline bias against
    zero-shot accuracy."""
    figures = curve_figures(records, x, min_count, min_points) + index_figures(records, x, min_points)
    if (summary := summary_figure(records, x, min_count, min_points)) is not None:
        figures.append(summary)
    written = [draw_curves(f, out / file_name(prefix, *f.name)) for f in figures]
    if (traces := bias_accuracy_figure(records, x, min_points)) is not None:
        written.append(draw_traces(traces, out / file_name(prefix, *traces.name)))
    return written


def report_plots(records: Sequence[Record], out: Path, x: str = "samples_seen", min_count: int = 30) -> list[Path]:
    """Every plot of ``clipprobe report``: bars, then each series' curves (series of at least two points)."""
    written = [draw_bars(f, out / file_name(*f.name)) for f in bar_figures(records, min_count)]
    _, series = group_series(records)
    for number, (s, members) in enumerate(series.items()):
        written += series_plots(members, out, x, min_count, min_points=2, prefix=f"series{number}-{s.label}")
    return written
