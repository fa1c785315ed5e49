"""Checkpointing of `clipprobe fit` (clipprobe.models.export.ExportingCheckpoint): the folder layout and pruning,
atomic saves, exact resume from the step-0 and end-of-training checkpoints, and resuming past a damaged
checkpoint (``--ckpt_path last`` and the SLURM requeue path); a 2-process DDP fit (slow)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from clipprobe.cli import main
from clipprobe.errors import UserError
from clipprobe.models.export import ExportingCheckpoint, intact_checkpoint, last_checkpoint
from clipprobe.models.load import checkpoint_problem
from clipprobe.training import slurm

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("one_thread")]
ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "configs" / "fit" / "tiny-synthetic.yaml"
TINY = [
    "--model.model_name", "clipprobe-tiny", "--model.compile", "false", "--model.grad_checkpointing", "false",
    "--model.warmup_steps", "2", "--model.schedule_steps", "8",
    "--data.num_workers", "0", "--data.val_data", "null", "--data.shuffle_buffer", "16", "--data.batch_size", "4",
    "--data.num_samples", "24", "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
    "--trainer.strategy", "auto", "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.logger", "false",
    "--trainer.callbacks", "clipprobe.training.fit.StepTimer",  # the probe callback: tests/test_exports.py
]  # fmt: skip


def fit(run: Path, data: str, *args: str) -> Path:
    """``clipprobe fit`` of the tiny recipe in ``run``; return its checkpoints folder."""
    assert main(["fit", "--config", str(RECIPE), *TINY, "--data.train_data", data,
                 "--trainer.default_root_dir", str(run), *args]) == 0  # fmt: skip
    return run / "checkpoints"


def listing(folder: Path) -> list[str]:
    """Every name in the folder, hidden ones included, folders with their files."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def names(ckpts: tuple[int, ...], exports: tuple[int, ...]) -> list[str]:
    """What a checkpoints folder should hold: last.ckpt, these step checkpoints and these export folders."""
    out = ["last.ckpt", *[f"step={s:08d}.ckpt" for s in ckpts]]
    for stem in [f"step={s:08d}" for s in exports]:
        out += [stem, f"{stem}/clipprobe.json", f"{stem}/open_clip_config.json", f"{stem}/open_clip_pytorch_model.bin"]
    return sorted(out)


def test_layout_keeps_every_step_and_prunes_ckpt_files_only(tmp_path: Path, corpus: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Step 0, every 2 steps and the end (5, off the cadence); save_top_k 2 prunes the .ckpt files, the exports stay;
    last.ckpt is the newest step checkpoint (one file, two names); no temporary is left. ``--ckpt_path last`` in a
    folder without checkpoints says so in one line and starts from scratch."""
    folder = fit(tmp_path / "run", corpus, "--trainer.max_steps", "5", "--checkpoint.every_n_train_steps", "2",
                 "--checkpoint.save_top_k", "2", "--checkpoint.keep_exports", "-1", "--ckpt_path", "last")  # fmt: skip
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("clipprobe: warning:")]
    assert warning == [f"clipprobe: warning: --ckpt_path last: no checkpoint in {folder} yet; training starts from "
                       "scratch"]  # fmt: skip
    assert listing(folder) == names(ckpts=(4, 5), exports=(0, 2, 4, 5))
    assert (folder / "last.ckpt").samefile(folder / "step=00000005.ckpt")
    assert [ckpt(folder / f"step={s:08d}.ckpt")["global_step"] for s in (4, 5)] == [4, 5]
    assert ckpt(folder / "last.ckpt")["clipprobe"]["samples_seen"] == 20


def test_recipes_keep_the_probe_cadence(tmp_path: Path) -> None:
    """Every recipe checkpoints at its probe callback's cadence and keeps every export."""
    for recipe in sorted((ROOT / "configs" / "fit").glob("*.yaml")):
        cfg = yaml.safe_load(recipe.read_text())
        (probe,) = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("BiasProbeCallback")]
        assert cfg["checkpoint"]["every_n_train_steps"] == probe["init_args"]["every_n_steps"], recipe.name
        keep = cfg["checkpoint"].get("keep_exports", cfg["checkpoint"]["save_top_k"])
        assert keep == -1, recipe.name


def test_resume_from_step_0_and_from_the_end_equals_one_run(tmp_path: Path, corpus: str) -> None:
    """The extra checkpoints (step 0, the end off the cadence) resume exactly: 5 steps in one run == 3 steps, then
    --ckpt_path last (step 3, saved at the end) to 5 == from step=00000000.ckpt to 5."""
    every = ["--checkpoint.every_n_train_steps", "2"]
    one = fit(tmp_path / "one", corpus, *every, "--trainer.max_steps", "5")
    fit(tmp_path / "two", corpus, *every, "--trainer.max_steps", "3")
    assert ckpt(tmp_path / "two/checkpoints/last.ckpt")["global_step"] == 3
    two = fit(tmp_path / "two", corpus, *every, "--trainer.max_steps", "5", "--ckpt_path", "last")
    zero = fit(tmp_path / "zero", corpus, *every, "--trainer.max_steps", "5",
               "--ckpt_path", str(one / "step=00000000.ckpt"))  # fmt: skip
    straight = ckpt(one / "last.ckpt")
    for other in (ckpt(two / "last.ckpt"), ckpt(zero / "last.ckpt")):
        assert other["global_step"] == 5 and other["clipprobe"]["samples_seen"] == 20
        for key, value in straight["state_dict"].items():
            assert torch.allclose(value, other["state_dict"][key], rtol=1e-5, atol=1e-6), key


def test_a_failed_save_leaves_nothing_under_a_final_name(tmp_path: Path, corpus: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The disk fills while step 4 is written: the fit fails, step 4 has no file and last.ckpt is still step 2."""
    save = L.Trainer.save_checkpoint

    def disk_full_at_step_4(self: L.Trainer, filepath: str | Path, *args: object, **kwargs: object) -> None:
        if self.global_step < 4:
            return save(self, filepath, *args, **kwargs)
        Path(filepath).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(L.Trainer, "save_checkpoint", disk_full_at_step_4)
    with pytest.raises((OSError, SystemExit)):  # SystemExit: the CLI's one-line message for a full disk
        fit(tmp_path / "run", corpus, "--trainer.max_steps", "6", "--checkpoint.every_n_train_steps", "2")
    folder = tmp_path / "run" / "checkpoints"
    assert listing(folder) == names(ckpts=(0, 2), exports=(0, 2))
    assert ckpt(folder / "last.ckpt")["global_step"] == 2 and checkpoint_problem(folder / "last.ckpt") is None


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, corpus: str) -> Path:
    """A 4-step run checkpointed every 2 steps: step=0, 2, 4 and last.ckpt (= step 4)."""
    run = tmp_path_factory.mktemp("run") / "run"
    fit(run, corpus, "--trainer.max_steps", "4", "--checkpoint.every_n_train_steps", "2")
    return run


def copy_run(run: Path, to: Path) -> Path:
    subprocess.run(["cp", "-a", str(run), str(to)], check=True)  # -a keeps last.ckpt a hard link of step 4
    return to / "checkpoints"


def cut(path: Path) -> None:
    """Truncate in place, as a copy or a disk-full write would leave it."""
    data = path.read_bytes()
    with open(path, "r+b") as f:
        f.truncate(len(data) // 2)


def test_damaged_checkpoints_are_found(tmp_path: Path, run: Path) -> None:
    folder = copy_run(run, tmp_path / "run")
    assert checkpoint_problem(folder / "last.ckpt") is None
    flipped = tmp_path / "flipped.ckpt"
    data = bytearray((folder / "step=00000002.ckpt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a tensor: torch.load alone does not notice
    flipped.write_bytes(bytes(data))
    assert (checkpoint_problem(flipped) or "").endswith("fails its CRC-32 check")
    cut(folder / "step=00000000.ckpt")
    assert (
        checkpoint_problem(folder / "step=00000000.ckpt")
        == "the zip archive is cut short: no central directory at its end"
    )
    (tmp_path / "empty.ckpt").write_bytes(b"")
    assert checkpoint_problem(tmp_path / "empty.ckpt") == "the file is empty"


def test_ckpt_path_last_resumes_from_the_newest_intact_checkpoint(
    tmp_path: Path, run: Path, corpus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_run(run, tmp_path / "run")
    cut(folder / "last.ckpt")  # and step=00000004.ckpt with it: one file
    capsys.readouterr()
    assert last_checkpoint(folder) == str(folder / "step=00000002.ckpt")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"clipprobe: warning: checkpoint {folder / 'last.ckpt'} is damaged ("
    )
    assert err.endswith(f"resuming from {folder / 'step=00000002.ckpt'}, the newest intact checkpoint\n")
    fit(tmp_path / "run", corpus, "--trainer.max_steps", "6", "--checkpoint.every_n_train_steps", "2",
        "--ckpt_path", "last")  # fmt: skip
    assert ckpt(folder / "last.ckpt")["global_step"] == 6
    assert checkpoint_problem(folder / "step=00000004.ckpt") is None  # step 4 trained again and saved whole


def test_no_intact_checkpoint_is_one_line_error(tmp_path: Path, run: Path, corpus: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    folder = copy_run(run, tmp_path / "run")
    for name in ("last.ckpt", "step=00000002.ckpt", "step=00000000.ckpt"):
        cut(folder / name)
    with pytest.raises(SystemExit) as e:
        fit(tmp_path / "run", corpus, "--trainer.max_steps", "6", "--ckpt_path", "last")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"clipprobe: error: no intact checkpoint to resume from: {folder / 'last.ckpt'} is damaged (")
    assert f"and the 3 other checkpoint(s) in {folder} are damaged too; copy" in err


def test_slurm_requeue_passes_over_a_damaged_requeue_checkpoint(
    tmp_path: Path, run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A requeued job: the newest requeue checkpoint is cut, so the newest intact file (last.ckpt) is resumed."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "clipprobe-fit", "SLURM_PROCID": "0",
                       "SLURM_RESTART_COUNT": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    folder = copy_run(run, tmp_path / "run")
    root = folder.parent
    hpc = root / "hpc_ckpt_1.ckpt"
    hpc.write_bytes((folder / "step=00000002.ckpt").read_bytes())
    os.utime(hpc, (os.path.getmtime(folder / "last.ckpt") + 10,) * 2)  # newer than last.ckpt: Lightning's pick
    assert slurm.resume_path(root, folder) is None  # intact: Lightning loads it itself
    cut(hpc)
    capsys.readouterr()
    assert slurm.resume_path(root, folder) == str(folder / "last.ckpt")
    err = capsys.readouterr().err
    assert err.startswith(f"clipprobe: warning: checkpoint {hpc} is damaged (") and err.count("\n") == 1
    cut(folder / "last.ckpt")  # and step 4 with it; step 2 is the newest intact one left
    assert slurm.resume_path(root, folder) == str(folder / "step=00000002.ckpt")
    with pytest.raises(UserError, match="no intact checkpoint to resume from"):
        intact_checkpoint([hpc, folder / "last.ckpt"], root)


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(UserError, match=r"must hold \{step\} once"):
        ExportingCheckpoint(filename="epoch={epoch}")
    with pytest.raises(UserError, match="save_top_k and --checkpoint.keep_exports take -1"):
        ExportingCheckpoint(save_top_k=-2)
    assert ExportingCheckpoint(filename="e{epoch}-s{step:04d}").name_pattern.match("e0-s0012")["step"] == "0012"


FULL_DISK_AT_STEP_2 = """
import errno
import sys

from lightning.pytorch.plugins.io import TorchCheckpointIO

save = TorchCheckpointIO.save_checkpoint  # Lightning calls it on rank 0 only


def full_disk(self, checkpoint, path, storage_options=None):
    if checkpoint["global_step"] >= 2:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return save(self, checkpoint, path, storage_options)


TorchCheckpointIO.save_checkpoint = full_disk
from clipprobe.cli import main

main(sys.argv[1:])
"""


def torchrun(tmp_path: Path, corpus: str, program: list[str], *args: str,
             timeout: float = 400) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The tiny recipe for 3 steps on 2 CPU processes (DDP, gloo) started by torchrun, checkpointed every 2 steps."""
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PYTEST_"))}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline")
    cmd = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", "2", *program, "fit", "--config",
           str(RECIPE), *TINY, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.train_data", corpus,
           "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "3",
           "--checkpoint.every_n_train_steps", "2", *args]  # fmt: skip
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_ddp_two_processes_save_once(tmp_path: Path, corpus: str) -> None:
    """Every rank takes part in each save (a collective), rank 0 alone writes, links, exports and prunes; the run
    ends (no rank left waiting) with the layout of one process."""
    bin_dir = Path(sys.executable).parent
    out = torchrun(tmp_path, corpus, [str(bin_dir / "clipprobe")], "--checkpoint.save_top_k", "1",
                   "--checkpoint.keep_exports", "-1")  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    folder = tmp_path / "run" / "checkpoints"
    assert listing(folder) == names(ckpts=(3,), exports=(0, 2, 3))
    last = ckpt(folder / "last.ckpt")
    assert last["global_step"] == 3 and last["clipprobe"]["samples_seen"] == 3 * 4 * 2


@pytest.mark.slow
def test_ddp_rank_0_failing_to_save_stops_every_rank(tmp_path: Path, corpus: str) -> None:
    """The disk fills while rank 0 writes step 2: rank 1 learns it and stops with an error of its own (it is not
    left waiting in a collective: torchrun would end it, srun need not), and nothing is left under a final name."""
    (tmp_path / "full_disk.py").write_text(FULL_DISK_AT_STEP_2)
    out = torchrun(tmp_path, corpus, [str(tmp_path / "full_disk.py")], timeout=200)  # a hang lasts 30 min
    log = out.stdout + out.stderr
    assert out.returncode != 0 and "No space left on device" in log, log[-3000:]
    assert "rank 0 could not save checkpoint step=00000002 in" in log, log[-3000:]  # rank 1's error
    assert listing(tmp_path / "run" / "checkpoints") == names(ckpts=(0,), exports=(0,))
