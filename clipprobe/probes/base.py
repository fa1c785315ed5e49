"""The contract every probe follows (docs/PROBES.md sections 2-4; docs/DESIGN.md "probes").

A probe is a plain function ``probe(ctx: ProbeContext) -> ProbeResult`` registered by name in
:data:`PROBES` with :func:`register`. It never imports lightning or wandb. It gets embeddings only
through ``ctx.encoder`` (which encodes each unique text or image once per run and returns
L2-normalised float32 CPU tensors), so the same probe serves ``clipprobe eval``, the training
callback, and tests with planted encoders.

A result is a list of :class:`Metric` entries, each structured (family, n, key, variant) with its
value, count (the denominator) and 95% interval. Each entry also carries a flat ``name`` such as
``n4/share_1``, used as a log key and a column title; nothing ever parses a name back into its parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from clipprobe.data.probeset import ProbeSet


@runtime_checkable
class Encoder(Protocol):
    """What probes need from a model. ``model``/``preprocess``/``tokenizer`` may be None for
    planted test encoders; probes that need them (``attention``) say so in ``notes``."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: torch.device | str

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), D] L2-normalised float32 on CPU; each unique text encoded once per run."""
        ...

    def encode_images(self, paths: Sequence[str | Path]) -> torch.Tensor:
        """[len(paths), D] L2-normalised float32 on CPU; each unique image encoded once per run."""
        ...


@dataclass
class ProbeContext:
    """Everything a probe may use. ``options`` holds the probe's own settings (e.g. tor's
    ``mode``/``template``/``n``); ``vocab`` is the text vocabulary (None = the probe set's, or COCO)."""

    encoder: Encoder
    probe_set: ProbeSet | None = None
    vocab: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    progress: bool = True
    dataset: Any = None  # a standard task's dataset (clipprobe.probes.standard.Benchmark)


@dataclass(frozen=True)
class Metric:
    """One number of a probe, with its structure, its count and its 95% interval.

    Attributes:
        name: flat name, unique within a result (``n4/share_1``, ``equal/n3/slot_2``, ``split/n2/closest_1``);
            a log key and a display label, never parsed.
        family: what is measured: ``share`` (among hits), ``share_all`` (among all queries), ``closest``
            (nearest among the own objects), ``hit_rate``, ``bias_index``, ``accuracy``, ``mean``, ``ratio``,
            ``preference``, ``tie_rate``; see docs/PROBES.md.
        value: the number (NaN when undefined, e.g. a share of zero cases).
        count: its denominator (queries, hits, test items, values averaged).
        interval: ``(lo, hi)``, Wilson 95% for shares, normal 95% for means.
        n: number of objects of the queries, when the metric is per n.
        key: position (``"1"``..``"n"``), role (``large``, ``small_1``, ``slot_2``) or case (``scenario1``);
            None for a metric with one value per (family, n, variant).
        variant: a sub-division of the probe: ``equal`` scenes (ior), an aggregate (mitigation's ``plain`` /
            ``split``), a size group (size_claim's ``large`` / ``small``), a scene group (ioc's ``large2``).
        chance: the value with no bias or no skill, when there is one (``1/n`` for closest shares).
    """

    name: str
    family: str
    value: float
    count: int
    interval: tuple[float, float]
    n: int | None = None
    key: str | None = None
    variant: str | None = None
    chance: float | None = None

    @property
    def robust(self) -> bool:
        """Counted over every query (not only among hits), so its count is the full sample size."""
        return self.family != "share"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "n": self.n,
            "key": self.key,
            "variant": self.variant,
            "value": _finite_or_none(self.value),
            "count": self.count,
            "interval": [_finite_or_none(v) for v in self.interval],
            "chance": self.chance,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Metric:
        nan = float("nan")
        lo, hi = (nan if v is None else float(v) for v in data.get("interval") or (None, None))
        value = data.get("value")
        return cls(
            name=data["name"], family=data["family"], value=nan if value is None else float(value),
            count=int(data.get("count") or 0), interval=(lo, hi), n=data.get("n"), key=data.get("key"),
            variant=data.get("variant"), chance=data.get("chance"),
        )  # fmt: skip


def _finite_or_none(v: float | None) -> float | None:
    """Strict JSON has no NaN or infinity: write them as null."""
    return None if v is None or v != v or v in (float("inf"), float("-inf")) else float(v)


@dataclass
class ProbeResult:
    """What a probe returns: its metric entries, the effective config, and notes (for example
    "skipped: not a ViT"). ``metrics``, ``counts`` and ``intervals`` are name-keyed views."""

    probe: str
    entries: list[Metric] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, metric: Metric) -> None:
        """Add an entry (names are unique within a result).

        Raises:
            ValueError: an entry of that name exists (a probe wrote one metric twice).
        """
        if any(m.name == metric.name for m in self.entries):
            raise ValueError(f"{self.probe}: metric {metric.name} written twice")
        self.entries.append(metric)

    @property
    def metrics(self) -> dict[str, float]:
        return {m.name: m.value for m in self.entries}

    @property
    def counts(self) -> dict[str, int]:
        return {m.name: m.count for m in self.entries}

    @property
    def intervals(self) -> dict[str, tuple[float, float]]:
        return {m.name: m.interval for m in self.entries}

    def to_json(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "metrics": [m.to_json() for m in self.entries],
            "config": self.config,
            "notes": list(self.notes),
        }


ProbeFn = Callable[[ProbeContext], ProbeResult]


@dataclass(frozen=True)
class ProbeSpec:
    """A registered probe: its function, whether it needs a probe set (image probes do), and its
    version (raise it when a change alters the probe's numbers: results of another version are not reused)."""

    fn: ProbeFn
    needs_probe_set: bool
    summary: str
    version: int = 1
    by_default: bool = True  # run when no probes are named (False: it needs options, e.g. a corpus)
    needs_dataset: bool = False  # a standard task: runs on a CLIP_benchmark dataset, not on a probe set


PROBES: dict[str, ProbeSpec] = {}


def register(
    name: str,
    *,
    needs_probe_set: bool,
    summary: str,
    version: int = 1,
    by_default: bool = True,
    needs_dataset: bool = False,
) -> Callable[[ProbeFn], ProbeFn]:
    """Decorator: add a probe to :data:`PROBES` under ``name``."""

    def wrap(fn: ProbeFn) -> ProbeFn:
        PROBES[name] = ProbeSpec(fn, needs_probe_set, summary, version, by_default, needs_dataset)
        return fn

    return wrap
