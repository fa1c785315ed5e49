"""The emergence experiment's outputs: one plot of the bias curves per condition and a table of final values."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipprobe.experiments.emergence import Settings

PLOT_METRICS = (  # (probe, key template, label, chance template)
    ("tor", "n{n}/closest_1", "tor closest_1 (first mention nearest)", "1/n"),
    ("ior", "n{n}/closest_large", "ior closest_large (large object nearest)", "1/n"),
    ("retrieval", "recall@1", "held-out image->caption recall@1", "1/batch"),
)


def _value(row: dict[str, Any], probe: str, key: str) -> tuple[float, float, float, int]:
    part = row[probe]
    return part["metrics"][key], *part["intervals"][key], part["counts"][key]


def plot(results: dict[str, list[dict[str, Any]]], s: Settings, path: Path) -> None:
    """One panel per :data:`PLOT_METRICS` entry; one line per condition with its Wilson band; chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOT_METRICS), figsize=(5 * len(PLOT_METRICS), 4), squeeze=False)
    for ax, (probe, template, label, chance) in zip(axes[0], PLOT_METRICS, strict=True):
        key = template.format(n=s.plot_n)
        for name, rows in results.items():
            x = [r["samples_seen"] for r in rows]
            vals = [_value(r, probe, key) for r in rows]
            (line,) = ax.plot(x, [v[0] for v in vals], marker="o", ms=3, label=name)
            ax.fill_between(x, [v[1] for v in vals], [v[2] for v in vals], color=line.get_color(), alpha=0.2)
        level = {"1/n": 1.0 / s.plot_n, "1/batch": 1.0 / s.retrieval_batch}[chance]
        ax.axhline(level, color="grey", ls="--", lw=1, label=f"chance ({chance})")
        ax.set(title=label + (f", n={s.plot_n}" if "{n}" in template else ""), xlabel="samples seen", ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})  # no version stamp: same run, same bytes
    plt.close(fig)
    path.write_bytes(buf.getvalue())


def table(results: dict[str, list[dict[str, Any]]], s: Settings) -> str:
    """Markdown table of the final checkpoint's values with 95% Wilson intervals, one row per condition."""
    cols = [(f"tor closest_1 n={n}", "tor", f"n{n}/closest_1") for n in s.tor_n]
    cols += [(f"ior closest_large n={n}", "ior", f"n{n}/closest_large") for n in s.tor_n]
    cols += [(f"recall@{k}", "retrieval", f"recall@{k}") for k in (1, 5)]
    lines = ["| condition | samples seen | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, rows in results.items():
        last = rows[-1]
        cells = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi, _ in (_value(last, p, k) for _, p, k in cols)]
        lines.append(f"| {name} | {last['samples_seen']:,} | " + " | ".join(cells) + " |")
    chance = ", ".join(f"{1 / n:.3f} (n={n})" for n in s.tor_n)
    lines += ["", f"Chance: closest = {chance}; recall@1 = {1 / s.retrieval_batch:.3f}, recall@5 = "
              f"{min(1.0, 5 / s.retrieval_batch):.3f} (held-out batches of {s.retrieval_batch})."]  # fmt: skip
    return "\n".join(lines) + "\n"
