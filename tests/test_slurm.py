"""SLURM: the requeue rules (fast), a requeue under a simulated SLURM task, and end to end on a real
single-node SLURM (slurm/local: installed and started here when missing, and then stopped again): a
2-task DDP fit, preemption by SIGUSR1 with requeue and resume, an eval array job; and torchrun with two
processes, without SLURM."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from clipprobe.cli import main
from clipprobe.data.corpus import CorpusConfig, generate_corpus
from clipprobe.training import slurm

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
LOCAL = ROOT / "slurm" / "local"
FAKE_SLURM = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
              "SLURM_JOB_NAME": "clipprobe-fit", "SLURM_NODELIST": "localhost", "SLURM_LOCALID": "0",
              "SLURM_NODEID": "0"}  # fmt: skip
TRAIN = ["--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=20", ROOT / "slurm/train.sbatch"]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def write_recipe(path: Path, corpus: str, run: Path, steps: int, devices: int = 2, every: int = 10) -> Path:
    """The tiny recipe, shrunk: batch 8 of the 32 px corpus, CPU DDP (gloo) on ``devices`` processes,
    the recipe's loggers (W&B offline, CSV flushed every step), tor probed on the COCO names every ``every``
    steps, checkpoints every ``every`` steps."""
    cfg = yaml.safe_load((ROOT / "configs/fit/tiny-synthetic.yaml").read_text())
    cfg["model"]["warmup_steps"] = 2
    cfg["data"].update(train_data=corpus, batch_size=8, num_workers=0, shuffle_buffer=16)
    cfg["trainer"].update(default_root_dir=str(run), accelerator="cpu", devices=devices, max_steps=steps,
                          strategy="ddp" if devices > 1 else "auto", log_every_n_steps=1, val_check_interval=None,
                          enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    for logger in cfg["trainer"]["logger"]:
        if logger["class_path"].endswith("CSVLogger"):
            logger["init_args"] = {"flush_logs_every_n_steps": 1}
    for callback in cfg["trainer"]["callbacks"]:
        if callback["class_path"].endswith("BiasProbeCallback"):
            callback["init_args"] = {"probes": ["tor"], "probe_sets": [], "vocab": "coco", "every_n_steps": every,
                                     "options": {"tor": {"num_captions": 20}}}  # fmt: skip
    cfg["checkpoint"].update(every_n_train_steps=every, save_top_k=2)
    path.write_text(yaml.safe_dump(cfg))
    return path


def loss_steps(run: Path) -> list[int]:
    """The ``step`` of every training row of the run's metrics.csv, in file order."""
    with (run / "metrics.csv").open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def probe_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "probes.jsonl").read_text().splitlines()]


def wandb_runs(run: Path) -> list[tuple[str, list[int]]]:
    """(run id, steps with a train/loss) of each offline W&B run folder, read with wandb's own reader."""
    found = []
    for folder in sorted((run / "wandb").glob("offline-run-*")):
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)],
                             capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
        records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        (start,) = [r["run"] for r in records if r["type"] == "run"]
        items = [r["history"]["item"] for r in records if r["type"] == "history"]
        found.append((start["run_id"], [int(h["trainer/global_step"]) for h in items if "train/loss" in h]))
    return found


def last_checkpoint(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """128 samples of 1-3 objects at 32 px in 4 shards."""
    out = tmp_path_factory.mktemp("corpus") / "c"
    generate_corpus(CorpusConfig(128, (1, 2, 3), "size_first", 1.0, 0.0, 32, 32, 0, 90), out, workers=1,
                    progress=False)  # fmt: skip
    return str(out / "{00000..00003}.tar")


@pytest.fixture
def no_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)


@pytest.fixture
def fake_slurm(no_slurm: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of task 0 of a 1-task SLURM job (no SLURM needed)."""
    for key, value in FAKE_SLURM.items():
        monkeypatch.setenv(key, value)


# -- the rules, without SLURM ------------------------------------------------------------------


def test_trainer_kwargs_only_under_slurm(no_slurm: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    assert slurm.trainer_kwargs({"callbacks": []}, fit=True) == {}  # plain `clipprobe fit`, torchrun
    for key, value in FAKE_SLURM.items():
        monkeypatch.setenv(key, value)
    mine = object()
    kwargs = slurm.trainer_kwargs({"callbacks": [mine]}, fit=True)
    (env,) = kwargs["plugins"]
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue  # no checkpoint inside a signal handler
    assert kwargs["callbacks"][0] is mine and isinstance(kwargs["callbacks"][1], slurm.SlurmRequeue)
    assert "callbacks" not in slurm.trainer_kwargs({}, fit=False)
    assert slurm.trainer_kwargs({"plugins": LightningEnvironment()}, fit=True) == {}  # the config chose
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: Lightning ignores SLURM
    assert slurm.trainer_kwargs({}, fit=True) == {}


def test_resume_path_picks_the_newest_checkpoint(fake_slurm: None, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()

    def touch(path: Path, mtime: int) -> None:
        torch.save({"global_step": 0}, path)  # an intact checkpoint (empty files count as damaged)
        os.utime(path, (mtime, mtime))

    last = str(ckpts / "last.ckpt")
    assert slurm.resume_path(tmp_path, ckpts) is None  # nothing saved yet
    touch(ckpts / "last.ckpt", 100)
    assert slurm.resume_path(tmp_path, ckpts) is None  # a new job starts afresh, as plain `clipprobe fit`
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert slurm.resume_path(tmp_path, ckpts) == last  # requeued by SLURM itself (SIGTERM, node failure)
    touch(tmp_path / "hpc_ckpt_2.ckpt", 200)
    touch(tmp_path / "hpc_ckpt_10.ckpt", 300)
    assert [p.name for p in slurm.hpc_checkpoints(tmp_path)] == ["hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt"]
    assert slurm.resume_path(tmp_path, ckpts) is None  # Lightning loads hpc_ckpt_10.ckpt itself
    touch(ckpts / "last.ckpt", 400)
    assert slurm.resume_path(tmp_path, ckpts) == last  # the requeue checkpoint is stale
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    assert slurm.resume_path(tmp_path, ckpts) == last  # a new job in an interrupted run's folder goes on
    monkeypatch.delenv("SLURM_NTASKS")
    assert slurm.resume_path(tmp_path, ckpts) is None  # not a SLURM task


def test_model_index_picks_one_model_per_array_task(tmp_path: Path) -> None:
    from clipprobe.errors import UserError
    from clipprobe.evaluation.jobs import model_specs

    models = tmp_path / "models.txt"
    models.write_text("# comment\nclipprobe-tiny\n\nclipprobe-small  # random\nclipprobe-tiny\n")
    names = [s.name for s in model_specs(None, None, [str(models)], None)]
    assert names == ["clipprobe-tiny", "clipprobe-small", "clipprobe-tiny"]  # comments and blank lines skipped
    (picked,) = model_specs(None, None, [str(models)], None, 1)
    assert (picked.name, picked.pretrained) == ("clipprobe-small", None)
    with pytest.raises(UserError, match="--model_index 3 is out of range: 3 model"):
        model_specs(None, None, [str(models)], None, 3)


@pytest.mark.slow
def test_requeue_under_simulated_slurm_resumes_exactly(fake_slurm: None, corpus: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """SIGUSR1 during step 5 of 12: requeue checkpoint, `scontrol requeue`, and a restart that ends with the
    weights of an uninterrupted run, every step logged once and one W&B run id."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(slurm, "_scontrol", lambda *a: calls.append(a) or subprocess.CompletedProcess(a, 0, "", ""))
    original = slurm.SlurmRequeue.on_train_batch_end

    def signal_in_step_5(self: slurm.SlurmRequeue, trainer: Any, *args: Any) -> None:
        if trainer.global_step == 5:
            os.kill(os.getpid(), signal.SIGUSR1)
        original(self, trainer, *args)

    handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}  # requeue() ignores SIGTERM
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run, one = tmp_path / "run", tmp_path / "one"
        recipe = write_recipe(tmp_path / "run.yaml", corpus, run, steps=12, devices=1, every=4)
        monkeypatch.setattr(slurm.SlurmRequeue, "on_train_batch_end", signal_in_step_5)
        main(["fit", "--config", str(recipe)])
        assert calls == [("requeue", "4242")] and last_checkpoint(run)["global_step"] == 4
        (hpc,) = slurm.hpc_checkpoints(run)
        assert torch.load(hpc, map_location="cpu", weights_only=False)["global_step"] == 5
        assert loss_steps(run) == list(range(5))
        monkeypatch.setattr(slurm.SlurmRequeue, "on_train_batch_end", original)
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        main(["fit", "--config", str(recipe)])  # the requeued job
        main(["fit", "--config", str(write_recipe(tmp_path / "one.yaml", corpus, one, steps=12, devices=1, every=4))])
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        torch.set_num_threads(threads)
    resumed, straight = last_checkpoint(run), last_checkpoint(one)
    assert resumed["global_step"] == 12 and resumed["clipprobe"]["samples_seen"] == 96
    for key, value in straight["state_dict"].items():
        assert torch.allclose(value, resumed["state_dict"][key], rtol=1e-5, atol=1e-6), key
    assert loss_steps(run) == list(range(12)) and probe_steps(run) == [0, 4, 8, 12]
    assert not slurm.hpc_checkpoints(run) and len(calls) == 1
    ids = [rid for rid, _ in wandb_runs(run)]
    assert ids == ["4242", "4242"]


# -- a real SLURM ------------------------------------------------------------------------------


def sinfo_up() -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and bool(re.search(r"^(idle|mixed|allocated)", out.stdout, re.M))


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """The local SLURM: installed if missing, started if not running (and then stopped at the end)."""
    installed = subprocess.run([LOCAL / "install.sh"], capture_output=True, text=True)
    if installed.returncode != 0:
        pytest.skip(f"no SLURM here: {(installed.stderr or installed.stdout).strip()[-300:]}")
    up = sinfo_up()
    if not up:
        if os.geteuid() != 0:
            pytest.skip("SLURM is installed but not running, and starting it (slurm/local/start.sh) needs root")
        started = subprocess.run([LOCAL / "start.sh"], capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, f"slurm/local/start.sh failed:\n{started.stdout}\n{started.stderr}"
    yield
    if not up:
        subprocess.run([LOCAL / "stop.sh"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def job_env() -> dict[str, str]:
    """The environment jobs inherit: this venv first, one torch thread, W&B offline, no SLURM variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PYTEST_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", WANDB_MODE="offline",
               PYTHONUNBUFFERED="1")  # fmt: skip
    return env


def sbatch(env: dict[str, str], cwd: Path, *args: Any) -> str:
    out = subprocess.run(["sbatch", "--parsable", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def jobs(job: str) -> list[dict[str, str]]:
    """``scontrol show job`` as one dict per job (per task for an array)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, check=True)
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.stdout.splitlines() if line.strip()]


def ended(infos: list[dict[str, str]]) -> bool:
    return all(i["JobState"] in ENDED for i in infos)


def wait_for(job: str, done: Callable[[list[dict[str, str]]], bool], what: str = "the end",
             timeout: float = 600) -> list[dict[str, str]]:  # fmt: skip
    """Poll the job until ``done``; a guard against hangs (cancels the job), not a speed check."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = jobs(job)
        if done(infos):
            return infos
        time.sleep(1)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job} did not reach {what} within {timeout} s: {infos}")


@pytest.fixture(scope="module")
def ddp_job(cluster: None, corpus: str, job_env: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:  # fmt: skip
    """A 2-task DDP fit of the shrunk tiny recipe, 12 steps, run to its end: (job id, run folder, job log)."""
    work = tmp_path_factory.mktemp("ddp")
    job = sbatch(job_env, work, *TRAIN, write_recipe(work / "recipe.yaml", corpus, work / "run", steps=12, every=6))
    wait_for(job, ended)
    return job, work / "run", work / f"clipprobe-fit-{job}.out"


@pytest.mark.slow
def test_ddp_job_completes_on_two_ranks(ddp_job: tuple[str, Path, Path]) -> None:
    job, run, log = ddp_job
    (info,) = jobs(job)
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), text[-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    last = last_checkpoint(run)
    assert last["global_step"] == 12 and last["clipprobe"]["samples_seen"] == 12 * 8 * 2  # world size 2
    assert (run / "checkpoints" / "step=00000012").is_dir() and loss_steps(run) == list(range(12))


@pytest.mark.slow
def test_preempted_job_is_requeued_and_resumes(cluster: None, corpus: str, job_env: dict[str, str],
                                               tmp_path: Path) -> None:  # fmt: skip
    steps, run = 60, tmp_path / "run"
    job = sbatch(job_env, tmp_path, *TRAIN, write_recipe(tmp_path / "recipe.yaml", corpus, run, steps, every=10))
    wait_for(job, lambda i: (run / "checkpoints" / "step=00000010.ckpt").is_file() or ended(i), "step 10")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    (info,) = wait_for(job, lambda i: i[0]["Restarts"] == "1" and i[0]["JobState"] != "COMPLETING" or ended(i),
                       "the requeue")  # fmt: skip
    if info["JobState"] == "PENDING":  # SLURM holds a requeued job cred_expire + 1 s (120 s unless start.sh set it)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
    (info,) = wait_for(job, ended)
    text = (tmp_path / f"clipprobe-fit-{job}.out").read_text()
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "1", "0:0"), text[-3000:]
    saved = int(re.search(rf"requeued SLURM job {job} at step (\d+)", text).group(1))
    assert 10 <= saved < steps
    restored = re.findall(r"Restoring states from the checkpoint path at (\S+)", text)
    assert len(restored) == 1 and Path(restored[0]).name in ("hpc_ckpt_1.ckpt", "last.ckpt")
    last = last_checkpoint(run)
    assert last["global_step"] == steps and last["clipprobe"]["samples_seen"] == steps * 16
    assert loss_steps(run) == list(range(steps))  # each step once: resumed at the saved step, not replayed
    assert probe_steps(run) == list(range(0, steps + 1, 10))
    (first_id, first), (second_id, second) = wandb_runs(run)
    assert first_id == second_id == job and first + second == list(range(steps))
    assert not slurm.hpc_checkpoints(run)


@pytest.mark.slow
def test_eval_array_writes_one_record_per_model(ddp_job: tuple[str, Path, Path], job_env: dict[str, str],
                                              tmp_path: Path) -> None:  # fmt: skip
    _, run, _ = ddp_job
    models = tmp_path / "models.txt"
    models.write_text(f"# name pretrained\nclipprobe-tiny\n\nclipprobe-tiny {run}/checkpoints/last.ckpt  # DDP run\n"
                      f"clipprobe-tiny {run}/checkpoints/step=00000006.ckpt\n")  # fmt: skip
    out = tmp_path / "results"
    job = sbatch(job_env, tmp_path, "--array=0-2", "--gpus=0", "--cpus-per-task=1", "--time=10",
                 ROOT / "slurm/eval.sbatch", models, "--probes", "tor", "--vocab", "coco", "--out", out,
                 "--options", json.dumps({"tor": {"num_captions": 20}}), "--device", "cpu", "--progress", "false")  # fmt: skip
    infos = wait_for(job, lambda i: len(i) == 3 and ended(i))
    logs = {i["ArrayTaskId"]: (tmp_path / f"clipprobe-eval-{job}_{i['ArrayTaskId']}.out").read_text() for i in infos}
    assert [i["JobState"] for i in infos] == ["COMPLETED"] * 3, logs
    results = {p.name.rsplit("__", 1)[0]: json.loads(p.read_text()) for p in out.glob("*.jsonl")}  # one record each
    assert sorted(results) == [f"clipprobe-tiny__{w}__vocab-coco__tor" for w in ("last", "random", "step=00000006")]
    assert results["clipprobe-tiny__last__vocab-coco__tor"]["step"] == 12
    assert all(sum(f"__{w}__" in log for log in logs.values()) == 1 for w in ("last", "random", "step=00000006"))


@pytest.mark.slow
def test_torchrun_two_processes_without_slurm(corpus: str, job_env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "recipe.yaml", corpus, run, steps=6, every=3)
    out = subprocess.run([BIN / "torchrun", "--standalone", "--nproc_per_node", "2", BIN / "clipprobe", "fit",
                          "--config", recipe], env=job_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    last = last_checkpoint(run)
    assert (
        last["global_step"] == 6 and last["clipprobe"]["samples_seen"] == 6 * 16 and loss_steps(run) == list(range(6))
    )


@pytest.mark.slow
def test_experiment_array_then_views(cluster: None, job_env: dict[str, str], tmp_path: Path) -> None:
    """slurm/experiment.sbatch: a 2-condition x 2-seed experiment as a 4-task array sharing one --work (corpora and
    probe set generated once, under the lock), then the same script without --array writes the views, training
    nothing again."""
    recipe = ROOT / "configs" / "fit" / "tiny-synthetic.yaml"
    fit_args = ["--data.augment", "false", "--data.num_workers", "0", "--data.shuffle_buffer", "16",
                "--model.warmup_steps", "2", "--trainer.accelerator", "cpu", "--trainer.val_check_interval", "null",
                "--trainer.enable_model_summary", "false"]  # fmt: skip
    config = tmp_path / "experiment.yaml"
    config.write_text(json.dumps({
        "out": str(tmp_path / "out"), "conditions": ["random", {"name": "no_pos", "fit": {"model.text_pos_embed": "none"}}],
        "seeds": [0, 1], "recipe": str(recipe), "fit_args": fit_args, "num_samples": 48, "heldout_samples": 20,
        "steps": 4, "batch_size": 12, "every": 2, "tor_n": [2], "tor_captions": 20, "probe_scenes": 4,
        "retrieval_batch": 10, "plot_n": 2, "threads": 1, "name": "toy"}))  # fmt: skip
    work = tmp_path / "work"
    array = sbatch(job_env, tmp_path, "--array=0-3", "--cpus-per-task=1", "--time=10",
                   ROOT / "slurm/experiment.sbatch", config, "--work", work)  # fmt: skip
    infos = wait_for(array, lambda i: len(i) == 4 and ended(i))
    logs = {i["ArrayTaskId"]: (tmp_path / f"clipprobe-experiment-{array}_{i['ArrayTaskId']}.out").read_text()
            for i in infos}  # fmt: skip
    assert [i["JobState"] for i in infos] == ["COMPLETED"] * 4, logs
    assert not (tmp_path / "out").exists()
    done = {p.parent.parent.relative_to(work / "runs").as_posix(): p.stat().st_mtime_ns
            for p in (work / "runs").glob("*/*/checkpoints/last.ckpt")}  # fmt: skip
    assert sorted(done) == ["no_pos/seed0", "no_pos/seed1", "random/seed0", "random/seed1"]
    assert sorted(p.name for p in (work / "corpora").iterdir() if p.is_dir()) == [
        "random-s0", "random-s0-heldout", "random-s1", "random-s1-heldout"]  # fmt: skip
    views = sbatch(job_env, tmp_path, "--cpus-per-task=1", "--time=10", ROOT / "slurm/experiment.sbatch", config,
                   "--work", work)  # fmt: skip
    (info,) = wait_for(views, ended)
    assert info["JobState"] == "COMPLETED"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["records.jsonl", "results.md", "timing.json",
                                                                   "toy.png"]  # fmt: skip
    assert {p.parent.parent.relative_to(work / "runs").as_posix(): p.stat().st_mtime_ns
            for p in (work / "runs").glob("*/*/checkpoints/last.ckpt")} == done  # fmt: skip
    assert "| no_pos | 48 |" in (tmp_path / "out" / "results.md").read_text()
