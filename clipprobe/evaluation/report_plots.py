"""The plots of ``clipprobe report``: per-position bars with Wilson intervals, and bias against samples
seen for checkpoint series. matplotlib is imported inside the functions (Agg backend, no display)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from clipprobe.evaluation.report import MetricKey, Record, _column_order, _is_share, family_name

CHANCE_FAMILIES = ("share_{k}", "closest_{k}", "{k}", "share_{k}_all", "{k}_all")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fname(*parts: Any) -> str:
    return "__".join(re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(p)).strip("-") or "x" for p in parts if p != "") + ".png"


def _panels(records: list[Record]) -> dict[tuple[str, str, int | None, str, str], list[MetricKey]]:
    """(probe, target, n, variant, family) -> its share keys with a column, in column order."""
    panels: dict[tuple[str, str, int | None, str, str], dict[str, MetricKey]] = defaultdict(dict)
    for r in records:
        d = r.data
        for key, value in d["metrics"].items():
            mk = MetricKey.parse(key)
            if mk.column is not None and _is_share(mk.family, value, d.get("intervals", {}).get(key)):
                panels[(d["probe"], str(d.get("target")), mk.n, mk.variant, mk.family)][key] = mk
    return {
        p: sorted(keys.values(), key=lambda m: _column_order(m.column)) for p, keys in sorted(panels.items(), key=str)
    }


def _latest_of_series(records: list[Record]) -> list[Record]:
    """Bars show standalone models and the last checkpoint of each series (a series has its own plots)."""
    last: dict[tuple[str, str, str], Record] = {}
    out = []
    for r in records:
        if r.series is None:
            out.append(r)
            continue
        k = (r.series, r.data["probe"], str(r.data.get("target")))
        if k not in last or (r.data.get("step") or -1) >= (last[k].data.get("step") or -1):
            last[k] = r
    return out + list(last.values())


def _interval(r: Record, key: str, value: float) -> tuple[float, float]:
    lo, hi = (r.data.get("intervals", {}).get(key) or (value, value))[:2]
    return (value if lo is None else lo, value if hi is None else hi)


def bar_charts(records: list[Record], out: Path) -> list[Path]:
    """One grouped bar chart per (probe, probe set, n, family): positions or roles on x, one bar per model."""
    plt = _pyplot()
    written = []
    shown = _latest_of_series(records)
    for (probe, target, n, variant, family), keys in _panels(shown).items():
        rows = [r for r in shown if r.data["probe"] == probe and str(r.data.get("target")) == target]
        rows = [r for r in rows if any(k.key in r.data["metrics"] for k in keys)]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(keys) * max(1, len(rows)) ** 0.5 + 2), 3.4))
        width = 0.8 / max(1, len(rows))
        study_label = "study (published)"
        for i, r in enumerate(rows):
            vals = [r.data["metrics"].get(k.key) for k in keys]
            vals = [float("nan") if v is None else float(v) for v in vals]
            ivs = [_interval(r, k.key, v) for k, v in zip(keys, vals, strict=True)]
            err = [[100 * max(0.0, v - lo) for v, (lo, _) in zip(vals, ivs, strict=True)],
                   [100 * max(0.0, hi - v) for v, (_, hi) in zip(vals, ivs, strict=True)]]  # fmt: skip
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(keys))]
            step = r.data.get("step")
            label = f"{r.model} {r.weights}" + (
                f" (step {step})" if step is not None and str(step) not in r.weights else ""
            )
            ax.bar(xs, [100 * v for v in vals], width, yerr=err, capsize=2, label=label)
            refs = [r.reference(k) for k in keys]
            if any(v is not None for v in refs):  # the study's value for this model, on its bar
                pts = [(x, 100 * v) for x, v in zip(xs, refs, strict=True) if v is not None]
                ax.scatter(*zip(*pts, strict=True), marker="_", s=300, color="black", zorder=3, label=study_label)
                study_label = None  # one legend entry
        if n and family in CHANCE_FAMILIES:
            ax.axhline(100 / n, color="grey", linestyle="--", linewidth=1, label="chance (1/n)")
        ax.set_xticks(range(len(keys)), [k.column or "" for k in keys])
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        title = f"{probe} · {target} · n={n} · {family_name(family)}" + (f" · {variant}" if variant else "")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / _fname(target, probe, variant, f"n{n}", family_name(family))
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def series_charts(records: list[Record], out: Path) -> list[Path]:
    """For each checkpoint series: every position or role against samples seen (or step), with intervals."""
    plt = _pyplot()
    written = []
    by_series: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.series is not None and (r.data.get("samples_seen") is not None or r.data.get("step") is not None):
            by_series[r.series].append(r)
    for number, (series, members) in enumerate(sorted(by_series.items())):
        use_seen = all(r.data.get("samples_seen") is not None for r in members)
        xkey = "samples_seen" if use_seen else "step"
        for (probe, target, n, variant, family), keys in _panels(members).items():
            pts = sorted(
                (r for r in members if r.data["probe"] == probe and str(r.data.get("target")) == target),
                key=lambda r: r.data[xkey],
            )
            if len({r.data[xkey] for r in pts}) < 2:
                continue
            fig, ax = plt.subplots(figsize=(5.5, 3.4))
            xs = [r.data[xkey] for r in pts]
            for k in keys:
                ys = [r.data["metrics"].get(k.key) for r in pts]
                ys = [float("nan") if y is None else float(y) for y in ys]
                ivs = [_interval(r, k.key, y) for r, y in zip(pts, ys, strict=True)]
                line = ax.plot(xs, [100 * y for y in ys], marker="o", label=k.column)[0]
                ax.fill_between(
                    xs, [100 * lo for lo, _ in ivs], [100 * hi for _, hi in ivs], alpha=0.15, color=line.get_color()
                )
            if n and family in CHANCE_FAMILIES:
                ax.axhline(100 / n, color="grey", linestyle="--", linewidth=1)
            ax.set_xlabel(xkey.replace("_", " "))
            ax.set_ylabel("%")
            ax.set_ylim(0, 100)
            ax.set_title(f"{series.split('@')[0]} · {probe} · {target} · n={n} · {family_name(family)}", fontsize=9)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out / _fname(f"series{number}", target, probe, variant, f"n{n}", family_name(family))
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written
