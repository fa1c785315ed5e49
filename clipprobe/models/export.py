"""open_clip-loadable exports of training checkpoints.

Format (docs: contracts): ``torch.save({"state_dict": <open_clip state dict>, "clipprobe": {"arch",
"step", "samples_seen", "epoch"}}, path)``. Plain ``open_clip.create_model_and_transforms(arch,
pretrained=path)`` loads it (open_clip reads ``checkpoint["state_dict"]``), and so does
``clipprobe eval --checkpoints``. :class:`ExportingCheckpoint` writes one beside every Lightning
checkpoint (``step=00001000.ckpt`` -> ``step=00001000.pt``, ``last.ckpt`` -> ``last.pt``) and
removes it with its checkpoint, so "keep the last k" holds for both.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from clipprobe.fileio import atomic_write_bytes


def export_model(model: torch.nn.Module, path: str | os.PathLike, arch: str, step: int = 0, samples_seen: int = 0,
                 epoch: int = 0) -> Path:  # fmt: skip
    """Write ``model``'s state dict (CPU tensors) with clipprobe's metadata to ``path``, atomically."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    info = {"arch": arch, "step": int(step), "samples_seen": int(samples_seen), "epoch": int(epoch)}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "clipprobe": info}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def export_path(ckpt_path: str | os.PathLike) -> Path:
    """Where the export of a Lightning checkpoint goes: same name, ``.pt``."""
    return Path(ckpt_path).with_suffix(".pt")


class ExportingCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes an open_clip export beside each checkpoint it saves.

    Defaults keep the last ``save_top_k`` checkpoints by step (``monitor="step"``) plus ``last.ckpt``.
    Export is rank-0 file I/O only, with no collective call, so it cannot hang a DDP job.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "step={step:08d}", monitor: str | None = "step",
                 mode: str = "max", save_top_k: int = 3, save_last: bool | None = True,
                 every_n_train_steps: int | None = 1000, export: bool = True, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, mode=mode, save_top_k=save_top_k,
                         save_last=save_last, every_n_train_steps=every_n_train_steps,
                         auto_insert_metric_name=False, **kwargs)  # fmt: skip
        self.export = export

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        module = trainer.lightning_module
        if self.export and trainer.is_global_zero and hasattr(module, "model"):
            export_model(module.model, export_path(filepath), arch=module.hparams.model_name,
                         step=trainer.global_step, samples_seen=getattr(module, "samples_seen", 0),
                         epoch=trainer.current_epoch)  # fmt: skip

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            with contextlib.suppress(FileNotFoundError):
                os.remove(export_path(filepath))
