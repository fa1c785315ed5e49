"""A training run's checkpoints, and open_clip-loadable exports of them.

:class:`ExportingCheckpoint` (``--checkpoint.*``) writes ``<run>/checkpoints``::

    step=00000000.ckpt    Lightning checkpoint (weights, optimizer, loops, callbacks): resume from it
    step=00000000/        export: open_clip_config.json, open_clip_pytorch_model.bin, clipprobe.json
    step=00000500.ckpt
    step=00000500/
    ...
    last.ckpt             the newest step checkpoint again (a hard link, else a copy)

at step 0, every ``every_n_train_steps`` steps and at the end of training (the probe callback's cadence).
Every file and folder appears complete or not at all: it is written under a hidden temporary name in the
checkpoints folder (same file system), flushed to disk, then renamed. ``save_top_k`` prunes the ``.ckpt``
files to the newest k (-1 keeps all), ``keep_exports`` the export folders (default: as ``save_top_k``).

An export folder is what open_clip's ``local-dir:`` schema reads, so any tool loads it without clipprobe::

    open_clip.create_model_and_transforms("local-dir:runs/x/checkpoints/step=00000500")

``open_clip_config.json`` is ``{"model_cfg": <the architecture's config>, "preprocess_cfg": <the model's
preprocessing>}``, ``open_clip_pytorch_model.bin`` the model's state dict (tensors only), and ``clipprobe.json``
clipprobe's record: ``{"format": 1, "arch", "step", "samples_seen", "epoch", "run"}``. ``clipprobe eval
--pretrained`` and ``--checkpoints`` read export folders, and also the ``.pt`` files of older runs
(``{"state_dict", "clipprobe": {...}}``, see :func:`export_model`).

Resuming (``--ckpt_path last``, a requeued SLURM job) goes through :func:`intact_checkpoint`: a truncated or
damaged checkpoint is passed over for the newest intact one, with a one-line warning.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_only

from clipprobe.errors import UserError
from clipprobe.fileio import atomic_write_bytes, staged_dir
from clipprobe.models.load import (
    EXPORT_CONFIG,
    EXPORT_INFO,
    EXPORT_WEIGHTS,
    LAST_STEM,
    checkpoint_problem,
    is_export_dir,
    step_in_name,
)

EXPORT_FORMAT = 1
LAST = f"{LAST_STEM}.ckpt"


# ---------------------------------------------------------------------------------------------
# Exports


def open_clip_config(model: torch.nn.Module, arch: str) -> dict[str, Any]:
    """``open_clip_config.json`` of a model: its architecture's config and its preprocessing.

    Raises:
        UserError: open_clip knows no config for ``arch`` (an ``hf-hub:`` model, say).
    """
    import open_clip

    from clipprobe.models import register_configs

    register_configs()
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise UserError(
            f"no open_clip config for architecture {arch}, so its checkpoints cannot be exported; "
            "pass --checkpoint.export false"
        )
    preprocess = dict(getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {})
    return json.loads(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))  # tuples as lists


def export_folder(model: torch.nn.Module, path: str | os.PathLike, arch: str, step: int = 0, samples_seen: int = 0,
                  epoch: int = 0, run: str | os.PathLike | None = None) -> Path:  # fmt: skip
    """Write ``model`` as an open_clip export folder (module docstring) at ``path``, atomically.

    The folder is built under a hidden temporary name beside ``path``, its files flushed to disk, then renamed.

    Args:
        model: the open_clip model.
        path: the folder to write (replaced if it exists).
        arch: the open_clip architecture name (``clipprobe-tiny``).
        step: the global step of the weights.
        samples_seen: training samples seen, over all processes.
        epoch: the epoch.
        run: the training run's folder.

    Returns:
        ``path``.
    """
    config = open_clip_config(model, arch)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info = {"format": EXPORT_FORMAT, "arch": arch, "step": int(step), "samples_seen": int(samples_seen),
            "epoch": int(epoch), "run": None if run is None else str(Path(run).resolve())}  # fmt: skip
    path = Path(path)
    with staged_dir(path) as stage:
        with open(stage / EXPORT_WEIGHTS, "wb") as f:
            torch.save(state, f)
            _flush(f)
        for name, obj in ((EXPORT_CONFIG, config), (EXPORT_INFO, info)):
            with open(stage / name, "w", encoding="utf-8") as f:
                f.write(json.dumps(obj, indent=2) + "\n")
                _flush(f)
        _sync_dir(stage)
    _sync_dir(path.parent)
    return path


def export_model(model: torch.nn.Module, path: str | os.PathLike, arch: str, step: int = 0, samples_seen: int = 0,
                 epoch: int = 0) -> Path:  # fmt: skip
    """Write the single-file export of clipprobe < 0.2, atomically: ``{"state_dict", "clipprobe": {"arch", "step",
    "samples_seen", "epoch"}}``; ``open_clip.create_model_and_transforms(arch, pretrained=path)`` loads it.

    Training writes export folders now (:func:`export_folder`); clipprobe still reads these files.
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    info = {"arch": arch, "step": int(step), "samples_seen": int(samples_seen), "epoch": int(epoch)}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "clipprobe": info}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def export_path(ckpt_path: str | os.PathLike) -> Path:
    """Where clipprobe < 0.2 put the single-file export of a Lightning checkpoint: same name, ``.pt``."""
    return Path(ckpt_path).with_suffix(".pt")


def _flush(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _sync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (where the platform allows opening a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# The callback


class ExportingCheckpoint(Checkpoint):
    """Save the run's checkpoints and exports at step 0, every N steps and at the end (module docstring).

    Built on Lightning's public API: ``trainer.save_checkpoint`` runs on every process (under DDP it gathers the
    state and ends in a barrier; rank 0 writes), then rank 0 alone renames, links, exports and prunes.

    Args:
        dirpath: The checkpoints folder (default: ``<default_root_dir>/checkpoints``).
        filename: Name of a step's checkpoint without suffix; ``{step}`` once, ``{epoch}`` optional.
        every_n_train_steps: Optimizer steps between checkpoints; 0 or null saves none at all.
        save_top_k: ``.ckpt`` files kept, the newest by step; -1 keeps all, 0 none (``last.ckpt`` aside).
        save_last: Keep ``last.ckpt``, the newest checkpoint (what ``--ckpt_path last`` resumes from).
        export: Write an open_clip export folder beside each checkpoint.
        keep_exports: Export folders kept, the newest by step; -1 keeps all; null: as ``save_top_k``.
        at_start: Also save at step 0 (before training; not when resuming).
        at_end: Also save when training ends off the cadence (``max_steps`` not a multiple, ``max_epochs``).
    """

    def __init__(self, dirpath: str | None = None, filename: str = "step={step:08d}",
                 every_n_train_steps: int | None = 1000, save_top_k: int = -1, save_last: bool = True,
                 export: bool = True, keep_exports: int | None = None, at_start: bool = True,
                 at_end: bool = True) -> None:  # fmt: skip
        if save_top_k < -1 or (keep_exports is not None and keep_exports < -1):
            raise UserError("--checkpoint.save_top_k and --checkpoint.keep_exports take -1 (all), 0 or more")
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise UserError("--checkpoint.every_n_train_steps must be 0 (no checkpoints) or more")
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.filename, self.name_pattern = filename, _name_pattern(filename)
        self.every_n_train_steps = every_n_train_steps or 0
        self.save_top_k, self.save_last, self.export = save_top_k, save_last, export
        self.keep_exports = save_top_k if keep_exports is None else keep_exports
        self.at_start, self.at_end = at_start, at_end
        self.saved_step: int | None = None  # the step saved last in this fit
        self.start_step: int | None = None  # the step this fit started (or resumed) at

    # -- Lightning hooks ---------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Resolve the folder; check before training that the model can be exported."""
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / "checkpoints"
        if stage == "fit" and self._active(trainer) and self.export:
            open_clip_config(pl_module.model, pl_module.hparams.model_name)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Step 0 of a fresh run is saved before the first step."""
        self.start_step, self.saved_step = trainer.global_step, None
        if self._active(trainer) and self.at_start and trainer.global_step == 0:
            self.save(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        """Save after every ``every_n_train_steps``-th optimizer step."""
        if not self._active(trainer) or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # inside an accumulation window: only whole optimizer steps
        if trainer.global_step % self.every_n_train_steps == 0 and self._unsaved(trainer.global_step):
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the last step when training ended off the cadence (``max_steps`` not a multiple, ``max_epochs``,
        ``max_time``, a stop); after the probe callback's final evaluation, which the checkpoint then records."""
        if self._active(trainer) and self.at_end and self._unsaved(trainer.global_step):
            self.save(trainer, pl_module)

    def _active(self, trainer: L.Trainer) -> bool:
        return self.every_n_train_steps > 0 and not trainer.fast_dev_run and not trainer.sanity_checking

    def _unsaved(self, step: int) -> bool:
        return step != self.saved_step and step != self.start_step

    # -- saving --------------------------------------------------------------------------------

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the current step: checkpoint (every process takes part), then, on rank 0, ``last.ckpt``, the
        export and pruning.

        Under DDP a file-system error on rank 0 (a full disk) stops every rank with it, instead of leaving the others
        waiting in the next collective: rank 0 still enters the barrier that ends ``trainer.save_checkpoint``, and
        all ranks then agree whether the save failed (one all-reduce of a flag per save).

        Raises:
            OSError: the checkpoint, ``last.ckpt`` or the export could not be written (on rank 0; the other ranks
                raise a RuntimeError saying so).
        """
        folder = self.dirpath or Path(trainer.default_root_dir) / "checkpoints"
        step = trainer.global_step
        stem = self.filename.format(step=step, epoch=trainer.current_epoch)
        partial = folder / f".{stem}.ckpt.saving"  # one name on every rank: only rank 0 writes it
        keep_file = self.save_top_k != 0 or self.save_last
        shared = trainer.world_size > 1
        error: OSError | None = None
        try:
            if trainer.is_global_zero:
                folder.mkdir(parents=True, exist_ok=True)
            if keep_file:
                try:
                    # Every rank (under DDP: a collective, ended by a barrier); rank 0 writes.
                    trainer.save_checkpoint(partial, weights_only=False)
                except OSError as e:
                    if not (shared and trainer.is_global_zero):
                        raise
                    error = e
                    trainer.strategy.barrier("Trainer.save_checkpoint")  # the one rank 0 missed by failing
            if trainer.is_global_zero and error is None:
                try:
                    self._finish(trainer, pl_module, folder, stem, partial if keep_file else None)
                except OSError as e:
                    if not shared:
                        raise
                    error = e
            if shared and trainer.strategy.reduce_boolean_decision(error is not None, all=False):
                raise error or RuntimeError(f"rank 0 could not save checkpoint {stem} in {folder}; see its error")
        finally:
            if trainer.is_global_zero:
                partial.unlink(missing_ok=True)  # left only by a failure: never under a final name
        self.saved_step = step

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path, stem: str,
                partial: Path | None) -> None:  # fmt: skip
        step = trainer.global_step
        if partial is not None:
            with open(partial, "rb") as f:  # written by Lightning (through a staging file of its own): make it durable
                os.fsync(f.fileno())
            final = folder / f"{stem}.ckpt"
            if self.save_top_k != 0:
                os.replace(partial, final)
                if self.save_last:
                    _link_or_copy(final, folder / LAST)
            elif self.save_last:
                os.replace(partial, folder / LAST)
        if self.export:
            export_folder(pl_module.model, folder / stem, arch=pl_module.hparams.model_name, step=step,
                          samples_seen=int(getattr(pl_module, "samples_seen", 0)), epoch=trainer.current_epoch,
                          run=trainer.default_root_dir)  # fmt: skip
        self._prune(folder, step)
        _sync_dir(folder)

    def _prune(self, folder: Path, step: int) -> None:
        """Keep the newest ``save_top_k`` checkpoints and ``keep_exports`` exports up to ``step``.

        Later steps (left by a run resumed from an earlier checkpoint) are left alone: this run overwrites them.
        """
        files: dict[int, Path] = {}
        exports: dict[int, Path] = {}
        for path in folder.iterdir():
            m = self.name_pattern.match(path.stem if path.suffix == ".ckpt" else path.name)
            if m is None or int(m["step"]) > step:
                continue
            if path.is_file() and path.suffix == ".ckpt":
                files[int(m["step"])] = path
            elif path.is_dir() and is_export_dir(path):
                exports[int(m["step"])] = path
        for found, keep in ((files, self.save_top_k), (exports, self.keep_exports)):
            if keep < 0:
                continue
            for s in sorted(found)[: max(len(found) - keep, 0)]:
                _remove(found[s])


def _name_pattern(filename: str) -> re.Pattern[str]:
    """A regular expression for the names ``filename`` makes (``step={step:08d}`` -> ``step=(?P<step>\\d+)``).

    Raises:
        UserError: ``filename`` does not hold ``{step}`` exactly once, or holds other fields than step and epoch.
    """
    parts = re.split(r"(\{[^{}]*\})", filename)
    fields = [p[1:-1].split(":")[0].split("!")[0] for p in parts if p.startswith("{")]
    if fields.count("step") != 1 or set(fields) - {"step", "epoch"} or "/" in filename or not filename.strip("."):
        raise UserError(
            f"--checkpoint.filename '{filename}' must hold {{step}} once (and may hold {{epoch}}), without '/'; "
            "e.g. step={step:08d}"
        )
    try:
        filename.format(step=0, epoch=0)
    except (ValueError, IndexError, KeyError) as e:
        raise UserError(
            f"--checkpoint.filename '{filename}' is not a valid pattern ({e}); e.g. step={{step:08d}}"
        ) from None
    regex = "".join(
        ("(?P<step>\\d+)" if p[1:].startswith("step") else "\\d+") if p.startswith("{") else re.escape(p) for p in parts
    )
    return re.compile(f"^{regex}$")


def _link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` in one rename: a hard link, else a flushed copy."""
    partial = target.with_name(f".{target.name}.linking")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:  # no hard links on this file system
        shutil.copyfile(source, partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
    os.replace(partial, target)


def _remove(path: Path) -> None:
    """Remove a checkpoint file or export folder; a folder is renamed away first, so it never appears half gone."""
    if path.is_dir():
        gone = path.with_name(f".{path.name}.removing")
        shutil.rmtree(gone, ignore_errors=True)
        os.replace(path, gone)
        shutil.rmtree(gone, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Resuming


@rank_zero_only
def _warn(message: str) -> None:
    print(f"clipprobe: warning: {message}", file=sys.stderr, flush=True)


def intact_checkpoint(candidates: Sequence[str | os.PathLike], where: str | os.PathLike) -> Path | None:
    """The first of ``candidates`` that is intact (:func:`~clipprobe.models.load.checkpoint_problem`).

    When the first is damaged, a one-line warning names it and the one resumed from instead.

    Args:
        candidates: checkpoint files, the one to resume from first, then the fallbacks in order of preference.
        where: the folder named in the error.

    Returns:
        The checkpoint to resume from, or None when there are no candidates.

    Raises:
        UserError: none of them is intact.
    """
    paths = list(dict.fromkeys(Path(c) for c in candidates))
    if not paths:
        return None
    first, problem = paths[0], checkpoint_problem(paths[0])
    if problem is None:
        return first
    for path in paths[1:]:
        with contextlib.suppress(OSError):
            if path.samefile(first):  # last.ckpt and its step file: one damaged file under two names
                continue
        if checkpoint_problem(path) is None:
            _warn(f"checkpoint {first} is damaged ({problem}); resuming from {path}, the newest intact checkpoint")
            return path
    others = f" and the {len(paths) - 1} other checkpoint(s) in {where} are damaged too" if len(paths) > 1 else ""
    raise UserError(
        f"no intact checkpoint to resume from: {first} is damaged ({problem}){others}; copy the run's checkpoints "
        "again, or start afresh (no --ckpt_path) in another --trainer.default_root_dir"
    )


def resume_candidates(dirpath: str | os.PathLike) -> list[Path]:
    """The checkpoint files of a checkpoints folder: ``last.ckpt``, then the others, newest step first
    (a step in the name, else the newest file)."""
    folder = Path(dirpath)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.ckpt") if p.is_file() and not p.name.startswith(".") and p.name != LAST]
    files.sort(key=lambda p: (step_in_name(p.name) is not None, step_in_name(p.name) or 0, p.stat().st_mtime))
    last = [folder / LAST] if (folder / LAST).is_file() else []
    return last + files[::-1]


def last_checkpoint(dirpath: str | os.PathLike) -> str | None:
    """``--ckpt_path last``: ``last.ckpt`` of the checkpoints folder, or the newest intact checkpoint there
    (:func:`intact_checkpoint`); None, with a warning, when the folder holds none yet (a first run).

    Raises:
        UserError: there are checkpoints, none intact.
    """
    found = intact_checkpoint(resume_candidates(dirpath), dirpath)
    if found is None:
        _warn(f"--ckpt_path last: no checkpoint in {dirpath} yet; training starts from scratch")
        return None
    return str(found)
