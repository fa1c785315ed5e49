"""How the report reads records: labels, series, and the order of sections, tables and columns.

Everything here works on the records' structured fields (``Record.model``, ``weights``, ``run``,
``step``; ``Metric.variant``, ``n``, ``family``, ``key``). No metric name is ever parsed: a name is
only a display label and a CSV column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clipprobe.errors import UserError
from clipprobe.evaluation.records import Record
from clipprobe.probes.base import Metric

PROBE_ORDER = ("tor", "toc", "mitigation", "size_claim", "ior", "i2tor", "ioc", "attention", "itm")
# Standard evaluation (CLIP_benchmark's zero-shot tasks): records like the probes', after every bias probe.
CLASSIFICATION = "zeroshot_classification"
STANDARD_TASKS = (CLASSIFICATION, "zeroshot_retrieval")
# Robust families first (counted over every query), shares among hits ("share") last.
FAMILY_ORDER = ("closest", "bias_index", "hit_rate", "share_all", "accuracy", "mean_per_class_recall", "recall",
                "image_retrieval_recall", "text_retrieval_recall", "preference", "tie_rate", "mean", "ratio",
                "share")  # fmt: skip
# Families whose values are proportions in [0, 1]: shown in percent.
PERCENT_FAMILIES = frozenset({"share", "share_all", "closest", "hit_rate", "accuracy", "preference", "tie_rate",
                              "mean_per_class_recall", "recall", "image_retrieval_recall",
                              "text_retrieval_recall"})  # fmt: skip
# A bias probe's headline: the robust "closest" share of the first position (tor) or the large object (ior,
# i2tor), without a variant, one per n.
HEADLINE_FAMILY = "closest"
HEADLINE_KEYS = ("1", "large")
# A standard task's headline: top-1 accuracy (classification), recall@1 (retrieval, both directions).
STANDARD_HEADLINE_KEYS = ("top1", "1")
# Families drawn in the "bias index / hit rate" view instead of the curve figures.
INDEX_FAMILIES = ("bias_index", "hit_rate")
X_AXES = ("samples_seen", "step")


@dataclass(frozen=True)
class Column:
    """A table column: one (family, key) of a table; keyless entries are titled by their family."""

    family: str
    key: str | None

    @property
    def title(self) -> str:
        """The column title: the key, or the family of a keyless entry."""
        return self.family if self.key is None else self.key


@dataclass(frozen=True)
class TableKey:
    """What a table holds: entries of one (variant, n, family); ``family`` None = the keyless entries of
    (variant, n) (``bias_index``, ``hit_rate``, ...), one column per family."""

    variant: str | None
    n: int | None
    family: str | None

    @property
    def robust(self) -> bool:
        """Counted over every query: every family but ``share`` (shares among hits)."""
        return self.family != "share"


@dataclass
class Section:
    """One (probe, target) of the report: its records (in report order) and tables (in display order)."""

    probe: str
    target: str
    records: list[Record]
    tables: list[tuple[TableKey, list[Column]]]


@dataclass(frozen=True)
class Series:
    """Records of one training run (``run["dir"]``), or of one checkpoint folder evaluated by ``clipprobe eval``."""

    folder: str
    model: str
    source: str

    @property
    def label(self) -> str:
        """The folder's name."""
        return Path(self.folder).name or self.folder


@dataclass(frozen=True)
class SummaryColumn:
    """A column of the summary: the entry at (variant, n, family, key) of the records of one (probe, target), of
    their ``options``-th option set (0 when a table has one set of that probe and target)."""

    probe: str
    target: str
    options: int
    variant: str | None
    n: int | None
    family: str
    key: str | None
    title: str = field(default="", compare=False)


@dataclass
class SummaryTable:
    """The summary of one series (a row per step) or of the standalone models (``series`` None, a row per
    model and weights): each row's records, and the columns in display order."""

    series: Series | None
    rows: list[list[Record]]
    columns: list[SummaryColumn]
    option_sets: dict[tuple[str, str], list[str]]

    def option(self, r: Record) -> int:
        """The record's option set among its (probe, target)'s in this table: 1, 2, ..., or 0 when there is one."""
        sets = self.option_sets[(r.probe, r.target)]
        return sets.index(options_label(r)) + 1 if len(sets) > 1 else 0

    def cell(self, row: Sequence[Record], column: SummaryColumn) -> Metric | None:
        """The row's entry of a column (of the last record that has it), or None."""
        found = None
        for r in row:
            if (r.probe, r.target) == (column.probe, column.target) and self.option(r) == column.options:
                found = entries(r).get((column.variant, column.n, column.family, column.key), found)
        return found


def table_key(m: Metric) -> TableKey:
    """The table an entry belongs to."""
    return TableKey(m.variant, m.n, m.family if m.key is not None else None)


def entry_key(m: Metric) -> tuple[str | None, int | None, str, str | None]:
    """``(variant, n, family, key)``: an entry's place, unique within a record."""
    return (m.variant, m.n, m.family, m.key)


def entries(record: Record) -> dict[tuple[str | None, int | None, str, str | None], Metric]:
    """A record's entries by :func:`entry_key`."""
    return {entry_key(m): m for m in record.metrics}


def is_percent(family: str | None) -> bool:
    """Proportions (:data:`PERCENT_FAMILIES`) are shown in percent."""
    return family in PERCENT_FAMILIES


def is_thin(m: Metric, min_count: int) -> bool:
    """A share among hits resting on fewer than ``min_count`` cases: marked in tables, left out of plots."""
    return not m.robust and m.count < min_count


def finite(v: float | None) -> bool:
    """A number, neither None, NaN nor infinite."""
    return v is not None and math.isfinite(v)


# ---------------------------------------------------------------------------------------------
# Headlines: what the summary table and figures show


def is_standard(r: Record) -> bool:
    """A standard evaluation (:data:`STANDARD_TASKS`: zero-shot classification or retrieval), not a bias probe."""
    return r.probe in STANDARD_TASKS


def is_headline(m: Metric) -> bool:
    """A bias probe's headline entry (:data:`HEADLINE_FAMILY` with a key in :data:`HEADLINE_KEYS`, no variant):
    tor's ``closest_1`` and ior's ``closest_large`` at each n."""
    return m.family == HEADLINE_FAMILY and m.key in HEADLINE_KEYS and m.variant is None


def headline_entries(r: Record) -> list[Metric]:
    """A bias record's headline entries (none for a standard record), in the order written."""
    return [] if is_standard(r) else [m for m in r.metrics if is_headline(m)]


def standard_headline(r: Record) -> list[Metric]:
    """A standard record's headline entries (keys in :data:`STANDARD_HEADLINE_KEYS`: ``acc1``, the recalls@1);
    none for a bias record."""
    return [m for m in r.metrics if m.key in STANDARD_HEADLINE_KEYS] if is_standard(r) else []


def summary_entries(r: Record) -> list[Metric]:
    """What a record gives the summary: every entry of a standard task, the headline of a bias probe."""
    return list(r.metrics) if is_standard(r) else headline_entries(r)


# ---------------------------------------------------------------------------------------------
# Labels


def run_dir(r: Record) -> str | None:
    """The training run's folder (``run["dir"]``, else a ``run`` weights' folder), or None."""
    run = (r.run or {}).get("dir")
    if run is None and r.weights.get("kind") == "run":
        run = r.weights.get("run")
    return None if run is None else str(run)


def condition(r: Record) -> str | None:
    """The experiment condition (``run["condition"]``), or None."""
    value = (r.run or {}).get("condition")
    return None if value is None else str(value)


def seed(r: Record) -> int | None:
    """The experiment run's seed (``run["seed"]``), or None."""
    value = (r.run or {}).get("seed")
    return None if value is None else int(value)


def weights_label(r: Record) -> str:
    """A short name of the weights: the tag, a file's stem, a run's folder name, ``random`` or ``hf-hub``."""
    w = r.weights
    kind = w.get("kind")
    if kind == "tag":
        return str(w.get("tag"))
    if kind == "file":
        return Path(str(w.get("path"))).stem
    if kind == "run":
        return Path(str(w.get("run") or run_dir(r) or "run")).name
    return str(kind or "unknown")


def display_label(r: Record) -> str:
    """The weights label, with the experiment condition and seed when there are."""
    parts = [weights_label(r)]
    if condition(r) is not None:
        parts.append(str(condition(r)))
    if seed(r) is not None:
        parts.append(f"seed {seed(r)}")
    return " · ".join(parts)


def options_label(r: Record) -> str:
    """The record's options as canonical JSON (records of one series with other options form other curves)."""
    return json.dumps(r.options, sort_keys=True, default=str)


def series_of(r: Record) -> Series | None:
    """The record's series: its run folder, else its checkpoint folder when the step is known; None = standalone."""
    folder = run_dir(r)
    if folder is None and r.weights.get("kind") == "file" and (r.step is not None or r.samples_seen is not None):
        folder = str(Path(str(r.weights.get("path"))).parent)
    return None if folder is None else Series(folder, r.model, r.source)


def check_plot_options(x: str, min_count: int) -> None:
    """Check the plot options of ``clipprobe report`` and ``clipprobe plot``.

    Raises:
        UserError: ``x`` is not one of :data:`X_AXES`, or ``min_count`` is negative.
    """
    if x not in X_AXES:
        raise UserError(f"--x must be samples_seen or step, got {x!r}")
    if min_count < 0:
        raise UserError(f"--min_count must be 0 or more, got {min_count}")


def x_value(r: Record, x: str) -> float | None:
    """The record's position on the x axis (``samples_seen`` or ``step``), or None when unknown."""
    value = r.samples_seen if x == "samples_seen" else r.step
    return None if value is None else float(value)


def series_axis(records: Iterable[Record], x: str) -> str:
    """``x`` if every record has it, else ``step`` (a run logged without samples seen)."""
    return x if all(x_value(r, x) is not None for r in records) else "step"


# ---------------------------------------------------------------------------------------------
# Order


def _none_last(v: int | None) -> tuple[int, int]:
    return (1, 0) if v is None else (0, v)


def record_order(r: Record) -> tuple[str, str, int, int, str]:
    """Report order: model, then the series (run or checkpoint folder) or the weights of a standalone model,
    then step and samples seen as numbers (step 20 before step 100, whatever the file names)."""
    s = series_of(r)
    step = -1 if r.step is None else int(r.step)
    seen = -1 if r.samples_seen is None else int(r.samples_seen)
    return (r.model, display_label(r) if s is None else s.folder, step, seen, display_label(r))


def order_records(records: Sequence[Record]) -> list[Record]:
    """Records in report order; of records with one identity, step and run only the last read is kept."""
    last: dict[tuple[str, int | None, int | None, str | None, str], int] = {}
    for i, r in enumerate(records):
        last[(r.identity_key(), r.step, r.samples_seen, run_dir(r), r.source)] = i
    kept = [records[i] for i in sorted(last.values())]
    return sorted(kept, key=record_order)


def probe_rank(probe: str) -> tuple[int, int, str]:
    """Position of a probe: :data:`PROBE_ORDER`, then other probes by name, then :data:`STANDARD_TASKS`."""
    if probe in STANDARD_TASKS:
        return (2, STANDARD_TASKS.index(probe), probe)
    return (0, PROBE_ORDER.index(probe), probe) if probe in PROBE_ORDER else (1, 0, probe)


def family_rank(family: str | None) -> tuple[int, str]:
    """Position of a family in :data:`FAMILY_ORDER` (the keyless table sits with ``bias_index``)."""
    name = "bias_index" if family is None else family
    return (FAMILY_ORDER.index(name) if name in FAMILY_ORDER else FAMILY_ORDER.index("share"), name)


def sections(records: Sequence[Record]) -> list[Section]:
    """Records (in report order) grouped by (probe, target), with their tables in display order.

    Tables: robust ones first, then by variant (no variant first, then in the order written), n and
    family (a keyless table by its first family: tor's ``bias_index``, zero-shot classification's
    ``mean_per_class_recall`` after its ``accuracy``). Columns: in the order the probe wrote them (first
    record first).
    """
    found: dict[tuple[str, str], Section] = {}
    variants: dict[str | None, int] = {None: -1}
    for r in records:
        sec = found.setdefault((r.probe, r.target), Section(r.probe, r.target, [], []))
        sec.records.append(r)
    for sec in found.values():
        tables: dict[TableKey, dict[Column, None]] = {}
        for r in sec.records:
            for m in r.metrics:
                variants.setdefault(m.variant, len(variants))
                tables.setdefault(table_key(m), {})[Column(m.family, m.key)] = None
        order = sorted(tables, key=lambda t: (not t.robust, variants[t.variant], _none_last(t.n),
                                              min(family_rank(t.family or c.family) for c in tables[t])))  # fmt: skip
        sec.tables = [(t, list(tables[t])) for t in order]
    return [found[k] for k in sorted(found, key=lambda k: (probe_rank(k[0]), k[1]))]


# ---------------------------------------------------------------------------------------------
# Summary


def _option_sets(records: Iterable[Record]) -> dict[tuple[str, str], list[str]]:
    """(probe, target) -> its option sets (:func:`options_label`), in the order first read."""
    sets: dict[tuple[str, str], dict[str, None]] = {}
    for r in records:
        sets.setdefault((r.probe, r.target), {})[options_label(r)] = None
    return {k: list(v) for k, v in sets.items()}


def _row_key(r: Record) -> tuple[object, ...]:
    """What a summary row stands for: one model, weights (run, condition, seed) and training point."""
    weights = json.dumps(r.weights, sort_keys=True, default=str)
    return (r.model, weights, run_dir(r), condition(r), seed(r), r.step, r.samples_seen)


def summary_tables(records: Sequence[Record]) -> list[SummaryTable]:
    """The summary of records in report order: a table for the standalone models, then one per series.

    Rows: the records of one model, weights and step (:func:`summary_entries` of each: bias headlines and
    standard metrics). Columns: the bias headlines (probes in :func:`probe_rank` order, then target, n), then
    the standard metrics per dataset (families in :data:`FAMILY_ORDER`, keys as written); a (probe, target)
    with several option sets in one table gets a column per set.
    """
    groups: dict[Series | None, dict[tuple[object, ...], list[Record]]] = {}
    for r in records:
        if summary_entries(r):
            groups.setdefault(series_of(r), {}).setdefault(_row_key(r), []).append(r)
    tables = []
    for s in sorted(groups, key=lambda s: s is not None):  # standalone models first, then series as read
        rows = list(groups[s].values())
        table = SummaryTable(s, rows, [], _option_sets(r for row in rows for r in row))
        seen: dict[SummaryColumn, int] = {}
        for r in (r for row in rows for r in row):
            opt = table.option(r)
            for m in summary_entries(r):
                where = [r.target] if is_standard(r) else [r.target, r.probe]
                title = " · ".join([*where, m.name]) + (f" (opts{opt})" if opt else "")
                seen.setdefault(SummaryColumn(r.probe, r.target, opt, m.variant, m.n, m.family, m.key, title),
                                len(seen))  # fmt: skip
        table.columns = sorted(seen, key=lambda c: (probe_rank(c.probe), c.target, c.options, c.variant is not None,
                                                    c.variant or "", _none_last(c.n), family_rank(c.family), seen[c]))  # fmt: skip
        tables.append(table)
    return tables
