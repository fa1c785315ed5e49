"""clipprobe's tiny text-to-image model (issue 16's demonstration): trained from a corpus and a frozen CLIP text
tower, written as a folder, drawn deterministically, probed by ``t2i`` through ``clipprobe eval``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipprobe.errors import UserError
from clipprobe.models.diffusion import MANIFEST, TinyT2I, TrainConfig, is_tiny_t2i, train_tiny_t2i

ROOT = Path(__file__).resolve().parents[1]
TINY = TrainConfig(steps=3, batch_size=4, channels=(16, 16, 16, 16), warmup_steps=1)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny CLIP's weights (the architecture is given beside them)."""
    from clipprobe.models import create_random_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "clip.pt"
    torch.save(create_random_model("clipprobe-tiny").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, corpus: str, encoder: Path, one_thread: None) -> Path:
    from clipprobe.data.tars import expand_urls

    out = tmp_path_factory.mktemp("t2i") / "tiny"
    train_tiny_t2i(expand_urls(corpus), str(encoder), out, TINY, progress=False, encoder_arch="clipprobe-tiny")
    return out


def test_the_folder_records_what_made_it(model: Path, encoder: Path) -> None:
    assert is_tiny_t2i(model) and not is_tiny_t2i(model.parent)
    manifest = json.loads((model / MANIFEST).read_text())
    assert manifest["encoder"]["arch"] == "clipprobe-tiny" and len(manifest["encoder"]["checkpoint_sha256"]) == 64
    assert manifest["train"]["samples"] == 96 and manifest["train"]["steps"] == 3
    assert np.isfinite(manifest["train"]["final_loss"])
    assert {p.name for p in model.iterdir()} == {MANIFEST, "unet", "scheduler", "text_encoder.safetensors"}


def test_drawing_is_deterministic_and_batching_changes_nothing(model: Path) -> None:
    gen = TinyT2I(model, steps=3)
    a = np.asarray(gen("a dog and a cat", seed=7))
    assert a.shape == (32, 32, 3)
    assert np.array_equal(a, np.asarray(TinyT2I(model, steps=3)("a dog and a cat", seed=7)))  # a fresh load
    batch = gen.many(["a cat and a dog", "a dog and a cat"], [7, 7])
    assert np.abs(np.asarray(batch[1]).astype(int) - a).max() <= 1  # float rounding of a batched conv at most
    assert not np.array_equal(np.asarray(gen("a dog and a cat", seed=8)), a)
    with pytest.raises(UserError, match="draws 32-px images"):
        gen("a dog", seed=0, size=64)


def test_the_text_tower_conditions_the_drawing(model: Path) -> None:
    """The frozen encoder's token states reach the denoiser: another prompt, same noise, another image."""
    gen = TinyT2I(model, steps=3, guidance=5.0)
    assert not np.array_equal(np.asarray(gen("a dog and a cat", 3)), np.asarray(gen("a cat and a dog", 3)))


def test_a_failed_training_leaves_nothing(tmp_path: Path, encoder: Path) -> None:
    import tarfile

    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tar:
        info = tarfile.TarInfo("000.txt")
        info.size = 1
        import io

        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UserError, match="no image-caption samples"):
        train_tiny_t2i(
            [str(empty)], str(encoder), tmp_path / "out", TINY, progress=False, encoder_arch="clipprobe-tiny"
        )
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["empty.tar"]


def test_t2i_probe_draws_with_the_tiny_model(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from clipprobe.cli import main

    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "cache" / "probesets"))
    vocab = tmp_path / "names.txt"
    vocab.write_text("dog\ncat\npizza\n")
    out = tmp_path / "results"
    argv = ["eval", "--model", "clipprobe-tiny", "--device", "cpu", "--progress", "false", "--probes", "t2i",
            "--t2i_model", str(model), "--vocab", str(vocab), "--options",
            '{"t2i": {"num_sets": 2, "templates": ["bare"], "images_per_prompt": 2, "steps": 2}}', "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    (path,) = out.glob("*__t2i__*.jsonl")
    rec = json.loads(path.read_text())
    gen = rec["config"]["generator"]
    assert gen["pipeline"] == "clipprobe.TinyT2I" and gen["scheduler"] == "DDIMScheduler" and gen["kind"] == "folder"
    assert rec["config"]["num_images"] == 2 * 2 * 2 and len(list(Path(rec["config"]["images"]).glob("*.png"))) == 8
    prominent = {m["name"]: m["value"] for m in rec["metrics"]}
    assert prominent["n2/prominent_1"] + prominent["n2/prominent_2"] == pytest.approx(1.0)
    with pytest.raises(SystemExit) as e:
        main([*argv[:-2], "--options", '{"t2i": {"dtype": "float16"}}', "--out", str(tmp_path / "half")])
    assert e.value.code == 2 and "draws in float32" in capsys.readouterr().err
    assert not (tmp_path / "half").exists()


@pytest.mark.slow
def test_the_demo_runs_end_to_end_shrunk(tmp_path: Path) -> None:
    """scripts/t2i_demo.py at 1% of its corpora and a few steps: every stage runs and the README's files appear;
    a second call reuses every model and a work folder of other settings is refused."""
    env = {**os.environ, "CLIPPROBE_CACHE": str(tmp_path / "cache" / "probesets"), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, str(ROOT / "scripts" / "t2i_demo.py"), "--out", str(tmp_path / "docs"), "--work",
            str(tmp_path / "work"), "--corpus_scale", "0.005", "--clip_steps", "2", "--denoiser_steps", "2",
            "--num_sets", "2", "--images_per_prompt", "1", "--grid_pairs", "1"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p.name for p in (tmp_path / "docs").iterdir()} >= {"results.md", "grid.png", "timing.json", "records"}
    table = (tmp_path / "docs" / "results.md").read_text()
    assert "| size_first |" in table and "| random |" in table
    unet = tmp_path / "work" / "t2i" / "size_first" / "unet" / "diffusion_pytorch_model.safetensors"
    before = unet.stat().st_mtime_ns
    first = json.loads((tmp_path / "docs" / "timing.json").read_text())
    assert first["built"] == first["this_call"] and first["built"]["total_min"] > 0
    assert subprocess.run(argv, capture_output=True, env=env, cwd=tmp_path).returncode == 0
    assert unet.stat().st_mtime_ns == before
    again = json.loads((tmp_path / "docs" / "timing.json").read_text())
    assert again["built"] == first["built"]  # a rerun reports the minutes of the call that built the models
    other = subprocess.run([*argv, "--clip_steps", "3"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert other.returncode == 2 and "made with other settings" in other.stderr
