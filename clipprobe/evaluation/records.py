"""The result record: one evaluation of one probe (or task) on one model, whoever ran it.

``clipprobe eval``, the training callback and the experiments all produce :class:`Record` and write
it as one JSON line (JSON Lines, appended, never rewritten); ``clipprobe report`` is the only reader.
The JSON form (schema 2, documented in docs/DESIGN.md "The result record")::

    {"schema": 2, "clipprobe_version": "0.1.0", "timestamp": "2026-12-02T17:00:00+00:00",
     "source": "eval" | "callback" | "experiment",
     "model": "clipprobe-tiny",                         # architecture
     "weights": {"kind": "file", "path": "/abs/last.pt", "sha256": "..."},   # or tag / run / random / hf-hub
     "step": 400, "samples_seen": 25600,                # when known
     "run": {"dir": "/abs/run", "id": "...", ...} | null,
     "target": "comco", "probe_set": {"name": ..., "path": ..., "manifest_sha256": ..., ...} | null,
     "vocab": "coco" | null,
     "probe": "tor", "probe_version": 1, "options": {...},   # options as asked (defaults filled)
     "config": {...},                                   # the probe's effective settings as it ran
     "metrics": [{"name": "n3/closest_1", "family": "closest", "n": 3, "key": "1", "variant": null,
                  "value": 0.41, "count": 500, "interval": [0.37, 0.45], "chance": 0.333}, ...],
     "notes": [...], "timing": {"seconds": 0.8, "encoder": {...}}}

A record's *identity* (:meth:`Record.identity`) is what produced it: architecture, weights, probe set
(its manifest hash), vocabulary, probe, its version and its options. Schema-1 files (clipprobe 0.1's
flat ``metrics``/``counts``/``intervals``) are refused by :func:`read_records` with a one-line
message saying how to regenerate them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clipprobe.errors import UserError
from clipprobe.probes.base import Metric

log = logging.getLogger(__name__)

SCHEMA = 2
SOURCES = ("eval", "callback", "experiment")


@dataclass
class Record:
    """One probe (or task) evaluated on one model. See the module docstring for the JSON form.

    Attributes:
        model: the architecture (open_clip name).
        weights: where the weights came from: ``{"kind": "tag", "tag": "openai"}``, ``{"kind": "file",
            "path": ..., "sha256": ...}``, ``{"kind": "run", "run_id": ..., "step": ...}``, ``{"kind":
            "random"}`` or ``{"kind": "hf-hub"}``.
        probe: probe name; ``probe_version`` its registry version.
        options: the options as asked, defaults filled in (part of the identity).
        target: the target's label (probe set name, or ``vocab-<name>``).
        metrics: structured metric entries.
        probe_set: the probe set's description (name, kind, path, manifest hash, ...), None for a vocabulary.
        vocab: the vocabulary's label when one was given.
        step, samples_seen: training progress of the weights, when known.
        run: the training run (folder, id, condition) for callback and experiment records.
        config: the probe's effective settings as it ran.
        notes: the probe's notes.
        timing: ``seconds`` and encoder counters.
        source: who produced it: ``eval``, ``callback`` or ``experiment``.
    """

    model: str
    weights: dict[str, Any]
    probe: str
    probe_version: int
    options: dict[str, Any]
    target: str
    metrics: list[Metric]
    probe_set: dict[str, Any] | None = None
    vocab: str | None = None
    step: int | None = None
    samples_seen: int | None = None
    run: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)
    source: str = "eval"
    clipprobe_version: str = ""
    timestamp: str = ""
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        if not self.clipprobe_version:
            from clipprobe import __version__

            self.clipprobe_version = __version__
        if not self.timestamp:
            self.timestamp = datetime.now(timezone.utc).isoformat(timespec="seconds")

    # -- identity --------------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """What produced the numbers; two records with equal identities measure the same thing."""
        ps = self.probe_set or {}
        return {
            "model": self.model,
            "weights": self.weights,
            "probe_set": ps.get("manifest_sha256") or ps.get("path"),
            "target": self.target,
            "vocab": self.vocab,
            "probe": self.probe,
            "probe_version": self.probe_version,
            "options": self.options,
        }

    def identity_key(self) -> str:
        """A short hash of :meth:`identity` (12 hex digits), for file names and de-duplication."""
        return identity_key(self.identity())

    # -- lookups ---------------------------------------------------------------------------------

    def metric(self, name: str) -> Metric | None:
        """The entry named ``name`` (a log key such as ``n3/closest_1``), or None."""
        return next((m for m in self.metrics if m.name == name), None)

    def find(self, **fields: Any) -> list[Metric]:
        """Entries whose fields equal ``fields`` (e.g. ``find(family="closest", n=3)``)."""
        return [m for m in self.metrics if all(getattr(m, k) == v for k, v in fields.items())]

    # -- JSON ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "clipprobe_version": self.clipprobe_version,
            "timestamp": self.timestamp,
            "source": self.source,
            "model": self.model,
            "weights": self.weights,
            "step": self.step,
            "samples_seen": self.samples_seen,
            "run": self.run,
            "target": self.target,
            "probe_set": self.probe_set,
            "vocab": self.vocab,
            "probe": self.probe,
            "probe_version": self.probe_version,
            "options": self.options,
            "config": self.config,
            "metrics": [m.to_json() for m in self.metrics],
            "notes": list(self.notes),
            "timing": self.timing,
        }

    def to_line(self) -> str:
        """One JSON line (strict JSON: NaN and infinities as null), keys sorted: same record, same bytes."""
        return json.dumps(jsonable(self.to_json()), sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """Parse the JSON form.

        Raises:
            ValueError: another schema, or a required field missing.
        """
        schema = data.get("schema")
        if schema != SCHEMA:
            raise ValueError(f"schema {schema}")
        return cls(
            model=data["model"], weights=dict(data.get("weights") or {}), probe=data["probe"],
            probe_version=int(data.get("probe_version") or 1), options=dict(data.get("options") or {}),
            target=str(data.get("target")), metrics=[Metric.from_json(m) for m in data.get("metrics") or []],
            probe_set=data.get("probe_set"), vocab=data.get("vocab"), step=data.get("step"),
            samples_seen=data.get("samples_seen"), run=data.get("run"), config=dict(data.get("config") or {}),
            notes=list(data.get("notes") or []), timing=dict(data.get("timing") or {}),
            source=data.get("source") or "eval", clipprobe_version=data.get("clipprobe_version") or "",
            timestamp=data.get("timestamp") or "",
        )  # fmt: skip


def identity_key(identity: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of an identity's canonical JSON."""
    text = json.dumps(jsonable(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def jsonable(obj: Any) -> Any:
    """Strict-JSON form: NaN and infinities -> None, tuples -> lists, paths -> strings, dict keys -> str."""
    if isinstance(obj, float):
        return None if obj != obj or obj in (float("inf"), float("-inf")) else obj
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# Writing and reading JSON Lines.


def append_records(path: str | os.PathLike, records: Iterable[Record]) -> None:
    """Append records to a JSON Lines file in one write, then flush to disk.

    Appending costs only the new lines (a run's file is never rewritten). A kill during the write can
    leave at most a cut last line, which :func:`read_records` skips with a warning, and which this
    function first ends with a newline so the next record starts on its own line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(r.to_line() for r in records)
    if not data:
        return
    with open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = "\n" + data  # a cut line from a killed writer: keep it apart
        f.write(data.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def write_records(path: str | os.PathLike, records: Sequence[Record]) -> None:
    """Write a new JSON Lines file atomically (temporary name, then rename): for one-job result files."""
    from clipprobe.fileio import atomic_write_text

    atomic_write_text(path, "".join(r.to_line() for r in records))


def iter_records(path: str | os.PathLike) -> Iterator[Record]:
    """The records of one file: a JSON Lines file, or a JSON file holding one record or a list.

    Lines that do not parse (a cut last line) are skipped with a warning.

    Raises:
        UserError: the file holds schema-1 results (clipprobe 0.1), which this version does not read.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            log.warning("%s is not JSON (cut or empty); skipped", path)
            return
        items = data if isinstance(data, list) else [data]
    else:
        items = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is not JSON (a cut line?); skipped", path, i)
    for item in items:
        yield _parse(item, path)


def _parse(item: Any, path: Path) -> Record:
    if not isinstance(item, dict):
        raise UserError(f"{path} holds {type(item).__name__} where a result record was expected; is it a result file?")
    schema = item.get("schema", 1 if "metrics" in item else None)
    if schema == 1 or (schema is None and ("set" in item or "counts" in item)):
        raise UserError(
            f"{path} holds schema-1 results of clipprobe 0.1, which this version does not read; regenerate them "
            "with this version (clipprobe eval with the same options, or rerun the training run's probes)"
        )
    try:
        return Record.from_json(item)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"{path} is not a clipprobe result record (schema {schema}, {exc}); remove it or regenerate it"
        ) from None


def read_records(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Record]:
    """Every record of the given files, in file order then line order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return [r for p in paths for r in iter_records(p)]
