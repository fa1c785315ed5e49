"""`clipprobe fit` end to end on generated shards: recipes, learning, exact resume, faults, export, errors."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import pytest
import torch

from clipprobe.cli import main

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]
RECIPES = sorted((Path(__file__).parents[1] / "configs" / "fit").glob("*.yaml"))
TINY = [
    "--model.model_name", "clipprobe-tiny", "--model.compile", "false", "--model.grad_checkpointing", "false",
    "--data.num_workers", "0", "--data.val_data", "null", "--data.shuffle_buffer", "16",
    "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.strategy", "auto",
    "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--trainer.callbacks", "clipprobe.training.fit.StepTimer",  # the recipes' probe callback has its own tests (test_callback)
]  # fmt: skip


def fit(run: Path, data: str, *args: str, recipe: Path = RECIPES[0]) -> Path:
    """Run ``clipprobe fit`` with a CSV logger in ``run``; return the metrics file."""
    main(["fit", "--config", str(recipe), *TINY, "--data.train_data", data, "--trainer.default_root_dir", str(run),
          "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run),
          "--trainer.logger.name", "csv", "--trainer.logger.version", "0", "--trainer.log_every_n_steps", "1",
          *args])  # fmt: skip
    return run / "csv" / "version_0" / "metrics.csv"


def _column(metrics: Path, name: str) -> list[float]:
    with metrics.open() as f:
        return [float(r[name]) for r in csv.DictReader(f) if r.get(name)]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_fast_dev_run_every_recipe(tmp_path: Path, corpus: str, recipe: Path) -> None:
    main(["fit", "--config", str(recipe), *TINY, "--data.train_data", corpus, "--data.batch_size", "4",
          "--data.num_samples", "32", "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
          "--trainer.fast_dev_run", "2"])  # fmt: skip


def test_run_folder_checkpoints_and_export(tmp_path: Path, corpus: str) -> None:
    import open_clip

    from clipprobe.training.module import CLIPModule

    run = tmp_path / "run"
    metrics = fit(run, corpus, "--data.batch_size", "8", "--trainer.max_steps", "6",
                  "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "2")  # fmt: skip
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "last.ckpt", "last.pt", "step=00000004.ckpt", "step=00000004.pt", "step=00000006.ckpt", "step=00000006.pt",
    ]  # fmt: skip
    assert "model_name: clipprobe-tiny" in (run / "config.yaml").read_text()
    assert _column(metrics, "train/samples_seen")[-1] == 48.0 and len(_column(metrics, "train/loss")) >= 1

    exported = torch.load(ckpts / "last.pt", map_location="cpu")
    assert exported["clipprobe"] == {"arch": "clipprobe-tiny", "step": 6, "samples_seen": 48, "epoch": 0}
    model, _, preprocess = open_clip.create_model_and_transforms("clipprobe-tiny", pretrained=str(ckpts / "last.pt"))
    module = CLIPModule.load_from_checkpoint(ckpts / "last.ckpt", map_location="cpu")
    model.eval(), module.eval()
    images = torch.randn(3, 3, 64, 64)
    tokens = open_clip.get_tokenizer("clipprobe-tiny")(["a dog", "a cat and a car", "an apple"])
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), module.model.encode_image(images), atol=1e-6)
        assert torch.allclose(model.encode_text(tokens), module.model.encode_text(tokens), atol=1e-6)
    assert module.samples_seen == 48


def test_resume_equals_one_run(tmp_path: Path, corpus: str) -> None:
    """8 steps in one run == 4 steps, stop, resume for 4 more (across an epoch end at step 6)."""
    common = ["--data.batch_size", "4", "--data.num_samples", "24", "--model.schedule_steps", "8",
              "--model.warmup_steps", "2", "--checkpoint.every_n_train_steps", "4"]  # fmt: skip
    fit(tmp_path / "a", corpus, *common, "--trainer.max_steps", "8")
    fit(tmp_path / "b", corpus, *common, "--trainer.max_steps", "4")
    fit(tmp_path / "b", corpus, *common, "--trainer.max_steps", "8", "--ckpt_path", "last")
    a = torch.load(tmp_path / "a/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "b/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 8
    assert a["clipprobe"]["samples_seen"] == b["clipprobe"]["samples_seen"] == 32
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], rtol=1e-5, atol=1e-6), key
    half = torch.load(tmp_path / "b/checkpoints/step=00000004.ckpt", map_location="cpu", weights_only=False)
    assert half["global_step"] == 4 and half["clipprobe"]["samples_seen"] == 16


def test_validation_in_fit_and_validate_command(
    tmp_path: Path, corpus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    train, val = corpus.replace("00003}", "00002}"), corpus.replace("{00000..00003}", "00003")
    run = tmp_path / "run"
    metrics = fit(run, train, "--data.val_data", val, "--data.batch_size", "8", "--trainer.max_steps", "4",
                  "--trainer.val_check_interval", "2")  # fmt: skip
    assert len(_column(metrics, "val/loss")) == 2
    main(["validate", "--config", str(RECIPES[0]), *TINY, "--data.val_data", val, "--data.batch_size", "8",
          "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--trainer.logger", "false",
          "--trainer.default_root_dir", str(run)])  # fmt: skip
    assert "val/loss" in capsys.readouterr().out


def _corrupt_shards(root: Path, corpus: str) -> str:
    """The corpus's first two shards, plus: a corrupt jpg, a sample without caption, a truncated tar."""
    src = Path(corpus).parent
    with tarfile.open(src / "00000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for m, data in members:
            if m.name == "000000001.jpg":
                data = b"\xff\xd8 this is no jpeg"
            if m.name == "000000002.txt":
                continue
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    root.mkdir()
    (root / "00000.tar").write_bytes(out.getvalue())
    (root / "00001.tar").write_bytes((src / "00001.tar").read_bytes())
    with tarfile.open(src / "00002.tar") as tar:
        cut = tar.getmember("000020010.jpg").offset_data + 200
    (root / "00002.tar").write_bytes((src / "00002.tar").read_bytes()[:cut])
    return str(root / "{00000..00002}.tar")


def test_faults_are_skipped_and_logged(tmp_path: Path, corpus: str) -> None:
    data = _corrupt_shards(tmp_path / "bad", corpus)
    metrics = fit(tmp_path / "run", data, "--data.batch_size", "8", "--data.num_samples", "64",
                  "--trainer.max_steps", "12")  # fmt: skip
    skipped = _column(metrics, "data/skipped_samples")
    assert len(_column(metrics, "train/loss")) == 12 and skipped == sorted(skipped) and skipped[-1] >= 3


def test_loss_falls_on_the_tiny_recipe(tmp_path: Path, corpus: str) -> None:
    metrics = fit(tmp_path / "run", corpus, "--data.batch_size", "16", "--trainer.max_steps", "100",
                  "--model.warmup_steps", "10")  # fmt: skip
    loss = _column(metrics, "train/loss")
    assert len(loss) == 100
    first, last = sum(loss[:10]) / 10, sum(loss[-10:]) / 10
    assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.model_name", "no-such-arch"], "unknown open_clip architecture"),
        (["--trainer.max_stepz", "3"], "max_stepz"),
        (["--data.train_data", "/nonexistent/{0..3}.tar"], "not found"),
        (["--ckpt_path", "/nonexistent/x.ckpt"], "checkpoint /nonexistent/x.ckpt not found"),
    ],
)
def test_user_errors_exit_2(tmp_path: Path, corpus: str, args: list[str], message: str,
                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(RECIPES[0]), *TINY, "--data.train_data", corpus,
              "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false", *args])  # fmt: skip
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("clipprobe: error:") and message in err
