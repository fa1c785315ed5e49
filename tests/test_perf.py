"""The training step's speed-ups keep its results: uint8 batches normalised on the device, fused AdamW, text without
its padding, logging only what is written; the process-tree memory reader; the benchmark scripts' arithmetic and a
short run of each."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from clipprobe.data.shards import BatchNormalize, ShardDataModule, split_normalize
from clipprobe.training.module import CLIPModule, adamw
from clipprobe.training.procmem import descendants, tree_memory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def _images(n: int, size: int = 80) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("train", [True, False])
def test_uint8_transform_and_batch_normalize_equal_open_clips_transform_bit_for_bit(train: bool) -> None:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from clipprobe.models import create_random_model

    model = create_random_model("clipprobe-small", device="meta")
    full = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=train)
    per_image, normalize = split_normalize(full)
    assert normalize is not None
    images = _images(6)
    torch.manual_seed(3)  # the random crop draws from torch's generator: same seed, same crops
    expected = torch.stack([full(im) for im in images])
    torch.manual_seed(3)
    batch = torch.stack([per_image(im) for im in images])
    assert batch.dtype == torch.uint8 and batch.is_contiguous() and batch.shape == expected.shape
    assert torch.equal(normalize(batch), expected)


def test_a_transform_without_to_tensor_and_normalize_is_kept_whole() -> None:
    from torchvision.transforms import Compose, Resize

    transform = Compose([Resize(8)])
    assert split_normalize(transform) == (transform, None)
    assert split_normalize(lambda im: im)[1] is None


def test_data_module_sends_uint8_and_normalises_after_the_transfer(corpus: str) -> None:
    dm = ShardDataModule(train_data=corpus, batch_size=4, num_workers=0, shuffle_buffer=0, num_samples=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8
    raw = batch["image"].clone()
    out = dm.on_after_batch_transfer(batch, 0)
    assert out["image"].dtype == torch.float32 and out["image"].shape == raw.shape
    val, normalize = dm.val_transform, dm.normalize
    assert torch.equal(out["image"], normalize(raw))
    again = dm.on_after_batch_transfer(out, 0)  # a float batch (already normalised) is left alone
    assert again["image"] is out["image"]
    # the eval transform ends in uint8 too, so validation batches take the same normalisation
    assert val(_images(1, 64)[0]).dtype == torch.uint8


def test_batch_normalize_keeps_constants_per_device() -> None:
    norm = BatchNormalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(norm(x), torch.full((2, 3, 4, 4), 2.0))
    assert list(norm._on) == [torch.device("cpu")]


def test_adamw_is_fused_on_cpu_and_steps_like_the_loop_version() -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = adamw([{"params": params, "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    loop = torch.optim.AdamW([{"params": twins, "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.98), eps=1e-6,
                             foreach=False)  # fmt: skip
    assert fused.defaults["fused"] is True
    for _ in range(5):
        for group in (params, twins):
            for i, p in enumerate(group):
                p.grad = torch.full_like(p, 0.1 * (i + 1)) + p.detach() * 0.01
        fused.step(), loop.step()
    for a, b in zip(params, twins, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_adamw_takes_foreach_off_cpu_and_cuda() -> None:
    meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
    opt = adamw([{"params": [meta]}], lr=1e-3)
    assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")


def test_tree_memory_counts_children() -> None:
    alone, alone_pss = tree_memory(), tree_memory(pss=True)
    assert alone is not None and alone[1] >= 1 and alone[0] > 10e6
    assert alone_pss is not None and 0 < alone_pss[0] <= alone[0] * 1.01
    code = "import time; x = bytearray(300_000_000); x[::4096] = b'1' * len(x[::4096]); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            with_child = tree_memory()
            if with_child is not None and with_child[0] - alone[0] > 250e6:
                break
            time.sleep(0.2)
        assert child.pid in descendants(__import__("os").getpid())
        assert with_child is not None and with_child[1] >= alone[1] + 1 and with_child[0] - alone[0] > 250e6
        pss = tree_memory(pss=True)
        assert pss is not None and pss[0] - alone_pss[0] > 200e6
    finally:
        child.kill()
        child.wait()
    assert tree_memory(child.pid) is None  # gone: nothing to read


def test_bench_arithmetic() -> None:
    import argparse

    from bench_train import per_step, summarize

    args = argparse.Namespace(short=30, long=280, batch_size=64)
    r = per_step({"wall_s": 16.0}, {"wall_s": 66.0}, args)
    assert r["step_s"] == pytest.approx(0.2) and r["samples_per_s"] == pytest.approx(320)
    assert r["startup_s"] == pytest.approx(10.0)

    def one(step: float) -> dict[str, float]:
        return {"step_s": step, "samples_per_s": 64 / step, "startup_s": 5.0, "peak_rss_gb": 1.0, "peak_pss_gb": 0.5}

    rounds = [{"open_clip_train": one(0.2), "bare": one(0.16), "default": one(0.17), "probe": one(0.175)},
              {"open_clip_train": one(0.3), "bare": one(0.2), "default": one(0.25), "probe": one(0.25)},
              {"open_clip_train": one(0.2), "bare": one(0.2), "default": one(0.2), "probe": one(0.21)}]  # fmt: skip
    s = summarize(rounds, ["open_clip_train", "bare", "default", "probe"])
    assert s["ratios"]["bare / open_clip_train"]["median"] == pytest.approx(1.25)  # rounds 1.25, 1.5, 1.0
    assert s["ratios"]["probe / default"]["rounds"] == pytest.approx([0.17 / 0.175, 1.0, 0.2 / 0.21])
    assert s["per_config"]["bare"]["step_s_median"] == pytest.approx(0.2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_scripts_run(tmp_path: Path) -> None:
    """A short run of each benchmark on its own generated shards (open_clip_train needs its own venv: left out)."""
    env_cmd = [sys.executable, str(ROOT / "scripts/bench_train.py"), "--out", str(tmp_path), "--configs", "bare,default",
               "--samples", "512", "--shard-size", "128", "--batch-size", "8", "--workers", "1", "--short", "2",
               "--long", "6", "--rounds", "1"]  # fmt: skip
    subprocess.run(env_cmd, check=True, cwd=tmp_path, timeout=500)
    result = json.loads((tmp_path / "bench.json").read_text())
    assert (
        set(result["summary"]["per_config"]) == {"bare", "default"} and "bare / default" in result["summary"]["ratios"]
    )
    run = next(r["long"] for r in result["runs"] if r["config"] == "default")
    assert run["peak_rss_gb"] > 0.1 and run["peak_pss_gb"] > 0.05 and run["processes"] >= 1  # sampled twice a second
    loader_cmd = [sys.executable, str(ROOT / "scripts/bench_loader.py"), "--out", str(tmp_path), "--samples", "512",
                  "--shard-size", "128", "--batch-size", "8", "--batches", "4", "--workers", "0", "--rounds", "1"]  # fmt: skip
    out = subprocess.run(loader_cmd, check=True, cwd=tmp_path, capture_output=True, text=True, timeout=300).stdout
    assert "workers 0: clipprobe" in out
    summary = json.loads((tmp_path / "bench_loader.json").read_text())["summary"]["0"]
    assert summary["clipprobe"] > 0 and summary["webdataset"] > 0


TEXTS = ["a dog and a cat", "a small red car to the left of a big blue apple and a tiny bird", "x"]


@pytest.mark.parametrize(("arch", "trims"), [("clipprobe-tiny", True), ("clipprobe-small", True),
                                             ("clipprobe-tiny-bidir", False), ("clipprobe-tiny-last", False),
                                             ("clipprobe-tiny-bidir-first", False)])  # fmt: skip
def test_text_without_padding_gives_open_clips_features(arch: str, trims: bool) -> None:
    import open_clip

    from clipprobe.models import create_random_model
    from clipprobe.models.text import encode_text, text_length, trims_padding

    model = create_random_model(arch).eval()
    tokens = open_clip.get_tokenizer(arch)(TEXTS * 4)
    assert trims_padding(model) is trims and text_length(tokens) == 18  # 16 tokens + start and end of text
    with torch.no_grad():
        full, cut = model.encode_text(tokens, normalize=True), encode_text(model, tokens, normalize=True)
    assert torch.allclose(full, cut, atol=2e-6)


def test_training_step_without_padding_has_open_clips_loss_and_gradients(corpus: str) -> None:
    """CLIPModule's forward on the trimmed text (the data module's ``text_length``) against open_clip's forward."""
    from open_clip.loss import ClipLoss

    dm = ShardDataModule(train_data=corpus, batch_size=8, num_workers=0, shuffle_buffer=0, num_samples=16)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0), 0)
    assert batch["text_length"] < 77
    module = CLIPModule("clipprobe-tiny")
    module.loss_fn = ClipLoss()
    grads = []
    for use_length in (True, False):
        module.zero_grad(set_to_none=True)
        loss, _ = module._loss(batch if use_length else {k: v for k, v in batch.items() if k != "text_length"})
        loss.backward()
        grads.append([p.grad.clone() for p in module.parameters()])
        if use_length:
            trimmed_loss = loss.detach()
    assert torch.allclose(trimmed_loss, loss.detach(), atol=1e-6)
    for (name, _), a, b in zip(module.named_parameters(), *grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (name, float((a - b).abs().max()), float(a.abs().max()))


def test_logging_only_on_logging_steps_keeps_every_written_value(tmp_path: Path, corpus: str, one_thread: None) -> None:
    """With ``log_every_n_steps 3`` the rows written are those of steps 3, 6, 9, 12, each with the loss, the
    counters, the throughput and the memory: skipping the others loses nothing the loggers write."""
    import csv

    from clipprobe.cli import main

    run = tmp_path / "run"
    main(["fit", "--config", str(ROOT / "configs/fit/tiny-synthetic.yaml"), "--data.train_data", corpus,
          "--data.num_workers", "0", "--data.batch_size", "4", "--data.num_samples", "64", "--trainer.max_steps", "12",
          "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks", "clipprobe.training.fit.StepTimer", "--trainer.log_every_n_steps", "3",
          "--trainer.logger", "clipprobe.training.loggers.CSVLogger", "--trainer.default_root_dir", str(run),
          "--checkpoint.every_n_train_steps", "0", "--checkpoint.save_top_k", "0"])  # fmt: skip
    with (run / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert [int(r["step"]) + 1 for r in rows] == [3, 6, 9, 12]
    keys = ["train/logit_scale", "train/lr", "train/samples_seen", "data/skipped_samples", "perf/samples_per_sec",
            "perf/data_wait_share", "perf/host_rss_gb"]  # fmt: skip
    assert all(r.get(k) for r in rows for k in keys), rows
    assert [float(r["train/samples_seen"]) for r in rows] == [12.0, 24.0, 36.0, 48.0]


@pytest.mark.parametrize(("precision", "clip", "fused"), [("32-true", 1.0, True), ("bf16-mixed", None, True),
                                                          ("bf16-mixed", 1.0, False)])  # fmt: skip
def test_fused_adamw_unless_lightning_amp_clips(precision: str, clip: float | None, fused: bool) -> None:
    """Lightning's AMP plugin refuses to clip a fused optimizer's gradients: the GPU recipes (bf16-mixed, clipping)
    get the multi-tensor AdamW, which Lightning clips as before."""
    module = CLIPModule("clipprobe-tiny", warmup_steps=1, schedule_steps=10)
    module.trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, gradient_clip_val=clip, logger=False,
                               enable_progress_bar=False, enable_checkpointing=False)  # fmt: skip
    opt = module.configure_optimizers()["optimizer"]
    assert bool(opt.defaults.get("fused")) is fused and bool(opt.defaults.get("foreach")) is not fused
