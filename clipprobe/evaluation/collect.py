"""Where the report's records come from: folders (searched recursively), globs and files.

Result files are ``*.jsonl`` (one record a line: ``clipprobe eval``'s files, a run's ``probes.jsonl``)
and ``*.json`` (one record or a list). A JSON file found there that is no record at all (it has no
``schema``, and none of a schema-1 result's fields) is skipped with a warning; a schema-1 result is
refused by :func:`clipprobe.evaluation.records.iter_records` with a one-line error.
"""

from __future__ import annotations

import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipprobe.errors import UserError
from clipprobe.evaluation.records import Record, iter_records

SUFFIXES = (".jsonl", ".json")
SCHEMA1_FIELDS = ("metrics", "set", "counts")
# A run's or a data folder's own files, never results: passed over silently when a folder is searched.
NOT_RESULTS = {"run.json", "perf.json", "experiment.json", "clipprobe.json", "corpus.json", "manifest.json",
               "metadata.jsonl", "stats.json", "timing.json", "open_clip_config.json", "captions.jsonl"}  # fmt: skip
NOT_RESULT_FOLDERS = {"wandb", "checkpoints", "csv"}


def _own_file(path: Path, root: Path) -> bool:
    """Whether a file found under ``root`` is one of a run's or data folder's own files."""
    parts = path.relative_to(root).parts
    return (
        path.name in NOT_RESULTS
        or path.name.endswith("_stats.json")
        or any(p in NOT_RESULT_FOLDERS or p.startswith(".") for p in parts[:-1])
    )


def find_result_files(results: Sequence[str] | str) -> list[Path]:
    """The ``*.jsonl`` and ``*.json`` files of folders (recursively), globs and files, each once, in order.

    Raises:
        UserError: an argument matches nothing.
    """
    items = [results] if isinstance(results, str) else list(results)
    files: dict[Path, None] = {}
    for item in items:
        path = Path(item).expanduser()
        matches = [path] if path.exists() else sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        found = []
        for m in matches:
            if m.is_dir():
                found += sorted(p for suffix in SUFFIXES for p in m.rglob(f"*{suffix}")
                                if p.is_file() and not _own_file(p, m))  # fmt: skip
            elif m.is_file() and (m.suffix in SUFFIXES or m == path):
                found.append(m)
        if not found:
            raise UserError(f"no result files match {item}; run 'clipprobe eval --out {item}' first")
        files.update(dict.fromkeys(found))
    return list(files)


def first_item(path: Path) -> Any:
    """The first JSON value of a file (its first line for JSON Lines), or None when there is none."""
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                line = next((ln for ln in f if ln.strip()), None)
            return None if line is None else json.loads(line)
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data[0] if isinstance(data, list) and data else data


def is_record_file(path: Path) -> bool:
    """False for files that are plainly no result: not JSON, empty, or JSON objects without ``schema``
    and without a schema-1 result's fields. Anything else is read (and refused loudly if it is wrong)."""
    item = first_item(path)
    if not isinstance(item, dict):
        return False
    return "schema" in item or any(k in item for k in SCHEMA1_FIELDS)


def load_records(files: Sequence[Path]) -> list[Record]:
    """The records of the result files, in file then line order; other files are skipped with a warning.

    Raises:
        UserError: a schema-1 or malformed result file, or no file holds a record.
    """
    records: list[Record] = []
    skipped: list[Path] = []
    for f in files:
        if not is_record_file(f):
            skipped.append(f)
            continue
        records += iter_records(f)
    if not records:
        example = f" (e.g. {skipped[0]} is not one)" if skipped else ""
        raise UserError(f"none of the {len(files)} result files found holds a clipprobe result record{example}")
    if skipped:
        print(f"clipprobe report: skipped {len(skipped)} file(s) that are not result records, e.g. {skipped[0]}",
              file=sys.stderr)  # fmt: skip
    return records
