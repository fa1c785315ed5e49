"""Training throughput: ``clipprobe fit`` against open_clip_train on the same shards.

Same synthetic shards, architecture, batch size, precision, loader workers, steps and CPU threads.
open_clip_train needs ``webdataset<=0.2.86``, so it runs from its own virtual environment
(created on first use). clipprobe's architecture reaches it without copying any code, through
open_clip's ``local-dir:`` model schema (a folder holding ``open_clip_config.json``).

Reported: samples per second (total samples / total step time, leaving out the first ``--skip``
steps of start-up), their ratio clipprobe / open_clip_train (aim: >= 1.0), and the share of step
time spent waiting for data (clipprobe: :class:`clipprobe.training.fit.StepTimer`; open_clip_train:
its ``Data (t)`` over ``Batch (t)``).

    python scripts/bench_train.py --batch-size 64 --workers 2 --steps 120
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"\[\s*(\d+)/\d+ .*?Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+)")


def make_shards(out: Path, samples: int, shard_size: int, image_size: int) -> str:
    """The synthetic corpus (made once); returns its brace pattern."""
    from clipprobe.data.corpus import CorpusConfig, generate_corpus

    shards = -(-samples // shard_size)
    if not (out / "corpus.json").is_file():
        generate_corpus(CorpusConfig(samples, (1, 2, 3, 4), "size_first", 1.0, 0.0, image_size, shard_size, 0, 90), out)
    return str(out / f"{{00000..{shards - 1:05d}}}.tar")


def ensure_venv(venv: Path) -> Path:
    """open_clip_train's virtual environment (same torch as here, webdataset 0.2.86); returns its python."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import open_clip_train.main, webdataset"]
    if python.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    torch_version = torch.__version__.split("+")[0]
    import torchvision

    vision_version = torchvision.__version__.split("+")[0]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pkgs = [
        "open_clip_torch[training]",
        "webdataset<=0.2.86",
        f"torch=={torch_version}",
        f"torchvision=={vision_version}",
    ]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pkgs], check=True)
    subprocess.run(probe, check=True)
    return python


def run_clipprobe(args: argparse.Namespace, data: str, out: Path, env: dict[str, str]) -> dict[str, float]:
    """``clipprobe fit`` for ``--steps`` steps; throughput from the per-step StepTimer metrics."""
    cmd = [
        sys.executable, "-m", "clipprobe.cli", "fit", "--config", str(ROOT / "configs/fit/tiny-synthetic.yaml"),
        "--model.model_name", args.arch, "--model.warmup_steps", "10",
        "--data.train_data", data, "--data.num_samples", str(args.samples), "--data.batch_size", str(args.batch_size),
        "--data.num_workers", str(args.workers), "--data.shuffle_buffer", "1000",
        "--trainer.precision", "32-true", "--trainer.accelerator", args.accelerator, "--trainer.max_steps", str(args.steps),
        "--trainer.default_root_dir", str(out), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(out), "--trainer.logger.name", "csv", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.val_check_interval", str(args.steps),
        "--checkpoint.save_top_k", "0", "--checkpoint.save_last", "false", "--checkpoint.every_n_train_steps", "0",
    ]  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)  # a fresh run folder: no resume, no stale metrics
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with (out / "csv" / "version_0" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/samples_per_sec")]
    rows = rows[args.skip :]
    cycles = [args.batch_size / float(r["perf/samples_per_sec"]) for r in rows]  # seconds per step
    waits = [c * float(r["perf/data_wait_share"]) for c, r in zip(cycles, rows, strict=True)]
    return {"samples_per_sec": args.batch_size * len(cycles) / sum(cycles), "data_wait_share": sum(waits) / sum(cycles),
            "steps_measured": len(cycles), "wall_s": wall}  # fmt: skip


def run_open_clip_train(args: argparse.Namespace, python: Path, data: str, out: Path,
                        env: dict[str, str]) -> dict[str, float]:  # fmt: skip
    """``python -m open_clip_train.main`` for one epoch of ``--steps`` steps; throughput from its log windows."""
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((ROOT / "clipprobe/models/configs" / f"{args.arch}.json").read_text())
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    every = 10
    cmd = [
        str(python), "-m", "open_clip_train.main", "--train-data", data, "--dataset-type", "webdataset",
        "--train-num-samples", str(args.steps * args.batch_size), "--model", f"local-dir:{model_dir}",
        "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--precision", "fp32", "--epochs", "1",
        "--lr", "1e-3", "--wd", "0.1", "--warmup", "10", "--grad-clip-norm", "1.0", "--seed", "0",
        "--log-every-n-steps", str(every), "--save-frequency", "0", "--report-to", "", "--logs", str(out / "logs"),
        "--name", "bench", "--zeroshot-frequency", "0",
    ]  # fmt: skip
    shutil.rmtree(out / "logs", ignore_errors=True)  # open_clip_train refuses (exit 0) an existing --name
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / "open_clip_train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip_train failed (exit {proc.returncode}); see {out / 'open_clip_train.log'}")
    windows, last = [], 0
    for m in LOG_LINE.finditer(proc.stdout + proc.stderr):
        done = int(m.group(1)) // args.batch_size  # batches so far; the window holds the steps since the last line
        windows.append((done - last, float(m.group(2)), float(m.group(3))))
        last = done
    # leave out the windows ending within the first skip + 1 steps, as clipprobe's first skip step cycles
    windows = [w for w, end in zip(windows, _ends(windows), strict=True) if end > args.skip + 1]
    steps = sum(n for n, _, _ in windows)
    total = sum(n * batch for n, _, batch in windows)
    if not steps:
        raise RuntimeError(f"no training log lines from open_clip_train; see {out / 'open_clip_train.log'}")
    return {"samples_per_sec": args.batch_size * steps / total, "data_wait_share": sum(n * d for n, d, _ in windows) / total,
            "steps_measured": steps, "wall_s": wall}  # fmt: skip


def _ends(windows: list[tuple[int, float, float]]) -> list[int]:
    ends, total = [], 0
    for n, _, _ in windows:
        total += n
        ends.append(total)
    return ends


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/clipprobe-bench-train", help="Work folder (shards, runs, results).")
    p.add_argument("--venv", default="/tmp/oct-venv", help="open_clip_train's virtual environment (made if missing).")
    p.add_argument("--arch", default="clipprobe-tiny", help="A clipprobe architecture (clipprobe/models/configs).")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--samples", type=int, default=8192, help="Corpus size (>= steps x batch size).")
    p.add_argument("--shard-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--skip", type=int, default=10, help="Start-up steps left out of the numbers.")
    p.add_argument("--threads", type=int, default=1, help="OMP/torch threads for both (spinning threads on a busy "
                   "machine distort everything).")  # fmt: skip
    p.add_argument("--accelerator", default="cpu", help="clipprobe's accelerator (open_clip_train picks CUDA if any).")
    p.add_argument("--skip-open-clip-train", action="store_true")
    args = p.parse_args()
    if args.samples < args.steps * args.batch_size:
        p.error("--samples must be at least --steps x --batch-size (one epoch, no repeats, for both)")
    out = Path(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    data = make_shards(out / "shards", args.samples, args.shard_size, args.image_size)
    results = {"config": vars(args), "clipprobe": run_clipprobe(args, data, out / "clipprobe", env)}
    if not args.skip_open_clip_train:
        try:
            python = ensure_venv(Path(args.venv))
            results["open_clip_train"] = run_open_clip_train(args, python, data, out / "open_clip_train", env)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
            results["open_clip_train_error"] = str(e)
    ours, theirs = results["clipprobe"], results.get("open_clip_train")
    print(f"clipprobe fit:    {ours['samples_per_sec']:8.1f} samples/s, data wait {ours['data_wait_share']:.1%}")
    if theirs:
        results["ratio"] = ours["samples_per_sec"] / theirs["samples_per_sec"]
        print(
            f"open_clip_train:  {theirs['samples_per_sec']:8.1f} samples/s, data wait {theirs['data_wait_share']:.1%}"
        )
        print(f"ratio clipprobe / open_clip_train: {results['ratio']:.2f}")
    else:
        print(f"open_clip_train: not run ({results.get('open_clip_train_error', 'skipped')})")
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
