"""Loggers for ``clipprobe fit`` recipes: W&B (offline unless asked) and a CSV file in the run folder.

Both take ``save_dir: null`` to mean the run folder (``--trainer.default_root_dir``; filled in by
:func:`fill_logger_dirs` before the loggers are built), so a recipe's logs follow the run when the
folder is overridden on the command line.

- :class:`WandbLogger`: no account needed (``mode`` defaults to ``$WANDB_MODE``, else ``offline``);
  a run id fixed by the SLURM job, so a requeued job continues its run (outside SLURM ``clipprobe fit``
  gives the id of ``<run>/run.json``: :func:`fill_run_identity`); probe curves against
  ``train/samples_seen``; a table and a bar chart of per-position shares at each evaluation.
- :class:`CSVLogger`: ``<run>/metrics.csv``, kept when a run resumes, exact after a kill and a resume
  (:class:`CSVResume`); on Lightning's public :class:`~lightning.pytorch.loggers.logger.Logger` API.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from clipprobe.errors import UserError
from clipprobe.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

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


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger with clipprobe's defaults.

    Args:
        project: W&B project.
        name: Run name shown in W&B; default (``clipprobe fit``): the run's name in ``<run>/run.json``,
            the recipe's stem and the start time (``tiny-synthetic-20261202-171500``).
        save_dir: Folder that receives ``wandb/`` (default: the run folder).
        mode: ``offline`` (files only, sync later with ``wandb sync``), ``online`` or ``disabled``;
            default: ``$WANDB_MODE``, else ``offline``.
        id: Run id; default: the SLURM job id (``ARRAYJOB_TASK`` for arrays), so a requeued job resumes its
            run; outside SLURM (``clipprobe fit``) the run's id in ``<run>/run.json``, so a resumed run
            continues its W&B run.
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
        self.wandb_run: Any = None  # the wandb run, once made (rank 0)

    @property
    def experiment(self) -> Any:
        """The wandb run; on creation, probe and standard-evaluation curves get ``train/samples_seen`` as their x axis."""
        run = super().experiment
        if self.wandb_run is None and rank_zero_only.rank == 0 and getattr(run, "define_metric", None):
            run.define_metric("train/samples_seen")
            run.define_metric("probe/*", step_metric="train/samples_seen", step_sync=True)
            run.define_metric("eval/*", step_metric="train/samples_seen", step_sync=True)
            self.wandb_run = run
        return run

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Finish the W&B run (files complete on disk; a next Trainer in this process starts a new run)."""
        super().finalize(status)
        if self.wandb_run is not None and hasattr(self.wandb_run, "finish"):
            self.wandb_run.finish(exit_code=1 if status == "failed" else 0)
            self.wandb_run = None

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


class MetricsFile:
    """``metrics.csv``: a header row, then one row per :meth:`CSVLogger.log_metrics` call, with a ``step`` column.

    New rows are appended with one write; a new column rewrites the file (atomically) with the union header.
    A row cut short by a kill is dropped the first time the file is touched.

    Args:
        path: The file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.header: list[str] = []
        self.rows = 0  # complete rows in the file
        self.inherited = 0  # of which the file held when this process first read it (earlier attempts' rows)
        self._loaded = False

    def _read(self) -> list[list[str]]:
        """Header and rows as on disk, a cut last row left out (and cut off the file)."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a row cut short by a kill
            data = data[: data.rfind(b"\n") + 1]
            atomic_write_bytes(self.path, data)
        return [row for row in csv.reader(io.StringIO(data.decode("utf-8"), newline="")) if row]

    def load(self) -> None:
        """Learn the header and row count of an existing file (once)."""
        if not self._loaded:
            table = self._read()
            self.header, self.rows = (table[0], len(table) - 1) if table else ([], 0)
            self.inherited, self._loaded = self.rows, True

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Add rows: one append, or a rewrite with the union header when a column is new."""
        if not rows:
            return
        self.load()
        new = sorted({k for row in rows for k in row} - set(self.header))
        if new or not self.path.is_file():
            table = self._read()
            old = [dict(zip(table[0], r, strict=False)) for r in table[1:]] if table else []
            self.header = self.header + new
            self._write_all([*old, *rows])
        else:
            buf = io.StringIO(newline="")
            csv.DictWriter(buf, self.header, lineterminator="\n").writerows(rows)
            with self.path.open("a", encoding="utf-8", newline="") as f:
                f.write(buf.getvalue())
        self.rows += len(rows)

    def _write_all(self, rows: Sequence[Mapping[str, Any]]) -> None:
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, self.header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, buf.getvalue())

    def keep(self, step: int, rows: int | None) -> int:
        """Drop the rows an earlier attempt logged after the checkpoint a run resumes from at ``step``: of the
        rows the file held before this process wrote to it, those past the first ``rows`` (the count saved in
        the checkpoint) whose step is ``step`` or later (``rows`` None: every one whose step is ``step`` or
        later). Rows this process logged stay. Returns the number of rows dropped."""
        self.load()
        table = self._read()
        if not table:
            return 0
        header, body = table[0], table[1:]
        earlier, ours = body[: self.inherited], body[self.inherited :]
        at = header.index("step") if "step" in header else None

        def later(row: list[str]) -> bool:
            try:
                return at is not None and int(float(row[at])) >= step
            except (ValueError, IndexError):
                return rows is not None  # no step to tell: past the checkpoint's rows, it goes

        kept = [r for i, r in enumerate(earlier) if (rows is not None and i < rows) or not later(r)]
        if len(kept) < len(earlier):
            self.header = header
            self._write_all([dict(zip(header, r, strict=False)) for r in [*kept, *ours]])
        self.header, self.rows, self.inherited = header, len(kept) + len(ours), len(kept)
        return len(earlier) - len(kept)


class CSVLogger(Logger):
    """Metrics as ``<save_dir>/[name/[version/]]metrics.csv``, one row per logging call, kept across resumes.

    Lightning's CSVLogger deletes an existing file when a run resumes into its folder. This one keeps it
    and, told where a resumed run starts (:meth:`resume`, called by :class:`CSVResume`), drops what a
    killed attempt logged past that checkpoint, so that the file holds every step once. ``clipprobe
    plot`` reads it (:func:`clipprobe.evaluation.runplots.read_metrics`).

    Args:
        save_dir: Folder of ``metrics.csv`` (default: the run folder).
        name: Subfolder (default: none).
        version: Subfolder below ``name`` (default: none).
        flush_logs_every_n_steps: Rows are written at least this often (and whenever Lightning saves the
            logger, which it does after every logging step).
    """

    def __init__(self, save_dir: str | None = None, name: str = "", version: str = "",
                 flush_logs_every_n_steps: int = 100) -> None:  # fmt: skip
        super().__init__()
        if flush_logs_every_n_steps < 1:
            raise UserError(f"CSVLogger: flush_logs_every_n_steps must be at least 1, got {flush_logs_every_n_steps}")
        self._save_dir, self._name, self._version = str(save_dir or "."), str(name or ""), str(version or "")
        self.flush_logs_every_n_steps = flush_logs_every_n_steps
        self._pending: list[dict[str, Any]] = []
        self._file: MetricsFile | None = None

    @property
    def name(self) -> str:
        """Subfolder of ``save_dir`` (may be empty)."""
        return self._name

    @property
    def version(self) -> str:
        """Subfolder of ``name`` (may be empty)."""
        return self._version

    @property
    def save_dir(self) -> str:
        """The folder given (the run folder by default)."""
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """``save_dir/name``."""
        return str(Path(self._save_dir, self._name))

    @property
    def log_dir(self) -> str:
        """``save_dir/name/version``: the folder of ``metrics.csv``."""
        return str(Path(self._save_dir, self._name, self._version))

    @property
    @rank_zero_experiment
    def experiment(self) -> MetricsFile:
        """The metrics file (rank 0; other ranks get a no-op stand-in)."""
        if self._file is None:
            self._file = MetricsFile(Path(self.log_dir) / "metrics.csv")
        return self._file

    @property
    def rows(self) -> int:
        """Rows logged into the file so far, pending ones included (0 on ranks other than 0)."""
        if rank_zero_only.rank != 0:
            return 0
        self.experiment.load()
        return self.experiment.rows + len(self._pending)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing: ``clipprobe fit`` writes the run's whole configuration to ``config.yaml`` in the run folder."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Queue one row: the metrics and the step (tensors as numbers)."""
        row: dict[str, Any] = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}
        row["step"] = step if step is not None else (self._pending[-1]["step"] if self._pending else 0)
        self._pending.append(row)
        if (int(row["step"]) + 1) % self.flush_logs_every_n_steps == 0:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        """Write the queued rows."""
        rows, self._pending = self._pending, []
        self.experiment.append(rows)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Write the queued rows."""
        self.save()

    @rank_zero_only
    def resume(self, step: int, rows: int | None = None) -> None:
        """A run starts at ``step``: drop what an earlier attempt logged past its checkpoint (see
        :meth:`MetricsFile.keep`; ``rows``: the count the checkpoint saved, None if it saved none)."""
        self.save()
        dropped = self.experiment.keep(step, rows)
        if dropped:
            log.info("%s: dropped %d rows an earlier attempt logged from step %d on", self.experiment.path, dropped,
                     step)  # fmt: skip


class CSVResume(L.Callback):
    """Keeps :class:`CSVLogger` files exact across a kill and a resume: neither a lost nor a repeated row.

    A checkpoint stores how many rows each CSV logger had written. When a fit starts (``on_train_start``,
    after the checkpoint is restored), each logger drops the rows written after that checkpoint whose
    step is the resumed step or later: the steps this run does again. Rows logged after the checkpoint for
    earlier steps stay (Lightning logs a step's training row and validation after the checkpoint of that
    step, and does not repeat them). ``clipprobe fit`` adds this callback by itself.
    """

    def __init__(self) -> None:
        self.loggers: list[CSVLogger] = []
        self.restored: list[int] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Find the CSV loggers."""
        self.loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]

    def state_dict(self) -> dict[str, Any]:
        """Each CSV logger's row count, with queued rows written first."""
        for lg in self.loggers:
            lg.save()
        return {"rows": [lg.rows for lg in self.loggers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The row counts of the checkpoint this run resumes from."""
        self.restored = [int(n) for n in state_dict.get("rows", [])]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Drop what an earlier attempt logged past the checkpoint (nothing on a fresh file)."""
        for i, lg in enumerate(self.loggers):
            rows = self.restored[i] if self.restored is not None and i < len(self.restored) else None
            lg.resume(trainer.global_step, rows)


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


def fill_run_identity(config: Any, run_id: str, name: str) -> None:
    """Give W&B loggers configured without ``name`` the run's name, and without ``id`` the run's id, unless
    the SLURM job id applies (:func:`slurm_run_id`: a requeued job continues its run by it).

    Args:
        config: the LightningCLI namespace of one subcommand (with ``trainer.logger``).
        run_id: The run's id (``<run>/run.json``).
        name: The run's name.
    """
    import importlib

    trainer = config.get("trainer") if hasattr(config, "get") else None
    loggers = trainer.get("logger") if trainer is not None else None
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args, path = getattr(logger, "init_args", None), str(getattr(logger, "class_path", ""))
        module, _, cls = path.rpartition(".")
        try:
            is_wandb = issubclass(getattr(importlib.import_module(module), cls), LightningWandbLogger)
        except (ImportError, AttributeError, TypeError, ValueError):
            is_wandb = False
        if args is None or not is_wandb:
            continue
        if args.get("name") is None:
            args.name = name
        if args.get("id") is None and args.get("version") is None and slurm_run_id() is None:
            args.id = run_id
