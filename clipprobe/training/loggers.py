"""Loggers for ``clipprobe fit`` recipes: W&B (offline unless asked) and a CSV file in the run folder.

Both take ``save_dir: null`` to mean the run folder (``--trainer.default_root_dir``; filled in by
:func:`fill_logger_dirs` before the loggers are built), so a recipe's logs follow the run when the
folder is overridden on the command line.

- :class:`WandbLogger`: no account needed (``mode`` defaults to ``$WANDB_MODE``, else ``offline``);
  a run id fixed by the SLURM job, so a requeued job continues its run; probe curves against
  ``train/samples_seen``; a table and a bar chart of per-position shares at each evaluation.
- :class:`CSVLogger`: ``<run>/metrics.csv``, appended to (not deleted) when a run resumes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from clipprobe.errors import UserError

MODES = ("online", "offline", "disabled", "shared")
MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # older spellings of WANDB_MODE


def slurm_run_id(env: Mapping[str, str] | None = None) -> str | None:
    """The SLURM job's id, the same after a requeue: ``ARRAYJOB_TASK`` for array tasks, else the job id."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def resolve_mode(mode: str | None, env: Mapping[str, str] | None = None) -> str:
    """The W&B mode: the one given, else ``$WANDB_MODE``, else ``offline``.

    Raises:
        UserError: an unknown mode.
    """
    env = os.environ if env is None else env
    chosen = (mode or env.get("WANDB_MODE") or "offline").strip().lower()
    chosen = MODE_ALIASES.get(chosen, chosen)
    if chosen not in MODES:
        raise UserError(f"unknown W&B mode '{chosen}'; use one of {', '.join(MODES[:3])} (logger mode or WANDB_MODE)")
    return chosen


class WandbLogger(_WandbLogger):
    """Lightning's WandbLogger with clipprobe's defaults.

    Args:
        project: W&B project.
        name: Run name shown in W&B.
        save_dir: Folder that receives ``wandb/`` (default: the run folder).
        mode: ``offline`` (files only, sync later with ``wandb sync``), ``online`` or ``disabled``;
            default: ``$WANDB_MODE``, else ``offline``.
        id: Run id; default: the SLURM job id (``ARRAYJOB_TASK`` for arrays), so a requeued job resumes its run.
        group: W&B group.
        tags: W&B tags.
        log_model: Upload checkpoints as artifacts (online only).
        **kwargs: Anything else :func:`wandb.init` takes (``entity``, ``notes``, ...).
    """

    def __init__(self, project: str = "clipprobe", name: str | None = None, save_dir: str | None = None,
                 mode: str | None = None, id: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, log_model: bool = False, **kwargs: Any) -> None:  # fmt: skip
        self.mode = resolve_mode(mode)
        if log_model and self.mode != "online":
            raise UserError(f"log_model needs W&B mode online (it is {self.mode}); set the logger's mode: online")
        run_id = id or slurm_run_id()
        save_dir = save_dir or "."
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(name=name, save_dir=save_dir, id=run_id, project=project, log_model=log_model,
                         mode=self.mode, group=group, tags=tags, **kwargs)  # fmt: skip

    @property
    def experiment(self) -> Any:
        """The wandb run; on creation, probe curves get ``train/samples_seen`` as their x axis."""
        created = self._experiment is None
        run = super().experiment
        if created and rank_zero_only.rank == 0 and getattr(run, "define_metric", None):
            run.define_metric("train/samples_seen")
            run.define_metric("probe/*", step_metric="train/samples_seen", step_sync=True)
            self._wandb_init["id"] = self._id = run.id  # a later stage (validate, test) continues this run
        return run

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Finish the W&B run (files complete on disk; a next Trainer in this process starts cleanly)."""
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=1 if status == "failed" else 0)
            self._experiment = None

    @rank_zero_only
    def log_probe_records(self, records: Sequence[Any], step: int) -> None:
        """Per (set, probe): a table of every metric entry, and a bar chart of the robust per-position
        shares (``closest``: every query counts, so no bar stands on a handful of hits).

        Args:
            records: one evaluation's :class:`~clipprobe.evaluation.records.Record` objects.
            step: the global step.
        """
        import wandb

        columns = ["variant", "n", "family", "key", "name", "value", "lo", "hi", "count"]
        logged: dict[str, Any] = {}
        for rec in records:
            if not rec.metrics:
                continue
            key = f"{rec.target}/{rec.probe}"
            rows = [[m.variant, m.n, m.family, m.key, m.name, m.value, *m.interval, m.count] for m in rec.metrics]
            logged[f"probe_shares/{key}"] = wandb.Table(columns=columns, data=rows)
            head = [m for m in rec.metrics if m.family == "closest" and m.variant is None and m.key is not None]
            if head:
                table = wandb.Table(columns=["label", "share"], data=[[f"n{m.n} {m.key}", m.value] for m in head])
                logged[f"probe_bars/{key}"] = wandb.plot.bar(table, "label", "share", title=f"{key} at step {step}")
        if logged:
            samples = records[0].samples_seen
            extra = {"train/samples_seen": float(samples)} if samples is not None else {}
            self.experiment.log({**logged, **extra, "trainer/global_step": step})


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is kept and appended to."""

    def _check_log_dir_exists(self) -> None:
        import csv

        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # a row cut short by a kill: drop it
            path.write_bytes(data[: data.rfind(b"\n") + 1])
        with path.open(newline="") as f:
            self.metrics_keys = list(next(csv.reader(f), []))


class CSVLogger(_CSVLogger):
    """Metrics as ``<save_dir>/metrics.csv`` (one row per logging step), kept across resumes.

    Lightning's CSVLogger deletes an existing file when a run resumes into its folder; this one
    appends, so ``clipprobe plot`` sees the whole run (rows of replayed steps appear twice: readers
    keep the last value per step).

    Args:
        save_dir: Folder of ``metrics.csv`` (default: the run folder).
        name: Subfolder (default: none).
        version: Subfolder below ``name`` (default: none).
        flush_logs_every_n_steps: How often rows are written.
    """

    def __init__(self, save_dir: str | None = None, name: str = "", version: str = "",
                 flush_logs_every_n_steps: int = 100) -> None:  # fmt: skip
        super().__init__(save_dir or ".", name=name, version=version, flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (rank 0 only; created on first use)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


def fill_logger_dirs(config: Any) -> None:
    """Give loggers configured with ``save_dir: null`` the run folder (``trainer.default_root_dir``).

    Args:
        config: the LightningCLI namespace of one subcommand (with ``trainer.logger``).
    """
    trainer = config.get("trainer") if hasattr(config, "get") else None
    if trainer is None:
        return
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args = getattr(logger, "init_args", None)
        if args is not None and "save_dir" in args and args.get("save_dir") is None:
            args.save_dir = trainer.get("default_root_dir") or "."
