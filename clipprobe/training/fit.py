"""``clipprobe fit`` and ``clipprobe validate``: LightningCLI over CLIPModule and ShardDataModule.

Recipes are YAML files (``configs/fit/*.yaml``); any option can be overridden on the command line
(``--trainer.max_steps 200``, ``--data.batch_size 64``). The run folder is
``--trainer.default_root_dir``: it receives ``config.yaml`` (the resolved configuration) and
``checkpoints/`` (``step=XXXXXXXX.ckpt`` at step 0 and every ``--checkpoint.every_n_train_steps``
steps, the last ``--checkpoint.save_top_k`` kept, ``last.ckpt``, and an open_clip ``local-dir:`` export
folder ``step=XXXXXXXX/`` beside each; :mod:`clipprobe.models.export`).
Resume with ``--ckpt_path last``.

One run per folder (:mod:`clipprobe.training.runfolder`): a folder that holds another run is refused,
unless the run in it is resumed (``--ckpt_path``, a SLURM requeue) or ``--run_dir new`` asks for a fresh
``<dir>-v2``; ``<run>/run.json`` records the run's id (its W&B run id outside SLURM) and name. Resuming
takes the checkpoint's model hyper-parameters: a different architecture is refused, any other value given
is named as ignored, and ``config.yaml`` records what ran. ``validate`` needs ``--ckpt_path``. The data are
checked before any logger starts; Ctrl-C ends with ``clipprobe: interrupted`` and status 130.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from clipprobe.data.shards import ShardDataModule
from clipprobe.errors import UserError
from clipprobe.fileio import atomic_write_json, atomic_write_text
from clipprobe.models.export import ExportingCheckpoint, last_checkpoint
from clipprobe.training import runfolder, slurm
from clipprobe.training.loggers import CSVResume, fill_logger_dirs, fill_run_identity, slurm_run_id
from clipprobe.training.module import CLIPModule, logging_step

LOOKUP_CKPT = ("last", "hpc", "best", "registry")  # ckpt_path values Lightning resolves itself


class RunConfig(SaveConfigCallback):
    """Saves the resolved configuration of a fit as ``<default_root_dir>/config.yaml`` (rank 0, atomically).

    ``--run_dir`` is left out (the folder chosen is ``trainer.default_root_dir``), so the file resumes its run.
    Other stages (``validate``) write nothing: the folder's ``config.yaml`` stays that of the run that trained.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Write the config beside the checkpoints, whatever the logger, and log it once, nested, to the loggers."""
        if stage != "fit":
            return
        config = self.config.clone()
        if "run_dir" in config:
            del config["run_dir"]
        text = self.parser.dump(config, skip_none=False)
        atomic_write_text(Path(trainer.default_root_dir) / self.config_filename, text)
        for logger in trainer.loggers:  # the run's whole config in W&B, as sections (model, data, trainer, ...)
            logger.log_hyperparams(yaml.safe_load(text))


class StepTimer(L.Callback):
    """Throughput and data-loading share of training steps.

    Logs ``perf/samples_per_sec`` (all processes) and ``perf/data_wait_share`` (time between the end
    of one step and the start of the next, over the whole step cycle), and writes
    ``<default_root_dir>/perf.json`` at the end, without the first ``warmup`` steps. Every
    ``log_every_n_steps`` steps it also logs this process tree's host memory, ``perf/host_rss_gb`` (the
    main process, its loader workers and the W&B service; Linux), and on CUDA ``perf/gpu_peak_gb`` (the
    peak of allocated memory so far): a leak shows as a rising curve. ``perf.json`` keeps their maxima.

    Args:
        warmup: Steps left out of the summary (start-up, compilation).
    """

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup
        self._end: float | None = None
        self._steps, self._cycle, self._wait, self._samples = 0, 0.0, 0.0, 0
        self._peaks: dict[str, float] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:  # fmt: skip
        now = time.perf_counter()
        if self._end is not None:
            cycle, wait = now - self._end, self._start - self._end
            samples = batch["image"].shape[0] * trainer.world_size
            if logging_step(trainer, trainer.global_step):  # only what the loggers write (each log costs ~1 ms)
                values = {"perf/samples_per_sec": samples / cycle, "perf/data_wait_share": wait / cycle}
                pl_module.log_dict({**values, **self._memory(pl_module)})
            self._steps += 1
            if self._steps > self.warmup:
                self._cycle, self._wait, self._samples = self._cycle + cycle, self._wait + wait, self._samples + samples
        self._end = now

    def _memory(self, pl_module: L.LightningModule) -> dict[str, float]:
        import torch

        from clipprobe.training.procmem import tree_memory

        values = {}
        host = tree_memory()
        if host is not None:
            values["perf/host_rss_gb"] = host[0] / 1e9
        if pl_module.device.type == "cuda":
            values["perf/gpu_peak_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 1e9
        for key, value in values.items():
            self._peaks[key] = max(self._peaks.get(key, 0.0), value)
        return values

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._cycle > 0:
            summary = {"steps": self._steps - self.warmup, "samples_per_sec": self._samples / self._cycle,
                       "data_wait_share": self._wait / self._cycle,
                       **{f"peak_{k.removeprefix('perf/')}": v for k, v in self._peaks.items()}}  # fmt: skip
            atomic_write_json(Path(trainer.default_root_dir) / "perf.json", summary)


def _checkpoint_dir(root: str | None) -> str:
    return str(Path(root or ".") / "checkpoints")


class ClipprobeCLI(LightningCLI):
    """LightningCLI with clipprobe's checkpointing callback and argument links, run folder and resume checks.

    Args:
        *args: As for LightningCLI.
        launch: This launch's key (:func:`clipprobe.training.runfolder.launch_key`).
        **kwargs: As for LightningCLI.
    """

    def __init__(self, *args: Any, launch: str | None = None, **kwargs: Any) -> None:
        self.launch = launch
        self.requested: Any = None  # the model options as given, before a checkpoint's replace them
        self.run_info: runfolder.RunInfo | None = None
        super().__init__(*args, **kwargs)

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """``--seed_everything``, and ``--run_dir`` (fit)."""
        super().add_default_arguments_to_parser(parser)
        parser.add_argument(
            "--run_dir", choices=runfolder.RUN_DIR_CHOICES, default="refuse",
            help="fit: when --trainer.default_root_dir holds a previous run that is not resumed, refuse (default) "
            "or train in a fresh folder <dir>-v2, <dir>-v3, ... (new)",
        )  # fmt: skip

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; then, before Lightning reads a checkpoint: choose the run folder (fit), keep the model options
        as given, and check a checkpoint file.

        Raises:
            UserError: the run folder is a file or holds another run; ``--run_dir`` given to validate; the
                checkpoint is damaged or no training checkpoint.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand not in ("fit", "validate"):
            return
        config = self.config[subcommand]
        base = Path(config.trainer.default_root_dir or ".")
        if subcommand == "fit":
            folder = runfolder.choose_folder(base, config.run_dir, config.get("ckpt_path"), self.launch)
            if folder != base and isinstance(args, list):  # parse again: links (checkpoint.dirpath) follow
                runfolder.say(f"training in {folder} ({base} holds a previous run)")
                super().parse_arguments(parser, [*args, "--trainer.default_root_dir", str(folder)])
                config = self.config[subcommand]
        else:
            runfolder.check_not_file(base)
            if config.run_dir != "refuse":
                raise UserError("--run_dir is an option of fit; validate writes no run")
            check_validate_checkpoint(config)
        self.requested = config.model.clone()
        ckpt = config.get("ckpt_path")
        if ckpt and ckpt not in LOOKUP_CKPT and "://" not in str(ckpt) and Path(ckpt).is_file():
            read_training_checkpoint(ckpt)  # before Lightning's torch.load of it: one line, not a traceback

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Checkpoints (``--checkpoint.*``) go to ``<run>/checkpoints``; the data uses the model's preprocessing."""
        parser.add_lightning_class_args(ExportingCheckpoint, "checkpoint")
        parser.link_arguments("model.model_name", "data.model_name")
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)
        parser.set_defaults({"trainer.default_root_dir": "runs/clipprobe"})

    def instantiate_classes(self) -> None:
        """Build everything: the model with the hyper-parameters of the checkpoint resumed from; loggers configured
        with ``save_dir: null`` write into the run folder, W&B with the run's id and name (``run.json``)."""
        config = self.config[self.subcommand]
        if self.subcommand == "validate" and not config.get("ckpt_path"):
            raise UserError("validate scores a checkpoint: pass --ckpt_path FILE (a .ckpt) or --ckpt_path last; "
                            "without one it would score the model's random initial weights")  # fmt: skip
        ckpt = checkpoint_to_load(config)
        if ckpt is not None:
            self.take_checkpoint_hparams(config, ckpt)
        self.run_info = run_identity(config, self.subcommand == "fit", self.launch)
        if self.run_info is not None:
            fill_run_identity(config, self.run_info.id, self.run_info.name)
        fill_logger_dirs(config)
        super().instantiate_classes()

    def take_checkpoint_hparams(self, config: Any, path: Path) -> None:
        """The model options of the checkpoint resumed from (fit; validate checks the architecture only).

        Raises:
            UserError: the checkpoint holds another architecture than the one asked for.
        """
        ckpt = read_training_checkpoint(path, check=False)  # checked already: parse_arguments, --ckpt_path last
        hparams = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not str(k).startswith("_")}
        arch = (ckpt.get("clipprobe") or {}).get("arch") or hparams.get("model_name")
        asked = (self.requested or config.model).get("model_name")
        if arch and asked and arch != asked:
            raise UserError(f"checkpoint {path} holds a {arch} model, not {asked} (--model.model_name); pass "
                            f"--model.model_name {arch} or the recipe it was trained with")  # fmt: skip
        if self.subcommand != "fit":
            return
        for key, value in hparams.items():
            if key not in config.model:
                continue
            wanted = (self.requested or config.model).get(key)
            if not same_value(wanted, value):
                runfolder.say(f"--model.{key} {show(wanted)} ignored: resuming uses the checkpoint's {show(value)}")
            if not same_value(config.model.get(key), value):
                config.model[key] = value

    def before_instantiate_classes(self) -> None:
        """Fail fast on a checkpoint path that does not exist (Lightning would fail after building everything)."""
        config = self.config[self.subcommand]
        ckpt = config.get("ckpt_path")
        if ckpt and ckpt not in LOOKUP_CKPT and "://" not in str(ckpt) and not Path(ckpt).is_file():
            raise UserError(f"checkpoint {ckpt} not found; pass an existing .ckpt or --ckpt_path last")
        if ckpt == "last":  # last.ckpt, else the newest intact checkpoint (ExportingCheckpoint is no ModelCheckpoint)
            config.ckpt_path = last_checkpoint(config.checkpoint.dirpath)
        elif ckpt == "best":
            raise UserError("--ckpt_path best: clipprobe's checkpoints monitor no metric; pass last or a file")
        elif self.subcommand == "fit" and not ckpt:  # a requeued SLURM job resumes by itself (clipprobe.training.slurm)
            config.ckpt_path = slurm.resume_path(config.trainer.default_root_dir, config.checkpoint.dirpath)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Under SLURM, requeue at a step boundary (:class:`clipprobe.training.slurm.SlurmRequeue`), not in a signal handler."""
        config = self._get(self.config_init, "trainer", default={})
        return super().instantiate_trainer(**{**slurm.trainer_kwargs(config, self.subcommand == "fit"), **kwargs})

    def fit(self, model: L.LightningModule, **kwargs: Any) -> None:
        """Check the data (before any logger starts: no orphan W&B run), record the run (``run.json``), train."""
        datamodule = kwargs.get("datamodule")
        if datamodule is not None:
            datamodule.setup("fit")
        info, root = self.run_info, self.trainer.default_root_dir
        if info is not None and runfolder.is_first_process() and runfolder.RunInfo.read(root) != info:
            info.write(root)
        interruptible(self.trainer.fit, model, **kwargs)

    def validate(self, model: L.LightningModule, **kwargs: Any) -> None:
        """Check the data, then score the checkpoint."""
        datamodule = kwargs.get("datamodule")
        if datamodule is not None:
            datamodule.setup("validate")
        interruptible(self.trainer.validate, model, **kwargs)


def interruptible(run: Any, *args: Any, **kwargs: Any) -> None:
    """Run a Trainer entry point; Ctrl-C comes out as KeyboardInterrupt (``clipprobe: interrupted``, status 130).

    Lightning catches KeyboardInterrupt itself, shuts down gracefully (loggers finalized, DDP processes stopped),
    ignores SIGINT from then on and exits with status 1. The SystemExit it raises while handling the interrupt
    carries it as its context; SIGINT's handler is put back afterwards.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        run(*args, **kwargs)
    except SystemExit as stop:
        if isinstance(stop.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    finally:
        if main_thread and handler is not None:
            signal.signal(signal.SIGINT, handler)


def read_training_checkpoint(path: str | Path, check: bool = True) -> dict[str, Any]:
    """A Lightning training checkpoint, tensors memory-mapped (not read): hyper-parameters and clipprobe's record.

    Args:
        path: The ``.ckpt`` file.
        check: Check every byte first (:func:`clipprobe.models.load.checkpoint_problem`: CRC of each member).

    Raises:
        UserError: the file is damaged (truncated, a failed CRC), or is no training checkpoint (an open_clip export).
    """
    import torch

    from clipprobe.models.load import checkpoint_problem

    path = Path(path)
    problem = checkpoint_problem(path) if check else None
    if problem is not None:
        raise UserError(f"checkpoint {path} is truncated or damaged ({problem}); pass an intact .ckpt, e.g. "
                        "--ckpt_path last")  # fmt: skip
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # refused by safe loading: objects beyond weights, which clipprobe never writes
        raise UserError(f"checkpoint {path} cannot be read safely ({' '.join(str(e).split())[:160]}); "
                        "pass a .ckpt written by clipprobe fit") from None  # fmt: skip
    if not isinstance(ckpt, dict) or "pytorch-lightning_version" not in ckpt or "state_dict" not in ckpt:
        what = "an open_clip export (weights only)" if isinstance(ckpt, dict) and "clipprobe" in ckpt else "a file"
        raise UserError(f"{path} is {what}, not a training checkpoint: it holds no optimizer or loop state; pass a "
                        ".ckpt of the run's checkpoints folder (e.g. --ckpt_path last)")  # fmt: skip
    return ckpt


def check_validate_checkpoint(config: Any) -> None:
    """``validate --ckpt_path last`` needs a checkpoint in the run's checkpoints folder.

    Raises:
        UserError: there is none.
    """
    if config.get("ckpt_path") != "last":
        return
    checkpoint = config.get("checkpoint")
    folder = Path(checkpoint.get("dirpath") if checkpoint is not None and checkpoint.get("dirpath") else
                  _checkpoint_dir(config.trainer.default_root_dir))  # fmt: skip
    if not any(folder.glob("*.ckpt")):
        raise UserError(f"--ckpt_path last: no checkpoint in {folder}; pass --ckpt_path FILE (a .ckpt)")


def checkpoint_to_load(config: Any) -> Path | None:
    """The checkpoint file a fit or validate loads: ``--ckpt_path`` (``last`` resolved by then), else under SLURM
    the newest requeue checkpoint (Lightning resumes from it by itself); None for a fresh start."""
    ckpt = config.get("ckpt_path")
    if ckpt and ckpt not in LOOKUP_CKPT and "://" not in str(ckpt) and Path(ckpt).is_file():
        return Path(ckpt)
    if (not ckpt or ckpt == "hpc") and slurm.on_slurm():
        hpc = slurm.hpc_checkpoints(config.trainer.default_root_dir)
        return hpc[-1] if hpc else None
    return None


def run_identity(config: Any, fit: bool, launch: str | None) -> runfolder.RunInfo | None:
    """Who the run is: ``<run>/run.json`` when the run goes on (the folder holds it), else for a fit a new run
    named after the recipe (the first ``--config``), its id the SLURM job's under SLURM; validate makes none."""
    root = Path(config.trainer.default_root_dir or ".")
    existing = runfolder.RunInfo.read(root)
    if not fit or (existing is not None and runfolder.previous_run(root)):
        return existing
    recipes = config.get("config") or []
    return runfolder.RunInfo.new(str(recipes[0]) if recipes else None, launch, slurm_run_id())


def same_value(a: Any, b: Any) -> bool:
    """Equal as configuration values (a tuple equals the list a checkpoint stores)."""
    return json.dumps(a, default=str) == json.dumps(b, default=str)


def show(value: Any) -> str:
    """A value as written on the command line."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


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
        with runfolder.launch() as key:
            ClipprobeCLI(
                CLIPModule,
                ShardDataModule,
                args=[subcommand, *argv],
                save_config_callback=RunConfig,
                save_config_kwargs={"overwrite": True, "save_to_log_dir": False},  # one run per folder: runfolder
                parser_kwargs={"exit_on_error": False, subcommand: {"exit_on_error": False}},
                seed_everything_default=0,
                trainer_defaults={"enable_autolog_hparams": False, "callbacks": [CSVResume()]},  # RunConfig logs
                launch=key,
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
