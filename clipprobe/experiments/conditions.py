"""``clipprobe experiment run`` (and ``experiment emergence``, one such experiment): named conditions, each a tiny
CLIP trained through ``clipprobe fit`` and probed while it trains (docs/PROBES.md, section 5).

A *condition* is a caption-order policy of the synthetic corpus (:mod:`clipprobe.data.corpus`: ``size_first`` /
``small_first`` name the largest / smallest object first with probability ``p_order``, ``random`` shuffles) plus
any ``clipprobe fit`` overrides (``fit``: another architecture such as ``clipprobe-tiny-bidir``, ``--model.
text_pos_embed none``, ``--data.order_augment true``). Every condition trains with the same recipe, steps and
probe cadence, once per seed of ``seeds`` (the seed drives the corpus, the data order, the initialisation and the
probes' caption sampling; the ior probe set, the measuring instrument, is one for all), so a difference between
conditions is the condition's. Corpora depend only on (policy, seed): conditions
that share a policy share their corpus, and all policies of one seed share their images (sample ``i`` draws its
objects, sizes and places before the order policy runs).

Each run is probed by the :class:`~clipprobe.training.callbacks.BiasProbeCallback`, the evaluation path of
``clipprobe eval``: ``tor`` (balanced, on the probe set's object names), ``ior`` on a ComCO probe set at the corpus'
image size, ``retrieval`` (image-to-caption recall on a held-out corpus, seed + 1, within batches of
``retrieval_batch``; chance ``1 / retrieval_batch``) and the standard ``benchmarks`` if any, at step 0, every
``every`` steps and at the end. The records (``run.condition``, ``run.seed``) land in each run's ``probes.jsonl``;
``--out`` gets, atomically, ``records.jsonl`` (all of them), ``<name>.png`` and ``results.md`` (views of the
records with the seeds' spread, :mod:`clipprobe.evaluation.views`) and ``timing.json``. Corpora, runs and probe
sets live in ``--work``, which is reused: finished corpora and runs are not redone, an interrupted run resumes.
``--task_index i`` runs only the i-th (condition, seed) and writes nothing to ``--out`` (one task of a SLURM array,
``slurm/experiment.sbatch``); running without it afterwards trains nothing that is finished and writes the views.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from clipprobe.errors import UserError


@dataclass(frozen=True)
class Condition:
    """One arm of the experiment: a caption order policy, its probability, ``clipprobe fit`` overrides, a name."""

    order: str
    p_order: float
    fit_args: tuple[str, ...] = ()
    label: str = ""

    @property
    def policy(self) -> str:
        """The corpus policy's name: ``random``, ``size_first_p0.9``."""
        return self.order if self.order == "random" else f"{self.order}_p{self.p_order:g}"

    @property
    def name(self) -> str:
        return self.label or self.policy


TRAINING = ("recipe", "fit_args", "num_samples", "heldout_samples", "objects", "image_size", "steps", "batch_size",
            "every")  # fmt: skip  # the Settings a run folder's corpora and checkpoints depend on (with its seed)
PROBING = ("tor_n", "tor_captions", "probe_scenes", "retrieval_batch", "benchmarks")  # and its records on these
PROBE_SET_SEED = 0  # one probe set, the measuring instrument, for every condition and seed


@dataclass(frozen=True)
class Settings:
    """Everything the experiment depends on besides the conditions (see :func:`emergence` for meanings)."""

    recipe: str
    fit_args: tuple[str, ...]
    num_samples: int
    heldout_samples: int
    objects: str
    image_size: int
    steps: int
    batch_size: int
    every: int
    seeds: tuple[int, ...]
    tor_n: tuple[int, ...]
    tor_captions: int
    probe_scenes: int
    retrieval_batch: int
    plot_n: int
    progress: bool
    benchmarks: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Data and training.


def _corpus(cond: Condition, s: Settings, out: Path, num_samples: int, seed: int) -> Path:
    """Generate (once) the corpus of ``cond``; return its folder."""
    from clipprobe.data.corpus import GENERATOR_VERSION, CorpusConfig, generate_corpus, parse_counts
    from clipprobe.fileio import file_lock

    cfg = CorpusConfig(num_samples, parse_counts(s.objects), cond.order, cond.p_order, 0.0, s.image_size,
                       1000, seed, 90)  # fmt: skip
    with file_lock(out.with_name(out.name + ".lock")):  # conditions of one policy share it, maybe at once
        if _corpus_made_by(out) != (GENERATOR_VERSION, json.loads(json.dumps(asdict(cfg)))):
            generate_corpus(cfg, out, overwrite=True, progress=s.progress)  # missing, or made by other settings/code
    return out


def _corpus_made_by(out: Path) -> tuple[int, dict[str, Any]] | None:
    """(generator version, parameters) of the corpus in ``out`` (None when it has no readable manifest)."""
    try:
        manifest = json.loads((out / "corpus.json").read_text(encoding="utf-8"))
        return manifest["generator_version"], manifest["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _last_step(run: Path) -> int:
    """The step of the run's newest checkpoint (0 when it has none)."""
    from clipprobe.models.load import read_checkpoint

    last = run / "checkpoints" / "last.ckpt"
    return (read_checkpoint(last).step or 0) if last.is_file() else 0


def _claim(run: Path, settings: dict[str, Any]) -> None:
    """Record what a run folder trains and how it is probed; refuse to reuse one made or probed with other settings
    (a finished run is not probed again, so other probe settings would mix two measurements in one table). A
    claim written before the probe settings were recorded is compared without them, then completed."""
    from clipprobe.fileio import atomic_write_json

    record = run / "experiment.json"
    settings = json.loads(json.dumps(settings))  # tuples as lists, as read back
    if record.is_file():
        old = json.loads(record.read_text(encoding="utf-8"))
        mine = settings if "probes" in old else {k: v for k, v in settings.items() if k != "probes"}
        if old != mine:
            raise UserError(f"{run} was trained or probed with other settings (see {record}); pass another --work "
                            "or delete it")  # fmt: skip
    atomic_write_json(record, settings)


def probe_options(s: Settings, heldout: Path) -> dict[str, dict[str, Any]]:
    """The probes' options: tor's balanced captions in the bare template; retrieval on the held-out corpus."""
    return {
        "tor": {"mode": "balanced", "template": "bare", "n": list(s.tor_n), "num_captions": s.tor_captions},
        "retrieval": {"shards": str(heldout), "batch": s.retrieval_batch},
    }


def train(cond: Condition, s: Settings, seed: int, corpus: Path, heldout: Path, probe_set: Path, run: Path) -> None:
    """``clipprobe fit`` with the recipe and the condition's overrides on ``corpus``, probed by the callback; resume
    an unfinished run."""
    from clipprobe.cli import main
    from clipprobe.fileio import atomic_write_json

    done = _last_step(run)
    if done >= s.steps:
        return
    probes = {"class_path": "clipprobe.training.callbacks.BiasProbeCallback", "init_args": {
        "probes": ["tor", "ior", "retrieval"], "probe_sets": [str(probe_set)], "options": probe_options(s, heldout),
        "every_n_steps": s.every, "seed": seed, "progress": False, "source": "experiment",
        "benchmarks": list(s.benchmarks),  # [] keeps the recipe's out: the held-out retrieval probe measures skill
        "benchmark_generate": {b: {"image_size": s.image_size} for b in s.benchmarks},
        "run_info": {"condition": cond.name, "seed": seed}}}  # fmt: skip
    callbacks = [{"class_path": "clipprobe.training.fit.StepTimer"}, probes]
    overlay = run / "experiment-callbacks.yaml"
    atomic_write_json(overlay, {"trainer": {"callbacks": callbacks}})  # JSON is YAML
    shards = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))["num_shards"]
    argv = ["fit", "--config", s.recipe, "--config", str(overlay),
            "--data.train_data", str(corpus / f"{{00000..{shards - 1:05d}}}.tar"), "--data.batch_size", str(s.batch_size),
            "--data.seed", str(seed), "--seed_everything", str(seed), "--trainer.max_steps", str(s.steps),
            "--trainer.default_root_dir", str(run), "--checkpoint.every_n_train_steps", str(s.every),
            "--trainer.enable_progress_bar", str(s.progress).lower(),
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run),
            "--trainer.logger.name", "csv", *s.fit_args, *cond.fit_args]  # fmt: skip
    resume = (run / "checkpoints" / "last.ckpt").is_file()  # a run killed after its step-0 checkpoint resumes too
    main(argv + (["--ckpt_path", "last"] if resume else []))


def parse_condition(spec: str | dict[str, Any], p_order: float) -> Condition:
    """A condition from ``"size_first"`` (with ``p_order``), ``"size_first:1.0"``, ``"random"``, or a mapping
    ``{name, order, p_order, fit}`` where ``fit`` holds ``clipprobe fit`` overrides as ``{option: value}``
    (``{model.model_name: clipprobe-tiny-bidir}``) or as a list of arguments.

    Raises:
        UserError: an unknown order or key, a probability outside [0, 1], a mapping without a name.
    """
    from clipprobe.data.corpus import ORDER_POLICIES

    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"name", "order", "p_order", "fit"})
        if unknown or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise UserError(f"condition {spec!r}: give a name and any of order, p_order, fit"
                            + (f" (unknown: {', '.join(unknown)})" if unknown else ""))  # fmt: skip
        base = parse_condition(f"{spec.get('order', 'random')}:{spec.get('p_order', p_order)}", p_order)
        return Condition(base.order, base.p_order, _fit_args(spec["name"], spec.get("fit")), spec["name"])
    order, _, p = spec.partition(":")
    if order not in ORDER_POLICIES:
        raise UserError(f"unknown condition {spec!r}; choose from {', '.join(ORDER_POLICIES)} (optionally :P)")
    try:
        prob = float(p) if p else p_order
    except ValueError:
        raise UserError(f"condition {spec!r}: {p!r} is not a probability; write e.g. size_first:0.9") from None
    if not 0.0 <= prob <= 1.0:
        raise UserError(f"condition {spec!r}: p_order must lie in [0, 1], got {prob}")
    return Condition(order, 1.0 if order == "random" else prob)


def _fit_args(name: str, fit: Any) -> tuple[str, ...]:
    """A condition's ``fit`` overrides as command-line arguments."""
    if fit is None:
        return ()
    if isinstance(fit, dict):
        return tuple(a for k, v in fit.items() for a in (f"--{str(k).lstrip('-')}", _arg(v)))
    if isinstance(fit, list) and all(isinstance(a, (str, int, float, bool)) for a in fit):
        return tuple(_arg(a) for a in fit)
    raise UserError(f"condition {name}: fit must map clipprobe fit options to values ({{model.model_name: "
                    f"clipprobe-tiny-bidir}}) or list arguments, got {fit!r}")  # fmt: skip


def _arg(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _check(s: Settings, conditions: list[Condition]) -> None:
    checks = [
        (bool(conditions), "no --conditions given; e.g. --conditions size_first,random"),
        (len({c.name for c in conditions}) == len(conditions), "--conditions lists a condition name twice"),
        (bool(s.seeds) and len(set(s.seeds)) == len(s.seeds), f"--seeds must list distinct seeds, got {list(s.seeds)}"),
        (Path(s.recipe).is_file(), f"recipe {s.recipe} not found; pass --recipe configs/fit/tiny-synthetic.yaml"),
        (s.steps >= s.every >= 1, f"need steps >= every >= 1, got steps={s.steps}, every={s.every}"),
        (s.heldout_samples >= s.retrieval_batch >= 2, "need heldout_samples >= retrieval_batch >= 2"),
        (s.plot_n in s.tor_n, f"--plot-n {s.plot_n} must be one of --tor-n {list(s.tor_n)}"),
        (
            s.num_samples >= s.batch_size >= 1,
            f"need num_samples >= batch_size >= 1, got {s.num_samples}, {s.batch_size}",
        ),
        (s.probe_scenes >= 1, f"--probe-scenes must be at least 1, got {s.probe_scenes}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    from clipprobe.data.corpus import parse_counts
    from clipprobe.evaluation.runner import asked_options

    parse_counts(s.objects)
    asked_options("tor", probe_options(s, Path("."))["tor"], 0)  # tor_n, tor_captions: before any work


def default_work_dir(s: Settings) -> Path:
    """``<cache>/emergence/<hash of the training settings>`` (cache: see ``default_cache_dir``)."""
    import hashlib

    from clipprobe.data.generate import default_cache_dir

    blob = json.dumps({k: getattr(s, k) for k in TRAINING}, sort_keys=True)
    return default_cache_dir().parent / "emergence" / hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def tasks(conditions: list[Condition], s: Settings) -> list[tuple[Condition, int]]:
    """Every (condition, seed), conditions first: the order of ``--task_index``."""
    return [(c, seed) for c in conditions for seed in s.seeds]


def run_condition(
    cond: Condition, seed: int, s: Settings, work: Path, probe_set: Path
) -> tuple[list[Any], dict[str, Any]]:
    """Corpora and probed training of one condition and seed: its records and the seconds of each part (a
    finished run's training time as it was measured when it ran)."""
    from clipprobe.data.corpus import GENERATOR_VERSION
    from clipprobe.evaluation.records import read_records

    run = work / "runs" / cond.name / f"seed{seed}"
    _claim(run, {"condition": {"order": cond.order, "p_order": cond.p_order, "fit_args": list(cond.fit_args)},
                 "seed": seed, "corpus_generator": GENERATOR_VERSION, **{k: getattr(s, k) for k in TRAINING},
                 "probes": {k: getattr(s, k) for k in PROBING} | {"probe_set_seed": PROBE_SET_SEED}})  # fmt: skip
    t0 = time.perf_counter()
    corpus = _corpus(cond, s, work / "corpora" / f"{cond.policy}-s{seed}", s.num_samples, seed)
    heldout = _corpus(cond, s, work / "corpora" / f"{cond.policy}-s{seed}-heldout", s.heldout_samples, seed + 1)
    t1 = time.perf_counter()
    finished = _last_step(run) >= s.steps
    train(cond, s, seed, corpus, heldout, probe_set, run)
    records = read_records(run / "probes.jsonl")
    return records, {"data": t1 - t0, **_train_seconds(run, None if finished else time.perf_counter() - t1)}


def _train_seconds(run: Path, seconds: float | None) -> dict[str, Any]:
    """The run's training-and-probing seconds: measured now (kept in ``<run>/experiment-timing.json``), or, for a
    run finished earlier, as kept then (None when it was trained before timings were kept)."""
    from clipprobe.fileio import atomic_write_json

    kept = run / "experiment-timing.json"
    if seconds is not None:
        atomic_write_json(kept, {"train_and_probes": seconds})
        return {"train_and_probes": seconds, "reused": False}
    try:
        return {"train_and_probes": json.loads(kept.read_text(encoding="utf-8"))["train_and_probes"], "reused": True}
    except (OSError, ValueError, KeyError):
        return {"train_and_probes": None, "reused": True}


def panels(s: Settings) -> list[Any]:
    """The plot's panels: first-mention and large-object closest shares at ``plot_n``, and recall@1."""
    from clipprobe.evaluation.views import PanelSpec

    return [
        PanelSpec("tor", "closest", s.plot_n, "1", title=f"tor closest_1 (first mention nearest), n={s.plot_n}"),
        PanelSpec("ior", "closest", s.plot_n, "large", title=f"ior closest_large (large object nearest), n={s.plot_n}"),
        PanelSpec("retrieval", "recall", None, "1", title="held-out image->caption recall@1"),
    ]


def columns(s: Settings) -> list[Any]:
    """The table's columns: tor closest_1 and share_1 per n, ior closest_large per n, recall@1 and @5, and the
    standard benchmarks' top-1 accuracy (zero-shot classification) when there are any."""
    from clipprobe.evaluation.views import PanelSpec

    cols = [PanelSpec("tor", "closest", n, "1", title=f"tor closest_1 n={n}") for n in s.tor_n]
    cols += [PanelSpec("tor", "share", n, "1", title=f"tor share_1 n={n}") for n in s.tor_n]
    cols += [PanelSpec("ior", "closest", n, "large", title=f"ior closest_large n={n}") for n in s.tor_n]
    cols += [PanelSpec("retrieval", "recall", None, str(k), title=f"recall@{k}") for k in (1, 5)]
    return cols + [PanelSpec("zeroshot_classification", "accuracy", None, "top1", title=f"{b} acc1", target=b)
                   for b in s.benchmarks if b != "heldout"]  # fmt: skip


def experiment(
    out: str = "docs/emergence",
    conditions: list[str | dict[str, Any]] = ["size_first", "random"],  # noqa: B006 (jsonargparse reads the default)
    name: str = "emergence",
    p_order: float = 0.9,
    recipe: str = "configs/fit/tiny-synthetic.yaml",
    fit_args: list[str] = [],  # noqa: B006
    num_samples: int = 40_000,
    heldout_samples: int = 1_000,
    objects: str = "1-4",
    image_size: int = 64,
    steps: int = 2_000,
    batch_size: int = 128,
    every: int = 250,
    seed: int = 0,
    seeds: list[int] | None = None,
    tor_n: list[int] = [2, 3, 4],  # noqa: B006
    tor_captions: int = 1_000,
    probe_scenes: int = 138,
    retrieval_batch: int = 100,
    benchmarks: list[str] = [],  # noqa: B006
    plot_n: int = 3,
    threads: int | None = None,
    work: str | None = None,
    task_index: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path | None:
    """Train one tiny CLIP per condition and seed and compare their bias curves (docs/PROBES.md, section 5).

    Args:
        out: Output folder: records.jsonl, NAME.png, results.md, timing.json (written atomically).
        conditions: Caption orders (size_first, small_first, random; ORDER:P sets that condition's p), or mappings
            {name, order, p_order, fit} where fit holds clipprobe fit overrides ({model.model_name:
            clipprobe-tiny-bidir}, {data.order_augment: true}).
        name: The experiment's name: its figure is NAME.png.
        p_order: Probability that size_first (small_first) names the largest (smallest) object first.
        recipe: The ``clipprobe fit`` recipe every condition trains with.
        fit_args: Extra ``clipprobe fit`` options for every condition, e.g. --model.lr,5e-4 (a condition's own
            fit overrides come after and win).
        num_samples: Training corpus size per condition (identical images across conditions).
        heldout_samples: Held-out corpus size per condition (seed + 1) for retrieval.
        objects: Objects per corpus image, e.g. 1-4.
        image_size: Corpus and probe-set image side in pixels.
        steps: Training steps per condition.
        batch_size: Training batch size.
        every: Probe (and checkpoint) every this many steps.
        seed: The seed when ``seeds`` is not given.
        seeds: Seeds, each trained for every condition: seed of the corpora, the data order, the model
            initialisation and the probes.
        tor_n: Object counts of the tor captions and of the ior probe set's scenes.
        tor_captions: tor balanced captions per n.
        probe_scenes: ior probe-set scenes per group (n objects, large slot).
        retrieval_batch: Held-out retrieval batch size (chance recall@1 = 1 / this).
        benchmarks: Standard evaluation of each run at the probes' cadence (generated offline sets:
            comco-objects, simco-objects, heldout), beside the held-out retrieval probe.
        plot_n: The n shown in the plot.
        threads: torch intra-op threads (default: torch's).
        work: Folder for corpora, runs and probe sets, reused when run again (default: a folder in the cache
            beside the probe sets, named after a hash of the training settings).
        task_index: Run only the (condition, seed) at this position (from 0; conditions in order, each with every
            seed in order) and write nothing to --out: one task of a SLURM array (slurm/experiment.sbatch).
            Without it, every unfinished run trains, then the views are written.
        overwrite: Replace a non-empty output folder.
        progress: Show progress bars.
    """
    from clipprobe.data.generate import ensure_probe_set
    from clipprobe.evaluation.records import write_records
    from clipprobe.evaluation.views import condition_curves, final_table
    from clipprobe.fileio import atomic_write_json, atomic_write_text, check_output_dir, staged_dir

    s = Settings(recipe, tuple(fit_args), num_samples, heldout_samples, objects, image_size, steps, batch_size, every,
                 tuple(seeds if seeds is not None else [seed]), tuple(tor_n), tor_captions, probe_scenes,
                 retrieval_batch, plot_n, progress, tuple(benchmarks))  # fmt: skip
    conds = [parse_condition(c, p_order) for c in conditions]
    _check(s, conds)
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}; leave it out for torch's default")
    todo = tasks(conds, s)
    if task_index is not None and not 0 <= task_index < len(todo):
        raise UserError(f"--task_index {task_index} is out of range: {len(conds)} condition(s) x {len(s.seeds)} "
                        f"seed(s) = {len(todo)} tasks, so 0 to {len(todo) - 1}")  # fmt: skip
    out_path = check_output_dir(out, overwrite) if task_index is None else None
    if benchmarks:
        from clipprobe.probes.standard import check_benchmark

        for b in benchmarks:
            check_benchmark(b, None)
    work_path = Path(work) if work else default_work_dir(s)
    probe_set = ensure_probe_set("comco", work_path / "probesets", objects=tuple(tor_n),
                                 scenes_per_layout=probe_scenes, image_size=image_size, equal_size=False,
                                 seed=PROBE_SET_SEED, progress=progress)  # fmt: skip
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or old_threads)
    start = time.perf_counter()
    try:
        if task_index is not None:
            cond, run_seed = todo[task_index]
            run_condition(cond, run_seed, s, work_path, probe_set)
            print(f"task {task_index}: {cond.name} seed {run_seed} done in {(time.perf_counter() - start) / 60:.1f} "
                  f"min (work: {work_path}); run again without --task_index to write {out}")  # fmt: skip
            return None
        done = {(c.name, k): run_condition(c, k, s, work_path, probe_set) for c, k in todo}
    finally:
        torch.set_num_threads(old_threads)
    records = [r for recs, _ in done.values() for r in recs]
    timing = {"total": time.perf_counter() - start,
              **{f"{c}/seed{k}": secs for (c, k), (_, secs) in done.items()}}  # fmt: skip
    table = final_table(records, columns(s))
    assert out_path is not None
    with staged_dir(out_path) as root:  # records and views; timings apart
        write_records(root / "records.jsonl", records)
        condition_curves(records, panels(s), root / f"{name}.png")
        atomic_write_text(root / "results.md", table)
        atomic_write_json(root / "timing.json", {**timing, "threads": threads or old_threads})
    print(table + f"\nwrote {out_path} in {timing['total'] / 60:.1f} min (work: {work_path})")
    return out_path
