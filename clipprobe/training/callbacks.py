"""BiasProbeCallback: the probe suite on the live model while it trains (docs/DESIGN.md, "train" path).

At step 0, every ``every_n_steps`` optimizer steps and at the end, the probes run on the model being
trained through the one evaluation function, :func:`clipprobe.evaluation.runner.run_evaluation` (eval
mode, no grad; train mode and the random number generators restored afterwards, so training takes the
same course with or without the callback). Under DDP every rank takes part: each encodes its share of
the inputs and tallies its share of the queries, and the counts are summed over ranks, so every rank
holds the same records for a share of the work (the cost falls with the number of GPUs), and nothing is
computed on one rank only and then logged or monitored (the DDP hang traps of docs/DESIGN.md). Rank 0
appends each evaluation's records (:class:`~clipprobe.evaluation.records.Record`) to
``<run>/probes.jsonl`` and logs ``probe/<set>/<probe>/<metric>``, ``probe/seconds`` and
``train/samples_seen`` to every logger, at the global step.

Standard evaluation runs beside the probes (``benchmarks``): zero-shot classification and retrieval on
CLIP_benchmark datasets (:mod:`clipprobe.probes.standard`), on the same schedule or its own
(``benchmark_every_n_steps``), logged as ``eval/<dataset>/<metric>`` in the same records file. Their
images are decoded once and kept with the probe images (``pixel_cache_mb``).

Probe sets are generated into the cache once (rank 0 first, the others then find them). Tokenized texts
and preprocessed images are kept across evaluations; only the embeddings, which change with the
model, are recomputed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from clipprobe.errors import UserError
from clipprobe.evaluation.records import Record, append_records, read_records
from clipprobe.evaluation.runner import ModelInfo, Target, pairs, run_evaluation
from clipprobe.probes.encode import CachedEncoder

log = logging.getLogger(__name__)
KINDS = ("comco", "simco")


class BiasProbeCallback(L.Callback):
    """Run bias probes on the live model at step 0, every N steps and at the end of training.

    Text probes run on each probe set's vocabulary (or on ``vocab``), image probes on each set.
    Under ``fast_dev_run`` nothing runs (as with Lightning's checkpointing and logging).

    Args:
        probes: Probe names (``tor``, ``ior``, ``i2tor``, ``itm``, ...; see ``clipprobe eval --help``).
        probe_sets: Probe set folders, or ``comco``/``simco`` to generate one once into the cache.
        every_n_steps: Optimizer steps between evaluations.
        generate: Generation parameters for sets named by kind (as for ``clipprobe data comco``).
        options: Per-probe options, e.g. ``{tor: {num_captions: 1000}}``.
        vocab: Text vocabulary for text probes (a name or a file); default: each set's own.
        at_start: Evaluate before the first step (and when resuming at a due step not yet evaluated).
        at_end: Evaluate when training ends.
        batch_size: Inputs per model call.
        seed: Seed of the probes' sampling (the same captions at every evaluation).
        cache_dir: Where generated sets are kept (default: ``$CLIPPROBE_CACHE`` or ``~/.cache/clipprobe/probesets``).
        pixel_cache_mb: Memory for preprocessed probe images kept across evaluations (rank 0).
        filename: Evaluation records, in the run folder.
        progress: Progress bars while encoding.
        run_info: Added to each record's ``run`` beside the run folder (an experiment's condition and seed).
        source: The records' source: ``callback``, or ``experiment`` when an experiment trains the run.
        benchmarks: Standard evaluation through CLIP_benchmark: dataset names, each run with its task (zero-shot
            classification or retrieval): the offline sets ``comco-objects``, ``simco-objects``, ``heldout``
            (generated once into the cache) or any CLIP_benchmark dataset in ``dataset_root`` (``cifar10``,
            ``wds/<name>``, ...). Options go in ``options`` under ``zeroshot_classification``/``zeroshot_retrieval``.
        dataset_root: The local folder of the benchmark datasets (``{dataset}`` is replaced by each name).
        benchmark_every_n_steps: Optimizer steps between standard evaluations (default: ``every_n_steps``).
        benchmark_generate: Generation options of the offline sets, by name (``{comco-objects: {per_class: 5}}``).
    """

    def __init__(self, probes: list[str] | None = None, probe_sets: list[str] | None = None,
                 every_n_steps: int = 1000, generate: dict[str, Any] | None = None,
                 options: dict[str, dict[str, Any]] | None = None, vocab: str | None = None, at_start: bool = True,
                 at_end: bool = True, batch_size: int = 256, seed: int = 0, cache_dir: str | None = None,
                 pixel_cache_mb: float = 2048, filename: str = "probes.jsonl", progress: bool = False,
                 run_info: dict[str, Any] | None = None, source: str = "callback",
                 benchmarks: list[str] | None = None, dataset_root: str | None = None,
                 benchmark_every_n_steps: int | None = None,
                 benchmark_generate: dict[str, dict[str, Any]] | None = None) -> None:  # fmt: skip
        from clipprobe.probes.standard import check_benchmark
        from clipprobe.probes.suite import validate_probes

        self.probes = list(probes if probes is not None else ["tor", "ior"])
        self.probe_sets = list(probe_sets if probe_sets is not None else ["comco"])
        if every_n_steps < 1 or batch_size < 1:
            raise UserError("BiasProbeCallback: every_n_steps and batch_size must be at least 1")
        self.every_n_steps, self.at_start, self.at_end = every_n_steps, at_start, at_end
        self.generate, self.options = dict(generate or {}), {k: dict(v or {}) for k, v in (options or {}).items()}
        self.vocab, self.batch_size, self.seed, self.cache_dir = vocab, batch_size, seed, cache_dir
        self.pixel_cache_mb, self.filename, self.progress = pixel_cache_mb, filename, progress
        self.run_info, self.source = dict(run_info or {}), source
        self.benchmarks, self.dataset_root = list(benchmarks or []), dataset_root
        self.benchmark_generate = {k: dict(v or {}) for k, v in (benchmark_generate or {}).items()}
        self.benchmark_every_n_steps = benchmark_every_n_steps or every_n_steps
        if self.benchmark_every_n_steps < 1:
            raise UserError("BiasProbeCallback: benchmark_every_n_steps must be at least 1")
        # Checked on every rank alike, before any collective: a bad config fails everywhere at once.
        validate_probes(self.probes, self.options, has_probe_set=bool(self.probe_sets),
                        allow_none=bool(self.benchmarks))  # fmt: skip
        for entry in self.benchmarks:
            check_benchmark(entry, dataset_root)
        for entry, params in self.benchmark_generate.items():
            from clipprobe.data.benchsets import resolve_benchset

            resolve_benchset(entry, **{k: v for k, v in params.items() if k != "progress"})
        self._check_sources()
        self.done: set[int] = set()  # steps evaluated (and written) in this run, restored on resume
        self.history: list[dict[str, Any]] = []  # what this process logged, one entry per evaluation
        self._restored = False
        self._targets: list[Target] | None = None
        self._encoder: CachedEncoder | None = None

    def _check_sources(self) -> None:
        from clipprobe.data.generate import RUN_OPTIONS, resolve_config
        from clipprobe.data.vocab import load_vocab

        for entry in self.probe_sets:
            if entry in KINDS and not Path(entry).exists():
                resolve_config(entry, **{k: v for k, v in self.generate.items() if k not in RUN_OPTIONS})
            elif not Path(entry).expanduser().is_dir():
                raise UserError(
                    f"probe set {entry} is neither a folder nor a kind ({', '.join(KINDS)}); fix probe_sets"
                )
        if self.vocab:
            load_vocab(self.vocab)

    # -- Lightning hooks ---------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Every rank loads the probe sets; rank 0 generates missing ones first. Every rank learns whether
        that worked on every rank."""
        if stage != "fit" or trainer.fast_dev_run or self._targets is not None:
            return
        error = None
        if trainer.is_global_zero:
            error = self._try_load_targets()
        _raise_if(trainer.strategy.broadcast(error, src=0))
        if not trainer.is_global_zero:
            error = self._try_load_targets()  # generated by rank 0: found in a shared cache
        errors = _all_gather(trainer, error)
        _raise_if(next((e for e in errors if e is not None), None))

    def _try_load_targets(self) -> tuple[bool, str] | None:
        try:
            self._targets = self._load_targets()
        except Exception as exc:  # reported on every rank, so no rank waits forever
            return _describe(exc)
        return None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Learn which steps earlier runs evaluated, then evaluate the starting step if it is due."""
        if trainer.fast_dev_run:
            return
        done = self._resume_steps(trainer) if trainer.is_global_zero else None
        self.done = set(trainer.strategy.broadcast(done, src=0))
        step = trainer.global_step
        if self.at_start and self._due(step):
            self._maybe_evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        """Evaluate after every ``every_n_steps``-th optimizer step."""
        step = trainer.global_step
        if not trainer.fast_dev_run and step > 0 and self._due(step):
            self._maybe_evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final evaluation, probes and standard tasks alike (unless the last step was just evaluated)."""
        if self.at_end and not trainer.fast_dev_run:
            self._maybe_evaluate(trainer, pl_module, final=True)

    def _due(self, step: int) -> bool:
        return step % self.every_n_steps == 0 or (bool(self.benchmarks) and step % self.benchmark_every_n_steps == 0)

    def state_dict(self) -> dict[str, Any]:
        """The steps already evaluated, so a resumed run neither repeats nor skips one."""
        return {"done": sorted(self.done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the evaluated steps (merged with ``probes.jsonl`` at the start of training)."""
        self.done |= {int(s) for s in state.get("done", [])}
        self._restored = True

    # -- evaluation ----------------------------------------------------------------------------

    def _maybe_evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool = False) -> None:
        """Evaluate the current step unless done; every rank takes part and holds the same records."""
        step = trainer.global_step
        if step in self.done:
            return
        error: tuple[bool, str] | None = None
        records: list[Record] = []
        try:
            records = self._run_suite(trainer, pl_module, step, final)
        except Exception as exc:  # the same inputs on every rank: errors come on every rank alike
            error = _describe(exc)
        _raise_if(next((e for e in _all_gather(trainer, error) if e is not None), None))
        timings = trainer.strategy.broadcast([r.timing for r in records], src=0)  # rank 0's clock everywhere
        for record, timing in zip(records, timings, strict=True):
            record.timing = timing
        self.done.add(step)
        metrics = log_values(records)
        self.history.append({"step": step, "metrics": metrics})
        if trainer.is_global_zero:
            append_records(Path(trainer.default_root_dir) / self.filename, records)
            rank_zero_info(f"probes at step {step} ({metrics['probe/seconds']:.1f} s): {headline(records)}")
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
                if hasattr(logger, "log_probe_records"):
                    logger.log_probe_records(records, step)
                logger.save()

    def _run_suite(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int, final: bool) -> list[Record]:
        """Every (target, probe) due at ``step`` on the live model; modes and random states are left as found."""
        encoder = self._live_encoder(trainer, pl_module)
        samples = getattr(pl_module, "samples_seen", None)
        run_dir = str(Path(trainer.default_root_dir).resolve())
        name = getattr(pl_module, "hparams", {}).get("model_name", "unknown")
        about = ModelInfo(
            name, {"kind": "run", "run": run_dir, "step": step}, step, None if samples is None else int(samples),
            {"dir": run_dir, **self.run_info},
        )  # fmt: skip
        modes = [(m, m.training) for m in pl_module.modules()]
        with _kept_random_state(), torch.no_grad():
            pl_module.eval()
            try:
                bias = final or step % self.every_n_steps == 0
                standard = final or step % self.benchmark_every_n_steps == 0
                work = [(t, p) for t, p in pairs(self._targets or [], self.probes)
                        if (standard if t.dataset is not None else bias)]  # fmt: skip
                return list(run_evaluation(encoder, work, self.options, about, seed=self.seed,
                                           progress=self.progress, source=self.source, counters=encoder.counters))  # fmt: skip
            finally:
                for module, training in modes:
                    module.train(training)

    def _live_encoder(self, trainer: L.Trainer, pl_module: L.LightningModule) -> CachedEncoder:
        model = getattr(pl_module, "model", pl_module)
        if self._encoder is None:
            import open_clip
            from open_clip.transform import PreprocessCfg, image_transform_v2

            name = getattr(pl_module, "hparams", {}).get("model_name")
            if name is None:
                raise UserError("BiasProbeCallback needs a module with hparams.model_name (an open_clip architecture)")
            preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
            self._encoder = CachedEncoder(
                model, preprocess, open_clip.get_tokenizer(name), pl_module.device, self.batch_size,
                progress=self.progress and trainer.is_global_zero, keep_inputs=True,
                pixel_cache_mb=self.pixel_cache_mb, rank=trainer.global_rank, world_size=trainer.world_size,
            )  # fmt: skip
        self._encoder.model, self._encoder.device = model, torch.device(pl_module.device)
        self._encoder.refresh()
        return self._encoder

    def _load_targets(self) -> list[Target]:
        from clipprobe.data.generate import ensure_probe_set
        from clipprobe.data.probeset import ProbeSet
        from clipprobe.data.vocab import load_vocab

        words = load_vocab(self.vocab) if self.vocab else None
        targets: list[Target] = []
        for entry in self.probe_sets:
            if entry in KINDS and not Path(entry).exists():
                ps, label = ProbeSet.load(ensure_probe_set(entry, self.cache_dir, **self.generate)), entry
            else:
                ps = ProbeSet.load(Path(entry).expanduser())
                label = ps.name
            while label in {t.label for t in targets}:
                label += "_"
            targets.append(Target(label, ps, words, self._vocab_label()))
        if not targets and self.probes:  # text probes only, on the vocabulary
            label = self._vocab_label() or "coco"
            targets.append(Target(f"vocab-{label}", None, words, label))
        from clipprobe.probes.standard import resolve_benchmark

        for entry in self.benchmarks:
            bench = resolve_benchmark(entry, self.dataset_root, "test", self.cache_dir, self.benchmark_generate)
            if bench.label in {t.label for t in targets}:
                raise UserError(f"benchmark {entry} is listed twice or named like a probe set; list each dataset once")
            targets.append(Target(bench.label, dataset=bench))
        return targets

    def _vocab_label(self) -> str | None:
        if not self.vocab:
            return None
        return self.vocab if self.vocab in ("coco", "comco", "simco") else Path(self.vocab).stem

    def _resume_steps(self, trainer: L.Trainer) -> list[int]:
        """Steps already evaluated: from the checkpoint and ``probes.jsonl`` when resuming; a fresh run
        moves an old ``probes.jsonl`` aside instead of mixing two runs in one file."""
        path = Path(trainer.default_root_dir) / self.filename
        if not path.is_file():
            return sorted(self.done)
        if self._restored or trainer.global_step > 0:
            return sorted(self.done | {r.step for r in read_records(path) if r.step is not None})
        old = path.with_name(f"{path.stem}.{datetime.now():%Y%m%d-%H%M%S}{path.suffix}.old")
        path.rename(old)
        log.warning("a new run starts in %s: moved the previous %s to %s", path.parent, path.name, old.name)
        return sorted(self.done)


# ---------------------------------------------------------------------------------------------
# Records and logged values.


def log_values(records: Sequence[Record]) -> dict[str, float]:
    """``probe/<set>/<probe>/<metric>`` for every defined metric of a probe, ``eval/<dataset>/<metric>`` of a
    standard task, ``probe/seconds`` and ``train/samples_seen``."""
    from clipprobe.probes.suite import STANDARD_TASKS

    values = {(f"eval/{r.target}/{m.name}" if r.probe in STANDARD_TASKS else f"probe/{r.target}/{r.probe}/{m.name}"):
              float(m.value) for r in records for m in r.metrics if m.value == m.value}  # fmt: skip
    values["probe/seconds"] = float(sum(r.timing.get("seconds", 0.0) for r in records))
    if records and records[0].samples_seen is not None:
        values["train/samples_seen"] = float(records[0].samples_seen)
    return values


def headline(records: Sequence[Record]) -> str:
    """A short summary for the console: each (set, probe)'s robust first-position (or large-object) share per n."""
    parts = []
    for r in records:
        first = [m for m in r.metrics if m.family == "closest" and m.key in ("1", "large") and m.variant is None]
        shown = " ".join(f"n{m.n}={m.value:.2f}" for m in first if m.value == m.value)
        label = f"closest_{first[0].key}" if first else ""
        top = [m for m in r.metrics if m.name in ("acc1", "image_retrieval_recall@1", "text_retrieval_recall@1")]
        if top:
            label, shown = "", " ".join(f"{m.name}={m.value:.2f}" for m in top if m.value == m.value)
        parts.append(" ".join(x for x in (f"{r.target}/{r.probe}", label, shown) if x))
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Helpers.


def _describe(exc: Exception) -> tuple[bool, str]:
    return isinstance(exc, UserError), f"{exc}" if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


def _raise_if(error: tuple[bool, str] | None) -> None:
    """Raise a rank's error on every rank (a UserError stays one, for the CLI's one-line message)."""
    if error is not None:
        is_user, message = error
        raise UserError(message) if is_user else RuntimeError(f"bias probes failed: {message}")


def _all_gather(trainer: L.Trainer, obj: Any) -> list[Any]:
    """``obj`` of every rank (one process: ``[obj]``)."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


class _kept_random_state:
    """Save and restore the Python, NumPy and torch (CPU and current CUDA device) random states."""

    def __enter__(self) -> None:
        self.state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                      torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None)  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        py, np_state, cpu, cuda = self.state
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)
