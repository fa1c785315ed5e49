"""Loader throughput: clipprobe's ShardDataModule against webdataset's own minimal pipeline, same shards.

Both decode the same shards' images with PIL, apply open_clip's training transform of the architecture,
tokenize the captions with its tokenizer and batch them; the minimal pipeline is webdataset's documented
one (``WebDataset(urls).shuffle().decode("pil").to_tuple().map_tuple().batched()`` through a ``WebLoader``).
clipprobe's batches leave the workers as uint8 and are normalised by the data module after the transfer
(``on_after_batch_transfer``): that step is timed too, in the main process, as training would run it.
The clock runs from the first batch (worker start-up excluded) over ``--batches`` batches; rounds
interleave the two loaders at each worker count, and the ratio is the median of same-round ratios.

    python scripts/bench_loader.py --workers 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from clipprobe.data.shards import ShardDataModule  # noqa: E402
from clipprobe.data.tars import expand_urls  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from bench_train import make_shards  # noqa: E402


def clipprobe_loader(args: argparse.Namespace, data: str, workers: int) -> tuple[Any, Any]:
    """ShardDataModule's training loader, and its per-batch device step."""
    dm = ShardDataModule(train_data=data, model_name=args.arch, batch_size=args.batch_size, num_workers=workers,
                         num_samples=args.samples, shuffle_buffer=1000)  # fmt: skip
    dm.setup("fit")
    return dm.train_dataloader(), lambda batch: dm.on_after_batch_transfer(batch, 0)


def webdataset_loader(args: argparse.Namespace, data: str, workers: int) -> tuple[Any, Any]:
    """webdataset's minimal pipeline with open_clip's transform and tokenizer."""
    import open_clip
    import webdataset as wds
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from clipprobe.models import create_random_model

    cfg = PreprocessCfg(**create_random_model(args.arch, device="meta").visual.preprocess_cfg)
    transform, tokenizer = image_transform_v2(cfg, is_train=True), open_clip.get_tokenizer(args.arch)
    dataset = (
        wds.WebDataset(expand_urls(data), shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False)
        .shuffle(1000)
        .decode("pil")
        .to_tuple("jpg;png", "txt")
        .map_tuple(transform, lambda t: t)
        .batched(args.batch_size)
        .map_tuple(lambda x: x, lambda texts: tokenizer(list(texts)))
    )
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=workers, **({"prefetch_factor": 4} if workers else {}))
    return loader, lambda batch: batch


def measure(make: Any, args: argparse.Namespace, data: str, workers: int) -> float:
    """Samples per second over ``--batches`` batches after the first."""
    loader, finish = make(args, data, workers)
    it = iter(loader)
    finish(next(it))
    t0 = time.perf_counter()
    for _ in range(args.batches):
        finish(next(it))
    seconds = time.perf_counter() - t0
    del it
    return args.batches * args.batch_size / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/clipprobe-bench-train", help="Work folder (the shards, bench_loader.json).")
    p.add_argument("--arch", default="clipprobe-tiny")
    p.add_argument("--samples", type=int, default=24576)
    p.add_argument("--shard-size", type=int, default=512)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=80, help="Batches timed per measurement.")
    p.add_argument("--workers", default="0,1,2", help="Worker counts, comma-separated.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the main process.")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    work = Path(args.out)
    data = make_shards(work / "shards", args.samples, args.shard_size, args.image_size)
    counts = [int(w) for w in args.workers.split(",")]
    loaders = {"clipprobe": clipprobe_loader, "webdataset": webdataset_loader}
    rounds: list[dict[str, dict[str, float]]] = []
    for i in range(args.rounds):
        this: dict[str, dict[str, float]] = {}
        for w in counts:
            names = list(loaders) if i % 2 == 0 else list(loaders)[::-1]
            this[str(w)] = {name: measure(loaders[name], args, data, w) for name in names}
            print(f"round {i + 1}/{args.rounds} workers {w}: " + ", ".join(
                f"{n} {v:7.1f} samples/s" for n, v in this[str(w)].items()), flush=True)  # fmt: skip
        rounds.append(this)
    summary = {}
    for w in counts:
        ratio = [r[str(w)]["clipprobe"] / r[str(w)]["webdataset"] for r in rounds]
        summary[str(w)] = {name: statistics.median(r[str(w)][name] for r in rounds) for name in loaders}
        summary[str(w)]["ratio"] = statistics.median(ratio)
        print(f"workers {w}: clipprobe {summary[str(w)]['clipprobe']:7.1f}, webdataset "
              f"{summary[str(w)]['webdataset']:7.1f} samples/s (median); ratio {summary[str(w)]['ratio']:.2f} "
              f"(rounds {', '.join(f'{x:.2f}' for x in ratio)})")  # fmt: skip
    (work / "bench_loader.json").write_text(json.dumps({"config": vars(args), "summary": summary, "rounds": rounds},
                                                       indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
