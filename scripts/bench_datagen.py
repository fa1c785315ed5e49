"""Benchmark probe-set generation against its floor: encoding and writing the same PNGs.

    .venv/bin/python scripts/bench_datagen.py [--kind comco] [--image-size 224] [--workers N]

Generates the default set (or ``--scenes-per-layout``) with 1 and N workers, checks the two give
identical files, then times the floor: the same number of PNGs of the same size, encoded with the
same settings (``render.PNG_OPTIONS``) from pixels already in memory (the generated scenes, read
back) and written to the same disk, with 1 and N processes. Prints scenes/s and the ratio
generation time / floor time (aim: at most 2), in wall-clock and in CPU seconds (the fairer
measure when other jobs share the machine). Each timing is the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from clipprobe.data.generate import generate, resolve_config
from clipprobe.data.render import PNG_OPTIONS, save_png

_IMAGES: list[Image.Image] = []
_FLOOR_DIR: list[Path] = []


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (pool workers are reaped on join)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _best(fn, repeat: int) -> tuple[float, float]:  # noqa: ANN001 - a zero-argument callable
    """(wall, cpu) seconds of the fastest of ``repeat`` runs; CPU time is the fairer measure on a
    machine that other jobs share."""
    runs = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), _cpu()
        fn()
        runs.append((time.perf_counter() - t0, _cpu() - c0))
    return min(runs)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def _write_range(bounds: tuple[int, int]) -> None:
    for i in range(*bounds):
        save_png(_IMAGES[i % len(_IMAGES)], _FLOOR_DIR[0] / f"{i:06d}.png")


def _floor(count: int, workers: int, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _FLOOR_DIR[:] = [out]
    if workers == 1:
        _write_range((0, count))
        return
    step = -(-count // (8 * workers))
    chunks = [(a, min(a + step, count)) for a in range(0, count, step)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_write_range, chunks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", default="comco", choices=["comco", "simco"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--scenes-per-layout", type=int, default=None)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--pool-images", type=int, default=256, help="distinct scenes held in memory for the floor")
    args = ap.parse_args()

    cfg = resolve_config(args.kind, scenes_per_layout=args.scenes_per_layout, image_size=args.image_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench_datagen."))
    try:
        gen: dict[int, tuple[float, float]] = {}
        digests = {}
        for w in sorted({1, args.workers}):
            dest = tmp / f"gen{w}"
            gen[w] = _best(lambda d=dest, w=w: generate(cfg, d, overwrite=True, workers=w, progress=False), args.repeat)
            digests[w] = _digest(dest)
        num = sum(1 for _ in (tmp / "gen1" / "scenes").rglob("*.png"))
        scenes = sorted((tmp / "gen1" / "scenes").rglob("*.png"))
        step = max(1, len(scenes) // args.pool_images)
        _IMAGES[:] = [Image.open(p).convert("RGB") for p in scenes[::step]]
        floor = {w: _best(lambda w=w: _floor(num, w, tmp / "floor"), args.repeat) for w in gen}
        size_mb = sum(p.stat().st_size for p in scenes) / 2**20
        print(f"{args.kind}: {num} scenes of {args.image_size} px, {len(cfg.objects)} objects, "
              f"PNG {PNG_OPTIONS}, {size_mb:.1f} MiB of scenes; cores: {os.cpu_count()}")  # fmt: skip
        print(f"{'workers':>8} {'gen s':>7} {'scenes/s':>9} {'floor s':>8} {'floor/s':>8} {'gen/floor':>9}"
              f" {'gen cpu s':>9} {'floor cpu s':>11} {'cpu ratio':>9}")  # fmt: skip
        for w in gen:
            (gw, gc), (fw, fc) = gen[w], floor[w]
            print(f"{w:>8} {gw:>7.2f} {num / gw:>9.0f} {fw:>8.2f} {num / fw:>8.0f} {gw / fw:>9.2f}"
                  f" {gc:>9.2f} {fc:>11.2f} {gc / fc:>9.2f}")  # fmt: skip
        print(f"load average: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        print("identical output for all worker counts:", len(set(digests.values())) == 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
