"""Benchmark the encoding engine against a naive one-input-at-a-time loop, on a probe-like workload.

The workload repeats inputs the way the probe suite does: TOR and its mitigation ask for the
vocabulary names once per object count, captions are scored by more than one probe, and the image
probes ask for the references once per object count and for each scene more than once. Both sides
use the same model, eval mode and ``torch.no_grad``; the naive side sends every requested input to
the model alone, the engine (``CachedEncoder``) batches and encodes each unique input once.

Usage::

    .venv/bin/python scripts/bench_eval.py --model clipprobe-tiny
    .venv/bin/python scripts/bench_eval.py --model clipprobe-small --device cuda --naive-limit 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from clipprobe.data.vocab import COCO_NAMES
from clipprobe.models.load import LoadedModel, load_model
from clipprobe.probes.captions import make_captions
from clipprobe.probes.encode import CachedEncoder


def text_requests(vocab_size: int, captions_per_n: int) -> list[list[str]]:
    """Calls as probes make them: for each n, the names, the captions (tor, itm), each caption's objects."""
    vocab = list(COCO_NAMES[:vocab_size])
    calls: list[list[str]] = []
    for n in (2, 3, 4):
        caps = make_captions(vocab, n, mode="balanced", num_captions=captions_per_n, seed=n)
        texts = [c.text for c in caps]
        calls += [vocab, texts, texts, [o for c in caps for o in c.objects]]
    return calls


def image_requests(root: Path, image_size: int, scenes: int) -> list[list[str]]:
    """Calls as image probes make them: per n, the references (ior, i2tor) and the scenes (ior, itm)."""
    from clipprobe.data.generate import ensure_probe_set
    from clipprobe.data.probeset import ProbeSet

    path = ensure_probe_set("comco", cache_dir=root, image_size=image_size, objects=[2, 3, 4],
                            scenes_per_layout=scenes, equal_size=False, progress=False)  # fmt: skip
    ps = ProbeSet.load(path)
    refs = [str(ps.references[name]) for name in ps.vocabulary]
    calls: list[list[str]] = []
    for group in ps.by_n().values():
        paths = [str(ps.path(s)) for s in group]
        calls += [refs, paths, paths]
    return calls


def naive_rate(items: Sequence[str], encode_one: Callable[[str], torch.Tensor]) -> float:
    """Inputs per second when each requested input goes to the model alone."""
    start = time.perf_counter()
    with torch.no_grad():
        for item in items:
            F.normalize(encode_one(item).float(), dim=-1)
    return len(items) / (time.perf_counter() - start)


def engine_run(calls: list[list[str]], encode: Callable[[list[str]], torch.Tensor]) -> float:
    start = time.perf_counter()
    for call in calls:
        encode(call)
    return time.perf_counter() - start


def report(kind: str, calls: list[list[str]], seconds: float, model_calls: int, naive: float) -> None:
    requested = sum(len(c) for c in calls)
    unique = len({x for c in calls for x in c})
    rate = requested / seconds
    print(f"{kind}: {requested} requested, {unique} unique")
    print(
        f"  engine: {model_calls} model calls for {unique} unique inputs, {seconds:.2f} s, {rate:,.0f} {kind}/s served"
    )
    print(f"  naive:  {requested} model calls (one per request), {naive:,.0f} {kind}/s")
    print(f"  ratio:  {rate / naive:.1f}x served per second ({unique / seconds / naive:.1f}x from batching alone)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="clipprobe-tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=40)
    ap.add_argument("--captions", type=int, default=600, help="captions per object count")
    ap.add_argument("--scenes", type=int, default=40, help="scenes per layout group")
    ap.add_argument("--naive-limit", type=int, default=1000, help="requests timed on the naive side")
    args = ap.parse_args()

    torch.manual_seed(0)
    m: LoadedModel = load_model(args.model, device=args.device)
    size = m.preprocess.transforms[0].size if hasattr(m.preprocess, "transforms") else 224
    size = size if isinstance(size, int) else size[0]
    print(f"model {args.model} on {args.device}, batch size {args.batch_size}, torch {torch.__version__}")
    dev = torch.device(args.device)

    enc = CachedEncoder(m.model, m.preprocess, m.tokenizer, args.device, args.batch_size, progress=False)
    texts = text_requests(args.vocab_size, args.captions)
    flat_texts = [t for c in texts for t in c][: args.naive_limit]
    naive_t = naive_rate(flat_texts, lambda t: m.model.encode_text(m.tokenizer([t]).to(dev)))
    report("texts", texts, engine_run(texts, enc.encode_texts), enc.text_calls, naive_t)

    def one_image(p: str) -> torch.Tensor:
        from PIL import Image

        with Image.open(p) as im:
            return m.model.encode_image(m.preprocess(im.convert("RGB")).unsqueeze(0).to(dev))

    with tempfile.TemporaryDirectory() as tmp:
        images = image_requests(Path(tmp), max(64, size), args.scenes)
        flat_images = [p for c in images for p in c][: args.naive_limit]
        naive_i = naive_rate(flat_images, one_image)
        report("images", images, engine_run(images, enc.encode_images), enc.image_calls, naive_i)


if __name__ == "__main__":
    main()
