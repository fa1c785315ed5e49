"""``clipprobe eval``: run probes on models, files or checkpoint series; one results JSON per job.

A job is one (model, weights, probe set, probe), planned and checked in :mod:`clipprobe.evaluation.jobs`.
Its file is named from ``RESULT_TEMPLATE``, written atomically, and skipped on a rerun with
``--skip-existing`` (so sweeps resume). Each model is loaded once, and one :class:`~clipprobe.probes.encode.CachedEncoder` serves all its jobs, so a
text or image shared by several probes or probe sets is encoded once.

Text probes need no probe set: with ``--vocab`` they run once per model against that vocabulary;
without it they run once per probe set, on the set's vocabulary (or once on the study's COCO names
when no probe set is given).
"""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clipprobe.errors import UserError
from clipprobe.evaluation.jobs import (
    Job,
    Plan,
    check_options,
    load_probe_sets,
    model_specs,
    plan_jobs,
    resolve_device,
    resolve_probes,
    targets,
)

SCHEMA_VERSION = 1  # of the results JSON


def evaluate(
    model: str | None = None,
    pretrained: str | None = None,
    models: list[str] | None = None,
    checkpoints: str | None = None,
    model_index: int | None = None,
    probes: list[str] | None = None,
    probe_set: list[str] | None = None,
    generate: dict[str, Any] | None = None,
    vocab: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    out: str = "results",
    skip_existing: bool = False,
    device: str = "auto",
    batch_size: int = 256,
    num_workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Run probes on models and write one JSON per (model, weights, probe set, probe).

    Files are named ``OUT/<model>__<weights>__<probeset>__<probe>.json``; text probes run without a
    probe set use ``vocab-<name>`` in place of the probe set.

    Args:
        model: open_clip architecture (``ViT-B-32``, ``clipprobe-tiny``, ``hf-hub:org/repo``); with
            --checkpoints, the architecture of files that do not record it.
        pretrained: pretrained tag (``openai``) or checkpoint file; none = random initialisation.
        models: files of lines ``name pretrained`` (``#`` comments), or such lines themselves (in YAML).
        checkpoints: glob of checkpoint files (a training progression), evaluated in step order.
        model_index: evaluate only the model at this position (from 0) in the list of all models given
            (--model, --models lines, --checkpoints, in that order); e.g. one task of an array job, with
            $SLURM_ARRAY_TASK_ID (slurm/eval.sbatch).
        probes: probe names (default: all that can run; image probes need --probe-set): tor, toc, mitigation,
            size_claim, ior, i2tor, ioc, itm, attention (PROBES.md).
        probe_set: probe set folders (own or the study's layout), or ``comco``/``simco`` to generate one
            into the cache ($CLIPPROBE_CACHE); image probes need at least one, text probes none.
        generate: parameters for sets named by kind, as for 'clipprobe data comco' (e.g. image_size: 64).
        vocab: text vocabulary, a name (coco, simco) or a file with one name a line; default: each probe
            set's own, or the study's 90 COCO names.
        options: per-probe options, e.g. ``{tor: {mode: paper, template: bare}}``.
        out: results folder.
        skip_existing: do not rerun jobs whose result file exists (resume a sweep).
        device: auto (cuda when available), cpu, cuda or cuda:N.
        batch_size: inputs per model call.
        num_workers: image-loading workers (default: chosen by the number of images).
        seed: seed for the probes' sampling (balanced captions, classifier splits).
        progress: show progress bars.

    Returns:
        The result files written or found (when skipped).
    """
    config = {k: v for k, v in locals().items()}
    config["device"] = device = resolve_device(device)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    specs = model_specs(model, pretrained, models, checkpoints, model_index)
    chosen = resolve_probes(probes, with_probe_sets=bool(probe_set))
    check_options(dict(options or {}), chosen)
    sets = load_probe_sets(probe_set, generate)
    needy = [n for n, p in chosen.items() if p.needs_probe_set]
    if needy and not sets:
        raise UserError(f"probe {needy[0]} needs a probe set; pass --probe-set DIR (or comco to generate one)")
    tgts = targets(sets, vocab, image_probes=bool(needy), text_probes=len(needy) < len(chosen))
    plan = plan_jobs(specs, tgts, chosen, Path(out))
    return _run(plan, config, skip_existing)


def _run(plan: Plan, config: dict[str, Any], skip_existing: bool) -> list[Path]:
    import torch

    from clipprobe.models.load import load_model
    from clipprobe.probes.encode import CachedEncoder

    done: list[Path] = []
    total, counter = len(plan.jobs), iter(range(1, len(plan.jobs) + 1))
    for spec, jobs in plan.by_model().items():
        todo = [j for j in jobs if not (skip_existing and j.path.is_file())]
        for job in jobs:
            if job not in todo:
                _say(f"[{next(counter)}/{total}] skip {job.path.name} (exists)")
                done.append(job.path)
        if not todo:
            continue
        torch.manual_seed(config["seed"])  # randomly initialised models are the same on every run
        loaded = load_model(spec.name, spec.pretrained, device=config["device"])
        encoder = CachedEncoder(
            loaded.model, loaded.preprocess, loaded.tokenizer, config["device"], config["batch_size"],
            progress=config["progress"], num_workers=config["num_workers"],
        )  # fmt: skip
        for job in todo:
            done.append(_run_job(job, loaded, encoder, config, f"[{next(counter)}/{total}]"))
    return done


def _run_job(job: Job, loaded: Any, encoder: Any, config: dict[str, Any], tag: str) -> Path:
    from clipprobe.probes.suite import run_probes

    options = dict(config["options"] or {})
    start = time.perf_counter()
    (result,) = run_probes(
        encoder, [job.probe], job.target.probe_set, job.target.vocab, {job.probe: options.get(job.probe, {})},
        seed=config["seed"], progress=config["progress"],
    )  # fmt: skip
    seconds = time.perf_counter() - start
    write_result(job, loaded, result, encoder.counters(), config, seconds)
    _say(f"{tag} {job.path.name}: {_headline(result.metrics)} ({seconds:.1f} s)")
    return job.path


def write_result(
    job: Job, loaded: Any, result: Any, counters: dict[str, int], config: dict[str, Any], seconds: float
) -> None:
    """Write one result file atomically (schema: DESIGN.md "Results JSON")."""
    from clipprobe import __version__
    from clipprobe.fileio import atomic_write_json

    record = {
        "schema": SCHEMA_VERSION,
        "clipprobe_version": __version__,
        "model": loaded.name,
        "pretrained": None if loaded.checkpoint else loaded.pretrained,
        "checkpoint": str(Path(loaded.checkpoint).resolve()) if loaded.checkpoint else None,
        "weights": job.weights,
        "step": loaded.step,
        "samples_seen": loaded.samples_seen,
        "probe_set": job.target.describe(),
        "target": job.target.label,
        "vocab": job.target.vocab_label,
        **result.to_json(),
        "probe": job.probe,
        "encoder": counters,
        "seconds": round(seconds, 3),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "eval_config": config,
    }
    atomic_write_json(job.path, _jsonable(record))


def _jsonable(obj: Any) -> Any:
    """NaN -> None (strict JSON), tuples -> lists, paths -> strings."""
    if isinstance(obj, float):
        return None if obj != obj or obj in (float("inf"), float("-inf")) else obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _headline(metrics: dict[str, float], limit: int = 4) -> str:
    """A few metrics for the progress line: first-position or large-object shares first."""
    keys = [k for k in metrics if re.search(r"(share_1|/large|closest_1|scenario\d|acc_)$", k)] or list(metrics)
    shown = [f"{k}={metrics[k]:.3f}" for k in keys[:limit] if isinstance(metrics[k], float)]
    return ", ".join(shown) or "no metrics"


def _say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
