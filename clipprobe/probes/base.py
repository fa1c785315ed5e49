"""The contract every probe follows (PROBES.md sections 2-4; DESIGN.md "probe suite").

A probe is a plain function ``probe(ctx: ProbeContext) -> ProbeResult`` registered by name in
:data:`PROBES` with :func:`register`. It never imports lightning or wandb. It gets embeddings only
through ``ctx.encoder`` (which encodes each unique text or image once per run and returns
L2-normalised float32 CPU tensors), so the same probe serves ``clipprobe eval``, the training
callback, and tests with planted encoders.

Metric keys are flat strings, grouped by number of objects where a probe has one:
``n4/share_1``, ``n4/closest_2``, ``n3/large``, ``n3/hit_rate``, ``n4/bias_index``. Every share has
``counts[key]`` (its denominator) and ``intervals[key] = (lo, hi)`` (Wilson 95%).
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


@dataclass
class ProbeResult:
    """What a probe returns: metrics with their counts and 95% intervals, the effective config,
    and notes (for example "skipped: not a ViT")."""

    probe: str
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "metrics": self.metrics,
            "counts": self.counts,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "config": self.config,
            "notes": self.notes,
        }


ProbeFn = Callable[[ProbeContext], ProbeResult]


@dataclass(frozen=True)
class ProbeSpec:
    """A registered probe: its function and whether it needs a probe set (image probes do)."""

    fn: ProbeFn
    needs_probe_set: bool
    summary: str


PROBES: dict[str, ProbeSpec] = {}


def register(name: str, *, needs_probe_set: bool, summary: str) -> Callable[[ProbeFn], ProbeFn]:
    """Decorator: add a probe to :data:`PROBES` under ``name``."""

    def wrap(fn: ProbeFn) -> ProbeFn:
        PROBES[name] = ProbeSpec(fn, needs_probe_set, summary)
        return fn

    return wrap
