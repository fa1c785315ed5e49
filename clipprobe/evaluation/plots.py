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
    bar_figures,
    curve_figures,
    group_series,
    index_figures,
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
    chance dashed, proportions in percent."""
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


def series_plots(records: Sequence[Record], out: Path, x: str = "samples_seen", min_count: int = 30,
                 min_points: int = 1, prefix: str = "") -> list[Path]:  # fmt: skip
    """Curve and index figures of ONE series (e.g. a run's ``probes.jsonl``) into ``out``."""
    figures = curve_figures(records, x, min_count, min_points) + index_figures(records, x, min_points)
    return [draw_curves(f, out / file_name(prefix, *f.name)) for f in figures]


def report_plots(records: Sequence[Record], out: Path, x: str = "samples_seen", min_count: int = 30) -> list[Path]:
    """Every plot of ``clipprobe report``: bars, then each series' curves (series of at least two points)."""
    written = [draw_bars(f, out / file_name(*f.name)) for f in bar_figures(records, min_count)]
    _, series = group_series(records)
    for number, (s, members) in enumerate(series.items()):
        written += series_plots(members, out, x, min_count, min_points=2, prefix=f"series{number}-{s.label}")
    return written
