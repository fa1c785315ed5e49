"""The one evaluation function: probes over targets on one model, as :class:`Record` objects.

``clipprobe eval`` (released models, files, checkpoint series), the training callback (the live
model) and the experiments all call :func:`run_evaluation`; they differ only in how they build the
encoder and describe the weights (:class:`ModelInfo`). Each unique text and image is encoded once
per evaluation by the :class:`~clipprobe.probes.encode.CachedEncoder`. Under DDP the encoder splits
encoding across ranks and the probes split their tallies (:mod:`clipprobe.probes.tallies`, summed
across ranks), so every rank returns the same records for a share of the work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clipprobe.data.probeset import MANIFEST, ProbeSet
from clipprobe.evaluation.records import Record
from clipprobe.probes.base import Encoder, ProbeContext, ProbeResult


@dataclass(frozen=True)
class Target:
    """What probes run against: a probe set (image probes; text probes use its vocabulary unless a
    vocabulary is given), a vocabulary alone (text probes), or a dataset (its standard task).

    Attributes:
        label: the name in result files, log keys and reports (``comco``, ``vocab-coco``, ``cifar10``).
        probe_set: the loaded probe set, or None.
        vocab: the text vocabulary (None = the probe set's own, else the study's COCO names).
        vocab_label: a short name of that vocabulary (``coco``, a file's stem).
        dataset: a :class:`~clipprobe.probes.standard.Benchmark` (zero-shot classification or retrieval through
            CLIP_benchmark), or None.
    """

    label: str
    probe_set: ProbeSet | None = None
    vocab: list[str] | None = None
    vocab_label: str | None = None
    dataset: Any = None

    def describe(self) -> dict[str, Any] | None:
        """The probe set (or dataset) as recorded: path, manifest hash and the generation settings that matter."""
        if self.dataset is not None:
            return self.dataset.describe()
        ps = self.probe_set
        if ps is None:
            return None
        keys = ("kind", "generator_version", "seed", "image_size", "size_ratio", "counts", "num_scenes")
        real = ("split", "num_captions", "references")  # a real data set's (COCO)
        return {
            "name": ps.name,
            "path": str(ps.root.resolve()),
            "manifest_sha256": probe_set_fingerprint(ps),
            **{k: ps.manifest.get(k) for k in keys},
            **{k: ps.manifest[k] for k in real if k in ps.manifest},
        }


def probe_set_fingerprint(ps: ProbeSet) -> str:
    """SHA-256 of the probe set's ``manifest.json`` and ``metadata.jsonl`` (clipprobe's layout), of its image
    files' relative paths and sizes (the study's published layout, which has no manifest), or the fingerprint a
    loader computed (COCO: its annotation files' hashes, references, vocabulary and counts)."""
    if ps.manifest.get("fingerprint"):
        return str(ps.manifest["fingerprint"])
    digest = hashlib.sha256()
    own = [ps.root / MANIFEST, ps.root / "metadata.jsonl"]
    if own[0].is_file():
        for path in own:
            if path.is_file():
                digest.update(path.read_bytes())
    else:
        for path in sorted(ps.root.rglob("*.png")):
            digest.update(f"{path.relative_to(ps.root)}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """Who the evaluated model is: architecture, weights, training progress and run (see :class:`Record`)."""

    model: str
    weights: dict[str, Any]
    step: int | None = None
    samples_seen: int | None = None
    run: dict[str, Any] | None = None


# The probes a real data set (COCO, clipprobe.data.coco) runs: COCO-TOR on its captions, IOR against reference
# images (when it has them) and I2TOR on its images, as the study's Tables 3-4.
REAL_SET_PROBES = ("tor", "ior", "i2tor")


def real_set_runs(probe: str, ps: ProbeSet) -> bool:
    """Whether ``probe`` runs on a real data set: one of :data:`REAL_SET_PROBES`, with what it needs there."""
    if probe == "tor":
        return bool(ps.captions)
    if probe == "ior":
        return bool(ps.scenes and ps.references)
    return probe == "i2tor" and bool(ps.scenes)


def runs_on(probe: str, target: Target, has_vocab_target: bool) -> bool:
    """A dataset runs its own standard task only; a real data set (COCO) the probes of :func:`real_set_runs`;
    image probes run on probe sets; text probes on the vocabulary target, or on each set when there is none."""
    from clipprobe.data.coco import KIND as COCO_KIND
    from clipprobe.probes.suite import PROBES

    spec = PROBES[probe]
    if target.dataset is not None or spec.needs_dataset:
        return target.dataset is not None and target.dataset.task == probe
    if target.probe_set is not None and target.probe_set.kind == COCO_KIND:
        return real_set_runs(probe, target.probe_set)
    if spec.needs_probe_set:
        return target.probe_set is not None
    return target.probe_set is None or not has_vocab_target


def has_vocab_target(targets: Sequence[Target]) -> bool:
    """Whether one target is a vocabulary alone (text probes then run on it, not on each probe set)."""
    return any(t.probe_set is None and t.dataset is None for t in targets)


def pairs(targets: Sequence[Target], probes: Sequence[str]) -> list[tuple[Target, str]]:
    """Every (target, probe) that runs, targets first, probes in the order given; a dataset target runs its
    standard task whether or not it is among ``probes``."""
    has_vocab = has_vocab_target(targets)
    out = []
    for t in targets:
        names = [t.dataset.task] if t.dataset is not None else probes
        out += [(t, p) for p in names if runs_on(p, t, has_vocab)]
    return out


def asked_options(probe: str, options: Mapping[str, Any] | None, seed: int) -> dict[str, Any]:
    """A probe's options as asked, with defaults filled in and the run's seed: the identity's options. An options
    class with an ``identity()`` method adds what it returns (t2i: the content hash of a local pipeline folder, so a
    changed pipeline is a new identity, never a reused record).

    Raises:
        UserError: an unknown or ill-typed option.
    """
    import clipprobe.probes.suite  # noqa: F401  (fills the registries)
    from clipprobe.probes.common import OPTIONS, parse_options

    parsed = parse_options(OPTIONS[probe], options or {}, probe)
    extra = parsed.identity() if hasattr(parsed, "identity") else {}  # e.g. the content hash of a local folder
    return {**dataclasses.asdict(parsed), **extra, "run_seed": seed}


def run_evaluation(
    encoder: Encoder,
    work: Sequence[tuple[Target, str]],
    options: Mapping[str, Mapping[str, Any]] | None,
    about: ModelInfo,
    *,
    seed: int = 0,
    progress: bool = True,
    source: str = "eval",
    counters: Callable[[], dict[str, int]] | None = None,
) -> Iterator[Record]:
    """Run each (target, probe) of ``work`` on one encoder; yield one :class:`Record` per pair as it finishes.

    Args:
        encoder: a :class:`~clipprobe.probes.encode.CachedEncoder` (or any object with the Encoder protocol).
        work: (target, probe name) pairs, e.g. from :func:`pairs`.
        options: per-probe options, ``{"tor": {"mode": "paper"}}``.
        about: the model's identity and training progress.
        seed: the probes' default seed.
        progress: progress bars.
        source: ``eval``, ``callback`` or ``experiment``.
        counters: the encoder's counters, recorded in each record's timing.

    Raises:
        UserError: an unknown probe or option, or an image probe without a probe set.
    """
    from clipprobe.probes.suite import PROBES, validate_probes

    if not work:
        return
    options = {k: dict(v or {}) for k, v in (options or {}).items()}
    bias = list(dict.fromkeys(p for t, p in work if t.dataset is None))
    validate_probes(bias, options, allow_none=True)
    stray = next(((t, p) for t, p in work if (t.dataset is not None) != PROBES[p].needs_dataset
                  or (t.dataset is not None and t.dataset.task != p)), None)  # fmt: skip
    if stray is not None:
        raise ValueError(f"{stray[1]} cannot run on target {stray[0].label}")
    for target, name in work:
        asked = asked_options(name, options.get(name), seed)
        start = time.perf_counter()
        ctx = ProbeContext(encoder, target.probe_set, target.vocab, dict(options.get(name, {})), seed, progress,
                           target.dataset)  # fmt: skip
        result: ProbeResult = PROBES[name].fn(ctx)
        seconds = time.perf_counter() - start
        yield Record(
            model=about.model, weights=about.weights, probe=name, probe_version=PROBES[name].version,
            options=asked, target=target.label, metrics=list(result.entries), probe_set=target.describe(),
            vocab=target.vocab_label, step=about.step, samples_seen=about.samples_seen, run=about.run,
            config=result.config, notes=list(result.notes),
            timing={"seconds": round(seconds, 3), **({"encoder": counters()} if counters else {})}, source=source,
        )  # fmt: skip
