"""How the report reads records: labels, series, and the order of sections, tables and columns.

Everything here works on the records' structured fields (``Record.model``, ``weights``, ``run``,
``step``; ``Metric.variant``, ``n``, ``family``, ``key``). No metric name is ever parsed: a name is
only a display label and a CSV column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clipprobe.errors import UserError
from clipprobe.evaluation.records import Record
from clipprobe.probes.base import Metric

PROBE_ORDER = ("tor", "toc", "mitigation", "size_claim", "ior", "i2tor", "ioc", "attention", "itm")
# Robust families first (counted over every query), shares among hits ("share") last.
FAMILY_ORDER = ("closest", "bias_index", "hit_rate", "share_all", "accuracy", "preference", "tie_rate", "mean",
                "ratio", "share")  # fmt: skip
# Families whose values are proportions in [0, 1]: shown in percent.
PERCENT_FAMILIES = frozenset({"share", "share_all", "closest", "hit_rate", "accuracy", "preference", "tie_rate"})
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


def probe_rank(probe: str) -> tuple[int, str]:
    """Position of a probe in :data:`PROBE_ORDER` (others after, by name)."""
    return (PROBE_ORDER.index(probe) if probe in PROBE_ORDER else len(PROBE_ORDER), probe)


def family_rank(family: str | None) -> tuple[int, str]:
    """Position of a family in :data:`FAMILY_ORDER` (the keyless table sits with ``bias_index``)."""
    name = "bias_index" if family is None else family
    return (FAMILY_ORDER.index(name) if name in FAMILY_ORDER else FAMILY_ORDER.index("share"), name)


def sections(records: Sequence[Record]) -> list[Section]:
    """Records (in report order) grouped by (probe, target), with their tables in display order.

    Tables: robust ones first, then by variant (no variant first, then in the order written), n and
    family. Columns: in the order the probe wrote them (first record first).
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
        order = sorted(
            tables, key=lambda t: (not t.robust, variants[t.variant], _none_last(t.n), family_rank(t.family))
        )
        sec.tables = [(t, list(tables[t])) for t in order]
    return [found[k] for k in sorted(found, key=lambda k: (probe_rank(k[0]), k[1]))]
