"""What the BiasProbeCallback costs: the tiny recipe with and without it, same shards, same steps.

Both runs are ``clipprobe fit --config configs/fit/tiny-synthetic.yaml`` in a subprocess (loggers
off, so only the callback differs); the probe set is generated into the cache beforehand, as it is
once per machine. Reported:

- measured share: (wall time with - wall time without) / wall time without, for ``--steps`` steps
  at the recipe's cadence (evaluations at step 0, every N steps, and the end);
- the callback's own time (each record's ``timing.seconds`` summed from ``probes.jsonl``) over the training
  time, and the standard tasks' part of it (zero-shot classification and retrieval on the offline sets);
- projected share for the recipe's full ``max_steps``: mean evaluation time x evaluations / (step time x steps).

    python scripts/bench_callback.py            # the recipe's 2000 steps, about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "fit" / "tiny-synthetic.yaml"


def make_shards(out: Path, samples: int) -> str:
    """The synthetic corpus of the recipe (made once); returns its brace pattern."""
    from clipprobe.data.corpus import CorpusConfig, generate_corpus

    shards = -(-samples // 1000)
    if not (out / "corpus.json").is_file():
        generate_corpus(CorpusConfig(samples, (1, 2, 3, 4), "size_first", 1.0, 0.0, 64, 1000, 0, 90), out)
    return str(out / f"{{00000..{shards - 1:05d}}}.tar")


def probe_args(recipe: dict) -> dict:
    """The recipe's BiasProbeCallback arguments."""
    for cb in recipe["trainer"]["callbacks"]:
        if cb["class_path"].endswith("BiasProbeCallback"):
            return cb.get("init_args", {})
    raise SystemExit(f"{RECIPE} has no BiasProbeCallback")


def fit(run: Path, shards: str, steps: int, overlay: Path | None) -> float:
    """Wall seconds of one ``clipprobe fit`` (a fresh run folder)."""
    cmd = [sys.executable, "-m", "clipprobe.cli", "fit", "--config", str(RECIPE)]
    cmd += ["--config", str(overlay)] if overlay else []
    cmd += ["--data.train_data", shards, "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(run),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--checkpoint.every_n_train_steps", str(10**9), "--trainer.val_check_interval", str(10**9)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps of each run (default: the recipe's)")
    parser.add_argument("--samples", type=int, default=5000, help="samples in the synthetic corpus")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()

    from clipprobe.data.generate import ensure_probe_set

    recipe = yaml.safe_load(RECIPE.read_text())
    cb = probe_args(recipe)
    every, total = int(cb.get("every_n_steps", 1000)), int(recipe["trainer"]["max_steps"])
    args.steps = args.steps or total
    for kind in cb.get("probe_sets", ["comco"]):
        ensure_probe_set(kind, cb.get("cache_dir"), **cb.get("generate", {}))
    from clipprobe.data.benchsets import BENCHSETS, ensure_benchset

    for name in cb.get("benchmarks") or []:  # the offline sets, generated once per machine like the probe sets
        if name in BENCHSETS:
            ensure_benchset(name, cb.get("cache_dir"), **(cb.get("benchmark_generate") or {}).get(name, {}))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_callback."))
    shards = make_shards(work / "corpus", args.samples)
    without = work / "no_callback.yaml"  # the recipe's callbacks but the probe one
    kept = [c for c in recipe["trainer"]["callbacks"] if not c["class_path"].endswith("BiasProbeCallback")]
    without.write_text(yaml.safe_dump({"trainer": {"callbacks": kept}}))

    t_without = fit(work / "without", shards, args.steps, without)
    t_with = fit(work / "with", shards, args.steps, None)
    records = [json.loads(x) for x in (work / "with" / "probes.jsonl").read_text().splitlines()]
    evals = sorted({r["step"] for r in records})
    probe_seconds = sum(r["timing"]["seconds"] for r in records)
    standard_seconds = sum(r["timing"]["seconds"] for r in records if r["probe"].startswith("zeroshot_"))
    perf = json.loads((work / "without" / "perf.json").read_text())
    step_seconds = recipe["data"]["batch_size"] / perf["samples_per_sec"]
    full_evals = len(range(0, total + 1, every)) + (total % every != 0)
    projected = probe_seconds / len(evals) * full_evals / (step_seconds * total)
    print(f"tiny recipe, {args.steps} steps, cadence every {every} steps: evaluations at steps {evals}")
    print(f"wall: {t_without:.1f} s without the callback, {t_with:.1f} s with it")
    print(f"measured share: {(t_with - t_without) / t_without:.1%} of training time "
          f"(callback's own time {probe_seconds:.1f} s = {probe_seconds / t_without:.1%}, of which standard tasks "
          f"{standard_seconds:.1f} s = {standard_seconds / t_without:.1%})")  # fmt: skip
    print(f"mean evaluation {probe_seconds / len(evals):.2f} s, step {step_seconds:.3f} s; projected share over the "
          f"recipe's {total} steps ({full_evals} evaluations): {projected:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
