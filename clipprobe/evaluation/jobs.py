"""What ``clipprobe eval`` will run: the models, the targets (probe sets or a vocabulary), the probes,
and one job per (model, weights, target, probe) with its result path, all checked before any model
is built."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipprobe.errors import UserError

RESULT_TEMPLATE = "{model}__{weights}__{target}__{probe}.json"


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to load: an architecture and a tag or file (``pretrained``), either may be None."""

    name: str | None
    pretrained: str | None = None
    arch: str | None = None  # for files: the architecture, read from the file when ``name`` is None

    @property
    def is_file(self) -> bool:
        from clipprobe.models.load import is_checkpoint_path

        return bool(self.pretrained) and is_checkpoint_path(self.pretrained or "")

    def labels(self) -> tuple[str, str]:
        """(model, weights) parts of the result file name."""
        model = self.name or self.arch or "unknown"
        if self.pretrained is None:
            weights = "hf-hub" if model.startswith("hf-hub:") else "random"
        else:
            weights = Path(self.pretrained).stem if self.is_file else self.pretrained
        return _safe(model), _safe(weights)


@dataclass(frozen=True)
class Target:
    """What probes run against: a probe set (image probes; text probes use its vocabulary) or a vocabulary."""

    label: str
    probe_set: Any = None  # clipprobe.data.probeset.ProbeSet
    vocab: list[str] | None = None
    vocab_label: str | None = None

    def describe(self) -> dict[str, Any] | None:
        ps = self.probe_set
        if ps is None:
            return None
        keys = ("kind", "name", "generator_version", "seed", "image_size", "size_ratio", "counts", "num_scenes")
        return {"path": str(ps.root.resolve()), **{k: ps.manifest.get(k) for k in keys}, "name": ps.name}


@dataclass
class Job:
    spec: ModelSpec
    target: Target
    probe: str
    path: Path
    weights: str = ""  # the weights part of the file name (tag, checkpoint stem or "random")


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)

    def by_model(self) -> dict[ModelSpec, list[Job]]:
        groups: dict[ModelSpec, list[Job]] = {}
        for job in self.jobs:
            groups.setdefault(job.spec, []).append(job)
        return groups


def _safe(part: str) -> str:
    """A file-name-safe version of a label (``hf-hub:org/repo`` -> ``hf-hub-org-repo``)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", part).strip("-") or "none"


# ---------------------------------------------------------------------------------------------
# Resolving the options


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other values are checked.

    Raises:
        UserError: an unknown device, or CUDA asked for where there is none.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown --device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but CUDA is not available here; use --device cpu")
    return device


def read_models_file(path: str) -> list[ModelSpec]:
    """Lines ``name [pretrained]`` (``#`` starts a comment) -> model specs.

    Raises:
        UserError: the file is missing or lists nothing.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"models file {path} does not exist; write lines 'name pretrained' (e.g. 'ViT-B-32 openai')")
    specs = [_parse_model_line(ln) for ln in p.read_text(encoding="utf-8").splitlines()]
    specs = [s for s in specs if s is not None]
    if not specs:
        raise UserError(f"models file {path} lists no models; write lines 'name pretrained'")
    return specs


def _parse_model_line(line: str) -> ModelSpec | None:
    parts = line.split("#", 1)[0].split()
    if not parts:
        return None
    if len(parts) > 2:
        raise UserError(f"cannot read model line '{line.strip()}'; write 'name pretrained' (two words at most)")
    return ModelSpec(parts[0], parts[1] if len(parts) == 2 else None)


def model_specs(
    model: str | None,
    pretrained: str | None,
    models: list[str] | None,
    checkpoints: str | None,
    index: int | None = None,
) -> list[ModelSpec]:
    """Every model to evaluate, in order: ``--model``/``--pretrained``, then ``--models``, then ``--checkpoints``;
    only the ``index``-th of them (from 0) when an index is given (``--model_index``, one array task).

    ``--models`` entries are files of lines ``name pretrained`` or such lines themselves (YAML lists).
    """
    from clipprobe.models.load import check_source, expand_checkpoints

    specs: list[ModelSpec] = []
    if model and not checkpoints:
        specs.append(ModelSpec(model, pretrained))
    elif pretrained and not model and not checkpoints:
        specs.append(ModelSpec(None, pretrained))
    for entry in models or []:
        looks_like_file = Path(entry).is_file() or "/" in entry.split("#")[0].split(" ")[0] or entry.endswith(".txt")
        if looks_like_file and not entry.startswith("hf-hub:"):
            specs.extend(read_models_file(entry))
        elif (spec := _parse_model_line(entry)) is not None:
            specs.append(spec)
    if checkpoints:
        specs.extend(ModelSpec(model, str(p)) for p in expand_checkpoints(checkpoints))
    if not specs:
        raise UserError(
            "no model given; pass --model NAME [--pretrained TAG|PATH], --models FILE or --checkpoints GLOB"
        )
    if index is not None:
        if not 0 <= index < len(specs):
            raise UserError(
                f"--model_index {index} is out of range: {len(specs)} model(s) given, so 0 to {len(specs) - 1}"
            )
        specs = [specs[index]]
    # Check every source before any model is built; files need their architecture for the result names.
    return [ModelSpec(s.name, s.pretrained, check_source(s.name, s.pretrained)) for s in specs]


def resolve_probes(probes: list[str] | None, with_probe_sets: bool) -> dict[str, Any]:
    """Probe name -> ProbeSpec for the names asked (default: every registered probe that can run: the
    image probes only when there are probe sets).

    Raises:
        UserError: an unknown probe name.
    """
    import clipprobe.probes.suite  # noqa: F401  (fills the registry)
    from clipprobe.probes.base import PROBES

    if probes:
        names = list(dict.fromkeys(probes))
    else:
        names = sorted(n for n, p in PROBES.items() if with_probe_sets or not p.needs_probe_set)
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise UserError(f"unknown probe '{unknown[0]}'; choose from {', '.join(sorted(PROBES))}")
    return {n: PROBES[n] for n in names}


def check_options(options: dict[str, dict[str, Any]], probes: dict[str, Any]) -> None:
    """Check every probe's options (those for registered probes not run are allowed, so one config
    file can serve several runs) before any model is built.

    Raises:
        UserError: options for an unknown probe, an unknown option, or a value of the wrong type.
    """
    from clipprobe.probes.suite import validate_probes

    validate_probes(list(probes), options, has_probe_set=True)


def load_probe_sets(entries: list[str] | None, generate: dict[str, Any] | None) -> list[Any]:
    """Probe sets from folders, or generated by kind name (``comco``, ``simco``) into the cache once.

    Raises:
        UserError: a folder that is not a probe set, or bad generation parameters.
    """
    from clipprobe.data.probeset import ProbeSet

    sets = []
    for entry in entries or []:
        path = Path(entry).expanduser()
        if not path.exists() and entry in ("comco", "simco"):
            from clipprobe.data.generate import ensure_probe_set

            path = ensure_probe_set(entry, **dict(generate or {}))
        sets.append(ProbeSet.load(path))
    return sets


def targets(probe_sets: list[Any], vocab: str | None, image_probes: bool, text_probes: bool) -> list[Target]:
    """The targets to run: one per probe set, plus one vocabulary target for text probes when asked."""
    from clipprobe.data.vocab import load_vocab

    names = [ps.name for ps in probe_sets]
    unique = len(set(names)) == len(names)
    out = [Target(ps.name if unique else _safe(f"{ps.name}-{ps.root.name}"), ps) for ps in probe_sets]
    words = load_vocab(vocab) if vocab else None
    label = (vocab if vocab in ("coco", "comco", "simco") else Path(vocab).stem) if vocab else None
    out = [Target(t.label, t.probe_set, words, label) for t in out]
    if text_probes and (vocab or not probe_sets):
        out.append(Target(f"vocab-{_safe(label or 'coco')}", None, words, label or "coco"))
    return out


def plan_jobs(specs: list[ModelSpec], tgts: list[Target], probes: dict[str, Any], out: Path) -> Plan:
    """Every (model, target, probe) job with its result path; checkpoints of one stem get a path hash."""
    plan = Plan()
    stems = [s.labels() for s in specs]
    for spec, (model, weights) in zip(specs, stems, strict=True):
        if stems.count((model, weights)) > 1 and spec.pretrained:
            weights += "-" + hashlib.sha1(str(Path(spec.pretrained).resolve()).encode()).hexdigest()[:6]
        for tgt in tgts:
            for name, probe in probes.items():
                if _runs_on(probe, tgt, has_vocab_target=any(t.probe_set is None for t in tgts)):
                    fname = RESULT_TEMPLATE.format(model=model, weights=weights, target=tgt.label, probe=_safe(name))
                    plan.jobs.append(Job(spec, tgt, name, out / fname, weights))
    return plan


def _runs_on(probe: Any, tgt: Target, has_vocab_target: bool) -> bool:
    """Image probes run on probe sets; text probes on the vocabulary target, or on each set when there is none."""
    if probe.needs_probe_set:
        return tgt.probe_set is not None
    return tgt.probe_set is None or not has_vocab_target
