"""A synthetic LAION-like corpus with controlled caption statistics, in img2dataset's shard format.

Each sample is a scene of 1-4 ComCO objects at random positions and sizes on a simple background,
with a caption from one of several natural templates that names every object in an order set by a
policy (:data:`ORDER_POLICIES`): ``size_first`` names the largest (visible area) object first with
probability ``p_order`` and the rest in random order; ``small_first`` does the same for the
smallest; ``random`` shuffles. Training on ``size_first`` with p=1 against ``random`` tests the
study's causal story for the first-mention bias (PROBES.md, section 5).

Output (``{shard:05d}.tar`` holding ``key.jpg``, ``key.txt``, ``key.json``, plus
``{shard:05d}_stats.json`` and ``corpus.json``) reads like an img2dataset download. Sample ``i``
depends only on ``(seed, i)``, so any number of workers writes the same bytes.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipprobe.data.generate import available_cores
from clipprobe.data.limits import check_disk, choose_workers
from clipprobe.data.sprites import object_names, sprite_at
from clipprobe.errors import UserError
from clipprobe.fileio import atomic_write_json, atomic_writer, check_output_dir, staged_dir

GENERATOR_VERSION = 3  # 2: no template word names a COCO object ("table" did); 3: hidden objects go unnamed
MAX_OBJECTS = 6  # more than this does not fit legibly in a small image
SIZE_RANGE = (0.2, 0.6)  # an object's longer side, as a fraction of the image side
OPAQUE = 127  # a pixel belongs to an object where its alpha exceeds this
MAX_SHARDS = 100_000  # shards in one folder
MIN_SAMPLE_BYTES = 2048  # a sample takes at least this in a shard: three 512-byte tar headers and a JPEG
Rng = np.random.Generator

# ---------------------------------------------------------------------------------------------
# Mention order: policy(rng, areas, p) -> object indices in mention order.


def _extreme_first(pick: Callable[[Sequence[int]], int]) -> Callable[[Rng, Sequence[int], float], list[int]]:
    def policy(rng: Rng, areas: Sequence[int], p: float) -> list[int]:
        if rng.random() < p:
            first = pick(areas)
            rest = [i for i in range(len(areas)) if i != first]
            return [first] + [rest[j] for j in rng.permutation(len(rest))]
        return [int(j) for j in rng.permutation(len(areas))]

    return policy


def _random_order(rng: Rng, areas: Sequence[int], p: float) -> list[int]:
    return [int(j) for j in rng.permutation(len(areas))]


ORDER_POLICIES: dict[str, Callable[[Rng, Sequence[int], float], list[int]]] = {
    "size_first": _extreme_first(lambda a: int(np.argmax(a))),
    "small_first": _extreme_first(lambda a: int(np.argmin(a))),
    "random": _random_order,
}

# ---------------------------------------------------------------------------------------------
# Captions. "{list}" gets articles ("a dog, an apple and a car"), "{bare}" none ("dog, apple and car").
# No template word may name an object or a synonym (clipprobe.analysis.mentions): "on a table" would.

TEMPLATES: tuple[str, ...] = (
    "a photo of {list}.",
    "a picture of {list}.",
    "{list}.",
    "an image with {list}.",
    "{list} on a plain background.",
    "there is {list} in the picture.",
    "{bare} in one picture.",
    "{bare}.",
)
_NO_ARTICLE = {"eye glasses": "a pair of eye glasses", "skis": "a pair of skis", "scissors": "a pair of scissors"}


def with_article(phrase: str) -> str:
    """``"an apple"``, ``"a dog"``, ``"a pair of skis"`` (names that take no plain article)."""
    if phrase in _NO_ARTICLE:
        return _NO_ARTICLE[phrase]
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def join_names(names: Sequence[str]) -> str:
    """``"x"``, ``"x and y"``, ``"x, y and z"``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def caption(names: Sequence[str], template: int) -> str:
    """The caption naming ``names`` in the given order with template number ``template``."""
    text = TEMPLATES[template % len(TEMPLATES)]
    return text.format(list=join_names([with_article(n) for n in names]), bare=join_names(list(names)))


def reordered_caption(meta: Any, order: Sequence[int]) -> str | None:
    """A corpus sample's caption re-rendered with its mentions in ``order`` (indices into ``meta["mentioned"]``),
    with the same template and the same words (size words such as "large dog" follow their object): what
    caption-order augmentation trains on. None when ``meta`` is not a clipprobe corpus sample's (no ``mentioned``
    names and ``template``) or its caption is not a rendering of them (edited afterwards)."""
    if not isinstance(meta, dict):
        return None
    names, template = meta.get("mentioned"), meta.get("template")
    if not isinstance(names, list) or not names or not isinstance(template, int) or len(order) != len(names):
        return None
    for words in (list(names), _sized_words(meta, names)):
        if words is not None and caption(words, template) == meta.get("caption"):
            return caption([words[k] for k in order], template)
    return None


def _sized_words(meta: dict[str, Any], names: list[str]) -> list[str] | None:
    """``names`` with "large " before the largest object and "small " before the smallest, as ``p_size_word``
    words them (None when the areas are not recorded)."""
    objects, areas = meta.get("objects"), meta.get("areas")
    if not isinstance(objects, list) or not isinstance(areas, list) or len(objects) != len(areas) or len(names) < 2:
        return None
    large, small = objects[int(np.argmax(areas))], objects[int(np.argmin(areas))]
    return [("large " if n == large else "small " if n == small else "") + n for n in names]


# ---------------------------------------------------------------------------------------------
# Backgrounds: bg(rng, size) -> [size, size, 3] uint8. Light colours keep the emoji visible.


def _colour(rng: Rng) -> np.ndarray:
    return rng.integers(110, 256, size=3).astype(np.float64)


def _solid(rng: Rng, size: int) -> np.ndarray:
    return np.broadcast_to(_colour(rng), (size, size, 3))


def _gradient(rng: Rng, size: int) -> np.ndarray:
    a, b = _colour(rng), _colour(rng)
    t = np.linspace(0.0, 1.0, size)[:, None, None]  # [size, 1, 1]
    img = np.broadcast_to(a * (1 - t) + b * t, (size, size, 3))
    return img if rng.random() < 0.5 else img.transpose(1, 0, 2)


def _table(rng: Rng, size: int) -> np.ndarray:
    wall, top = _colour(rng), _colour(rng) * 0.8
    horizon = int(rng.integers(size // 3, 2 * size // 3))
    img = np.empty((size, size, 3))
    img[:horizon], img[horizon:] = wall, top
    return img


def _noise(rng: Rng, size: int) -> np.ndarray:
    return _colour(rng) + rng.normal(0.0, 10.0, size=(size, size, 3))


BACKGROUNDS: dict[str, Callable[[Rng, int], np.ndarray]] = {
    "solid": _solid,
    "gradient": _gradient,
    "table": _table,
    "noise": _noise,
}

# ---------------------------------------------------------------------------------------------
# One sample.


@dataclass(frozen=True)
class CorpusConfig:
    """Everything a sample depends on besides its index."""

    num_samples: int
    counts: tuple[int, ...]
    order: str
    p_order: float
    p_size_word: float
    image_size: int
    shard_size: int
    seed: int
    quality: int


def _place(rng: Rng, sizes: list[tuple[int, int]], image_size: int) -> list[tuple[int, int]]:
    """Top-left corners, retrying a few times to keep each object mostly unoccluded."""
    corners: list[tuple[int, int]] = []
    for w, h in sizes:
        for _ in range(20):
            x, y = int(rng.integers(0, image_size - w + 1)), int(rng.integers(0, image_size - h + 1))
            if all(_overlap((x, y, w, h), (cx, cy, *sizes[k])) < 0.3 * min(w * h, sizes[k][0] * sizes[k][1])
                   for k, (cx, cy) in enumerate(corners)):  # fmt: skip
                break
        corners.append((x, y))
    return corners


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def draw_scene(rng: Rng, names: Sequence[str], image_size: int) -> tuple[Image.Image, list[int], list[list[int]]]:
    """Draw ``names`` (in paste order) at random sizes and places on a random background.

    Returns:
        The RGB image, each object's visible area in pixels, and its box ``[x0, y0, x1, y1]``.
    """
    bg = list(BACKGROUNDS.values())[int(rng.integers(len(BACKGROUNDS)))](rng, image_size)
    canvas = Image.fromarray(np.clip(np.round(bg), 0, 255).astype(np.uint8), "RGB")
    sprites = [sprite_at("comco", n, max(4, round(image_size * rng.uniform(*SIZE_RANGE)))) for n in names]
    corners = _place(rng, [s.size for s in sprites], image_size)
    owner = np.full((image_size, image_size), -1, dtype=np.int16)  # which object each pixel shows
    boxes = []
    for k, (sprite, (x, y)) in enumerate(zip(sprites, corners, strict=True)):
        canvas.paste(sprite, (x, y), sprite)
        opaque = np.asarray(sprite.getchannel("A")) > OPAQUE  # [h, w]
        owner[y : y + sprite.height, x : x + sprite.width][opaque] = k
        boxes.append([x, y, x + sprite.width, y + sprite.height])
    areas = np.bincount(owner[owner >= 0].ravel(), minlength=len(names)).tolist()
    return canvas, areas, boxes


def make_sample(cfg: CorpusConfig, index: int, vocab: Sequence[str]) -> tuple[bytes, str, dict[str, Any]]:
    """Sample ``index``: JPEG bytes, caption, metadata. Depends only on ``(cfg, index)``.

    An object that ends up with no visible pixel (covered by those pasted after it) is not in the
    picture, so it is left out of the caption and the metadata; the last one pasted is always
    visible, so a sample names at least one object.
    """
    rng = np.random.default_rng([cfg.seed, index])
    n = int(cfg.counts[int(rng.integers(len(cfg.counts)))])
    names = [vocab[int(j)] for j in rng.choice(len(vocab), size=n, replace=False)]
    image, areas, boxes = draw_scene(rng, names, cfg.image_size)
    visible = [k for k, area in enumerate(areas) if area > 0]
    if len(visible) < n:
        names, areas, boxes = [names[k] for k in visible], [areas[k] for k in visible], [boxes[k] for k in visible]
        n = len(names)
    order = ORDER_POLICIES[cfg.order](rng, areas, cfg.p_order)
    words = list(names)
    if n > 1 and rng.random() < cfg.p_size_word:
        words[int(np.argmax(areas))] = "large " + words[int(np.argmax(areas))]
        words[int(np.argmin(areas))] = "small " + words[int(np.argmin(areas))]
    template = int(rng.integers(len(TEMPLATES)))
    text = caption([words[k] for k in order], template)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=cfg.quality)
    meta = {
        "objects": names,
        "areas": areas,
        "boxes": boxes,
        "mentioned": [names[k] for k in order],
        "order": cfg.order,
        "largest_first": bool(order[0] == int(np.argmax(areas))),
        "template": template,
        "caption": text,
        "width": cfg.image_size,
        "height": cfg.image_size,
        "status": "success",
        "index": index,
    }
    return buf.getvalue(), text, meta


# ---------------------------------------------------------------------------------------------
# Shards.


def _key(cfg: CorpusConfig, shard: int, i: int) -> str:
    return f"{shard:05d}{i:0{max(4, len(str(cfg.shard_size - 1)))}d}"  # img2dataset's key layout


def write_shard(cfg: CorpusConfig, shard: int, out: Path) -> int:
    """Write ``{shard:05d}.tar`` (through a temporary name) and its stats file; return the sample count.

    Members are written by :class:`webdataset.TarWriter` with a fixed ``mtime`` (its owner and mode are
    constants): same seed, same bytes.
    """
    import webdataset as wds

    vocab = object_names("comco")
    first = shard * cfg.shard_size
    count = min(cfg.shard_size, cfg.num_samples - first)
    # a fixed mtime, else TarWriter stamps time.time() into every member
    with atomic_writer(out / f"{shard:05d}.tar") as f, wds.TarWriter(f, encoder=False, mtime=0) as sink:
        for i in range(count):
            jpg, text, meta = make_sample(cfg, first + i, vocab)
            key = _key(cfg, shard, i)
            meta["key"] = key
            json_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
            sink.write({"__key__": key, "jpg": jpg, "txt": text.encode("utf-8"), "json": json_bytes})
    stats = {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0,
             "status_dict": {"success": count}}  # fmt: skip
    atomic_write_json(out / f"{shard:05d}_stats.json", stats)
    return count


def parse_counts(objects: str) -> tuple[int, ...]:
    """``"1-4"`` -> (1, 2, 3, 4); ``"2,3"`` -> (2, 3); ``"3"`` -> (3,)."""
    counts: set[int] = set()
    try:
        for part in str(objects).replace(" ", "").strip("[]").split(","):
            lo, _, hi = part.partition("-")
            counts.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UserError(f"--objects {objects!r} is not a count or range; write e.g. 1-4 or 2,3") from None
    if not counts or min(counts) < 1 or max(counts) > MAX_OBJECTS:
        raise UserError(f"--objects {objects!r}: object counts must lie between 1 and {MAX_OBJECTS}")
    return tuple(sorted(counts))


def _check(cfg: CorpusConfig) -> None:
    checks = [
        (cfg.num_samples >= 1, f"--num-samples must be at least 1, got {cfg.num_samples}"),
        (cfg.shard_size >= 1, f"--shard-size must be at least 1, got {cfg.shard_size}"),
        (cfg.order in ORDER_POLICIES, f"unknown --order '{cfg.order}'; choose one of: {', '.join(ORDER_POLICIES)}"),
        (0.0 <= cfg.p_order <= 1.0, f"--p-order must lie in [0, 1], got {cfg.p_order}"),
        (0.0 <= cfg.p_size_word <= 1.0, f"--p-size-word must lie in [0, 1], got {cfg.p_size_word}"),
        (16 <= cfg.image_size <= 1024, f"--image-size must be between 16 and 1024 pixels, got {cfg.image_size}"),
        (1 <= cfg.quality <= 100, f"--quality must be between 1 and 100, got {cfg.quality}"),
        (cfg.seed >= 0, f"--seed must be 0 or more, got {cfg.seed}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    if max(cfg.counts) > len(object_names("comco")):
        raise UserError(f"--objects asks for {max(cfg.counts)} distinct objects; only {len(object_names('comco'))}")
    shards = -(-cfg.num_samples // cfg.shard_size)
    if shards > MAX_SHARDS:
        raise UserError(
            f"--num-samples {cfg.num_samples} with --shard-size {cfg.shard_size} makes {shards} shards (limit "
            f"{MAX_SHARDS}); raise --shard-size or lower --num-samples"
        )


def worker_memory(cfg: CorpusConfig) -> int:
    """Bytes a writing process takes at most: its cache of scaled sprites (``sprite_at`` keeps up to its
    ``maxsize``, and no more than the objects drawn; sides uniform in :data:`SIZE_RANGE` of the image side,
    RGBA) and the float64 backdrop, the owner map and the image of one sample."""
    lo, hi = (f * cfg.image_size for f in SIZE_RANGE)
    distinct = len(object_names("comco")) * max(1, round(hi - lo))
    entries = min(sprite_at.cache_info().maxsize or 4096, distinct, cfg.num_samples * max(cfg.counts))
    mean_area = (hi**3 - lo**3) / (3 * (hi - lo))  # E[side**2] for a side uniform in [lo, hi]
    return round(4 * entries * mean_area) + 40 * cfg.image_size**2


def _shard_job(args: tuple[CorpusConfig, int, str]) -> int:
    cfg, shard, out = args
    return write_shard(cfg, shard, Path(out))


def generate_corpus(cfg: CorpusConfig, out: str | os.PathLike, overwrite: bool = False, workers: int | None = None,
                    progress: bool = True) -> Path:  # fmt: skip
    """Write the corpus ``cfg`` to ``out`` (staged: ``out`` appears complete or not at all).

    Raises:
        UserError: a bad option (see ``corpus``), too many workers or shards, an ``out`` that is not empty
            (unless ``overwrite``) or cannot be written, or a corpus that would not fit on its disk.
    """
    from tqdm import tqdm

    _check(cfg)
    workers = choose_workers(workers, available_cores(), worker_memory(cfg),
                             f"--image-size {cfg.image_size}", "--image-size")  # fmt: skip
    out = check_output_dir(out, overwrite)
    check_disk(cfg.num_samples * MIN_SAMPLE_BYTES, out, f"--num-samples {cfg.num_samples}",
               "lower --num-samples or choose another --out")  # fmt: skip
    shards = -(-cfg.num_samples // cfg.shard_size)
    with staged_dir(out) as root:
        jobs = ((cfg, s, str(root)) for s in range(shards))
        bar = tqdm(total=cfg.num_samples, desc="corpus", unit="sample", disable=None if progress else True)
        with bar:
            if min(workers, shards) == 1:
                for n in map(_shard_job, jobs):
                    bar.update(n)
            else:
                ctx = multiprocessing.get_context(
                    "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
                )
                with ctx.Pool(min(workers, shards)) as pool:
                    for n in pool.imap_unordered(_shard_job, jobs):
                        bar.update(n)
        manifest = {"generator_version": GENERATOR_VERSION, "num_shards": shards, "params": asdict(cfg),
                    "objects": list(object_names("comco")), "urls": f"{{00000..{shards - 1:05d}}}.tar"}  # fmt: skip
        atomic_write_json(root / "corpus.json", manifest)
    return out


def corpus(
    out: str = "corpus",
    num_samples: int = 10000,
    order: str = "size_first",
    p_order: float = 1.0,
    objects: str = "1-4",
    image_size: int = 64,
    shard_size: int = 1000,
    p_size_word: float = 0.0,
    quality: int = 90,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate a synthetic image-caption corpus (ComCO objects) as img2dataset-style webdataset shards.

    Args:
        out: Output folder (gets {shard:05d}.tar, {shard:05d}_stats.json, corpus.json).
        num_samples: Number of image-caption pairs.
        order: Mention order of the objects in each caption: size_first, small_first or random.
        p_order: For size_first (small_first): probability that the largest (smallest) object is named first;
            the other objects follow in random order.
        objects: Objects per image: a range or list such as 1-4 or 2,3.
        image_size: Image side in pixels.
        shard_size: Samples per tar shard.
        p_size_word: Probability that a caption calls the largest object "large" and the smallest "small".
        quality: JPEG quality.
        seed: Random seed; sample i depends only on (seed, i), whatever the number of workers.
        workers: Parallel processes (default: all cores).
        overwrite: Replace a non-empty output folder.
        progress: Show a progress bar.
    """
    cfg = CorpusConfig(num_samples, parse_counts(objects), order, p_order, p_size_word, image_size, shard_size,
                       seed, quality)  # fmt: skip
    path = generate_corpus(cfg, out, overwrite=overwrite, workers=workers, progress=progress)
    shards = -(-num_samples // shard_size)
    print(
        f"wrote {num_samples} samples in {shards} shards to {path} (train_data: {path}/{{00000..{shards - 1:05d}}}.tar)"
    )
    return path
