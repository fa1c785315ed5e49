"""Does a text-to-image model draw the first-named object large because its CLIP text encoder learned to?
(README "Does the first-named object dominate generated images?")

    python scripts/t2i_demo.py --out docs/t2i --work work/t2i-demo

1. corpora (``clipprobe data corpus``, 64 px): ``size_first`` (p = 0.9) and ``random`` caption order for the two
   text encoders, another random-order one (other seed) for the scorer, and a random-order one with 1-2 objects per
   image for the denoisers;
2. three tiny CLIPs (``clipprobe fit``, the residual experiment's settings): the size_first encoder, the random
   encoder, and the scorer (a separately trained random-order CLIP, other data and seed);
3. two tiny pixel-space diffusion models (:mod:`clipprobe.models.diffusion`), identical but for the frozen text
   encoder they condition on, trained on the same random-order corpus: the denoiser sees no order-size link in
   its own data, so an order effect in its images comes through the encoder;
4. the ``t2i`` probe (``clipprobe eval --t2i_model``) on each, scored by the scorer CLIP, and a grid of
   generations for both orders of a few pairs.

Every stage is skipped when its output is already there (rerun to resume); ``--jobs 3`` (the default) trains the
three CLIPs at once, then the two denoisers side by side, one thread each. Writes ``results.md``, ``grid.png``, ``records/``, ``models.json`` and ``timing.json`` (minutes
per stage: ``built``, of the call that finished the work folder, and ``this_call``) into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORPORA = {  # name: (order, p_order, objects, num_samples, seed)
    "size_first": ("size_first", 0.9, "1-4", 40000, 0),
    "random": ("random", 1.0, "1-4", 40000, 0),
    "scorer": ("random", 1.0, "1-4", 40000, 2),
    "t2i": ("random", 1.0, "1-2", 20000, 1),
}
CLIPS = {"size_first": ("size_first", 0), "random": ("random", 0), "scorer": ("scorer", 1)}  # corpus, seed
FIT_ARGS = [
    "--config", "configs/fit/tiny-synthetic.yaml", "--data.augment", "false", "--data.num_workers", "0",
    "--data.shuffle_buffer", "2000", "--data.batch_size", "128", "--model.warmup_steps", "100",
    "--trainer.accelerator", "cpu", "--trainer.val_check_interval", "null", "--trainer.log_every_n_steps", "25",
    "--trainer.enable_model_summary", "false", "--trainer.enable_progress_bar", "false",
    "--trainer.callbacks", "[]", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
]  # fmt: skip


def sh(argv: list[str], log: Path) -> None:
    """Run ``argv`` with one compute thread, its output in ``log``; raise with the log's tail on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with log.open("w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"{' '.join(argv[:4])}... failed (exit {rc}); end of {log}:\n" + "\n".join(tail))


def corpora(work: Path, scale: float) -> dict[str, Path]:
    from clipprobe.data.corpus import CorpusConfig, generate_corpus, parse_counts

    out = {}
    for name, (order, p, objects, n, seed) in CORPORA.items():
        out[name] = work / "corpora" / name
        if not (out[name] / "corpus.json").is_file():
            size = max(100, round(n * scale))
            cfg = CorpusConfig(size, parse_counts(objects), order, p, 0.0, 64, min(1000, size), seed, 90)
            generate_corpus(cfg, out[name], overwrite=True, progress=True)
    return out


def claim(work: Path, args: argparse.Namespace) -> None:
    """Record the settings that made the work folder; refuse one made with others (its models would be mixed)."""
    settings = {k: getattr(args, k) for k in ("corpus_scale", "clip_steps", "denoiser_steps", "batch_size")}
    record = work / "demo.json"
    if record.is_file() and json.loads(record.read_text()) != settings:
        print(
            f"error: {work} was made with other settings ({record}); pass another --work or delete it", file=sys.stderr
        )
        raise SystemExit(2)
    record.write_text(json.dumps(settings, indent=2) + "\n")


def shards(corpus: Path) -> str:
    n = json.loads((corpus / "corpus.json").read_text())["num_shards"]
    return str(corpus / f"{{00000..{n - 1:05d}}}.tar")


def fit(name: str, corpus: Path, seed: int, work: Path, steps: int, device: str) -> Path:
    run = work / "clips" / name
    ckpt = run / "checkpoints" / "last.ckpt"
    if not (run / "done").is_file():
        run.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "clipprobe.cli", "fit", *FIT_ARGS, "--data.train_data", shards(corpus),
                "--seed_everything", str(seed), "--data.seed", str(seed), "--trainer.max_steps", str(steps),
                "--checkpoint.every_n_train_steps", str(steps), "--trainer.default_root_dir", str(run),
                "--trainer.logger.save_dir", str(run), "--trainer.logger.name", "csv"]  # fmt: skip
        if device != "cpu":  # after FIT_ARGS: the last value wins
            argv += ["--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed"]
        if ckpt.is_file():
            argv += ["--ckpt_path", "last"]
        sh(argv, work / "logs" / f"fit-{name}.log")
        (run / "done").write_text("")
    return ckpt


def denoiser(name: str, encoder: Path, corpus: Path, work: Path, args: argparse.Namespace) -> Path:
    out = work / "t2i" / name
    if not (out / "clipprobe_t2i.json").is_file():
        sh([sys.executable, __file__, "train-denoiser", "--encoder", str(encoder), "--shards", shards(corpus),
            "--out", str(out), "--steps", str(args.denoiser_steps), "--batch_size", str(args.batch_size),
            "--device", args.device],
           work / "logs" / f"denoiser-{name}.log")  # fmt: skip
    return out


def probe(name: str, model: Path, scorer: Path, vocab: Path, work: Path, args: argparse.Namespace) -> Path:
    options = {"t2i": {"n": 2, "num_sets": args.num_sets, "images_per_prompt": args.images_per_prompt,
                       "steps": 25, "guidance": args.guidance, "seed": 0}}  # fmt: skip
    # one folder per probe setting: a rerun with other options must not leave two records for the table to mix
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    records = work / "records" / f"{name}-{key}"
    sh([sys.executable, "-m", "clipprobe.cli", "eval", "--pretrained", str(scorer), "--probes", "t2i", "--device", args.device,
        "--t2i_model", str(model), "--vocab", str(vocab), "--options", json.dumps(options), "--out", str(records),
        "--progress", "false", "--skip_existing", "true"], work / "logs" / f"probe-{name}.log")  # fmt: skip
    return records


def encoder_bias(name: str, checkpoint: Path, vocab: Path, work: Path, device: str) -> Path:
    """The encoder's own first-mention bias (tor, balanced captions of 2 objects in the bare template)."""
    records = work / "records" / f"encoder-{name}"
    options = {"tor": {"mode": "balanced", "template": "bare", "n": [2, 3], "num_captions": 1000}}
    sh([sys.executable, "-m", "clipprobe.cli", "eval", "--pretrained", str(checkpoint), "--probes", "tor", "--device", device,
        "--vocab", str(vocab), "--options", json.dumps(options), "--out", str(records), "--progress", "false",
        "--skip_existing", "true"], work / "logs" / f"tor-{name}.log")  # fmt: skip
    return records


def grid(models: dict[str, Path], vocab: list[str], out: Path, pairs_n: int, device: str, seed: int = 0) -> None:
    """Rows: for each pair, the two orders with each encoder; columns: four seeds. The same seed column is the
    same starting noise in every row."""
    import random

    from PIL import Image, ImageDraw

    from clipprobe.models.diffusion import TinyT2I

    rng = random.Random(f"clipprobe:{seed}:t2i-grid")
    pairs = [tuple(rng.sample(vocab, 2)) for _ in range(pairs_n)]
    gens = {k: TinyT2I(v, device, guidance=3.0) for k, v in models.items()}
    cell, label_w, cols = 64, 260, 4
    rows = [(i, k, order) for i, (a, b) in enumerate(pairs) for order in ((a, b), (b, a)) for k in gens]
    sheet = Image.new("RGB", (label_w + cols * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (i, k, (a, b)) in enumerate(rows):
        draw.text((4, r * cell + cell // 2 - 6), f"{k}: a {a} and a {b}", fill="black")
        images = gens[k].many([f"a {a} and a {b}"] * cols, [1000 * i + c for c in range(cols)])  # noise per pair
        for c, image in enumerate(images):
            sheet.paste(image.resize((cell, cell), Image.NEAREST), (label_w + c * cell, r * cell))
    sheet.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    td = sub.add_parser("train-denoiser", help="train one tiny t2i model (a stage of the demo)")
    td.add_argument("--encoder", required=True)
    td.add_argument("--shards", required=True)
    td.add_argument("--out", required=True)
    td.add_argument("--steps", type=int, default=2000)
    td.add_argument("--batch_size", type=int, default=32)
    td.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="docs/t2i", help="results folder (results.md, grid.png, records/)")
    ap.add_argument("--work", default="work/t2i-demo", help="corpora, models and logs (reused when rerun)")
    ap.add_argument("--jobs", type=int, default=3, help="trainings at once (one thread each)")
    ap.add_argument("--corpus_scale", type=float, default=1.0, help="corpus sizes x this (a quick check: 0.01)")
    ap.add_argument("--clip_steps", type=int, default=1000, help="steps of each tiny CLIP (batch 128)")
    ap.add_argument("--denoiser_steps", type=int, default=1500, help="steps of each denoiser")
    ap.add_argument("--batch_size", type=int, default=32, help="denoiser batch")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: CLIPs in bf16-mixed, denoisers in bf16 autocast")
    ap.add_argument("--num_sets", type=int, default=20, help="object pairs probed (each in both orders)")
    ap.add_argument("--images_per_prompt", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--grid_pairs", type=int, default=6, help="object pairs in grid.png")
    args = ap.parse_args()
    if args.cmd == "train-denoiser":
        import torch

        from clipprobe.data.tars import expand_urls
        from clipprobe.models.diffusion import TrainConfig, train_tiny_t2i

        torch.set_num_threads(1)
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size)
        train_tiny_t2i(expand_urls(args.shards), args.encoder, args.out, cfg, progress=False, device=args.device)
        return

    from clipprobe.data.sprites import object_names
    from clipprobe.fileio import atomic_write_json, atomic_write_text, staged_dir

    work, out = Path(args.work).resolve(), Path(args.out)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    claim(work, args)
    data = corpora(work, args.corpus_scale)
    timing["corpora_min"] = (time.perf_counter() - t0) / 60
    t1 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        clips: dict[str, Future[Path]] = {}
        for name in ("size_first", "random", "scorer"):  # FIFO: the CLIPs first, each denoiser after its encoder
            corpus, seed = CLIPS[name]
            clips[name] = pool.submit(fit, name, data[corpus], seed, work, args.clip_steps, args.device)
        models = {k: pool.submit(lambda k=k: denoiser(k, clips[k].result(), data["t2i"], work, args))
                  for k in ("size_first", "random")}  # fmt: skip
        ready = {k: f.result() for k, f in models.items()}
        scorer = clips["scorer"].result()
        timing["trainings_min"] = (time.perf_counter() - t1) / 60
        t2 = time.perf_counter()
        vocab = work / "vocab.txt"
        vocab.write_text("\n".join(object_names("comco")) + "\n")
        encoders = {k: pool.submit(encoder_bias, k, clips[k].result(), vocab, work, args.device) for k in ready}
        probes = {k: pool.submit(probe, k, folder, scorer, vocab, work, args) for k, folder in ready.items()}
        records = {k: f.result() for k, f in probes.items()}
        biases = {k: f.result() for k, f in encoders.items()}
    timing["probes_min"] = (time.perf_counter() - t2) / 60
    table = tabulate(records, biases)
    with staged_dir(out) as stage:
        grid(ready, list(object_names("comco")), stage / "grid.png", args.grid_pairs, args.device)
        for name, folder in {**records, **{f"encoder-{k}": v for k, v in biases.items()}}.items():
            for f in folder.rglob("*.json*"):
                target = stage / "records" / name / f.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f.read_bytes())
        timing["total_min"] = (time.perf_counter() - t0) / 60
        manifests = {k: json.loads((v / "clipprobe_t2i.json").read_text()) for k, v in ready.items()}
        mine = {k: round(v, 2) for k, v in timing.items()}
        built = work / "timing.json"  # the minutes of the call that finished the work folder, kept for reruns
        if not built.is_file():
            atomic_write_json(built, mine)
        atomic_write_json(stage / "timing.json", {"built": json.loads(built.read_text()), "this_call": mine})
        atomic_write_json(stage / "models.json", manifests)
        atomic_write_text(stage / "results.md", table)
    print(table)
    print(f"wrote {out} in {timing['total_min']:.1f} min (work: {work})")


def _metrics(folder: Path, probe: str) -> dict[str, object]:
    from clipprobe.evaluation.collect import find_result_files, load_records

    return {m.name: m for r in load_records(find_result_files(str(folder))) if r.probe == probe for m in r.metrics}


def _cell(m: object) -> str:
    lo, hi = m.interval  # type: ignore[attr-defined]
    return f"{100 * m.value:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"  # type: ignore[attr-defined]


def tabulate(records: dict[str, Path], encoders: dict[str, Path]) -> str:
    """The encoders' tor closest_1 and the t2i metrics per encoder (shares in percent, 95% intervals)."""
    rows = ["| text encoder (its corpus) | encoder tor closest_1 n=2 | images | prominent_1 (first named) | "
            "prominent_2 | first minus second | found_1 | found_2 |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, folder in records.items():
        m, tor = _metrics(folder, "t2i"), _metrics(encoders[name], "tor")
        rows.append(f"| {name} | {_cell(tor['n2/closest_1'])} | {m['n2/prominent_1'].count} | "  # type: ignore[attr-defined]
                    f"{_cell(m['n2/prominent_1'])} | {_cell(m['n2/prominent_2'])} | {_cell(m['n2/first_minus_last'])} | "
                    f"{_cell(m['n2/found_1'])} | {_cell(m['n2/found_2'])} |")  # fmt: skip
    return "\n".join(rows) + ("\n\nShares of images in percent, [95% interval]; chance: 50 for prominent_k and the "
                              "encoder's closest_1, 0 for the difference.\n")  # fmt: skip


if __name__ == "__main__":
    main()
