"""``clipprobe fit`` and ``clipprobe validate``: LightningCLI over CLIPModule and ShardDataModule.

Recipes are YAML files (``configs/fit/*.yaml``); any option can be overridden on the command line
(``--trainer.max_steps 200``, ``--data.batch_size 64``). The run folder is
``--trainer.default_root_dir``: it receives ``config.yaml`` (the resolved configuration) and
``checkpoints/`` (``step=XXXXXXXX.ckpt`` every ``--checkpoint.every_n_train_steps`` steps, the
last ``--checkpoint.save_top_k`` kept, ``last.ckpt``, and an open_clip export ``.pt`` beside each).
Resume with ``--ckpt_path last``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from clipprobe.training import slurm
from clipprobe.data.shards import ShardDataModule
from clipprobe.errors import UserError
from clipprobe.fileio import atomic_write_json, atomic_write_text
from clipprobe.training.loggers import fill_logger_dirs
from clipprobe.models.export import ExportingCheckpoint
from clipprobe.training.module import CLIPModule

LOOKUP_CKPT = ("last", "hpc", "best", "registry")  # ckpt_path values Lightning resolves itself


class RunConfig(SaveConfigCallback):
    """Saves the resolved configuration as ``<default_root_dir>/config.yaml`` (rank 0, atomically)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Write the config beside the checkpoints, whatever the logger, and log it to the loggers."""
        text = self.parser.dump(self.config, skip_none=False)
        atomic_write_text(Path(trainer.default_root_dir) / self.config_filename, text)
        for logger in trainer.loggers:  # the run's whole config in W&B (and hparams.yaml of CSV loggers)
            logger.log_hyperparams(yaml.safe_load(text))


class StepTimer(L.Callback):
    """Throughput and data-loading share of training steps.

    Logs ``perf/samples_per_sec`` (all processes) and ``perf/data_wait_share`` (time between the end
    of one step and the start of the next, over the whole step cycle), and writes
    ``<default_root_dir>/perf.json`` at the end, without the first ``warmup`` steps.

    Args:
        warmup: Steps left out of the summary (start-up, compilation).
    """

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup
        self._end: float | None = None
        self._steps, self._cycle, self._wait, self._samples = 0, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:  # fmt: skip
        now = time.perf_counter()
        if self._end is not None:
            cycle, wait = now - self._end, self._start - self._end
            samples = batch["image"].shape[0] * trainer.world_size
            pl_module.log_dict({"perf/samples_per_sec": samples / cycle, "perf/data_wait_share": wait / cycle})
            self._steps += 1
            if self._steps > self.warmup:
                self._cycle, self._wait, self._samples = self._cycle + cycle, self._wait + wait, self._samples + samples
        self._end = now

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._cycle > 0:
            summary = {"steps": self._steps - self.warmup, "samples_per_sec": self._samples / self._cycle,
                       "data_wait_share": self._wait / self._cycle}  # fmt: skip
            atomic_write_json(Path(trainer.default_root_dir) / "perf.json", summary)


def _checkpoint_dir(root: str | None) -> str:
    return str(Path(root or ".") / "checkpoints")


class ClipprobeCLI(LightningCLI):
    """LightningCLI with clipprobe's checkpointing callback and argument links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Checkpoints (``--checkpoint.*``) go to ``<run>/checkpoints``; the data uses the model's preprocessing."""
        parser.add_lightning_class_args(ExportingCheckpoint, "checkpoint")
        parser.link_arguments("model.model_name", "data.model_name")
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)
        parser.set_defaults({"trainer.default_root_dir": "runs/clipprobe"})

    def instantiate_classes(self) -> None:
        """Build everything; loggers configured with ``save_dir: null`` write into the run folder."""
        fill_logger_dirs(self.config[self.subcommand])
        super().instantiate_classes()

    def before_instantiate_classes(self) -> None:
        """Fail fast on a checkpoint path that does not exist (Lightning would fail after building everything)."""
        config = self.config[self.subcommand]
        ckpt = config.get("ckpt_path")
        if ckpt and ckpt not in LOOKUP_CKPT and "://" not in str(ckpt) and not Path(ckpt).is_file():
            raise UserError(f"checkpoint {ckpt} not found; pass an existing .ckpt or --ckpt_path last")
        if self.subcommand == "fit" and not ckpt:  # a requeued SLURM job resumes by itself (clipprobe.training.slurm)
            config.ckpt_path = slurm.resume_path(config.trainer.default_root_dir, config.checkpoint.dirpath)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Under SLURM, requeue at a step boundary (:class:`clipprobe.training.slurm.SlurmRequeue`), not in a signal handler."""
        config = self._get(self.config_init, "trainer", default={})
        return super().instantiate_trainer(**{**slurm.trainer_kwargs(config, self.subcommand == "fit"), **kwargs})


# Lightning warnings that do not apply here: the CLI is called with args on purpose; the stream's
# length is exact per rank and worker; no validation shards is allowed; srun is used when wanted.
QUIET = (
    r"LightningCLI's args parameter",
    r"Your `IterableDataset` has `__len__` defined",
    r"Total length of `list` across ranks is zero",
    r"The `srun` command is available",
    r"skip_none parameter was deprecated",
    r"``instantiate_classes`` was deprecated",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"torch.distributed.nn.functional.all_gather is deprecated",
)


def _run(subcommand: str, argv: list[str]) -> None:
    import warnings

    from jsonargparse import ArgumentError

    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    try:
        ClipprobeCLI(
            CLIPModule,
            ShardDataModule,
            args=[subcommand, *argv],
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
            parser_kwargs={"exit_on_error": False, subcommand: {"exit_on_error": False}},
            seed_everything_default=0,
        )
    except ArgumentError as e:
        msg = " ".join(str(e).split())
        raise UserError(f"{msg[:400]} (see 'clipprobe {subcommand} --help')") from None
    except slurm.Requeued as stop:
        slurm.requeue(stop)


def fit(argv: list[str]) -> None:
    """Train a CLIP model on webdataset shards (LightningCLI: --config recipe.yaml, --model.*, --data.*, --trainer.*)."""
    slurm.catch_requeue_signal()  # from the start: SIGUSR1's default action would kill the task
    _run("fit", argv)


def validate(argv: list[str]) -> None:
    """Contrastive validation loss of a checkpoint on validation shards (--ckpt_path, --data.val_data)."""
    _run("validate", argv)


def read_perf(run_dir: str | Path) -> dict[str, Any]:
    """The throughput summary written by :class:`StepTimer`."""
    return json.loads((Path(run_dir) / "perf.json").read_text(encoding="utf-8"))
