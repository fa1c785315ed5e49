"""What ``clipprobe eval`` will run: the models, the targets (probe sets or a vocabulary), the probes,
and one job per (model, weights, target, probe) with its identity and result path, all checked before
any model is built.

A job's result file is named ``<model>__<weights>__<target>__<probe>__<identity>.jsonl``: readable
parts, then 12 hex digits of the record's identity (:meth:`clipprobe.evaluation.records.Record.identity`:
architecture, weights with their content hash, probe set manifest, vocabulary, probe version and
options), so two identities never share a file and ``--skip_existing`` reuses only an identical one."""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipprobe.errors import UserError
from clipprobe.evaluation.runner import Target, asked_options, has_vocab_target, runs_on
from clipprobe.fileio import file_sha256

RESULT_TEMPLATE = "{model}__{weights}__{target}__{probe}__{identity}.jsonl"


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

    def weights(self, seed: int) -> dict[str, Any]:
        """The weights as recorded: a tag, a file with its content hash, hf-hub, or a seeded random init."""
        model = self.name or self.arch or ""
        if self.is_file:
            path = Path(self.pretrained or "").expanduser().resolve()
            return {"kind": "file", "path": str(path), "sha256": _weights_sha256(path)}
        if self.pretrained:
            return {"kind": "tag", "tag": self.pretrained}
        if model.startswith("hf-hub:"):
            return {"kind": "hf-hub", "name": model}
        return {"kind": "random", "seed": seed}

    def labels(self) -> tuple[str, str]:
        """(model, weights) parts of the result file name."""
        model = self.name or self.arch or "unknown"
        if self.pretrained is None:
            weights = "hf-hub" if model.startswith("hf-hub:") else "random"
        else:
            weights = Path(self.pretrained).stem if self.is_file else self.pretrained
        return _safe(model), _safe(weights)


@dataclass
class Job:
    """One (model, target, probe) to evaluate: its identity and the file its record goes to."""

    spec: ModelSpec
    target: Target
    probe: str
    path: Path
    identity: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)

    def by_model(self) -> dict[ModelSpec, list[Job]]:
        groups: dict[ModelSpec, list[Job]] = {}
        for job in self.jobs:
            groups.setdefault(job.spec, []).append(job)
        return groups


def _weights_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint file; of an export folder, over its config's and its weights file's hashes."""
    from clipprobe.models.load import EXPORT_CONFIG, export_weights_file, is_export_dir

    if not path.is_dir() or not is_export_dir(path):
        return file_sha256(path)
    files = [path / EXPORT_CONFIG, export_weights_file(path)]
    text = "".join(f"{f.name}:{file_sha256(f)}\n" for f in files if f is not None)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    trust_pickle: bool = False,
) -> list[ModelSpec]:
    """Every model to evaluate, in order: ``--model``/``--pretrained``, then ``--models``, then ``--checkpoints``;
    only the ``index``-th of them (from 0) when an index is given (``--model_index``, one array task).

    ``--models`` entries are files of lines ``name pretrained`` or such lines themselves (YAML lists).
    ``--checkpoints`` is a glob of checkpoint files and export folders, or a training run's folder: its series
    in step order, each step once (:func:`clipprobe.models.load.expand_checkpoints`).
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
        specs.extend(ModelSpec(model, str(p)) for p in expand_checkpoints(checkpoints, trust_pickle))
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
    return [ModelSpec(s.name, s.pretrained, check_source(s.name, s.pretrained, trust_pickle)) for s in specs]


# ---------------------------------------------------------------------------------------------
# A run's own probe settings


CALLBACK = "clipprobe.training.callbacks.BiasProbeCallback"
# What BiasProbeCallback uses when its config says null (its __init__; tests/test_exports.py checks they agree).
CALLBACK_DEFAULTS: dict[str, Any] = {"probes": ["tor", "ior"], "probe_sets": ["comco"], "generate": {}, "options": {},
                                     "vocab": None, "seed": 0, "cache_dir": None, "benchmarks": [],
                                     "dataset_root": None, "benchmark_generate": {}}  # fmt: skip


@dataclass(frozen=True)
class ProbeSettings:
    """What ``clipprobe eval`` runs on each model: probes, probe sets and their generation, options, vocabulary,
    seed. ``taken`` names the settings read from a training run's ``config.yaml`` (:func:`run_probe_settings`)."""

    probes: list[str] | None = None
    probe_set: list[str] | None = None
    generate: dict[str, Any] | None = None
    options: dict[str, dict[str, Any]] | None = None
    vocab: str | None = None
    seed: int = 0
    taken: tuple[str, ...] = ()
    benchmarks: list[str] | None = None
    dataset_root: str | None = None
    cache_dir: str | None = None  # where the run's callback generated offline datasets
    benchmark_generate: dict[str, Any] | None = None


def run_folder(checkpoints: str | None) -> Path | None:
    """The training run ``--checkpoints`` names: a run's folder (with ``config.yaml``), or its ``checkpoints/``
    folder; None for a glob or anything else."""
    if not checkpoints:
        return None
    from glob import has_magic

    path = Path(checkpoints).expanduser()
    if has_magic(checkpoints) or not path.is_dir():
        return None
    for folder in (path, path.parent):
        if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir():
            return folder
    return None


def run_probe_settings(checkpoints: str | None, asked: ProbeSettings) -> ProbeSettings:
    """The settings to evaluate a run's checkpoints with: by default those its BiasProbeCallback used, so that an
    evaluation reproduces the run's own records (``probes.jsonl``); what the user passed wins.

    Read from the run's ``config.yaml`` (``trainer.callbacks``, the first BiasProbeCallback): probes, probe sets
    (kinds generated into the callback's ``cache_dir`` resolve to that folder), generation parameters, options,
    vocabulary and seed. ``--probes``, ``--probe_set``, ``--generate``, ``--options`` and ``--vocab`` each
    override the run's when given; the seed is the run's unless ``--seed`` is other than 0 (the default). Prints
    one line saying what was taken from the run.

    Args:
        checkpoints: ``--checkpoints``; only a run's folder has settings to read.
        asked: the settings as given on the command line.

    Raises:
        UserError: the run's ``config.yaml`` cannot be read.
    """
    run = run_folder(checkpoints)
    if run is None:
        return asked
    import yaml

    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(
            f"cannot read {run / 'config.yaml'} ({' '.join(str(e).split())[:200]}); fix or remove it"
        ) from None
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    found = next((c for c in callbacks if isinstance(c, dict) and c.get("class_path") == CALLBACK), None)
    if found is None:
        _say(f"clipprobe: eval: {run} ran no BiasProbeCallback (config.yaml): eval's own defaults apply")
        return asked
    init = {k: v for k, v in (found.get("init_args") or {}).items() if v is not None}
    run_cfg = {**CALLBACK_DEFAULTS, **init}
    sets = [_cached_set(e, run_cfg["cache_dir"], run_cfg["generate"]) for e in run_cfg["probe_sets"]]
    mine = {"probes": list(run_cfg["probes"]), "probe_set": sets, "generate": dict(run_cfg["generate"]),
            "options": {k: dict(v or {}) for k, v in run_cfg["options"].items()}, "vocab": run_cfg["vocab"],
            "seed": int(run_cfg["seed"]), "benchmarks": list(run_cfg["benchmarks"] or []),
            "dataset_root": run_cfg["dataset_root"], "benchmark_generate": dict(run_cfg["benchmark_generate"] or {})}  # fmt: skip
    given = {"probes": asked.probes, "probe_set": asked.probe_set, "generate": asked.generate,
             "options": asked.options, "vocab": asked.vocab, "seed": asked.seed or None,
             "benchmarks": asked.benchmarks, "dataset_root": asked.dataset_root,
             "benchmark_generate": asked.benchmark_generate}  # fmt: skip
    taken = tuple(k for k, v in given.items() if v is None and mine[k] not in (None, {}, [], 0))  # eval's defaults
    used = {k: mine[k] if k in taken else v for k, v in given.items()}
    if taken:
        _say(f"clipprobe: eval: {', '.join(taken)} taken from the run's BiasProbeCallback ({run / 'config.yaml'}), as "
             "its probes.jsonl was made; pass --probes, --probe_set, --generate, --options, --vocab, --seed, "
             "--benchmarks or --benchmark_generate to override")  # fmt: skip
    return ProbeSettings(used["probes"], used["probe_set"], used["generate"], used["options"], used["vocab"],
                         int(used["seed"] or 0), taken, used["benchmarks"], used["dataset_root"],
                         run_cfg["cache_dir"] if "benchmarks" in taken else None, used["benchmark_generate"])  # fmt: skip


def _cached_set(entry: str, cache_dir: str | None, generate: dict[str, Any]) -> str:
    """A probe-set kind the callback generated into its own cache folder: that folder; anything else as is."""
    if cache_dir is None or entry not in ("comco", "simco") or Path(entry).exists():
        return entry
    from clipprobe.data.generate import ensure_probe_set

    return str(ensure_probe_set(entry, cache_dir, **dict(generate)))


def _say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def resolve_probes(probes: list[str] | None, with_probe_sets: bool) -> dict[str, Any]:
    """Probe name -> ProbeSpec for the names asked (default: every registered probe that can run: the
    image probes only when there are probe sets).

    Raises:
        UserError: an unknown probe name.
    """
    import clipprobe.probes.suite  # noqa: F401  (fills the registry)
    from clipprobe.probes.base import PROBES

    if probes is not None:  # [] = none (standard tasks only)
        names = list(dict.fromkeys(probes))
    else:
        names = sorted(n for n, p in PROBES.items() if p.by_default and (with_probe_sets or not p.needs_probe_set))
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        bias = sorted(n for n, p in PROBES.items() if not p.needs_dataset)
        raise UserError(f"unknown probe '{unknown[0]}'; choose from {', '.join(bias)}")
    tasks = [n for n in names if PROBES[n].needs_dataset]
    if tasks:
        raise UserError(f"{tasks[0]} is a standard task, not a probe: name its datasets with --benchmarks (e.g. "
                        "comco-objects, heldout, cifar10) and leave it out of --probes")  # fmt: skip
    return {n: PROBES[n] for n in names}


def load_benchmarks(entries: list[str] | None, dataset_root: str | None, split: str,
                    cache_dir: str | None = None, generate: dict[str, Any] | None = None) -> list[Target]:  # fmt: skip
    """One target per dataset of ``--benchmarks``, each checked (name, folder, task) before any model is built.

    Raises:
        UserError: an unknown dataset, a missing --dataset_root, a folder that does not hold the dataset, a dataset
            listed twice.
    """
    from clipprobe.probes.standard import resolve_benchmark

    out: list[Target] = []
    for entry in entries or []:
        bench = resolve_benchmark(entry, dataset_root, split, cache_dir, generate)
        if any(t.label == bench.label for t in out):
            raise UserError(f"dataset {entry} is listed twice in --benchmarks; list each once")
        out.append(Target(bench.label, dataset=bench))
    return out


def check_options(options: dict[str, dict[str, Any]], probes: dict[str, Any]) -> None:
    """Check every probe's options (those for registered probes not run are allowed, so one config
    file can serve several runs) before any model is built.

    Raises:
        UserError: options for an unknown probe, an unknown option, or a value of the wrong type.
    """
    from clipprobe.probes.suite import validate_probes

    validate_probes(list(probes), options, has_probe_set=True, allow_none=True)


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


def load_coco_target(
    root: str, split: str, references: str | None, vocab: str | None, probes: list[str],
    generate: dict[str, Any] | None,
) -> Any:  # fmt: skip
    """``--coco_root``: COCO as a probe set (:func:`clipprobe.data.coco.load_coco`) on the vocabulary in use, with
    IOR's references (a folder, or a generated set's by kind); prints one line on what it holds and which of the
    probes asked run on it.

    Raises:
        UserError: a bad COCO folder or references, or none of the COCO probes asked.
    """
    from clipprobe.data.coco import load_coco
    from clipprobe.data.vocab import COCO_NAMES, load_vocab
    from clipprobe.evaluation.runner import REAL_SET_PROBES, real_set_runs

    if not any(p in REAL_SET_PROBES for p in probes):
        raise UserError(f"--coco_root runs {', '.join(REAL_SET_PROBES)}, none of which is among --probes; add them "
                        "or leave --coco_root out")  # fmt: skip
    refs = references
    if references in ("comco", "simco") and not Path(references).exists():
        from clipprobe.data.generate import ensure_probe_set

        refs = str(ensure_probe_set(references, **dict(generate or {})))
    ps = load_coco(root, split, vocab=load_vocab(vocab) if vocab else list(COCO_NAMES), references=refs,
                   need_images=any(p in ("ior", "i2tor") for p in probes))  # fmt: skip
    runs = [p for p in probes if p in REAL_SET_PROBES and real_set_runs(p, ps)]
    left = [p for p in probes if p not in runs]
    why = {"ior": "ior needs --coco_references"} if "ior" in left and not ps.references else {}
    per_n = ", ".join(f"n{n}: {ps.manifest['scenes_per_n'][str(n)]}/{ps.manifest['captions_per_n'][str(n)]}"
                      for n in ps.manifest["counts"])  # fmt: skip
    dropped = ps.manifest["dropped_images"]["outside_vocabulary"]
    _say(f"clipprobe: eval: {ps.name}: {len(ps.scenes):,} images and {len(ps.captions):,} captions with 2-5 objects "
         f"(images/captions {per_n}; {dropped:,} images left out for an object outside the vocabulary); runs "
         f"{', '.join(runs) or 'nothing'}"
         + (f"; not on COCO: {', '.join(why.get(p, p) for p in left)}" if left else ""))  # fmt: skip
    return ps


def targets(probe_sets: list[Any], vocab: str | None, image_probes: bool, text_probes: bool) -> list[Target]:
    """The targets to run: one per probe set, plus one vocabulary target for text probes when asked (or when the
    only sets are real data sets such as COCO, which take only their own probes)."""
    from clipprobe.data.coco import KIND as COCO_KIND
    from clipprobe.data.vocab import load_vocab

    names = [ps.name for ps in probe_sets]
    unique = len(set(names)) == len(names)
    out = [Target(ps.name if unique else _safe(f"{ps.name}-{ps.root.name}"), ps) for ps in probe_sets]
    words = load_vocab(vocab) if vocab else None
    label = (vocab if vocab in ("coco", "comco", "simco") else Path(vocab).stem) if vocab else None
    out = [Target(t.label, t.probe_set, words, label) for t in out]
    generated = [ps for ps in probe_sets if ps.kind != COCO_KIND]  # COCO runs only its own probes (tor, ior, i2tor)
    if text_probes and (vocab or not generated):
        out.append(Target(f"vocab-{_safe(label or 'coco')}", None, words, label or "coco"))
    return out


def plan_jobs(
    specs: list[ModelSpec],
    tgts: list[Target],
    probes: dict[str, Any],
    out: Path,
    options: dict[str, dict[str, Any]],
    seed: int,
) -> Plan:
    """Every (model, target, probe) job with its identity and result path."""
    import clipprobe.probes.suite  # noqa: F401  (fills the registry)
    from clipprobe.evaluation.records import identity_key
    from clipprobe.probes.base import PROBES

    plan = Plan()
    has_vocab = has_vocab_target(tgts)
    probes = {**probes, **{t.dataset.task: PROBES[t.dataset.task] for t in tgts if t.dataset is not None}}
    asked = {name: asked_options(name, options.get(name), seed) for name in probes}
    for spec in specs:
        model, weights_label = spec.labels()
        weights = spec.weights(seed)
        for tgt in tgts:
            for name, probe in probes.items():
                if not runs_on(name, tgt, has_vocab):
                    continue
                ps = tgt.describe() or {}
                identity = {
                    "model": spec.arch or spec.name, "weights": weights,
                    "probe_set": ps.get("manifest_sha256") or ps.get("path"), "target": tgt.label,
                    "vocab": tgt.vocab_label, "probe": name, "probe_version": probe.version, "options": asked[name],
                }  # fmt: skip
                fname = RESULT_TEMPLATE.format(model=model, weights=weights_label, target=tgt.label,
                                               probe=_safe(name), identity=identity_key(identity))  # fmt: skip
                plan.jobs.append(Job(spec, tgt, name, out / fname, identity))
    return plan
