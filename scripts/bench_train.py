"""Training throughput and memory: ``clipprobe fit`` against open_clip_train, by the wall clock.

Both train the same architecture on the same synthetic shards with the same batch size, precision,
loader workers and CPU threads. Each configuration runs twice, ``--short`` and ``--long`` steps, and
its time per step is (wall of the long run - wall of the short run) / (long - short): start-up
(imports, building the model, starting workers, the first evaluation) cancels out and is reported
apart. Rounds interleave every configuration (the order rotates each round), and ratios are taken
within a round, then their median across rounds: these machines are noisy and only same-round
ratios mean anything.

Configurations: ``open_clip_train`` (``python -m open_clip_train.main``, in its own virtual
environment: it needs ``webdataset<=0.2.86``; made on first use), ``bare`` (clipprobe fit with no
logger and no callback), ``default`` (the recipe configs/fit/tiny-synthetic.yaml's CSV and W&B
offline loggers and StepTimer, logging every 10 steps) and ``probe`` (``default`` plus the recipe's
BiasProbeCallback: tor and ior on ComCO and the two standard evaluations every 250 steps, at step 0
and at the end). Checkpoints are off in all of them (open_clip_train saves none either).
``--long - --short`` defaults to 1,000 steps, four times the probe callback's cadence, so the long
run of ``probe`` holds exactly four more evaluations than its short run: its per-step time includes
the callback at the recipe's cadence. (With 250 steps, the start-up's noise of a second or two on a
shared 2-core machine was a tenth of the signal.)

Memory: each run's peak host memory summed over its processes (main, loader workers, W&B
service), sampled from /proc twice a second, as RSS and as PSS (shared pages divided among the
processes sharing them). ``--memory-steps 2000`` also trains ``probe`` that long and reads the
memory StepTimer logs (``perf/host_rss_gb``) every 200 steps, to show whether it grows.

    python scripts/bench_train.py                       # 3 rounds, CPU, one thread per process
    python scripts/bench_train.py --accelerator gpu --precision bf16-mixed --batch-size 256 --workers 8

Writes ``<out>/bench.json`` (every run and the summary).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipprobe.training.procmem import tree_memory  # noqa: E402

RECIPE = ROOT / "configs/fit/tiny-synthetic.yaml"
CONFIGS = ("open_clip_train", "bare", "default", "probe")
OCT_PRECISION = {"32-true": "fp32", "bf16-mixed": "amp_bf16", "16-mixed": "amp"}


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
    import torchvision

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pkgs = ["open_clip_torch[training]", "webdataset<=0.2.86", f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}"]  # fmt: skip
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pkgs], check=True)
    subprocess.run(probe, check=True)
    return python


def clipprobe_recipe(config: str, args: argparse.Namespace, data: str, steps: int, run: Path) -> Path:
    """The recipe as ``config`` runs it, written beside the run; returns its path."""
    recipe = yaml.safe_load(RECIPE.read_text())
    trainer = recipe["trainer"]
    recipe["model"].update(model_name=args.arch, warmup_steps=10)
    recipe["data"].update(train_data=data, num_samples=args.samples, batch_size=args.batch_size,
                          num_workers=args.workers)  # fmt: skip
    trainer.update(default_root_dir=str(run), max_steps=steps, accelerator=args.accelerator, precision=args.precision,
                   enable_progress_bar=False, val_check_interval=None)  # fmt: skip
    recipe["checkpoint"] = {"every_n_train_steps": 0, "save_top_k": 0, "save_last": False}
    if config == "bare":
        trainer.update(logger=False, callbacks=[])
    elif config == "default":
        trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("BiasProbeCallback")]
    if args.compile:
        recipe["model"]["compile"] = True
    path = run.with_name(run.name + ".yaml")
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def oct_command(args: argparse.Namespace, python: Path, data: str, steps: int, run: Path) -> list[str]:
    """open_clip_train for one epoch of ``steps`` steps, with clipprobe's architecture through ``local-dir:``."""
    model_dir = run.parent / "oct-model"
    model_dir.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((ROOT / "clipprobe/models/configs" / f"{args.arch}.json").read_text())
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    return [
        str(python), "-m", "open_clip_train.main", "--train-data", data, "--dataset-type", "webdataset",
        "--train-num-samples", str(steps * args.batch_size), "--model", f"local-dir:{model_dir}",
        "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--precision",
        OCT_PRECISION[args.precision], "--epochs", "1", "--lr", "1e-3", "--wd", "0.1", "--warmup", "10",
        "--grad-clip-norm", "1.0", "--seed", "0", "--save-frequency", "0", "--report-to", "",
        "--logs", str(run), "--name", "bench", "--zeroshot-frequency", "0",
        *(["--torchcompile"] if args.compile else []),
    ]  # fmt: skip


class MemorySampler(threading.Thread):
    """Peak RSS and PSS summed over a process tree, sampled every ``every`` seconds until stopped."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.done = pid, every, threading.Event()
        self.rss, self.pss, self.processes = 0, 0, 0

    def run(self) -> None:
        while not self.done.wait(self.every):
            rss, pss = tree_memory(self.pid), tree_memory(self.pid, pss=True)
            if rss is not None:
                self.rss, self.processes = max(self.rss, rss[0]), max(self.processes, rss[1])
            if pss is not None:
                self.pss = max(self.pss, pss[0])


def timed(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run a command to the end: wall seconds and peak memory of its process tree.

    Raises:
        RuntimeError: the command failed (its output is in ``log``).
    """
    with log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = MemorySampler(proc.pid)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - t0
        sampler.done.set()
        sampler.join()
    if code != 0:
        raise RuntimeError(f"{cmd[2] if cmd[1] == '-m' else cmd[0]} failed (exit {code}); see {log}")
    return {"wall_s": wall, "peak_rss_gb": sampler.rss / 1e9, "peak_pss_gb": sampler.pss / 1e9,
            "processes": sampler.processes}  # fmt: skip


def run_config(config: str, steps: int, args: argparse.Namespace, data: str, work: Path, env: dict[str, str],
               python: Path | None) -> dict[str, float]:  # fmt: skip
    """One run of a configuration for ``steps`` steps, in a fresh folder."""
    run = work / f"{config}-{steps}"
    shutil.rmtree(run, ignore_errors=True)
    if config == "open_clip_train":
        assert python is not None
        cmd = oct_command(args, python, data, steps, run)
    else:
        cmd = [sys.executable, "-m", "clipprobe.cli", "fit", "--config", str(clipprobe_recipe(config, args, data,
                                                                                               steps, run))]  # fmt: skip
    result = timed(cmd, env, work / f"{config}-{steps}.log")
    if config != "open_clip_train":
        perf = run / "perf.json"
        if perf.is_file():  # StepTimer's own view, for the record
            result["step_timer"] = json.loads(perf.read_text())
    return result


def per_step(short: dict[str, float], long: dict[str, float], args: argparse.Namespace) -> dict[str, float]:
    """Seconds per step and start-up seconds from a short and a long run's wall clocks."""
    step = (long["wall_s"] - short["wall_s"]) / (args.long - args.short)
    return {"step_s": step, "samples_per_s": args.batch_size / step, "startup_s": short["wall_s"] - args.short * step}


def summarize(rounds: list[dict[str, dict[str, Any]]], configs: list[str]) -> dict[str, Any]:
    """Median per-step time of each configuration, and median same-round ratios against open_clip_train and between
    clipprobe's configurations (a ratio above 1: the first is faster)."""
    summary: dict[str, Any] = {"per_config": {}, "ratios": {}}
    for c in configs:
        steps = [r[c]["step_s"] for r in rounds]
        summary["per_config"][c] = {
            "step_s_median": statistics.median(steps), "samples_per_s_median": statistics.median(
                r[c]["samples_per_s"] for r in rounds),
            "startup_s_median": statistics.median(r[c]["startup_s"] for r in rounds),
            "peak_rss_gb": max(r[c]["peak_rss_gb"] for r in rounds),
            "peak_pss_gb": max(r[c]["peak_pss_gb"] for r in rounds),
        }  # fmt: skip
    pairs = [(c, "open_clip_train") for c in configs if c != "open_clip_train" and "open_clip_train" in configs]
    pairs += [(a, b) for a, b in (("bare", "default"), ("probe", "default")) if a in configs and b in configs]
    for a, b in pairs:
        each = [r[b]["step_s"] / r[a]["step_s"] for r in rounds]
        summary["ratios"][f"{a} / {b}"] = {"median": statistics.median(each), "rounds": each}
    return summary


def memory_growth(args: argparse.Namespace, data: str, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Train ``probe`` for ``--memory-steps`` steps; host memory every 200 steps (StepTimer's ``perf/host_rss_gb``)."""
    result = run_config("probe", args.memory_steps, args, data, work, env, None)
    epoch = args.samples // args.batch_size  # the loader starts new workers (forked anew) after each epoch
    return {**result, "epoch_steps": epoch, **memory_by_step(work / f"probe-{args.memory_steps}" / "metrics.csv",
                                                               since=epoch)}  # fmt: skip


def memory_by_step(metrics: Path, every: int = 200, since: int = 0) -> dict[str, Any]:
    """``perf/host_rss_gb`` after every ``every`` steps (a row's ``step`` is the index of its last batch), its growth
    from the first such mark to the last, and from the first mark after step ``since`` to the last."""
    with metrics.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/host_rss_gb")]
    done = {int(r["step"]) + 1: float(r["perf/host_rss_gb"]) for r in rows}
    samples = {s: done[s] for s in sorted(done) if s % every == 0}
    if len(samples) < 2:
        raise RuntimeError(f"fewer than two memory readings {every} steps apart in {metrics}")
    first, last = samples[min(samples)], samples[max(samples)]
    later = [s for s in samples if s > since]
    after = samples[later[0]] if len(later) >= 2 else None
    return {"host_rss_gb_by_step": samples, "growth_gb": last - first, "growth_share": (last - first) / first,
            "since_step": later[0] if after is not None else None,
            "growth_since_gb": None if after is None else last - after}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/clipprobe-bench-train", help="Work folder (shards, runs, bench.json).")
    p.add_argument("--venv", default="/tmp/oct-venv", help="open_clip_train's virtual environment (made if missing).")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"Comma-separated, of {', '.join(CONFIGS)}.")
    p.add_argument("--arch", default="clipprobe-tiny", help="A clipprobe architecture (clipprobe/models/configs).")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--samples", type=int, default=66048, help="Corpus size (>= --long x --batch-size: one epoch).")
    p.add_argument("--shard-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--short", type=int, default=30, help="Steps of the short run.")
    p.add_argument("--long", type=int, default=1030, help="Steps of the long run (default: short + 4 probe cadences).")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (0: only --memory-steps).")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per process, for both tools.")
    p.add_argument("--accelerator", default="cpu", help="clipprobe's accelerator (open_clip_train takes CUDA if any).")
    p.add_argument("--precision", default="32-true", choices=sorted(OCT_PRECISION))
    p.add_argument("--compile", action="store_true", help="torch.compile the model in both tools.")
    p.add_argument("--memory-steps", type=int, default=0, help="Also train 'probe' this long and report its memory "
                   "every 200 steps (2000 for the leak check).")  # fmt: skip
    p.add_argument("--json", help="Also write the summary here.")
    args = p.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if unknown := set(configs) - set(CONFIGS):
        p.error(f"unknown --configs {', '.join(sorted(unknown))}; choose from {', '.join(CONFIGS)}")
    if args.long <= args.short:
        p.error("need --long > --short")
    if args.rounds and "open_clip_train" in configs and args.samples < args.long * args.batch_size:
        p.error("with open_clip_train, need --samples >= --long x --batch-size (one epoch, no repeats, for both)")
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "CLIPPROBE_CACHE": str(work / "cache" / "probesets"),
           "PYTHONWARNINGS": "ignore"}  # fmt: skip
    data = make_shards(work / "shards", args.samples, args.shard_size, args.image_size)
    python = ensure_venv(Path(args.venv)) if "open_clip_train" in configs and args.rounds else None
    if args.rounds:
        print(f"warm-up: one short run of each of {', '.join(configs)} (caches, probe sets), not counted", flush=True)
    for c in configs if args.rounds else []:
        run_config(c, args.short, args, data, work, env, python)
    rounds: list[dict[str, dict[str, Any]]] = []
    runs: list[dict[str, Any]] = []
    for i in range(args.rounds):
        order = configs[i % len(configs) :] + configs[: i % len(configs)]
        this: dict[str, dict[str, Any]] = {}
        for c in order:
            short = run_config(c, args.short, args, data, work, env, python)
            long = run_config(c, args.long, args, data, work, env, python)
            this[c] = {**per_step(short, long, args), "peak_rss_gb": long["peak_rss_gb"],
                       "peak_pss_gb": long["peak_pss_gb"], "processes": long["processes"]}  # fmt: skip
            runs.append({"round": i, "config": c, "short": short, "long": long})
            print(f"round {i + 1}/{args.rounds} {c:16s} {this[c]['step_s'] * 1000:7.1f} ms/step "
                  f"({this[c]['samples_per_s']:6.1f} samples/s), start-up {this[c]['startup_s']:5.1f} s, "
                  f"peak PSS {this[c]['peak_pss_gb']:.2f} GB", flush=True)  # fmt: skip
        rounds.append(this)
    summary = summarize(rounds, configs) if rounds else {"per_config": {}, "ratios": {}}
    print("\nmedian of rounds:" if rounds else "no rounds (--rounds 0)")
    for c, s in summary["per_config"].items():
        print(f"  {c:16s} {s['step_s_median'] * 1000:7.1f} ms/step, {s['samples_per_s_median']:6.1f} samples/s, "
              f"start-up {s['startup_s_median']:5.1f} s, peak RSS {s['peak_rss_gb']:.2f} GB / PSS "
              f"{s['peak_pss_gb']:.2f} GB (all processes)")  # fmt: skip
    for name, r in summary["ratios"].items():
        print(f"  speed {name}: {r['median']:.3f} (rounds {', '.join(f'{x:.3f}' for x in r['rounds'])})")
    result = {"config": vars(args), "torch": torch.__version__, "cpus": os.cpu_count(), "summary": summary,
              "rounds": rounds, "runs": runs}  # fmt: skip
    if args.memory_steps:
        mem = memory_growth(args, data, work, env)
        result["memory"] = mem
        marks = ", ".join(f"{s}: {v:.3f}" for s, v in mem["host_rss_gb_by_step"].items())
        since = (f", {mem['growth_since_gb'] * 1000:+.0f} MB from step {mem['since_step']} (after the first epoch's "
                 "worker restart)" if mem["growth_since_gb"] is not None else "")  # fmt: skip
        print(f"  memory over {args.memory_steps} steps with the probe callback (GB by step): {marks}; "
              f"growth {mem['growth_gb'] * 1000:+.0f} MB ({mem['growth_share']:+.1%}){since}")  # fmt: skip
    text = json.dumps(result, indent=2) + "\n"
    (work / "bench.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
