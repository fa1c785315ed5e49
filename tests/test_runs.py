"""Never silently wrong, for training runs: a run folder belongs to one run; a resumed run continues the same
metrics.csv and W&B run, exactly after a kill; what a resume ignores is said and what ran is recorded; bad
checkpoints, options and data are one-line errors before anything starts; Ctrl-C exits with status 130."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import yaml

from clipprobe.cli import main

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("one_thread", "no_slurm")]
ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "configs" / "fit" / "tiny-synthetic.yaml"
TINY = [
    "--model.model_name", "clipprobe-tiny", "--model.warmup_steps", "2", "--model.schedule_steps", "8",
    "--data.num_workers", "0", "--data.val_data", "null", "--data.shuffle_buffer", "16", "--data.batch_size", "8",
    "--data.num_samples", "64", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--trainer.log_every_n_steps", "1", "--trainer.callbacks", "clipprobe.training.fit.StepTimer",
    "--checkpoint.every_n_train_steps", "2",
]  # fmt: skip
CSV_ONLY = ["--trainer.logger", "clipprobe.training.loggers.CSVLogger"]  # the recipe's CSV logger, no W&B


class Killed(Exception):
    """What Kill raises."""


class Kill(L.Callback):
    """Stops a fit before the step after ``step``, as a kill would (every row logged so far is on disk)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


@pytest.fixture
def no_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SLURM job around the test; W&B offline."""
    for key in [k for k in os.environ if k.startswith(("SLURM_", "WANDB_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")


def fit(run: Path, data: str, *args: str) -> None:
    """``clipprobe fit`` of the tiny recipe in ``run`` (its loggers: CSV and W&B offline, unless ``args`` say)."""
    assert main(["fit", "--config", str(RECIPE), *TINY, "--data.train_data", data,
                 "--trainer.default_root_dir", str(run), *args]) == 0  # fmt: skip


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``clipprobe argv``; it must exit with status 2 and one line on stderr: that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("clipprobe: error: "), err
    return err.strip()


def said(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The ``clipprobe: ...`` lines on stderr since the last call (not warnings)."""
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("clipprobe: ") and "warning" not in ln]


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus: str, one_thread: None) -> Path:
    """A 2-step run of the tiny recipe (lr 0.001, warmup 2), CSV logger only: checkpoints at steps 0 and 2."""
    run = tmp_path_factory.mktemp("trained") / "run"
    fit(run, corpus, "--trainer.max_steps", "2", *CSV_ONLY)
    return run


def copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# -- one run per folder -------------------------------------------------------------------------------


def test_a_run_folder_belongs_to_one_run(tmp_path: Path, corpus: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder with unrelated files only is used; a second fit into it is refused, naming the folder and both
    fixes, and leaves it as it was; --run_dir new trains in <dir>-v2, then <dir>-v3, and says so."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".gitkeep").write_text("")
    fit(run, corpus, "--trainer.max_steps", "2", *CSV_ONLY)
    assert [int(r["step"]) for r in rows(run) if r.get("train/loss")] == [0, 1]
    before = snapshot(run)

    err = fails(["fit", "--config", str(RECIPE), *TINY, "--data.train_data", corpus, "--trainer.max_steps", "3",
                 *CSV_ONLY, "--trainer.default_root_dir", str(run)], capsys)  # fmt: skip
    assert err == (f"clipprobe: error: run folder {run} holds a previous run (config.yaml, checkpoints, metrics.csv); "
                   f"pass --ckpt_path last to resume it, or --run_dir new to train in a fresh folder "
                   f"({run}-v2)")  # fmt: skip
    assert snapshot(run) == before  # config.yaml, metrics.csv and checkpoints untouched

    for version in (2, 3):
        capsys.readouterr()
        fit(run, corpus, "--trainer.max_steps", "1", *CSV_ONLY, "--run_dir", "new")
        fresh = tmp_path / f"run-v{version}"
        assert said(capsys) == [f"clipprobe: training in {fresh} ({run} holds a previous run)"]
        assert [int(r["step"]) for r in rows(fresh) if r.get("train/loss")] == [0]
        config = yaml.safe_load((fresh / "config.yaml").read_text())
        assert config["trainer"]["default_root_dir"] == str(fresh) and "run_dir" not in config
        assert sorted(p.name for p in (fresh / "checkpoints").glob("*.ckpt")) == ["last.ckpt", "step=00000000.ckpt",
                                                                                  "step=00000001.ckpt"]  # fmt: skip
    assert snapshot(run) == before


# -- exact resume: metrics.csv and W&B ---------------------------------------------------------------


def probe_callbacks(kill: int | None = None) -> str:
    """StepTimer, the probe callback (tor on the COCO names every 3 steps), and Kill at ``kill``."""
    callbacks: list[dict[str, Any]] = [
        {"class_path": "clipprobe.training.fit.StepTimer"},
        {"class_path": "clipprobe.training.callbacks.BiasProbeCallback", "init_args": {
            "probes": ["tor"], "probe_sets": [], "vocab": "coco", "every_n_steps": 3,
            "options": {"tor": {"num_captions": 20}}}},
    ]  # fmt: skip
    if kill is not None:
        callbacks.append({"class_path": f"{__name__}.Kill", "init_args": {"step": kill}})
    return json.dumps(callbacks)


def comparable(run: Path) -> list[tuple[int, dict[str, float]]]:
    """metrics.csv rows as (step, values), timings left out, in step order."""
    out = []
    for row in rows(run):
        values = {k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"
                  and not k.startswith("perf/") and k != "probe/seconds"}  # fmt: skip
        out.append((int(row["step"]), values))
    return sorted(out, key=lambda r: (r[0], sorted(r[1])))


def wandb_records(folder: Path) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)],
                         capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_kill_and_resume_continue_the_same_csv_and_wandb_run(tmp_path: Path, corpus: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """8 steps with validation and probes every 3 steps, checkpoints every 2; killed before step 7 (after the
    checkpoint at 6: the probes at step 6 logged before it, step 5's training row and validation after it, step 6's
    training row to be done again), with a row cut by the kill, and resumed with --ckpt_path last: metrics.csv holds
    every row of an uninterrupted run once, the W&B run id (run.json) and name are kept, 'clipprobe plot' reads it."""
    train, val = corpus.replace("00003}", "00002}"), corpus.replace("{00000..00003}", "00003")
    common = ["--data.train_data", train, "--data.val_data", val, "--trainer.val_check_interval", "3"]
    straight, run = tmp_path / "straight", tmp_path / "run"
    fit(straight, corpus, *common, "--trainer.max_steps", "8", "--trainer.callbacks", probe_callbacks(),
        "--trainer.logger.init_args.name", "my-name")  # fmt: skip
    with pytest.raises(Killed):
        fit(run, corpus, *common, "--trainer.max_steps", "8", "--trainer.callbacks", probe_callbacks(kill=7))
    info = json.loads((run / "run.json").read_text())
    assert re.fullmatch(r"[a-z0-9]{8}", info["id"]) and info["recipe"] == str(RECIPE)
    assert re.fullmatch(r"tiny-synthetic-\d{8}-\d{6}", info["name"])
    killed = [(int(r["step"]), bool(r.get("train/loss"))) for r in rows(run)]
    assert killed.count((6, True)) == 1 and killed.count((6, False)) == 1  # step 6's training row and probes
    with (run / "metrics.csv").open("a") as f:
        f.write("0.0,0,7,14.2")  # a row cut short by the kill
    fit(run, corpus, *common, "--trainer.max_steps", "8", "--trainer.callbacks", probe_callbacks(), "--ckpt_path",
        "last")  # fmt: skip

    expected, got = comparable(straight), comparable(run)
    assert [(s, sorted(v)) for s, v in got] == [(s, sorted(v)) for s, v in expected]  # no row lost or repeated
    for (_, a), (_, b) in zip(expected, got, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    steps = [s for s, v in got if "train/loss" in v]
    assert steps == list(range(8)) and [s for s, v in got if "val/loss" in v] == [2, 5]
    assert [s for s, v in got if "probe/vocab-coco/tor/n2/share_1_all" in v] == [0, 3, 6, 8]

    # The same W&B run: the id of run.json for both attempts, the name run.json gives (a recipe's name wins).
    assert json.loads((run / "run.json").read_text()) == info
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert [p.name.rsplit("-", 1)[1] for p in offline] == [info["id"], info["id"]]
    loggers = {lg["class_path"]: lg["init_args"] for lg in yaml.safe_load((run / "config.yaml").read_text())[
        "trainer"]["logger"]}  # fmt: skip
    assert loggers["clipprobe.training.loggers.WandbLogger"]["name"] == info["name"]
    assert loggers["clipprobe.training.loggers.WandbLogger"]["id"] == info["id"]
    theirs = yaml.safe_load((straight / "config.yaml").read_text())["trainer"]["logger"]
    assert theirs[1]["class_path"].endswith("WandbLogger") and theirs[1]["init_args"]["name"] == "my-name"
    records = wandb_records(offline[-1])
    (start,) = [r["run"] for r in records if r["type"] == "run"]
    assert (start["run_id"], start["display_name"]) == (info["id"], info["name"])
    config = {k: v for r in records if r["type"] == "config" for k, v in r["config"]["update"].items()}
    config.update(start.get("config", {}).get("update", {}))
    assert config["model"]["lr"] == 0.001 and config["trainer"]["max_steps"] == 8  # nested, as in config.yaml
    assert not {"lr", "model_name", "batch_size", "model/lr"} & set(config)  # logged once: no flat copy

    assert main(["plot", str(run), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "loss.png").is_file()


# -- resuming: the checkpoint's hyper-parameters ---------------------------------------------------------


@pytest.mark.parametrize("how", ["last", "file"])
def test_resume_says_which_options_the_checkpoint_overrides(tmp_path: Path, trained: Path, corpus: str, how: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """--model.lr and --model.warmup_steps given to a resume are named as ignored, one line each, and config.yaml
    records the checkpoint's values, which ran (the learning rate goes on from the checkpoint's schedule)."""
    run = copy(trained, tmp_path / "run")
    ckpt = "last" if how == "last" else str(run / "checkpoints" / "step=00000002.ckpt")
    capsys.readouterr()
    fit(run, corpus, "--trainer.max_steps", "3", *CSV_ONLY, "--ckpt_path", ckpt, "--model.lr", "0.5",
        "--model.warmup_steps", "7")  # fmt: skip
    assert said(capsys) == ["clipprobe: --model.lr 0.5 ignored: resuming uses the checkpoint's 0.001",
                            "clipprobe: --model.warmup_steps 7 ignored: resuming uses the checkpoint's 2"]  # fmt: skip
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert (model["lr"], model["warmup_steps"]) == (0.001, 2)
    lr = {int(r["step"]): float(r["train/lr"]) for r in rows(run) if r.get("train/lr")}
    assert sorted(lr) == [0, 1, 2] and lr[2] == pytest.approx(0.001)  # warmup 2 over: the peak (warmup 7: 0.00043)


@pytest.mark.parametrize("how", ["last", "file"])
def test_resume_refuses_another_architecture(tmp_path: Path, trained: Path, corpus: str, how: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    run = copy(trained, tmp_path / "run")
    ckpt = run / "checkpoints" / "last.ckpt"
    err = fails(["fit", "--config", str(RECIPE), *TINY, "--data.train_data", corpus, *CSV_ONLY,
                 "--trainer.default_root_dir", str(run), "--model.model_name", "clipprobe-small",
                 "--ckpt_path", "last" if how == "last" else str(ckpt)], capsys)  # fmt: skip
    assert err == (
        f"clipprobe: error: checkpoint {ckpt} holds a clipprobe-tiny model, not clipprobe-small "
        "(--model.model_name); pass --model.model_name clipprobe-tiny or the recipe it was trained with"
    )


# -- one-line errors before anything starts --------------------------------------------------------------


def test_bad_checkpoints_and_run_folders_are_one_line_errors(tmp_path: Path, trained: Path, corpus: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """validate without --ckpt_path; a truncated checkpoint and an open_clip export given to fit and validate;
    a run folder that is a file."""
    from clipprobe.models.export import export_model
    from clipprobe.training.module import create_model

    run = copy(trained, tmp_path / "run")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:30000])
    export = export_model(create_model("clipprobe-tiny"), tmp_path / "old.pt", "clipprobe-tiny")
    (tmp_path / "file").write_text("")
    val = corpus.replace("{00000..00003}", "00003")
    fit_args = ["fit", "--config", str(RECIPE), *TINY, "--data.train_data", corpus, *CSV_ONLY]
    validate = ["validate", "--config", str(RECIPE), *TINY, "--data.val_data", val, "--trainer.logger", "false",
                "--trainer.default_root_dir", str(run)]  # fmt: skip

    err = fails(validate, capsys)
    assert err == ("clipprobe: error: validate scores a checkpoint: pass --ckpt_path FILE (a .ckpt) or --ckpt_path "
                   "last; without one it would score the model's random initial weights")  # fmt: skip
    for argv in (fit_args + ["--trainer.default_root_dir", str(tmp_path / "new")], validate):
        err = fails([*argv, "--ckpt_path", str(cut)], capsys)
        assert err.startswith(f"clipprobe: error: checkpoint {cut} is truncated or damaged (")
        err = fails([*argv, "--ckpt_path", str(export)], capsys)
        assert err == (f"clipprobe: error: {export} is an open_clip export (weights only), not a training checkpoint: "
                       "it holds no optimizer or loop state; pass a .ckpt of the run's checkpoints folder (e.g. "
                       "--ckpt_path last)")  # fmt: skip
    err = fails([*validate[:-1], str(tmp_path / "empty"), "--ckpt_path", "last"], capsys)
    assert err == f"clipprobe: error: --ckpt_path last: no checkpoint in {tmp_path / 'empty' / 'checkpoints'}; pass " \
                  "--ckpt_path FILE (a .ckpt)"  # fmt: skip
    err = fails([*fit_args, "--trainer.default_root_dir", str(tmp_path / "file")], capsys)
    assert err == (f"clipprobe: error: run folder {tmp_path / 'file'} is a file, not a folder; pass another "
                   "--trainer.default_root_dir")  # fmt: skip
    assert main([*validate, "--ckpt_path", "last"]) == 0  # and with a checkpoint it scores
    assert "val/loss" in capsys.readouterr().out
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"] == 2  # still the training's


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [
        ("lr", "-1", "> 0"),
        ("lr", "0", "> 0"),
        ("weight_decay", "-0.1", ">= 0"),
        ("warmup_steps", "-1", ">= 0"),
        ("schedule_steps", "0", ">= 1 (or null: max_steps)"),
        ("min_lr_ratio", "1.5", "in [0, 1]"),
        ("eps", "0", "> 0"),
        ("betas", "[0.9,1.0]", "two values in [0, 1)"),
        ("logit_scale_max", "0.5", ">= 1"),
    ],
)
def test_impossible_hyperparameters(tmp_path: Path, corpus: str, option: str, value: str, valid: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    err = fails(["fit", "--config", str(RECIPE), *TINY, "--data.train_data", corpus, *CSV_ONLY,
                 "--trainer.default_root_dir", str(tmp_path / "run"), f"--model.{option}", value], capsys)  # fmt: skip
    assert re.fullmatch(rf"clipprobe: error: --model\.{option} .+ is out of range: it must be {re.escape(valid)}", err)


@pytest.mark.parametrize(("args", "message"), [
    (["--data.train_data", "/nonexistent/{0..3}.tar"], "shards not found"),
    (["--data.caption_key", "nope"], "has a caption under key 'nope'"),
])  # fmt: skip
def test_data_errors_come_before_wandb_starts(tmp_path: Path, corpus: str, args: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """With the recipe's loggers (W&B offline): no W&B run folder, no run record left behind."""
    run = tmp_path / "run"
    err = fails(["fit", "--config", str(RECIPE), *TINY, "--data.train_data", corpus, "--trainer.default_root_dir",
                 str(run), *args], capsys)  # fmt: skip
    assert message in err
    assert not run.exists() or not any(run.iterdir())


# -- Ctrl-C ------------------------------------------------------------------------------------------------


def test_ctrl_c_during_fit_exits_130(tmp_path: Path, corpus: str) -> None:
    """SIGINT after the first step: 'clipprobe: interrupted' on stderr, exit status 130, as the other commands."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_", "PYTEST_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    argv = ["fit", "--config", str(RECIPE), *TINY, "--data.train_data", corpus, "--trainer.max_steps", "100000",
            "--trainer.default_root_dir", str(run), *CSV_ONLY]  # fmt: skip
    # SIGINT as a terminal delivers it, even when this test runs where SIGINT is ignored (a shell's background job
    # without job control, e.g. `nohup make test &`): an ignored disposition would be inherited by the child.
    proc = subprocess.Popen([sys.executable, "-m", "clipprobe.cli", *argv], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not ((run / "metrics.csv").is_file() and len(rows(run)) >= 1):
            assert proc.poll() is None and time.monotonic() < deadline, "no first step"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "clipprobe: interrupted"
