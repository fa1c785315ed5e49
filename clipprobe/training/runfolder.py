"""Run folders: one run per folder, and who the run is (``<run>/run.json``).

``clipprobe fit`` trains into ``--trainer.default_root_dir``. A folder that holds a previous run's
files (:data:`RUN_FILES`) is used only to continue that run: with ``--ckpt_path``, under a SLURM
requeue (requeue checkpoints in the folder), or by another process of the same launch (the ranks of
a DDP job, a requeued SLURM job step). Anything else is refused (:func:`choose_folder`), unless
``--run_dir new`` asks for the first free versioned folder ``<dir>-v2``, ``<dir>-v3``, ...

A launch is one start of ``clipprobe fit`` with all its processes: its key (:func:`launch_key`) is the
SLURM job and step (the same after a requeue), torchrun's run id, or one made up by the first process
and passed to the processes Lightning starts for DDP in :data:`LAUNCH_ENV`. Every process decides the
folder alone, before any of them can talk to the others, and all decide alike: a folder whose
``run.json`` records this launch is this launch's.

``run.json`` holds the run's id (the W&B run id outside SLURM, so a resumed run continues its W&B
run), its name (the W&B name unless the recipe sets one: recipe stem and start time), the recipe,
the creation time and the launch.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from clipprobe.errors import UserError
from clipprobe.fileio import atomic_write_json
from clipprobe.training.loggers import slurm_run_id
from clipprobe.training.slurm import hpc_checkpoints, on_slurm

RUN_FILE = "run.json"
RUN_FILES = ("config.yaml", "checkpoints", "metrics.csv", "probes.jsonl", "wandb", "perf.json")
LAUNCH_ENV = "CLIPPROBE_LAUNCH"  # set by clipprobe fit for the processes it starts; not a user setting
RUN_DIR_CHOICES = ("refuse", "new")
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"  # W&B run ids: 8 of these


@dataclass
class RunInfo:
    """Who a run is: the contents of ``<run>/run.json``.

    Args:
        id: Run id: the SLURM job id for a run started under SLURM, else 8 random lower-case letters and digits.
            It is the W&B run id outside SLURM; under SLURM the job id is (``loggers.slurm_run_id``).
        name: Run name, the W&B name unless the logger sets one.
        recipe: The first ``--config`` file, if any.
        created: When the run started (local time, ISO 8601).
        launch: The launch that started it (:func:`launch_key`).
    """

    id: str
    name: str
    recipe: str | None
    created: str
    launch: str | None

    @classmethod
    def new(cls, recipe: str | None, launch: str | None, run_id: str | None = None,
            now: datetime | None = None) -> RunInfo:  # fmt: skip
        """A fresh run: ``run_id`` or a random id, and the name ``<recipe stem>-<YYYYmmdd-HHMMSS>``."""
        now = now or datetime.now()
        stem = Path(recipe).stem if recipe else "clipprobe"
        run_id = run_id or "".join(secrets.choice(ID_ALPHABET) for _ in range(8))
        return cls(run_id, f"{stem}-{now:%Y%m%d-%H%M%S}", recipe, now.isoformat(timespec="seconds"), launch)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> RunInfo | None:
        """The run.json of a folder; None where there is none or it cannot be read (then a new one is made)."""
        try:
            data = json.loads((Path(folder) / RUN_FILE).read_text(encoding="utf-8"))
            return cls(str(data["id"]), str(data["name"]), data.get("recipe"), str(data.get("created", "")),
                       data.get("launch"))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, folder: str | os.PathLike) -> None:
        """Write ``<folder>/run.json`` (atomically)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(folder) / RUN_FILE, asdict(self))


def launch_key(env: Mapping[str, str] | None = None) -> str | None:
    """This launch's key, shared by all its processes: the SLURM job and step, torchrun's run id, or the key
    passed down in :data:`LAUNCH_ENV`; None for a process started on its own."""
    env = os.environ if env is None else env
    if env.get(LAUNCH_ENV):
        return env[LAUNCH_ENV]
    if on_slurm() and slurm_run_id(env):
        return f"slurm:{slurm_run_id(env)}.{env.get('SLURM_STEP_ID', '0')}"
    if env.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun:{env['TORCHELASTIC_RUN_ID']}"
    return None


@contextmanager
def launch(env: dict[str, str] | None = None) -> Iterator[str]:
    """This launch's key for the duration of a command: a new one for a process started on its own, passed
    to the processes it starts (Lightning's DDP launcher) in :data:`LAUNCH_ENV`, removed afterwards."""
    env = os.environ if env is None else env
    key = launch_key(env)
    if key is not None:
        yield key
        return
    key = f"local:{secrets.token_hex(6)}"
    env[LAUNCH_ENV] = key
    try:
        yield key
    finally:
        env.pop(LAUNCH_ENV, None)


def is_first_process(env: Mapping[str, str] | None = None) -> bool:
    """Whether this is the launch's first process (global rank 0), from the variables launchers set."""
    env = os.environ if env is None else env
    keys = ["RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"] + (["SLURM_PROCID"] if on_slurm() else [])
    return all(int(env.get(k) or 0) == 0 for k in keys)


def previous_run(folder: str | os.PathLike) -> list[str]:
    """The names of a previous run's files in ``folder`` (:data:`RUN_FILES`, requeue checkpoints)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return [name for name in RUN_FILES if (root / name).exists()] + [p.name for p in hpc_checkpoints(root)]


def belongs_to(folder: str | os.PathLike, launch: str | None) -> bool:
    """Whether ``folder``'s run.json records this launch (its own folder, made by its first process)."""
    info = RunInfo.read(folder)
    return launch is not None and info is not None and info.launch == launch


def check_not_file(folder: str | os.PathLike) -> None:
    """Raises:
    UserError: the run folder is a file (or anything but a folder)."""
    if Path(folder).exists() and not Path(folder).is_dir():
        raise UserError(f"run folder {folder} is a file, not a folder; pass another --trainer.default_root_dir")


def free_version(base: str | os.PathLike, launch: str | None) -> Path:
    """The folder ``--run_dir new`` gives: ``base`` if it holds no previous run, else the first ``base-vN``
    (N >= 2) that is this launch's own or holds nothing of another run."""
    base = Path(base)
    candidates = [base] + [base.with_name(f"{base.name}-v{n}") for n in range(2, 100_000)]
    for folder in candidates:
        check_not_file(folder)
        if belongs_to(folder, launch):
            return folder
        if not previous_run(folder) and RunInfo.read(folder) is None:
            return folder
    raise UserError(f"no free versioned folder for {base} (up to -v99999); pass another --trainer.default_root_dir")


def resumes_in(folder: str | os.PathLike, ckpt_path: str | None) -> bool:
    """Whether ``--ckpt_path`` continues the run in ``folder``: ``last``, ``hpc`` or a checkpoint inside it."""
    if not ckpt_path:
        return False
    if ckpt_path in ("last", "hpc"):
        return True
    return Path(folder).resolve() in Path(ckpt_path).resolve().parents


def choose_folder(base: str | os.PathLike, run_dir: str, ckpt_path: str | None, launch: str | None) -> Path:
    """The folder a fit trains into (module doc): ``base``, or with ``--run_dir new`` a free versioned one.

    Args:
        base: ``--trainer.default_root_dir``.
        run_dir: ``refuse`` or ``new`` (``--run_dir``).
        ckpt_path: ``--ckpt_path``: ``last``, ``hpc`` or a checkpoint in ``base`` continue the run there.
        launch: This launch's key.

    Raises:
        UserError: ``base`` is a file, or holds another run and neither resuming nor ``--run_dir new``.
    """
    if run_dir not in RUN_DIR_CHOICES:
        raise UserError(f"--run_dir {run_dir}: choose one of {', '.join(RUN_DIR_CHOICES)}")
    base = Path(base)
    check_not_file(base)
    found = previous_run(base)
    requeued = on_slurm() and bool(hpc_checkpoints(base))  # Lightning resumes from the newest by itself
    if not found or resumes_in(base, ckpt_path) or requeued or belongs_to(base, launch):
        return base
    if run_dir == "new":
        return free_version(base, launch)
    raise UserError(f"run folder {base} holds a previous run ({', '.join(found)}); pass --ckpt_path last to resume "
                    f"it, or --run_dir new to train in a fresh folder ({free_version(base, launch)})")  # fmt: skip


def say(message: str) -> None:
    """One line for the user on stderr (first process only): ``clipprobe: <message>``."""
    if is_first_process():
        print(f"clipprobe: {message}", file=sys.stderr, flush=True)
