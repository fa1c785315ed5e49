"""SLURM: requeue a training job on SIGUSR1 at a step boundary, and resume it where it stopped.

``sbatch slurm/train.sbatch RECIPE`` asks SLURM for SIGUSR1 90 s before the time limit
(``--signal=SIGUSR1@90``); ``scancel --signal=USR1 JOB`` sends it by hand. Then:

1. The signal handler only sets a flag. Lightning's own ``SLURMEnvironment(auto_requeue=True)`` saves
   the checkpoint inside the handler, that is at any bytecode of a step: under DDP it enters a barrier
   in the middle of other collectives, and steps that end after the save are logged a second time once
   the job resumes (Lightning #21406). So under SLURM the Trainer gets ``SLURMEnvironment(auto_requeue=
   False)`` and :class:`SlurmRequeue` does the work in ordinary code.
2. At the end of each optimizer step all ranks agree whether any of them got the signal (one
   all-reduce of a flag per step); if so they save ``<default_root_dir>/hpc_ckpt_<n>.ckpt``
   (Lightning's requeue checkpoint, where it would save a step checkpoint), finish the step (its
   metrics, validation and probes are logged) and raise :class:`Requeued` before the next one;
   ``clipprobe fit`` then runs ``scontrol requeue`` on rank 0 (:func:`requeue`) and exits.
3. The requeued job keeps its job id (so its W&B run) and resumes by itself: given no ``--ckpt_path``,
   Lightning loads the newest ``hpc_ckpt_<n>.ckpt``. :func:`resume_path` picks ``last.ckpt`` instead
   when that is newer, or when SLURM itself requeued the job (preemption by SIGTERM, node failure) and
   no requeue checkpoint was written.
4. A fit that completes removes its requeue checkpoints, so that a stale one is never resumed; a later
   run in the same folder is then refused like any other (one run per folder,
   :mod:`clipprobe.training.runfolder`) unless it resumes with ``--ckpt_path last``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L

from clipprobe.errors import UserError
from clipprobe.models.export import intact_checkpoint, resume_candidates

HPC_NAME = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")  # what Lightning resumes from by itself under SLURM
_signalled = threading.Event()  # set by the handler; one per process (DataLoader workers get a copy)


class Requeued(Exception):
    """Raised on every rank once the requeue checkpoint is saved; ``clipprobe fit`` then requeues the job.

    Args:
        checkpoint: The requeue checkpoint written.
        step: The global step it holds.
    """

    def __init__(self, checkpoint: str, step: int) -> None:
        super().__init__(f"requeue requested; saved step {step} to {checkpoint}")
        self.checkpoint, self.step = checkpoint, step


def on_slurm() -> bool:
    """Whether this process is a SLURM task that Lightning treats as such (not an interactive shell)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def _flag(signum: int, frame: FrameType | None) -> None:
    _signalled.set()


def catch_requeue_signal(signum: int = signal.SIGUSR1) -> None:
    """Under SLURM, let the requeue signal set a flag from now on (its default action kills the task)."""
    if on_slurm() and threading.current_thread() is threading.main_thread():
        signal.signal(signum, _flag)


def hpc_checkpoints(root_dir: str | os.PathLike) -> list[Path]:
    """Requeue checkpoints in a run folder, oldest (lowest number) first."""
    root = Path(root_dir)
    found = [(int(m.group(1)), p) for p in root.glob("hpc_ckpt_*.ckpt") if (m := HPC_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


class SlurmRequeue(L.Callback):
    """Save a requeue checkpoint and stop at the first step boundary after the requeue signal (module doc).

    Args:
        signum: The signal that asks for a requeue (``--signal`` in the sbatch file).
    """

    def __init__(self, signum: int = signal.SIGUSR1) -> None:
        self.signum = signum
        self._previous: Any = None
        self._stop: Requeued | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Install the flag-setting handler for the fit (Lightning's own is off: ``auto_requeue=False``)."""
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, _flag)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Put the previous handler back."""
        if stage == "fit" and self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        """Every rank, every optimizer step: save if any rank got the signal (ranks may get it in different steps).

        Saved here, the checkpoint is what Lightning's own step checkpoints are: on resume the loops go on
        with the next step, and do not repeat this step's validation.
        """
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # inside an accumulation window: only whole optimizer steps are resumable
        if not trainer.strategy.reduce_boolean_decision(_signalled.is_set(), all=False):
            return
        old = hpc_checkpoints(trainer.default_root_dir)
        number = int(HPC_NAME.match(old[-1].name).group(1)) + 1 if old else 1
        path = Path(trainer.default_root_dir) / f"hpc_ckpt_{number}.ckpt"
        # Written under a temporary name in the run folder, then renamed: never a cut requeue checkpoint. The name
        # must not hold "hpc_ckpt_": Lightning takes the digits of any such file name for a requeue checkpoint.
        partial = path.with_name(f".saving-requeue-{number}.ckpt")
        try:
            trainer.save_checkpoint(partial, weights_only=False)  # all ranks (rank 0 writes), then a barrier
            if trainer.is_global_zero:
                with open(partial, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(partial, path)
                for stale in old:
                    stale.unlink(missing_ok=True)
        finally:
            if trainer.is_global_zero:
                partial.unlink(missing_ok=True)
        self._stop = Requeued(str(path), trainer.global_step)
        _signalled.clear()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        """Stop before the step after the save, once that step's metrics, validation and probes are logged."""
        if self._stop is not None:
            raise self._stop

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The fit is complete: its requeue checkpoints are not needed any more (module doc, point 4)."""
        if trainer.is_global_zero:
            for path in hpc_checkpoints(trainer.default_root_dir):
                path.unlink(missing_ok=True)


def trainer_kwargs(config: Any, fit: bool) -> dict[str, Any]:
    """Trainer arguments to add under SLURM (none elsewhere, or when the config names a cluster environment).

    Args:
        config: The trainer's instantiated configuration (``plugins``, ``callbacks`` are read).
        fit: Whether the Trainer will fit (then :class:`SlurmRequeue` is added to the callbacks).
    """
    if not on_slurm():
        return {}
    from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

    def as_list(value: Any) -> list[Any]:
        return list(value) if isinstance(value, list | tuple) else [] if value is None else [value]

    plugins = as_list(config.get("plugins"))
    if any(isinstance(p, ClusterEnvironment) for p in plugins):
        return {}
    kwargs: dict[str, Any] = {"plugins": [*plugins, SLURMEnvironment(auto_requeue=False)]}
    if fit:
        kwargs["callbacks"] = [*as_list(config.get("callbacks")), SlurmRequeue()]
    return kwargs


def resume_path(root_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike | None) -> str | None:
    """The ``ckpt_path`` for a SLURM fit given none: ``last.ckpt`` where it should win (module doc, point 3).

    The checkpoint chosen is checked first (:func:`clipprobe.models.export.intact_checkpoint`): a damaged one is
    passed over, with a one-line warning, for the newest intact checkpoint of the run (requeue checkpoints,
    ``last.ckpt`` and the step checkpoints, newest file first).

    Returns:
        None to let Lightning decide (an intact newest requeue checkpoint, or a fresh start), else the checkpoint.

    Raises:
        UserError: no checkpoint of the run is intact.
    """
    if not on_slurm():
        return None
    hpc = hpc_checkpoints(root_dir)
    last = Path(checkpoint_dir) / "last.ckpt" if checkpoint_dir else None
    restarted = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    if last is None or not last.is_file():
        chosen = hpc[-1] if hpc else None  # what Lightning loads by itself
    elif hpc and hpc[-1].stat().st_mtime >= last.stat().st_mtime:
        chosen = hpc[-1]
    else:
        chosen = last if hpc or restarted else None
    if chosen is None:
        return None
    others = [p for p in [*hpc, *resume_candidates(checkpoint_dir or root_dir)] if p != chosen]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    found = intact_checkpoint([chosen, *others], root_dir)
    return None if hpc and found == hpc[-1] else str(found)


def job_id() -> str:
    """This job's id as ``scontrol`` takes it (``<array job>_<task>`` in an array)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def _scontrol(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True)


def requeue(stop: Requeued) -> None:
    """After :class:`Requeued`: rank 0 flushes W&B and asks SLURM to requeue this job; other ranks just return.

    Raises:
        UserError: ``scontrol requeue`` failed (e.g. the job was submitted with ``--no-requeue``).
    """
    if int(os.environ.get("SLURM_PROCID") or 0) != 0:
        return
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()  # before SLURM's SIGTERM reaches W&B's service process
    # SLURM answers a requeue with SIGTERM to the whole job; this process has nothing left to do but exit.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    job = job_id()
    done = _scontrol("requeue", job)
    if done.returncode != 0:
        raise UserError(f"'scontrol requeue {job}' failed ({(done.stderr or done.stdout).strip()[:200]}); "
                        f"step {stop.step} is saved in {stop.checkpoint}: submit the same job again to resume")  # fmt: skip
    print(f"clipprobe: requeued SLURM job {job} at step {stop.step}; it resumes from {stop.checkpoint}",
          file=sys.stderr, flush=True)  # fmt: skip
