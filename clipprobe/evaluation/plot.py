"""``clipprobe plot RUN_DIR``: the bias curves and the loss of a training run, as PNG files.

Reads ``<run>/probes.jsonl`` (written by :class:`clipprobe.training.callbacks.BiasProbeCallback`) and the
run's ``metrics.csv`` (:class:`clipprobe.training.loggers.CSVLogger`, or any Lightning CSVLogger below the
run folder); W&B is not needed. Writes into ``<run>/plots``:

- ``loss.png``: training loss (and validation loss, logit scale when logged) against the step;
- ``bias__<set>__<probe>[__<variant>]__<family>.png``: each position's (or role's) share against
  samples seen, one panel per number of objects n, with Wilson 95% bands and chance (1/n);
- ``index__<set>__<probe>.png``: the bias index and the hit rate per n.

Matplotlib is imported inside the functions (Agg backend, no display).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from clipprobe.errors import UserError
from clipprobe.evaluation.report import MetricKey, _column_order, family_name

log = logging.getLogger(__name__)
CHANCE_FAMILIES = ("share_{k}", "closest_{k}", "{k}", "share_{k}_all", "{k}_all", "closest_{k}_all")
SCALARS = ("bias_index", "hit_rate")
LOSS_KEYS = ("train/loss", "val/loss", "train/logit_scale")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``probes.jsonl`` (lines that do not parse are skipped with a warning)."""
    records = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON; skipped", path, i)
    return records


def share_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-position (or per-role) shares of one ``probes.jsonl`` record, one row each, in key order.

    Rows: ``step, samples_seen, set, probe, variant, n, family, position, share, lo, hi, count``.
    """
    rows = []
    intervals, counts = record.get("intervals") or {}, record.get("counts") or {}
    for key, value in record["metrics"].items():
        mk = MetricKey.parse(key)
        iv = intervals.get(key)
        if mk.column is None or iv is None or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            continue
        lo, hi = (value if v is None else v for v in iv[:2])
        rows.append({"step": record["step"], "samples_seen": record.get("samples_seen"), "set": record["set"],
                     "probe": record["probe"], "variant": mk.variant, "n": mk.n, "family": mk.family,
                     "position": mk.column, "share": float(value), "lo": float(lo), "hi": float(hi),
                     "count": counts.get(key)})  # fmt: skip
    return rows


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` -> column -> [(step, value)] in step order, the last value per step (a resumed run
    logs replayed steps again)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or ""))
            except ValueError:
                continue
            for key, text in row.items():
                if key and key != "step" and text not in (None, ""):
                    try:
                        series[key][step] = float(text)
                    except ValueError:
                        continue
    return {k: sorted(v.items()) for k, v in series.items()}


def find_metrics(run: Path) -> Path | None:
    """``<run>/metrics.csv``, else the newest ``metrics.csv`` below the run folder."""
    if (run / "metrics.csv").is_file():
        return run / "metrics.csv"
    found = sorted(run.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fname(*parts: Any) -> str:
    return "__".join(re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(p)).strip("-") or "x" for p in parts if p != "") + ".png"


def loss_plot(metrics: dict[str, list[tuple[int, float]]], out: Path) -> Path | None:
    """Loss (train, and validation if logged) and the logit scale against the step."""
    keys = [k for k in LOSS_KEYS if metrics.get(k)]
    if "train/loss" not in keys:
        return None
    plt = _pyplot()
    panels = [["train/loss", "val/loss"], ["train/logit_scale"]]
    panels = [[k for k in p if k in keys] for p in panels if any(k in keys for k in p)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for key in panel:
            steps, values = zip(*metrics[key], strict=True)
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
        ax.set_xlabel("step")
        ax.set_title(" · ".join(panel), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bias_plots(records: list[dict[str, Any]], out: Path, x: str) -> list[Path]:
    """One figure per (set, probe, variant, family): a panel per n, a line per position, Wilson bands."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        for row in share_rows(rec):
            groups[(row["set"], row["probe"], row["variant"], row["family"])].append(row)
    plt = _pyplot()
    written = []
    for (pset, probe, variant, family), rows in sorted(groups.items()):
        ns = sorted({r["n"] for r in rows}, key=lambda n: -1 if n is None else n)
        fig, axes = plt.subplots(1, len(ns), figsize=(3.6 * len(ns) + 0.6, 3.2), squeeze=False, sharey=True)
        for ax, n in zip(axes[0], ns, strict=True):
            mine = [r for r in rows if r["n"] == n]
            for pos in sorted({r["position"] for r in mine}, key=_column_order):
                pts = sorted((_x(r, x), r) for r in mine if r["position"] == pos)
                xs = [p[0] for p in pts]
                line = ax.plot(xs, [100 * r["share"] for _, r in pts], marker="o", markersize=3, label=pos)[0]
                ax.fill_between(xs, [100 * r["lo"] for _, r in pts], [100 * r["hi"] for _, r in pts], alpha=0.15,
                                color=line.get_color())  # fmt: skip
            if n and family in CHANCE_FAMILIES:
                ax.axhline(100 / n, color="grey", linestyle="--", linewidth=1, label="chance (1/n)")
            ax.set_title(f"n={n}", fontsize=9)
            ax.set_xlabel(x.replace("_", " "))
            ax.set_ylim(0, 100)
            ax.legend(fontsize=6)
        axes[0][0].set_ylabel("%")
        fig.suptitle(f"{pset} · {probe} · {family_name(family)}" + (f" · {variant}" if variant else ""), fontsize=10)
        fig.tight_layout()
        path = out / _fname("bias", pset, probe, variant, family_name(family))
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def index_plots(records: list[dict[str, Any]], out: Path, x: str) -> list[Path]:
    """Per (set, probe): bias index (with its interval) and hit rate against ``x``, a line per n."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[(rec["set"], rec["probe"])].append(rec)
    plt = _pyplot()
    written = []
    for (pset, probe), recs in sorted(groups.items()):
        keys = {k for r in recs for k in r["metrics"] if k.rsplit("/", 1)[-1] in SCALARS and "/" in k}
        if not keys:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.4), squeeze=False)
        for ax, scalar in zip(axes[0], SCALARS, strict=True):
            for key in sorted(k for k in keys if k.endswith("/" + scalar)):
                pts = sorted((_x(r, x), r) for r in recs if _finite(r["metrics"].get(key)))
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                line = ax.plot(xs, [r["metrics"][key] for _, r in pts], marker="o", markersize=3,
                               label=key.rsplit("/", 1)[0])[0]  # fmt: skip
                ivs = [(r.get("intervals") or {}).get(key) for _, r in pts]
                if all(iv and _finite(iv[0]) and _finite(iv[1]) for iv in ivs):
                    ax.fill_between(xs, [iv[0] for iv in ivs], [iv[1] for iv in ivs], alpha=0.15,
                                    color=line.get_color())  # fmt: skip
            if scalar == "bias_index":
                ax.axhline(0, color="grey", linestyle="--", linewidth=1)
            ax.set_title(f"{pset} · {probe} · {scalar}", fontsize=9)
            ax.set_xlabel(x.replace("_", " "))
            ax.legend(fontsize=6)
        fig.tight_layout()
        path = out / _fname("index", pset, probe)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _x(record: dict[str, Any], x: str) -> float:
    value = record.get(x)
    return float(record["step"] if value is None else value)


def plot(run_dir: str, out: str | None = None, x: str = "samples_seen") -> list[Path]:
    """Write PNGs of a run's bias curves (from probes.jsonl) and loss (from metrics.csv); no W&B needed.

    Args:
        run_dir: The run folder (``--trainer.default_root_dir`` of ``clipprobe fit``).
        out: Output folder (default: ``RUN_DIR/plots``).
        x: x axis of the bias curves: ``samples_seen`` or ``step``.

    Returns:
        The PNG files written.

    Raises:
        UserError: the folder is missing or holds neither probes.jsonl nor a metrics.csv.
    """
    from clipprobe.fileio import check_output_dir

    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass the --trainer.default_root_dir of a fit")
    if x not in ("samples_seen", "step"):
        raise UserError(f"--x must be samples_seen or step, got {x!r}")
    probes, metrics = run / "probes.jsonl", find_metrics(run)
    if not probes.is_file() and metrics is None:
        raise UserError(f"{run} holds neither probes.jsonl nor a metrics.csv; train with the BiasProbeCallback "
                        "and a CSV logger (see configs/fit/tiny-synthetic.yaml)")  # fmt: skip
    dest = check_output_dir(out or run / "plots", overwrite=True)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    if metrics is not None and (loss := loss_plot(read_metrics(metrics), dest)) is not None:
        written.append(loss)
    if probes.is_file():
        records = read_records(probes)
        written += bias_plots(records, dest, x) + index_plots(records, dest, x)
    print(f"wrote {len(written)} plots to {dest}")
    return written
