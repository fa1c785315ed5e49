"""``clipprobe report``: results JSON files -> ``results.csv``, ``results.md`` and ``plots/*.png``.

Every metric key of a result (``n4/share_1``, ``n3/closest_large``, ``n2/scenario1``) is read as
(n, family, column): the column is a position (``1``, ``2``, ...) or a role (``large``,
``small_1``, ...), and the family is the key with the column replaced by ``{k}`` (``share_{k}``,
``closest_{k}``). Tables have one row per model (weights, step) and one column per position or
role, like the study's; rows for the study's own models are followed by its published values.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipprobe.errors import UserError

# The study's published values (PROBES.md; Abbasi et al., CVPR 2025, ComCO), as shares.
# Key: (probe, n, model, pretrained tag); n None = the study does not say (shown at every n).
REFERENCES: dict[tuple[str, int | None, str, str], dict[str, float]] = {
    ("tor", 4, "ViT-B-32", "laion2b_s34b_b79k"): {"share_1": 0.6396, "share_2": 0.2159, "share_3": 0.1068, "share_4": 0.0376},
    ("tor", 4, "ViT-B-32", "datacomp_xl_s13b_b90k"): {"share_1": 0.7113, "share_2": 0.1626, "share_3": 0.0874, "share_4": 0.0387},
    ("tor", 4, "ViT-B-32", "openai"): {"share_1": 0.5031, "share_2": 0.2074, "share_3": 0.1445, "share_4": 0.0679},
    ("ior", 4, "ViT-B-32", "laion2b_s34b_b79k"): {"large": 0.8545, "small_1": 0.0636, "small_2": 0.0545, "small_3": 0.0273},
    ("ior", 4, "ViT-B-32", "datacomp_xl_s13b_b90k"): {"large": 0.8516, "small_1": 0.0565, "small_2": 0.0495, "small_3": 0.0424},
    ("ior", 4, "ViT-B-32", "openai"): {"large": 0.6522, "small_1": 0.1739, "small_2": 0.0870, "small_3": 0.0870},
    ("itm", None, "ViT-B-32", "datacomp_xl_s13b_b90k"): {"scenario1": 0.9999, "scenario2": 0.6750},
    ("itm", None, "ViT-B-32", "openai"): {"scenario1": 0.9959, "scenario2": 0.5223},
}  # fmt: skip
STUDY = "Abbasi et al., CVPR 2025"

_COLUMN = re.compile(r"(?:^|_)(large|small_\d+|small|slot_\d+|\d+)(?=_|$)")
_N = re.compile(r"^n(\d+)$")
CSV_FIELDS = ("model", "weights", "pretrained", "checkpoint", "step", "samples_seen", "target", "probe_set_kind",
              "probe", "metric", "n", "variant", "family", "column", "value", "count", "lo", "hi", "file")  # fmt: skip


@dataclass(frozen=True)
class MetricKey:
    """A metric key read as ``[variant/]n{n}/name``; ``column`` is None for scalar metrics (hit_rate)."""

    key: str
    n: int | None
    variant: str
    family: str
    column: str | None

    @classmethod
    def parse(cls, key: str) -> MetricKey:
        parts = key.split("/")
        n_parts = [p for p in parts[:-1] if _N.match(p)]
        n = int(n_parts[0][1:]) if n_parts else None
        variant = "/".join(p for p in parts[:-1] if not _N.match(p))
        name = parts[-1]
        m = _COLUMN.search(name)
        if m is None:
            return cls(key, n, variant, name, None)
        family = name[: m.start(1)] + "{k}" + name[m.end(1) :]
        return cls(key, n, variant, family, m.group(1))


@dataclass
class Record:
    """One results file, as read."""

    data: dict[str, Any]
    file: Path

    @property
    def model(self) -> str:
        return str(self.data.get("model"))

    @property
    def weights(self) -> str:
        d = self.data
        return str(
            d.get("weights") or d.get("pretrained") or (Path(d["checkpoint"]).stem if d.get("checkpoint") else "random")
        )

    @property
    def series(self) -> str | None:
        """Checkpoints of one run folder and architecture form a series."""
        ckpt = self.data.get("checkpoint")
        return f"{self.model}@{Path(ckpt).parent}" if ckpt else None

    @property
    def kind(self) -> str | None:
        ps = self.data.get("probe_set") or {}
        return ps.get("kind") or self.data.get("vocab")

    def reference(self, key: MetricKey) -> float | None:
        """The study's value for this metric, for the study's models on ComCO (or the COCO vocabulary)."""
        if self.kind not in ("comco", "coco") or key.variant:
            return None
        name = key.key.split("/")[-1]
        for n in (key.n, None):
            ref = REFERENCES.get((self.data["probe"], n, self.model, str(self.data.get("pretrained"))))
            if ref and name in ref:
                return ref[name]
        return None


def collect(results: str) -> list[Record]:
    """Result records from a folder (searched recursively) or a glob, sorted by model, weights and step.

    Raises:
        UserError: nothing matches, or no file is a clipprobe result.
    """
    root = Path(results).expanduser()
    files = (
        sorted(root.rglob("*.json")) if root.is_dir() else sorted(Path(p) for p in glob.glob(results, recursive=True))
    )
    if not files:
        raise UserError(f"no result files match {results}; run 'clipprobe eval --out {results}' first")
    records, bad = [], []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            bad.append(f)
            continue
        if isinstance(data, dict) and {"model", "probe", "metrics"} <= set(data):
            records.append(Record(data, f))
    if bad:
        print(f"clipprobe report: skipped {len(bad)} unreadable file(s), e.g. {bad[0]}", file=sys.stderr)
    if not records:
        raise UserError(f"none of the {len(files)} JSON files under {results} is a clipprobe result")
    return sorted(records, key=lambda r: (r.model, r.weights, r.data.get("step") or -1, str(r.file)))


def rows(records: list[Record]) -> list[dict[str, Any]]:
    """One row per (result, metric), with its count and interval (the CSV)."""
    out = []
    for r in records:
        d = r.data
        for key, value in d["metrics"].items():
            mk = MetricKey.parse(key)
            lo, hi = (d.get("intervals", {}).get(key) or (None, None))[:2]
            out.append({
                "model": r.model, "weights": r.weights, "pretrained": d.get("pretrained"), "checkpoint": d.get("checkpoint"),
                "step": d.get("step"), "samples_seen": d.get("samples_seen"), "target": d.get("target"),
                "probe_set_kind": r.kind, "probe": d["probe"], "metric": key, "n": mk.n, "variant": mk.variant,
                "family": mk.family, "column": mk.column, "value": value, "count": d.get("counts", {}).get(key),
                "lo": lo, "hi": hi, "file": str(r.file),
            })  # fmt: skip
    return out


def to_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in table)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Markdown

FAMILY_TITLES = {
    "share_{k}": "top-1 among hits, by position (the study's tables)",
    "share_{k}_all": "top-1 over all queries, by position",
    "closest_{k}": "nearest among the query's own objects, by position or role",
    "{k}": "top-1 among hits, by role (the study's tables)",
    "{k}_all": "top-1 over all queries, by role",
    "acc_{k}": "linear-probe accuracy, by position or slot",
}
NOT_SHARES = ("bias_index",)
PROBE_ORDER = ("tor", "toc", "mitigation", "size_claim", "ior", "i2tor", "ioc", "attention", "itm")


def _column_order(col: str | None) -> tuple[int, int, str]:
    if col is None:
        return (9, 0, "")
    m = re.match(r"^(large|small|slot)?_?(\d+)?$", col)
    rank = {"large": 0, "small": 1, "slot": 2, None: 3}.get(m.group(1) if m else None, 4)
    return (rank, int(m.group(2)) if m and m.group(2) else 0, col)


def _is_share(name: str, value: Any, interval: Any) -> bool:
    return name not in NOT_SHARES and interval is not None and isinstance(value, (int, float)) and 0 <= value <= 1


def fmt_value(name: str, value: Any, interval: Any) -> str:
    """``63.9 [58.1, 69.4]`` for shares (percent, Wilson 95%), ``0.123`` for other numbers, ``–`` for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if _is_share(name, value, interval):
        lo, hi = interval[:2]
        if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
            return f"{100 * value:.1f}"
        return f"{100 * value:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _groups(records: list[Record]) -> dict[tuple[str, str], dict[tuple[int | None, str, str], list[MetricKey]]]:
    """(probe, target) -> (n, variant, family) -> metric keys (union over records), columns in order."""
    out: dict[tuple[str, str], dict[tuple[int | None, str, str], dict[str, MetricKey]]] = {}
    for r in records:
        section = out.setdefault((r.data["probe"], str(r.data.get("target"))), {})
        for key in r.data["metrics"]:
            mk = MetricKey.parse(key)
            # Scalar metrics of one n share a table, one column each.
            fam = "scalars" if mk.column is None else mk.family
            section.setdefault((mk.n, mk.variant, fam), {})[key] = mk
    return {
        s: {
            g: sorted(keys.values(), key=lambda m: (_column_order(m.column), m.family))
            for g, keys in sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1], _family_rank(kv[0][2])))
        }
        for s, groups in sorted(out.items(), key=lambda kv: (_probe_rank(kv[0][0]), kv[0][1]))
    }


def _probe_rank(probe: str) -> tuple[int, str]:
    return (PROBE_ORDER.index(probe) if probe in PROBE_ORDER else len(PROBE_ORDER), probe)


def family_name(family: str) -> str:
    """``share_{k}`` -> ``share_k``; role families read ``role`` (``{k}_all`` -> ``role_all``)."""
    return ("role" + family[3:]) if family.startswith("{k}") else family.replace("{k}", "k")


def _family_rank(family: str) -> tuple[int, str]:
    order = ["share_{k}", "{k}", "closest_{k}", "share_{k}_all", "{k}_all", "acc_{k}"]
    return (order.index(family) if family in order else len(order) + (family == "scalars"), family)


def _row_label(r: Record) -> list[str]:
    step = r.data.get("step")
    seen = r.data.get("samples_seen")
    return [r.model, r.weights, "" if step is None else str(step), "" if seen is None else f"{seen:,}"]


def _table(records: list[Record], keys: list[MetricKey]) -> list[str]:
    heads = [(k.column if k.column is not None else k.family) for k in keys]
    lines = ["| model | weights | step | samples seen | " + " | ".join(heads) + " | n |",
             "|" + "---|" * (len(heads) + 5)]  # fmt: skip
    for r in records:
        d = r.data
        if not any(k.key in d["metrics"] for k in keys):
            continue
        counts = {d.get("counts", {}).get(k.key) for k in keys if k.key in d["metrics"]}
        one_count = len(counts) == 1
        cells = []
        for k in keys:
            cell = fmt_value(k.family, d["metrics"].get(k.key), d.get("intervals", {}).get(k.key))
            if not one_count and k.key in d["metrics"]:
                cell += f" (n={d.get('counts', {}).get(k.key)})"
            cells.append(cell)
        n_cell = str(next(iter(counts))) if one_count else ""
        lines.append("| " + " | ".join(_row_label(r) + cells + [n_cell]) + " |")
        refs = [r.reference(k) for k in keys]
        if any(v is not None for v in refs):
            ref_cells = ["" if v is None else f"{100 * v:.2f}" for v in refs]
            lines.append("| ↳ *study* | *" + STUDY + "* | | | " + " | ".join(ref_cells) + " | |")
    return lines


def to_markdown(records: list[Record]) -> str:
    """The tables: one section per (probe, probe set), one table per (n, family)."""
    models = {(r.model, r.weights, r.data.get("step")) for r in records}
    lines = [
        "# clipprobe results",
        "",
        f"{len(records)} result files, {len(models)} models or checkpoints. Shares are percentages with "
        "Wilson 95% intervals in brackets; `n` is the denominator (for example, for `share_k`, the captions "
        "whose n nearest names are exactly their own objects). Rows marked *study* give the published "
        f"values ({STUDY}, measured on the study's Blender renders of ComCO) for the same model and tag; "
        "clipprobe's ComCO uses emoji sprites, so expect the pattern, not the digits, to agree.",
    ]
    for (probe, target), groups in _groups(records).items():
        section = [r for r in records if r.data["probe"] == probe and str(r.data.get("target")) == target]
        lines += ["", f"## {probe} · {target}"]
        notes = sorted({note for r in section for note in r.data.get("notes") or []})
        lines += [f"- note: {note}" for note in notes[:10]]
        for (n, variant, family), keys in groups.items():
            title = (
                "other metrics"
                if family == "scalars"
                else f"`{family_name(family)}`: " + FAMILY_TITLES.get(family, "by position or role")
            )
            where = " · ".join(p for p in (f"n = {n}" if n is not None else "", variant) if p)
            lines += ["", f"### {where + ' · ' if where else ''}{title}", ""]
            lines += _table(section, keys)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The command


def report(results: str, out: str = "report", overwrite: bool = False, plots: bool = True) -> Path:
    """Aggregate results JSON files into ``results.csv``, ``results.md`` and ``plots/*.png``.

    Args:
        results: a folder of result files (searched recursively) or a glob (``results/*tor.json``).
        out: report folder (refused if not empty, unless --overwrite; replaced as a whole).
        overwrite: replace a non-empty report folder.
        plots: draw the PNG plots (per-position bars; bias against samples seen for checkpoint series).

    Returns:
        The report folder.
    """
    from clipprobe.fileio import atomic_write_text, check_output_dir, staged_dir

    records = collect(results)
    target = Path(out).expanduser().resolve()
    if any(target == r.file.resolve().parent or target in r.file.resolve().parents for r in records):
        raise UserError(f"--out {out} holds the result files themselves; choose a folder outside them")
    check_output_dir(out, overwrite)
    with staged_dir(out) as stage:
        table = rows(records)
        atomic_write_text(stage / "results.csv", to_csv(table))
        atomic_write_text(stage / "results.md", to_markdown(records))
        n_plots = 0
        if plots:
            from clipprobe.evaluation.report_plots import bar_charts, series_charts

            (stage / "plots").mkdir()
            n_plots = len(bar_charts(records, stage / "plots")) + len(series_charts(records, stage / "plots"))
    print(f"report: {len(records)} result files, {len(table)} metric rows, {n_plots} plots -> {out}")
    return Path(out)
