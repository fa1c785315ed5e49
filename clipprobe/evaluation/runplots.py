"""``clipprobe plot RUN_DIR``: the curves of one training run (the short form of ``clipprobe report``) and its loss.

Reads ``<run>/probes.jsonl`` (records appended by the training callback, through
:func:`clipprobe.evaluation.records.read_records`) and the run's ``metrics.csv`` (:class:`clipprobe.training.
loggers.CSVLogger`, or any Lightning CSVLogger below the run folder); W&B is not needed. Writes into
``<run>/plots``:

- ``loss.png``: training loss (and validation loss, logit scale when logged) against the step;
- ``curves__<target>__<probe>[__<variant>]__<family>.png``: each key's value against samples seen, a panel
  per n, Wilson 95% bands, chance dashed (shares among hits on fewer than ``min_count`` cases left out);
- ``index__<target>__<probe>.png``: the bias index and the hit rate, a line per (variant, n);
- with standard evaluation records (zero-shot classification or retrieval, :data:`clipprobe.evaluation.structure.
  STANDARD_TASKS`) in ``probes.jsonl``: ``summary.png``, the headline bias of each probe (``closest`` of the first
  or large object, a line per n) next to a ``zero-shot`` panel (top-1 accuracy per classification dataset,
  recall@1 per retrieval dataset and direction), each line with its chance dashed; and ``bias_vs_accuracy.png``,
  the headline bias against zero-shot top-1 accuracy, a point per evaluation coloured by samples seen.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from clipprobe.errors import UserError
from clipprobe.evaluation.plots import pyplot, save_png, series_plots
from clipprobe.evaluation.structure import check_plot_options

LOSS_KEYS = ("train/loss", "val/loss", "train/logit_scale")


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


def loss_plot(metrics: dict[str, list[tuple[int, float]]], out: Path) -> Path | None:
    """Loss (train, and validation if logged) and the logit scale against the step; None without a train loss."""
    keys = [k for k in LOSS_KEYS if metrics.get(k)]
    if "train/loss" not in keys:
        return None
    plt = pyplot()
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
    return save_png(fig, out / "loss.png")


def plot(run_dir: str, out: str | None = None, x: str = "samples_seen", min_count: int = 30) -> list[Path]:
    """Write PNGs of a run's probe curves and zero-shot evaluation (from probes.jsonl) and loss (from metrics.csv).

    No W&B needed. With zero-shot records in probes.jsonl, ``summary.png`` shows the headline bias next to a
    zero-shot panel, and ``bias_vs_accuracy.png`` the headline bias against zero-shot top-1 accuracy.

    Args:
        run_dir: The run folder (``--trainer.default_root_dir`` of ``clipprobe fit``).
        out: Output folder (default: ``RUN_DIR/plots``).
        x: x axis of the curves: ``samples_seen`` or ``step``.
        min_count: shares among hits resting on fewer cases are left out of the curves.

    Returns:
        The PNG files written.

    Raises:
        UserError: the folder is missing or holds neither probes.jsonl nor a metrics.csv; probes.jsonl holds
            schema-1 results.
    """
    from clipprobe.evaluation.records import read_records
    from clipprobe.fileio import check_output_dir

    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise UserError(f"{run_dir} is a file; pass the run folder (the --trainer.default_root_dir of a fit)")
    if not run.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass the --trainer.default_root_dir of a fit")
    check_plot_options(x, min_count)
    probes, metrics = run / "probes.jsonl", find_metrics(run)
    if not probes.is_file() and metrics is None:
        raise UserError(f"{run} holds neither probes.jsonl nor a metrics.csv; train with the BiasProbeCallback "
                        "and a CSV logger (see configs/fit/tiny-synthetic.yaml)")  # fmt: skip
    records = read_records(probes) if probes.is_file() else []
    series = read_metrics(metrics) if metrics is not None else {}
    if not records and not series.get("train/loss"):
        raise UserError(f"{run} holds no probe records and no train/loss rows in {metrics or 'metrics.csv'}; nothing "
                        "to plot (is the run still at its first step?)")  # fmt: skip
    dest = check_output_dir(out or run / "plots", overwrite=True)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    if series and (loss := loss_plot(series, dest)) is not None:
        written.append(loss)
    if records:
        written += series_plots(records, dest, x, min_count)
    print(f"wrote {len(written)} plots to {dest}")
    return written
