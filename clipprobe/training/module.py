"""CLIPModule: a LightningModule around an open_clip CLIP, trained with open_clip's ClipLoss.

The open_clip model is the attribute ``model`` (so checkpoint keys read ``model.*``), built by
``open_clip.create_model`` from any registered architecture, clipprobe's own included. Everything
about devices, precision, gradient clipping and accumulation is the Trainer's business.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch

from clipprobe.errors import UserError
from clipprobe.models.text import encode_text, trims_padding


def no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Gains, biases (1-d), the logit scale (0-d) and embeddings (token, positional, class) get no decay."""
    return param.ndim < 2 or "embedding" in name or "logit_scale" in name


def logging_step(trainer: Any, step: int) -> bool:
    """Whether the loggers write the values logged at optimizer step ``step`` (counted from 1: the step being taken):
    every ``log_every_n_steps``-th, and every step of ``fast_dev_run``. Logging is skipped on the others, where
    Lightning would only overwrite it: each ``self.log`` costs about a millisecond of Python, 4% of a tiny
    model's step, and a cross-rank reduction under DDP for ``sync_dist``."""
    every = int(getattr(trainer, "log_every_n_steps", 1) or 0)
    if getattr(trainer, "fast_dev_run", False) or every == 1:
        return True
    return every > 0 and (step % every == 0 or bool(getattr(trainer, "should_stop", False)))


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear from 1/warmup to 1 over ``warmup`` steps, then cosine down to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CLIPModule(L.LightningModule):
    """Contrastive image-text training of an open_clip model.

    Args:
        model_name: open_clip architecture (``clipprobe-tiny``, ``clipprobe-small``, ``ViT-B-32``, ...).
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not applied to gains, biases, embeddings and the logit scale).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: Linear warmup steps.
        schedule_steps: Steps of the cosine schedule (default: the Trainer's ``max_steps``); set it when a run
            is stopped early and resumed, so the schedule stays that of the whole run.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        logit_scale_max: The logit scale (temperature inverse) is clamped to [1, logit_scale_max].
        local_loss: Compute the loss on local features against gathered ones (saves memory under DDP).
        gather_with_grad: Gather features with gradients across processes (needed for correct DDP gradients).
        grad_checkpointing: Activation checkpointing in both towers (less memory, more compute).
        compile: ``torch.compile`` the model (in place: checkpoint keys stay ``model.*``).
        text_pos_embed: ``learned`` (open_clip's absolute positional embedding of the text tower) or ``none``: the
            embedding is zeroed and frozen, so the text tower sees no position but what its attention mask implies
            (a causal mask still tells a token how many precede it). Checkpoints and exports hold the zeros, so
            any loader rebuilds the same function from the architecture name.
    """

    def __init__(self, model_name: str = "clipprobe-tiny", lr: float = 5e-4, weight_decay: float = 0.2,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, warmup_steps: int = 500,
                 schedule_steps: int | None = None, min_lr_ratio: float = 0.0, logit_scale_max: float = 100.0,
                 local_loss: bool = True, gather_with_grad: bool = True, grad_checkpointing: bool = False,
                 compile: bool = False, text_pos_embed: Literal["learned", "none"] = "learned") -> None:  # fmt: skip
        super().__init__()
        check_hparams(lr, weight_decay, betas, eps, warmup_steps, schedule_steps, min_lr_ratio, logit_scale_max)
        self.save_hyperparameters()
        if text_pos_embed not in ("learned", "none"):
            raise UserError(f"--model.text_pos_embed {text_pos_embed!r} is not one of learned, none")
        self.model = create_model(model_name)
        if text_pos_embed == "none":
            drop_text_positions(self.model)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.loss_fn: Any = None
        self.samples_seen = 0  # over all processes
        self._skipped = torch.zeros(())  # bad samples skipped by this process's loader (on device: no sync a step)

    def setup(self, stage: str) -> None:
        """Build the loss for this process's rank, and compile if asked."""
        from open_clip.loss import ClipLoss

        self.loss_fn = ClipLoss(local_loss=self.hparams.local_loss, gather_with_grad=self.hparams.gather_with_grad,
                                cache_labels=True, rank=self.global_rank, world_size=self.trainer.world_size)  # fmt: skip
        if self.hparams.compile and stage == "fit":
            self.model.compile()

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """open_clip's output dict: ``image_features`` [B, D], ``text_features`` [B, D], ``logit_scale`` []."""
        return self.model(image, text)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        length = batch.get("text_length")
        if length is not None and not self.hparams.compile and trims_padding(self.model):
            out = self._forward_trimmed(batch["image"], batch["text"], int(length))
        else:
            out = self(batch["image"], batch["text"])
        return self.loss_fn(out["image_features"], out["text_features"], out["logit_scale"]), out["logit_scale"]

    def _forward_trimmed(self, image: torch.Tensor, text: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
        """open_clip's ``CLIP.forward`` with the text padding after the batch's longest caption left out (the same
        features and gradients: :mod:`clipprobe.models.text`)."""
        model = self.model
        out = {"image_features": model.encode_image(image, normalize=True),
               "text_features": encode_text(model, text, normalize=True, length=length),
               "logit_scale": model.logit_scale.exp()}  # fmt: skip
        if getattr(model, "logit_bias", None) is not None:
            out["logit_bias"] = model.logit_bias
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One contrastive step; logs loss, logit scale, learning rate, samples seen and skipped samples."""
        loss, scale = self._loss(batch)
        self.samples_seen += batch["image"].shape[0] * self.trainer.world_size  # equal batches on every rank
        if "skipped" in batch:
            self._skipped = self._skipped.to(batch["skipped"].device) + batch["skipped"]
        if logging_step(self.trainer, self.trainer.global_step + 1):  # what the loggers write; nothing else
            lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else self.hparams.lr
            self.log("train/loss", loss, prog_bar=True)
            self.log_dict({"train/logit_scale": scale.detach(), "train/lr": float(lr),
                           "train/samples_seen": float(self.samples_seen)})  # fmt: skip
            # every rank logs and reduces its own count (the same steps on every rank: no DDP hang)
            self.log("data/skipped_samples", self._skipped.float(), reduce_fx="sum", sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Contrastive loss on a validation batch (``val/loss``, averaged over batches and processes)."""
        loss, _ = self._loss(batch)
        self.log("val/loss", loss, sync_dist=True, batch_size=batch["image"].shape[0])
        return loss

    @property
    def skipped(self) -> int:
        """Bad data samples skipped by this process's loader so far (restored on resume)."""
        return int(self._skipped)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the logit scale clamp (to [0, ln logit_scale_max])."""
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(self.hparams.logit_scale_max))

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (fused: :func:`adamw`) with two parameter groups (decay / no decay) and a per-step warmup-cosine
        schedule."""
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in params if not no_weight_decay(n, p)], "weight_decay": self.hparams.weight_decay},
            {"params": [p for n, p in params if no_weight_decay(n, p)], "weight_decay": 0.0},
        ]
        opt = adamw(groups, allow_fused=fused_allowed(self._attached_trainer()), lr=self.hparams.lr,
                    betas=tuple(self.hparams.betas), eps=self.hparams.eps)  # fmt: skip
        total = self.hparams.schedule_steps or int(self.trainer.estimated_stepping_batches)
        warmup, floor = self.hparams.warmup_steps, self.hparams.min_lr_ratio
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total, floor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _attached_trainer(self) -> L.Trainer | None:
        try:
            return self.trainer
        except RuntimeError:  # not attached: built for inspection (tests, tools)
            return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the architecture, step and samples seen (read by ``clipprobe eval`` and on resume)."""
        checkpoint["clipprobe"] = {"arch": self.hparams.model_name, "step": self.global_step,
                                   "samples_seen": self.samples_seen, "skipped": self.skipped}  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the counters that are not parameters."""
        info = checkpoint.get("clipprobe", {})
        self.samples_seen = int(info.get("samples_seen", 0))
        self._skipped = torch.tensor(int(info.get("skipped", 0)))


FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel runs


def fused_allowed(trainer: Any) -> bool:
    """Lightning refuses gradient clipping with a fused optimizer under its AMP plugin (``16-mixed``, ``bf16-mixed``:
    the fused kernel could unscale gradients itself), so a run that clips under AMP takes the multi-tensor one."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    clipping = bool(getattr(trainer, "gradient_clip_val", None))
    return not (clipping and isinstance(getattr(trainer, "precision_plugin", None), MixedPrecision))


def adamw(groups: list[dict[str, Any]], allow_fused: bool = True, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel when allowed and every parameter is a floating tensor on the CPU or a CUDA GPU,
    else the multi-tensor (``foreach``) one: the same update, one kernel for all tensors instead of a Python loop over
    them (tiny CLIP, one CPU thread: 3 ms a step instead of 30)."""
    params = [p for group in groups for p in group["params"]]
    fused = allow_fused and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, **({"fused": True} if fused else {"foreach": True}), **kwargs)


def check_hparams(lr: float, weight_decay: float, betas: tuple[float, float], eps: float, warmup_steps: int,
                  schedule_steps: int | None, min_lr_ratio: float, logit_scale_max: float) -> None:  # fmt: skip
    """Refuse hyper-parameters no training can use, naming the option and its valid range.

    Raises:
        UserError: the first value out of range (NaN is out of every range).
    """
    pair = list(betas) if isinstance(betas, (list, tuple)) else [betas]
    checks = [
        ("lr", lr, lr > 0, "> 0"),
        ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
        ("betas", pair, len(pair) == 2 and all(0 <= b < 1 for b in pair), "two values in [0, 1)"),
        ("eps", eps, eps > 0, "> 0"),
        ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0"),
        ("schedule_steps", schedule_steps, schedule_steps is None or schedule_steps >= 1, ">= 1 (or null: max_steps)"),
        ("min_lr_ratio", min_lr_ratio, 0 <= min_lr_ratio <= 1, "in [0, 1]"),
        ("logit_scale_max", logit_scale_max, logit_scale_max >= 1, ">= 1"),
    ]
    for name, value, ok, valid in checks:
        if not ok:
            raise UserError(f"--model.{name} {value} is out of range: it must be {valid}")


def drop_text_positions(model: torch.nn.Module) -> None:
    """Zero and freeze the text tower's positional embedding (open_clip ``CLIP`` or ``CustomTextCLIP``).

    Raises:
        UserError: the model's text tower has no positional embedding parameter (an HF text tower).
    """
    owner = model if isinstance(getattr(model, "positional_embedding", None), torch.nn.Parameter) else None
    text = getattr(model, "text", None)
    if owner is None and isinstance(getattr(text, "positional_embedding", None), torch.nn.Parameter):
        owner = text
    if owner is None:
        raise UserError("--model.text_pos_embed none needs an open_clip text tower with a positional embedding; "
                        "this architecture's text tower has none (a Hugging Face tower?)")  # fmt: skip
    with torch.no_grad():
        owner.positional_embedding.zero_()
    owner.positional_embedding.requires_grad_(False)


def create_model(model_name: str) -> torch.nn.Module:
    """A randomly initialised open_clip model that returns output dicts.

    Raises:
        UserError: unknown architecture.
    """
    from clipprobe.models import create_random_model

    return create_random_model(model_name, output_dict=True)  # type: ignore[return-value]
