"""BiasProbeCallback: the probe suite on the live model while it trains (DESIGN.md, "train" path).

At step 0, every ``every_n_steps`` optimizer steps and at the end, rank 0 runs the probes on the
model being trained (eval mode, no grad; train mode and the random number generators restored
afterwards, so training takes the same course with or without the callback), while the other
ranks wait in a broadcast that then hands them rank 0's results. Every rank therefore holds the
same values, and nothing is computed on one rank only and then reduced or monitored (the DDP hang
traps of DESIGN.md). Rank 0 writes each evaluation to ``<run>/probes.jsonl`` and logs
``probe/<set>/<probe>/<metric>``, ``probe/seconds`` and ``train/samples_seen`` to every logger,
at the global step.

Probe sets are loaded (or generated into the cache) once, on rank 0. Tokenized texts and
preprocessed images are kept across evaluations; only the embeddings, which change with the
model, are recomputed.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from clipprobe.errors import UserError
from clipprobe.fileio import atomic_write_text
from clipprobe.evaluation.plot import read_records
from clipprobe.probes.encode import CachedEncoder, _EmbeddingCache

log = logging.getLogger(__name__)
KINDS = ("comco", "simco")


class ReusingEncoder(CachedEncoder):
    """A :class:`CachedEncoder` for a model that changes between evaluations.

    :meth:`refresh` forgets the embeddings (the model has changed), while tokenized texts and
    preprocessed images stay cached (the inputs have not), images up to ``pixel_cache_mb``.
    Counters ``texts_tokenized`` and ``images_prepared`` count inputs tokenized or preprocessed.
    """

    def __init__(self, *args: Any, pixel_cache_mb: float = 2048, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pixel_budget = int(pixel_cache_mb * 2**20)
        self._tokens: dict[str, torch.Tensor] = {}
        self._pixels: dict[str, torch.Tensor] = {}
        self._pixel_bytes = 0
        self.texts_tokenized = self.images_prepared = 0

    def refresh(self) -> None:
        """Start a new evaluation: every embedding will be computed again."""
        self._texts, self._images = _EmbeddingCache(), _EmbeddingCache()

    def _text_batch(self, texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self._tokens]
        if new:
            self._tokens.update(zip(new, self.tokenizer(new), strict=True))  # [L] token ids each
            self.texts_tokenized += len(new)
        self.text_calls += 1
        return self.model.encode_text(torch.stack([self._tokens[t] for t in texts]).to(self.device))

    def _image_batches(self, paths: list[str]) -> Iterator[torch.Tensor]:
        for lo in range(0, len(paths), self.batch_size):
            yield torch.stack([self._pixels_of(p) for p in paths[lo : lo + self.batch_size]])  # [B, 3, H, W]

    def _pixels_of(self, path: str) -> torch.Tensor:
        from PIL import Image

        pixels = self._pixels.get(path)
        if pixels is None:
            with Image.open(path) as im:
                pixels = self.preprocess(im.convert("RGB"))
            self.images_prepared += 1
            size = pixels.numel() * pixels.element_size()
            if self._pixel_bytes + size <= self.pixel_budget:
                self._pixels[path] = pixels
                self._pixel_bytes += size
        return pixels


@dataclass(frozen=True)
class _Target:
    label: str  # the <set> of the log keys
    probe_set: Any  # ProbeSet or None (text probes on a vocabulary)
    vocab: list[str] | None


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
    """

    def __init__(self, probes: list[str] | None = None, probe_sets: list[str] | None = None,
                 every_n_steps: int = 1000, generate: dict[str, Any] | None = None,
                 options: dict[str, dict[str, Any]] | None = None, vocab: str | None = None, at_start: bool = True,
                 at_end: bool = True, batch_size: int = 256, seed: int = 0, cache_dir: str | None = None,
                 pixel_cache_mb: float = 2048, filename: str = "probes.jsonl", progress: bool = False) -> None:  # fmt: skip
        from clipprobe.probes.suite import validate_probes

        self.probes = list(probes if probes is not None else ["tor", "ior"])
        self.probe_sets = list(probe_sets if probe_sets is not None else ["comco"])
        if every_n_steps < 1 or batch_size < 1:
            raise UserError("BiasProbeCallback: every_n_steps and batch_size must be at least 1")
        self.every_n_steps, self.at_start, self.at_end = every_n_steps, at_start, at_end
        self.generate, self.options = dict(generate or {}), {k: dict(v or {}) for k, v in (options or {}).items()}
        self.vocab, self.batch_size, self.seed, self.cache_dir = vocab, batch_size, seed, cache_dir
        self.pixel_cache_mb, self.filename, self.progress = pixel_cache_mb, filename, progress
        # Checked on every rank alike, before any collective: a bad config fails everywhere at once.
        validate_probes(self.probes, self.options, has_probe_set=bool(self.probe_sets))
        self._check_sources()
        self.done: set[int] = set()  # steps evaluated (and written) in this run, restored on resume
        self.history: list[dict[str, Any]] = []  # what this process logged, one entry per evaluation
        self._restored = False
        self._targets: list[_Target] | None = None
        self._encoder: ReusingEncoder | None = None

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
        """Rank 0 loads (or generates) the probe sets; every rank learns whether that worked."""
        if stage != "fit" or trainer.fast_dev_run:
            return
        error = None
        if trainer.is_global_zero and self._targets is None:
            try:
                self._targets = self._load_targets()
            except Exception as exc:  # reported on every rank below, so no rank waits forever
                error = _describe(exc)
        _raise_if(trainer.strategy.broadcast(error, src=0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Learn which steps earlier runs evaluated, then evaluate the starting step if it is due."""
        if trainer.fast_dev_run:
            return
        done = self._resume_steps(trainer) if trainer.is_global_zero else None
        self.done = set(trainer.strategy.broadcast(done, src=0))
        step = trainer.global_step
        if self.at_start and step % self.every_n_steps == 0:
            self._maybe_evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        """Evaluate after every ``every_n_steps``-th optimizer step."""
        step = trainer.global_step
        if not trainer.fast_dev_run and step > 0 and step % self.every_n_steps == 0:
            self._maybe_evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final evaluation (unless the last step was just evaluated)."""
        if self.at_end and not trainer.fast_dev_run:
            self._maybe_evaluate(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """The steps already evaluated, so a resumed run neither repeats nor skips one."""
        return {"done": sorted(self.done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the evaluated steps (merged with ``probes.jsonl`` at the start of training)."""
        self.done |= {int(s) for s in state.get("done", [])}
        self._restored = True

    # -- evaluation ----------------------------------------------------------------------------

    def _maybe_evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate the current step unless done; the same decision and result on every rank."""
        step = trainer.global_step
        if step in self.done:
            return
        payload: dict[str, Any] = {"records": [], "error": None}
        if trainer.is_global_zero:
            try:
                payload["records"] = self._run_suite(pl_module, step)
            except Exception as exc:
                payload["error"] = _describe(exc)
        payload = trainer.strategy.broadcast(payload, src=0)  # the others wait here while rank 0 works
        _raise_if(payload["error"])
        records = payload["records"]
        self.done.add(step)
        metrics = log_values(records)
        self.history.append({"step": step, "metrics": metrics})
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.filename
            append_records(path, records)
            rank_zero_info(f"probes at step {step} ({metrics['probe/seconds']:.1f} s): {headline(records)}")
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
                if hasattr(logger, "log_probe_records"):
                    logger.log_probe_records(records, step)
                logger.save()

    def _run_suite(self, pl_module: L.LightningModule, step: int) -> list[dict[str, Any]]:
        """Every (target, probe) on the live model; modes and random states are left as found."""
        from clipprobe.probes.suite import PROBES, run_probes

        encoder = self._live_encoder(pl_module)
        samples = getattr(pl_module, "samples_seen", None)
        modes = [(m, m.training) for m in pl_module.modules()]
        records = []
        with _kept_random_state(), torch.no_grad():
            pl_module.eval()
            try:
                for target in self._targets or []:
                    for name in self.probes:
                        if PROBES[name].needs_probe_set and target.probe_set is None:
                            continue
                        start = time.perf_counter()
                        (result,) = run_probes(encoder, [name], target.probe_set, target.vocab,
                                               {name: self.options.get(name, {})}, self.seed, self.progress)  # fmt: skip
                        records.append({"step": step, "samples_seen": None if samples is None else int(samples),
                                        "set": target.label, "probe": name, "metrics": result.metrics,
                                        "counts": result.counts, "intervals": result.intervals,
                                        "seconds": round(time.perf_counter() - start, 3)})  # fmt: skip
            finally:
                for module, training in modes:
                    module.train(training)
        return records

    def _live_encoder(self, pl_module: L.LightningModule) -> ReusingEncoder:
        model = getattr(pl_module, "model", pl_module)
        if self._encoder is None:
            import open_clip
            from open_clip.transform import PreprocessCfg, image_transform_v2

            name = getattr(pl_module, "hparams", {}).get("model_name")
            if name is None:
                raise UserError("BiasProbeCallback needs a module with hparams.model_name (an open_clip architecture)")
            preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
            self._encoder = ReusingEncoder(model, preprocess, open_clip.get_tokenizer(name), pl_module.device,
                                           self.batch_size, progress=self.progress,
                                           pixel_cache_mb=self.pixel_cache_mb)  # fmt: skip
        self._encoder.model, self._encoder.device = model, torch.device(pl_module.device)
        self._encoder.refresh()
        return self._encoder

    def _load_targets(self) -> list[_Target]:
        from clipprobe.data.generate import ensure_probe_set
        from clipprobe.data.probeset import ProbeSet
        from clipprobe.data.vocab import load_vocab

        words = load_vocab(self.vocab) if self.vocab else None
        targets: list[_Target] = []
        for entry in self.probe_sets:
            if entry in KINDS and not Path(entry).exists():
                ps, label = ProbeSet.load(ensure_probe_set(entry, self.cache_dir, **self.generate)), entry
            else:
                ps = ProbeSet.load(Path(entry).expanduser())
                label = ps.name
            while label in {t.label for t in targets}:
                label += "_"
            targets.append(_Target(label, ps, words))
        if not targets:  # text probes only, on the vocabulary
            targets.append(_Target(f"vocab-{Path(self.vocab).stem if self.vocab else 'coco'}", None, words))
        return targets

    def _resume_steps(self, trainer: L.Trainer) -> list[int]:
        """Steps already evaluated: from the checkpoint and ``probes.jsonl`` when resuming; a fresh run
        moves an old ``probes.jsonl`` aside instead of mixing two runs in one file."""
        path = Path(trainer.default_root_dir) / self.filename
        if not path.is_file():
            return sorted(self.done)
        if self._restored or trainer.global_step > 0:
            return sorted(self.done | {r["step"] for r in read_records(path)})
        old = path.with_name(f"{path.stem}.{datetime.now():%Y%m%d-%H%M%S}{path.suffix}.old")
        path.rename(old)
        log.warning("a new run starts in %s: moved the previous %s to %s", path.parent, path.name, old.name)
        return sorted(self.done)


# ---------------------------------------------------------------------------------------------
# Records and logged values.


def log_values(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``probe/<set>/<probe>/<metric>`` for every numeric metric, ``probe/seconds`` and ``train/samples_seen``."""
    values = {f"probe/{r['set']}/{r['probe']}/{k}": float(v) for r in records for k, v in r["metrics"].items()
              if isinstance(v, (int, float))}  # fmt: skip
    values["probe/seconds"] = float(sum(r["seconds"] for r in records))
    if records and records[0]["samples_seen"] is not None:
        values["train/samples_seen"] = float(records[0]["samples_seen"])
    return values


def headline(records: Sequence[dict[str, Any]]) -> str:
    """A short summary for the console: each (set, probe)'s first-position or large-object share, per n."""
    parts = []
    for r in records:
        keys = [k for k in r["metrics"] if re.fullmatch(r"n\d+/closest_(1|large|scenario1)", k)]
        shown = " ".join(f"{k.split('/')[0]}={r['metrics'][k]:.2f}" for k in keys if _finite(r["metrics"][k]))
        parts.append(f"{r['set']}/{r['probe']} {keys[0].split('/')[1] if keys else ''} {shown}".strip())
    return "; ".join(parts)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and v == v and abs(v) != float("inf")


def _strict(obj: Any) -> Any:
    """JSON-safe: NaN and infinities -> null, tuples -> lists."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def append_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Add one evaluation's records to ``path`` by rewriting it under a temporary name and renaming:
    a kill at any moment leaves either the old file or the new one, never a cut line."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old = old[: old.rfind("\n") + 1]
    new = "".join(json.dumps(_strict(r), sort_keys=True) + "\n" for r in records)
    atomic_write_text(path, old + new)


# ---------------------------------------------------------------------------------------------
# Helpers.


def _describe(exc: Exception) -> tuple[bool, str]:
    return isinstance(exc, UserError), f"{exc}" if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


def _raise_if(error: tuple[bool, str] | None) -> None:
    """Raise rank 0's error on every rank (a UserError stays one, for the CLI's one-line message)."""
    if error is not None:
        is_user, message = error
        raise UserError(message) if is_user else RuntimeError(f"bias probes failed on rank 0: {message}")


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
