"""``clipprobe eval``: run probes on models, files or checkpoint series; one record file per job.

A job is one (model, weights, target, probe), planned and checked in :mod:`clipprobe.evaluation.jobs`;
its record (:class:`~clipprobe.evaluation.records.Record`) comes from the one evaluation function,
:func:`clipprobe.evaluation.runner.run_evaluation`, and goes to a JSON Lines file named from its
identity, written atomically; ``--skip_existing`` reuses a file only when it holds a readable record of
the same identity (so sweeps resume). Each model is loaded once, and one
:class:`~clipprobe.probes.encode.CachedEncoder` serves all its jobs, so a text or image shared by several
probes or probe sets is encoded once.

Text probes need no probe set: with ``--vocab`` they run once per model against that vocabulary;
without it they run once per probe set, on the set's vocabulary (or once on the study's COCO names
when no probe set is given).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from clipprobe.errors import UserError
from clipprobe.evaluation.jobs import (
    Job,
    Plan,
    ProbeSettings,
    check_options,
    load_benchmarks,
    load_coco_target,
    load_probe_sets,
    model_specs,
    plan_jobs,
    resolve_device,
    resolve_probes,
    run_probe_settings,
    targets,
)


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
    benchmarks: list[str] | None = None,
    dataset_root: str | None = None,
    benchmark_generate: dict[str, dict[str, Any]] | None = None,
    split: str = "test",
    coco_root: str | None = None,
    coco_split: str = "val2017",
    coco_references: str | None = None,
    t2i_model: str | None = None,
    out: str = "results",
    skip_existing: bool = False,
    device: str = "auto",
    batch_size: int = 256,
    num_workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    trust_pickle: bool = False,
) -> list[Path]:
    """Run probes on models and write one record file per (model, weights, probe set, probe).

    Files are named ``OUT/<model>__<weights>__<probeset>__<probe>__<identity>.jsonl`` (one JSON line, the
    record; ``clipprobe report`` reads them); text probes run without a probe set use ``vocab-<name>`` in
    place of the probe set; ``<identity>`` hashes what produced the result (weights content, probe set,
    probe version and options).

    Args:
        model: open_clip architecture (``ViT-B-32``, ``clipprobe-tiny``, ``hf-hub:org/repo``); with
            --checkpoints, the architecture of files that do not record it.
        pretrained: pretrained tag (``openai``) or checkpoint file; none = random initialisation.
        models: files of lines ``name pretrained`` (``#`` comments), or such lines themselves (in YAML).
        checkpoints: glob of checkpoint files and export folders, or a training run's folder (a training
            progression), evaluated in step order, each step once. For a run's folder the probes, probe sets,
            generation parameters, options, vocabulary and seed default to those of the run's BiasProbeCallback
            (its config.yaml), so the numbers match the run's probes.jsonl.
        model_index: evaluate only the model at this position (from 0) in the list of all models given
            (--model, --models lines, --checkpoints, in that order); e.g. one task of an array job, with
            $SLURM_ARRAY_TASK_ID (slurm/eval.sbatch).
        probes: probe names (default: all that can run; image probes need --probe-set): tor, toc, mitigation,
            size_claim, ior, i2tor, ioc, itm, attention (docs/PROBES.md); ``[]`` for none (standard tasks only).
        probe_set: probe set folders (own or the study's layout), or ``comco``/``simco`` to generate one
            into the cache ($CLIPPROBE_CACHE); image probes need at least one, text probes none.
        generate: parameters for sets named by kind, as for 'clipprobe data comco' (e.g. image_size: 64).
        vocab: text vocabulary, a name (coco, simco) or a file with one name a line; default: each probe
            set's own, or the study's 90 COCO names.
        options: per-probe options, e.g. ``{tor: {mode: paper, template: bare}}``; also of the standard tasks,
            e.g. ``{zeroshot_retrieval: {recall_k: [1, 5]}, zeroshot_classification: {batch_size: 128}}``.
        benchmarks: standard evaluation beside the probes, through CLIP_benchmark: dataset names, each run with its
            task (zero-shot classification: acc1, acc5, mean per-class recall; retrieval: image and text recall@k):
            the offline sets comco-objects, simco-objects (one object per image, one class per object name) and
            heldout (held-out synthetic captions), generated once into the cache, or any CLIP_benchmark dataset in
            a local --dataset_root (cifar10, imagenet1k, mscoco_captions, flickr30k, wds/<name>, ...).
        dataset_root: the local folder of the --benchmarks datasets; ``{dataset}`` is replaced by each name (after
            ``wds/``), as in CLIP_benchmark. clipprobe never downloads a dataset.
        benchmark_generate: generation options of the offline sets, by name, as for 'clipprobe data benchset'
            (e.g. ``{comco-objects: {per_class: 20}, heldout: {num_samples: 2000}}``).
        split: the datasets' split.
        coco_root: a local COCO folder (annotations/instances_SPLIT.json, captions_SPLIT.json, SPLIT/ images): adds
            the study's COCO probes (target ``mscoco-SPLIT``): tor over COCO's captions naming 2-5 objects, in
            mention order (COCO-TOR), and i2tor and ior over its images with 2-5 annotated objects, ranked by
            area (large = the largest). Other probes do not run on it. clipprobe never downloads COCO.
        coco_split: the COCO split to read (val2017, train2017, val2014, ...).
        coco_references: IOR's reference images on COCO: a folder of one image per object (``<name>.png``, or
            class folders as DomainNet's, first image of each), a probe set folder (its references), or comco /
            simco for the generated set's (with --generate). Without it, ior does not run on COCO.
        t2i_model: the t2i probe's generator: a diffusers text-to-image pipeline (hub id or local folder) or
            ``module:factory``; the same as ``--options '{t2i: {pipeline: ...}}'``. Name t2i in --probes.
        out: results folder.
        skip_existing: do not rerun a job whose result file holds a record of the same identity (resume a sweep).
        device: auto (cuda when available), cpu, cuda or cuda:N.
        batch_size: inputs per model call.
        num_workers: image-loading workers (default: chosen by the number of images).
        seed: seed for the probes' sampling (balanced captions, classifier splits).
        progress: show progress bars.
        trust_pickle: unpickle checkpoint files fully (runs code stored in the file): only for files you
            trust, e.g. old checkpoints that hold custom Python objects. Without it, files holding anything
            but tensors and plain data are refused.

    Returns:
        The result files written or found (when skipped).
    """
    config = {k: v for k, v in locals().items()}
    check_out_folder(out)
    config["device"] = device = resolve_device(device)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if num_workers is not None and num_workers < 0:
        raise UserError(
            f"--num-workers must be 0 or more, got {num_workers}; leave it out to choose by the number of images"
        )
    specs = model_specs(model, pretrained, models, checkpoints, model_index, trust_pickle=trust_pickle)
    asked = ProbeSettings(probes, probe_set, generate, options, vocab, seed, (), benchmarks, dataset_root, None,
                          benchmark_generate)  # fmt: skip
    used = run_probe_settings(checkpoints, asked)  # a run's folder: its BiasProbeCallback's settings by default
    probes, probe_set, generate, options, vocab, seed = (used.probes, used.probe_set, used.generate, used.options,
                                                         used.vocab, used.seed)  # fmt: skip
    benchmarks, dataset_root, benchmark_generate = used.benchmarks, used.dataset_root, used.benchmark_generate
    config.update(probes=probes, probe_set=probe_set, generate=generate, options=options, vocab=vocab, seed=seed,
                  benchmarks=benchmarks, dataset_root=dataset_root, benchmark_generate=benchmark_generate)  # fmt: skip
    if t2i_model:
        if "t2i" not in (probes or []):
            raise UserError("--t2i_model is the t2i probe's generator; add t2i to --probes (e.g. --probes t2i)")
        options = {**(options or {}), "t2i": {**dict((options or {}).get("t2i") or {}), "pipeline": t2i_model}}
        config["options"] = options
    chosen = resolve_probes(probes, with_probe_sets=bool(probe_set or coco_root))
    check_options(dict(options or {}), chosen)
    if not chosen and not benchmarks:
        raise UserError("nothing to run: --probes is empty and no --benchmarks are given; name probes or datasets")
    sets = load_probe_sets(probe_set, generate)
    if coco_root:
        sets.append(load_coco_target(coco_root, coco_split, coco_references, vocab, list(chosen), generate))
    needy = [n for n, p in chosen.items() if p.needs_probe_set]
    if needy and not sets:
        raise UserError(f"probe {needy[0]} needs a probe set; pass --probe-set DIR (or comco to generate one)")
    tgts = targets(sets, vocab, image_probes=bool(needy), text_probes=len(needy) < len(chosen))
    tgts += load_benchmarks(benchmarks, dataset_root, split, used.cache_dir, benchmark_generate)
    clash = sorted({t.label for t in tgts if t.dataset is not None} & {t.label for t in tgts if t.dataset is None})
    if clash:
        raise UserError(f"--benchmarks {clash[0]} has the name of a probe set; rename the probe set's folder")
    plan = plan_jobs(specs, tgts, chosen, Path(out), dict(options or {}), seed)
    return _run(plan, config, skip_existing)


def check_out_folder(out: str) -> None:
    """Refuse, before anything is computed, an ``--out`` that cannot become a writable folder.

    Raises:
        UserError: ``out`` or one of its parents is a file, or the nearest existing folder is not writable.
    """
    import os

    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out} lies under {parent}, which is a file; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write in {parent}; choose a folder you can write to")


def _run(plan: Plan, config: dict[str, Any], skip_existing: bool) -> list[Path]:
    import torch

    from clipprobe.models.load import load_model
    from clipprobe.probes.encode import CachedEncoder

    done: list[Path] = []
    total, counter = len(plan.jobs), iter(range(1, len(plan.jobs) + 1))
    for spec, jobs in plan.by_model().items():
        todo = [j for j in jobs if not (skip_existing and _holds_identity(j))]
        for job in jobs:
            if job not in todo:
                _say(f"[{next(counter)}/{total}] skip {job.path.name} (same identity exists)")
                done.append(job.path)
        if not todo:
            continue
        torch.manual_seed(config["seed"])  # randomly initialised models are the same on every run
        loaded = load_model(spec.name, spec.pretrained, device=config["device"], trust_pickle=config["trust_pickle"])
        encoder = CachedEncoder(
            loaded.model, loaded.preprocess, loaded.tokenizer, config["device"], config["batch_size"],
            progress=config["progress"], num_workers=config["num_workers"],
        )  # fmt: skip
        for job in todo:
            done.append(_run_job(job, loaded, encoder, config, f"[{next(counter)}/{total}]"))
    return done


def _holds_identity(job: Job) -> bool:
    """The job's file exists and holds a readable record of exactly the job's identity."""
    from clipprobe.evaluation.records import identity_key, iter_records

    if not job.path.is_file():
        return False
    try:
        return any(r.identity_key() == identity_key(job.identity) for r in iter_records(job.path))
    except UserError:
        return False


def _run_job(job: Job, loaded: Any, encoder: Any, config: dict[str, Any], tag: str) -> Path:
    from clipprobe.evaluation.records import identity_key, write_records
    from clipprobe.evaluation.runner import ModelInfo, run_evaluation

    about = ModelInfo(job.identity["model"], job.identity["weights"], loaded.step, loaded.samples_seen)
    options = dict(config["options"] or {})
    (record,) = run_evaluation(
        encoder, [(job.target, job.probe)], options, about, seed=config["seed"], progress=config["progress"],
        source="eval", counters=encoder.counters,
    )  # fmt: skip
    if record.identity_key() != identity_key(job.identity):  # a planning bug would file results under another name
        raise RuntimeError(f"record identity {record.identity()} differs from the planned {job.identity}")
    record.config = {**record.config, "eval": _jsonable_config(config)}
    write_records(job.path, [record])
    _say(f"{tag} {job.path.name}: {headline(record)} ({record.timing['seconds']:.1f} s)")
    return job.path


def _jsonable_config(config: dict[str, Any]) -> dict[str, Any]:
    from clipprobe.evaluation.records import jsonable

    return jsonable({k: v for k, v in config.items() if k != "trust_pickle"})


def headline(record: Any, limit: int = 4) -> str:
    """A few metrics for the progress line: the robust first-position or large-object shares first."""
    first = [m for m in record.metrics if m.family == "closest" and m.key in ("1", "large")]
    first += [m for m in record.metrics if m.family == "accuracy" and m not in first]
    shown = [f"{m.name}={m.value:.3f}" for m in (first or record.metrics)[:limit] if m.value == m.value]
    return ", ".join(shown) or "no metrics"


def _say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
