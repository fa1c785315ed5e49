"""The report's tables: ``results.csv`` (one row per metric entry) and ``results.md`` (one section per
(probe, target), one table per (variant, n, family), one row per model, weights and step)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from clipprobe.evaluation.records import Record
from clipprobe.evaluation.structure import (
    Column,
    TableKey,
    condition,
    display_label,
    entries,
    finite,
    is_percent,
    is_thin,
    run_dir,
    sections,
    seed,
    summary_tables,
    weights_label,
)
from clipprobe.evaluation.study import STUDY, not_comparable, published_value
from clipprobe.probes.base import Metric

CSV_FIELDS = (
    "model", "weights", "step", "samples_seen", "source", "run", "condition", "seed", "target", "probe",
    "probe_version", "variant", "n", "family", "key", "name", "value", "lo", "hi", "count", "chance",
)  # fmt: skip
FAMILY_TITLES = {
    "closest": "nearest among the query's own objects, over all queries (chance 1/n)",
    "share": "top-1 among hits, the study's tables (n = the hits it rests on)",
    "share_all": "top-1 over all queries",
    "accuracy": "accuracy",
    "recall": "image-to-caption recall@k within batches (key = k)",
    "image_retrieval_recall": "zero-shot text-to-image retrieval: the caption's image among the k nearest (key = k)",
    "text_retrieval_recall": "zero-shot image-to-text retrieval: a caption of the image among the k nearest (key = k)",
    "mean": "mean",
    "ratio": "ratio",
    None: "per-n summary",
}
THIN = "†"


def csv_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per metric entry, in record then entry order (see :data:`CSV_FIELDS`)."""
    rows = []
    for r in records:
        for m in r.metrics:
            lo, hi = m.interval
            rows.append({
                "model": r.model, "weights": weights_label(r), "step": r.step, "samples_seen": r.samples_seen,
                "source": r.source, "run": run_dir(r), "condition": condition(r), "seed": seed(r), "target": r.target,
                "probe": r.probe, "probe_version": r.probe_version, "variant": m.variant, "n": m.n,
                "family": m.family, "key": m.key, "name": m.name, "value": m.value if finite(m.value) else None,
                "lo": lo if finite(lo) else None, "hi": hi if finite(hi) else None, "count": m.count,
                "chance": m.chance,
            })  # fmt: skip
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text with :data:`CSV_FIELDS` as header; None is written as an empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def fmt_number(value: float | None, family: str | None) -> str:
    """Proportions in percent with one decimal (``63.9``), other numbers with three (``0.123``); ``–`` for none."""
    if value is None or not finite(value):
        return "–"
    return f"{100 * value:.1f}" if is_percent(family) else f"{value:.3f}"


def fmt_value(m: Metric) -> str:
    """``63.9 [58.1, 69.4]``: the value and its 95% interval (percent for proportions)."""
    text = fmt_number(m.value, m.family)
    lo, hi = m.interval
    if text != "–" and finite(lo) and finite(hi):
        text += f" [{fmt_number(lo, m.family)}, {fmt_number(hi, m.family)}]"
    return text


def fmt_cell(m: Metric, min_count: int, with_count: bool = False) -> str:
    """A table cell: the value and interval; shares among hits (and ``with_count``) with their count ``n=..``,
    marked :data:`THIN` when fewer than ``min_count`` cases."""
    text = fmt_value(m)
    if with_count or not m.robust:
        text += f" n={m.count}"
    if is_thin(m, min_count):
        text += f" {THIN}"
    return text


def _row_label(r: Record) -> list[str]:
    seen = "" if r.samples_seen is None else f"{r.samples_seen:,}"
    return [r.model, display_label(r), "" if r.step is None else str(r.step), seen]


def table_lines(records: Sequence[Record], table: TableKey, columns: Sequence[Column], min_count: int) -> list[str]:
    """One markdown table: a row per record holding any of its columns, the study's values beneath its models."""
    robust = table.robust
    heads = [c.title for c in columns] + (["count"] if robust else [])
    lines = ["| model | weights | step | samples seen | " + " | ".join(heads) + " |", "|---" * (len(heads) + 4) + "|"]
    for r in records:
        found = entries(r)
        cells_m = [found.get((table.variant, table.n, c.family, c.key)) for c in columns]
        present = [m for m in cells_m if m is not None]
        if not present:
            continue
        counts = {m.count for m in present}
        per_cell = robust and len(counts) > 1
        cells = ["–" if m is None else fmt_cell(m, min_count, per_cell) for m in cells_m]
        if robust:
            cells.append("" if per_cell else str(next(iter(counts))))
        lines.append("| " + " | ".join(_row_label(r) + cells) + " |")
        lines += _study_lines(r, table, columns, robust)
    return lines


def _study_lines(r: Record, table: TableKey, columns: Sequence[Column], robust: bool) -> list[str]:
    """The study's values beneath a record of one of its models: a row of values when the record counted as the
    study did; else a row without values that says why not (``not comparable: exact hits``), so that numbers
    counted otherwise never stand beside the published ones."""
    refs = [published_value(r, c.family, c.key, table.n, table.variant) for c in columns]
    if all(v is None for v in refs):
        return []
    why = next((w for c, v in zip(columns, refs, strict=True) if v is not None and (w := not_comparable(r, c.family))),
               None)  # fmt: skip
    if why is not None:
        return [f"| ↳ *study* | *{why}* | | | " + " | ".join([""] * (len(columns) + robust)) + " |"]
    ref_cells = ["" if v is None else f"{100 * v:.2f}" for v in refs] + ([""] if robust else [])
    return [f"| ↳ *study* | *{STUDY}* | | | " + " | ".join(ref_cells) + " |"]


def table_title(table: TableKey, columns: Sequence[Column]) -> str:
    """``n = 3 · `closest`: ...``: where the table sits (variant, n) and what it measures."""
    where = [p for p in (table.variant, None if table.n is None else f"n = {table.n}") if p]
    if table.family is None:
        what = ", ".join(f"`{c.family}`" for c in columns) + (f": {FAMILY_TITLES[None]}" if table.n is not None else "")
    else:
        what = f"`{table.family}`: " + FAMILY_TITLES.get(table.family, "by position or role")
    return " · ".join([*where, what])


def summary_lines(records: Sequence[Record], min_count: int = 30) -> list[str]:
    """The summary section: bias headlines next to the standard metrics, a table for the standalone models (a row
    per model and weights) and one per series (a row per step), a ``chance`` row beneath; none without entries."""
    tables = summary_tables(records)
    if not tables:
        return []
    lines = [
        "",
        "## summary",
        "",
        "Headline bias: the `closest` share (over all queries) of the first-mentioned object (tor) and of the "
        "large object (ior, i2tor) at each n, chance 1/n; then the standard zero-shot evaluation per dataset "
        "(classification: `acc1`, `acc5`, `mean_per_class_recall`; retrieval: `image_retrieval_recall@k` "
        "text-to-image, `text_retrieval_recall@k` image-to-text). The tables per probe follow.",
    ]
    for table in tables:
        s = table.series
        title = "models" if s is None else f"series `{s.label}` · {s.model} ({s.source})"
        heads = [c.title for c in table.columns]
        lines += ["", f"### {title}", "", "| model | weights | step | samples seen | " + " | ".join(heads) + " |",
                  "|---" * (len(heads) + 4) + "|"]  # fmt: skip
        chance: list[list[float]] = [[] for _ in table.columns]
        for row in table.rows:
            cells = []
            for i, column in enumerate(table.columns):
                m = table.cell(row, column)
                cells.append("–" if m is None else fmt_cell(m, min_count))
                chance[i] += [] if m is None or m.chance is None else [m.chance]
            lines.append("| " + " | ".join(_row_label(row[0]) + cells) + " |")
        if any(chance):
            levels = [fmt_number(c[0], col.family) if len(set(c)) == 1 else "" for c, col in
                      zip(chance, table.columns, strict=True)]  # fmt: skip
            lines.append("| *chance* | | | | " + " | ".join(levels) + " |")
    return lines


def to_markdown(records: Sequence[Record], min_count: int = 30) -> str:
    """``results.md``: the summary (:func:`summary_lines`), then one section per (probe, target), one table per
    (variant, n, family), robust ones first."""
    models = {(r.model, display_label(r), r.step) for r in records}
    lines = [
        "# clipprobe results",
        "",
        f"{len(records)} results, {len(models)} models or checkpoints. Proportions are percentages with "
        "95% intervals (Wilson) in brackets; `count` is the denominator (the queries). Tables counted over "
        "every query come first; shares among hits (`share`) rest only on the hits, so each cell gives its "
        f"count `n=..`, and {THIN} marks those under {min_count} cases (left out of the plots). Rows marked "
        f"*study* give the published values ({STUDY}, measured on the study's Blender renders of ComCO, or on COCO "
        "for the `mscoco` targets: its Tables 3-4, IOR with DomainNet references) for the same model and tag; "
        "clipprobe's ComCO uses emoji sprites, so expect the pattern, not the digits, to agree. "
        "The study's TOR shares are among substring hits of its paper-mode captions, so they stand only beside tor "
        "and mitigation rows counted that way (`mode: paper`, `hits: substring`); beneath other rows a *study* row "
        "without values says why they are not comparable.",
    ]
    lines += summary_lines(records, min_count)
    for sec in sections(records):
        lines += ["", f"## {sec.probe} · {sec.target}"]
        notes = sorted({note for r in sec.records for note in r.notes})
        lines += [f"- note: {note}" for note in notes[:10]]
        for table, columns in sec.tables:
            lines += ["", f"### {table_title(table, columns)}", ""]
            lines += table_lines(sec.records, table, columns, min_count)
    return "\n".join(lines) + "\n"
