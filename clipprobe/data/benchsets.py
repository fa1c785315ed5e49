"""``clipprobe data benchset``: offline zero-shot datasets in CLIP_benchmark's webdataset layout.

``clip_benchmark eval --dataset wds/<name> --dataset_root ROOT`` (CLIP_benchmark's ``build_wds_dataset``) reads::

    ROOT/classnames.txt                          one class a line, line index = label  (classification)
    ROOT/zeroshot_classification_templates.txt   one prompt template a line, with {c}  (classification)
    ROOT/dataset_type.txt                        "retrieval"                           (retrieval only)
    ROOT/<split>/nshards.txt                     the number N of shards
    ROOT/<split>/0.tar ... (N-1).tar             png + cls (classification), jpg + txt (retrieval), + json
    ROOT/clipprobe.json                          clipprobe's manifest (CLIP_benchmark ignores it)

The sets (:data:`BENCHSETS`):

- ``comco-objects``, ``simco-objects``: zero-shot classification, one class per object of the kind (69 ComCO
  names, 18 SimCO shapes, in vocabulary order). Each image shows one object, drawn by the probe sets' renderer on
  their studio background, at a random position and a random size (:data:`SIZE_RANGE` of the image side). The
  templates (:data:`TEMPLATES`) are the study's caption forms for one object (``clipprobe.probes.captions``); the
  bare ``"{c}"`` comes first, so its texts are the tor probe's reference texts.
- ``heldout``: image-caption retrieval on scenes of the synthetic training corpus's generator
  (``clipprobe.data.corpus.make_sample``) with a seed of its own (:data:`HELDOUT_SEED`), so no training corpus
  generated with the default seed holds them; or, with ``--corpus``, an existing corpus converted.

Sample ``i`` depends only on ``(seed, i)``, and members are written by :class:`webdataset.TarWriter` with a fixed
mtime: same options, same bytes. Sets are written into a staging folder renamed into place when complete;
:func:`ensure_benchset` generates a set once into a cache and reuses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipprobe.data.corpus import GENERATOR_VERSION as CORPUS_VERSION
from clipprobe.data.corpus import MAX_SHARDS, MIN_SAMPLE_BYTES, ORDER_POLICIES, CorpusConfig, make_sample, parse_counts
from clipprobe.data.corpus import worker_memory as corpus_memory
from clipprobe.data.generate import GENERATOR_VERSION as PROBE_SET_VERSION
from clipprobe.data.generate import default_cache_dir
from clipprobe.data.limits import check_disk, check_memory
from clipprobe.data.render import encode_png, render
from clipprobe.data.scenes import MIN_SMALL_PX
from clipprobe.data.sprites import object_names
from clipprobe.data.tars import expand_urls, is_local, iter_corpus_samples
from clipprobe.errors import UserError
from clipprobe.fileio import (
    atomic_write_json,
    check_not_input,
    check_output_dir,
    check_writable,
    file_lock,
    staged_dir,
)

GENERATOR_VERSION = "1"
BENCHSETS = ("comco-objects", "simco-objects", "heldout")
OBJECT_KINDS = {"comco-objects": "comco", "simco-objects": "simco"}  # object sets and the kind they draw
TASKS = {"comco-objects": "zeroshot_classification", "simco-objects": "zeroshot_classification",
         "heldout": "zeroshot_retrieval"}  # fmt: skip

MANIFEST = "clipprobe.json"
CLASSNAMES = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
DATASET_TYPE = "dataset_type.txt"
NSHARDS = "nshards.txt"

# CLIP_benchmark formats every line with template.format(c=classname), the same for every class, so only the
# caption forms of clipprobe.probes.captions.TEMPLATES that do not depend on the name can be used: bare, a (the
# study's TOC form, always "a") and long (its one-object sentence); not "article" ("an apple", "a dog").
# tests/test_benchsets.py checks that these equal captions.render(name, [object]) for every object.
TEMPLATES: tuple[str, ...] = (
    "{c}",
    "a {c}",
    "This vibrant display features a stunning {c} with its radiant glow.",
)
TEMPLATE_NAMES: tuple[str, ...] = ("bare", "a", "long")

SIZE_RANGE = (0.25, 0.9)  # an object's longer side, as a fraction of the image side
MIN_OBJECT_IMAGE = math.ceil(MIN_SMALL_PX / SIZE_RANGE[0])  # the smallest object is then MIN_SMALL_PX pixels
MAX_OBJECT_IMAGE = 4096
HELDOUT_SEED = 1_000_003  # distinct from the training corpora's default seed 0
HELDOUT_QUALITY = 90  # JPEG quality, as the corpus's default
# Defaults of the options left as None: 224 px as the probe sets, 64 px as the corpus.
DEFAULTS: dict[str, dict[str, Any]] = {
    "objects": {"per_class": 10, "image_size": 224, "seed": 0},
    "heldout": {"num_samples": 1000, "image_size": 64, "seed": HELDOUT_SEED, "order": "random", "p_order": 1.0,
                "objects": "1-4"},
}  # fmt: skip
OBJECT_OPTIONS = ("per_class",)
HELDOUT_OPTIONS = ("num_samples", "order", "p_order", "objects")
CONTENT_OPTIONS = ("per_class", "num_samples", "image_size", "seed", "order", "p_order", "objects", "shard_size",
                   "split")  # fmt: skip
RUN_OPTIONS = ("progress",)
_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def benchset_task(name: str) -> str:
    """CLIP_benchmark's task for a set: ``zeroshot_classification`` or ``zeroshot_retrieval``.

    Raises:
        UserError: unknown set name.
    """
    _check_name(name)
    return TASKS[name]


def _check_name(name: Any) -> None:
    if name not in BENCHSETS:
        raise UserError(f"unknown benchset {name!r}; choose one of: {', '.join(BENCHSETS)}")


@dataclass(frozen=True)
class BenchConfig:
    """Everything that determines a set's content (and nothing else: not paths, not the progress bar).

    ``classes`` and ``per_class`` are set for the object sets; ``counts``, ``order``, ``p_order`` and
    ``quality`` for ``heldout``.
    """

    name: str
    num_samples: int
    image_size: int
    seed: int
    shard_size: int
    split: str
    classes: tuple[str, ...] = ()
    per_class: int | None = None
    counts: tuple[int, ...] | None = None
    order: str | None = None
    p_order: float | None = None
    quality: int | None = None

    @property
    def task(self) -> str:
        return TASKS[self.name]

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def params(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and v != ()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def versions(self) -> dict[str, str]:
        """The generator versions the content depends on: this module's and the renderer's or the corpus's."""
        if self.name in OBJECT_KINDS:
            return {"benchset": GENERATOR_VERSION, "probe_sets": str(PROBE_SET_VERSION)}
        return {"benchset": GENERATOR_VERSION, "corpus": str(CORPUS_VERSION)}

    def key(self) -> str:
        """A hash of the content-determining parameters and the generator versions."""
        blob = json.dumps({**self.params(), "generator_versions": self.versions()}, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def corpus_config(self) -> CorpusConfig:
        """The corpus generator's configuration of a ``heldout`` set."""
        assert self.counts is not None and self.order is not None and self.p_order is not None
        return CorpusConfig(self.num_samples, self.counts, self.order, self.p_order, 0.0, self.image_size,
                            self.shard_size, self.seed, self.quality or HELDOUT_QUALITY)  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_types(values: dict[str, Any]) -> None:
    """Refuse values of the wrong type (possible from Python or YAML; the CLI converts its options)."""
    kinds = {
        "per_class": ("a whole number", _is_int),
        "num_samples": ("a whole number", _is_int),
        "image_size": ("a whole number of pixels", _is_int),
        "seed": ("a whole number", _is_int),
        "shard_size": ("a whole number", _is_int),
        "p_order": ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
        "order": ("one of " + ", ".join(ORDER_POLICIES), lambda v: isinstance(v, str)),
        "objects": ("a count or range such as 1-4", lambda v: isinstance(v, (str, int, list, tuple))),
        "split": ("a folder name such as test", lambda v: isinstance(v, str)),
    }
    for option, value in values.items():
        kind, ok = kinds[option]
        if value is not None and not ok(value):
            raise UserError(f"--{option.replace('_', '-')} must be {kind}, got {value!r}")


def resolve_benchset(
    name: str,
    per_class: int | None = None,
    num_samples: int | None = None,
    image_size: int | None = None,
    seed: int | None = None,
    order: str | None = None,
    p_order: float | None = None,
    objects: str | None = None,
    shard_size: int = 1000,
    split: str = "test",
    **unknown: Any,
) -> BenchConfig:
    """Check a set's options and fill in the defaults of its name (see :func:`benchset` for their meaning).

    Options left as None take the set's defaults (:data:`DEFAULTS`); options of the other kind of set must be
    left as None.

    Raises:
        UserError: an unknown name or option, a value of the wrong type or out of range, an option that does not
            apply to the set, an image too small for the renderer, too many shards, or a set that would not fit
            in memory.
    """
    if unknown:
        raise UserError(
            f"unknown benchset option(s) {', '.join(sorted(unknown))}; choose from those of 'clipprobe data "
            f"benchset': {', '.join(CONTENT_OPTIONS + RUN_OPTIONS)}"
        )
    _check_name(name)
    values = {"per_class": per_class, "num_samples": num_samples, "image_size": image_size, "seed": seed,
              "order": order, "p_order": p_order, "objects": objects, "shard_size": shard_size, "split": split}  # fmt: skip
    _check_types(values)
    is_objects = name in OBJECT_KINDS
    foreign = [k for k in (HELDOUT_OPTIONS if is_objects else OBJECT_OPTIONS) if values[k] is not None]
    if foreign:
        which = "heldout" if is_objects else "comco-objects and simco-objects"
        shown = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise UserError(f"{shown} applies to {which} only, not {name}; leave it out")
    defaults = DEFAULTS["objects" if is_objects else "heldout"]
    v = {k: defaults[k] if values[k] is None and k in defaults else values[k] for k in values}
    v = {k: int(x) if _is_int(x) else x for k, x in v.items()}  # numpy integers too, for JSON
    if v["seed"] < 0:
        raise UserError(f"--seed must be 0 or more, got {v['seed']}")
    if v["shard_size"] < 1:
        raise UserError(f"--shard-size must be at least 1, got {v['shard_size']}")
    if not _SPLIT.match(v["split"]) or v["split"] in (".", ".."):
        raise UserError(f"--split {v['split']!r} is not a folder name; use letters, digits, '_', '-', e.g. test")
    if is_objects:
        cfg = _objects_config(name, v)
    else:
        cfg = _heldout_config(name, v)
    if cfg.num_shards > MAX_SHARDS:
        raise UserError(
            f"{cfg.num_samples} samples with --shard-size {cfg.shard_size} make {cfg.num_shards} shards (limit "
            f"{MAX_SHARDS}); raise --shard-size or make fewer samples"
        )
    return cfg


def _objects_config(name: str, v: dict[str, Any]) -> BenchConfig:
    kind = OBJECT_KINDS[name]
    if v["per_class"] < 1:
        raise UserError(f"--per-class must be at least 1 (images per object), got {v['per_class']}")
    if not MIN_OBJECT_IMAGE <= v["image_size"] <= MAX_OBJECT_IMAGE:
        raise UserError(
            f"--image-size must be between {MIN_OBJECT_IMAGE} and {MAX_OBJECT_IMAGE} pixels for {name} (its smallest "
            f"objects are {SIZE_RANGE[0]:.0%} of the side and need >= {MIN_SMALL_PX} px), got {v['image_size']}"
        )
    classes = object_names(kind)
    cfg = BenchConfig(name, v["per_class"] * len(classes), v["image_size"], v["seed"], v["shard_size"], v["split"],
                      classes=classes, per_class=v["per_class"])  # fmt: skip
    check_memory(object_memory(cfg), f"--image-size {cfg.image_size} with {cfg.num_samples} images",
                 "lower --image-size")  # fmt: skip
    return cfg


def _heldout_config(name: str, v: dict[str, Any]) -> BenchConfig:
    counts = parse_counts(v["objects"])
    checks = [
        (v["num_samples"] >= 1, f"--num-samples must be at least 1, got {v['num_samples']}"),
        (v["order"] in ORDER_POLICIES, f"unknown --order '{v['order']}'; choose one of: {', '.join(ORDER_POLICIES)}"),
        (0.0 <= v["p_order"] <= 1.0, f"--p-order must lie in [0, 1], got {v['p_order']}"),
        (16 <= v["image_size"] <= 1024, f"--image-size must be between 16 and 1024 pixels, got {v['image_size']}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    vocab = object_names("comco")
    if max(counts) > len(vocab):
        raise UserError(f"--objects asks for {max(counts)} distinct objects; only {len(vocab)}")
    cfg = BenchConfig(name, v["num_samples"], v["image_size"], v["seed"], v["shard_size"], v["split"],
                      counts=counts, order=v["order"], p_order=float(v["p_order"]), quality=HELDOUT_QUALITY)  # fmt: skip
    check_memory(corpus_memory(cfg.corpus_config()), f"--image-size {cfg.image_size}",
                 "lower --image-size")  # fmt: skip
    return cfg


def object_memory(cfg: BenchConfig) -> int:
    """Bytes drawing an object set takes at most: the renderer's caches of scaled sprites (RGBA, with a shadow
    mask; at most one entry per image drawn, and at most the caches' size) and a few full-size images."""
    lo, hi = object_sizes(cfg.image_size)
    entries = min(4096, cfg.num_samples, len(cfg.classes) * (hi - lo + 1))
    mean_area = (hi**3 - lo**3) / (3 * max(1, hi - lo))  # E[side**2] for a side uniform in [lo, hi]
    return round(5 * entries * mean_area) + 4 * 3 * cfg.image_size**2


def object_sizes(image_size: int) -> tuple[int, int]:
    """The least and the greatest side (pixels) of an object in an object set's image of ``image_size``."""
    lo = max(MIN_SMALL_PX, round(SIZE_RANGE[0] * image_size))
    return lo, max(lo, round(SIZE_RANGE[1] * image_size))


# ---------------------------------------------------------------------------------------------
# Samples. Each is {"__key__", image ext: bytes, "cls" or "txt": bytes, "json": bytes}.


def _key(index: int, total: int) -> str:
    return f"{index:0{max(6, len(str(total - 1)))}d}"


def object_sample(cfg: BenchConfig, index: int) -> dict[str, Any]:
    """Sample ``index`` of an object set: one object (class ``index % len(cfg.classes)``) at a random position and
    size on the studio background. Depends only on ``(cfg, index)``.

    Returns:
        ``{"__key__", "png": PNG bytes, "cls": label as ASCII digits, "json": metadata}``; the metadata holds
        the label, the object's name, the box it was drawn in, and the box and count of its opaque pixels.
    """
    label = index % len(cfg.classes)
    name = cfg.classes[label]
    rng = np.random.default_rng([cfg.seed, index])
    lo, hi = object_sizes(cfg.image_size)
    side = int(rng.integers(lo, hi + 1))
    x0, y0 = (int(rng.integers(0, cfg.image_size - side + 1)) for _ in range(2))
    box = (x0, y0, x0 + side, y0 + side)
    image, [(bbox, area)] = render(OBJECT_KINDS[cfg.name], (name,), (box,), cfg.image_size)
    meta = {"index": index, "label": label, "name": name, "box": list(box), "bbox": list(bbox), "area": area,
            "width": cfg.image_size, "height": cfg.image_size}  # fmt: skip
    return {"__key__": _key(index, cfg.num_samples), "png": encode_png(image), "cls": str(label).encode("ascii"),
            "json": json.dumps(meta, sort_keys=True).encode("utf-8")}  # fmt: skip


def heldout_sample(cfg: BenchConfig, index: int, vocab: tuple[str, ...]) -> dict[str, Any]:
    """Sample ``index`` of a ``heldout`` set: the corpus generator's sample (``corpus.make_sample``) with this set's
    seed. Depends only on ``(cfg, index)``.

    Returns:
        ``{"__key__", "jpg": JPEG bytes, "txt": the caption, "json": the corpus's metadata}``.
    """
    jpg, text, meta = make_sample(cfg.corpus_config(), index, vocab)
    key = _key(index, cfg.num_samples)
    meta["key"] = key
    return {"__key__": key, "jpg": jpg, "txt": text.encode("utf-8"),
            "json": json.dumps(meta, sort_keys=True).encode("utf-8")}  # fmt: skip


def iter_samples(cfg: BenchConfig) -> Iterator[dict[str, Any]]:
    """Every sample of a set, in order (one at a time)."""
    if cfg.name in OBJECT_KINDS:
        return (object_sample(cfg, i) for i in range(cfg.num_samples))
    vocab = object_names("comco")
    return (heldout_sample(cfg, i, vocab) for i in range(cfg.num_samples))


# ---------------------------------------------------------------------------------------------
# Writing.


def _write_split(folder: Path, samples: Iterable[dict[str, Any]], shard_size: int, bar: Any) -> tuple[int, int]:
    """Write ``samples`` as ``0.tar``, ``1.tar``, ... of ``shard_size`` samples and ``nshards.txt`` into ``folder``
    (inside a staging folder). Returns the number of samples and of shards."""
    import webdataset as wds

    folder.mkdir(parents=True)
    count, shards = 0, 0
    sink, f = None, None
    try:
        for sample in samples:
            if count % shard_size == 0:
                if sink is not None:
                    sink.close()
                    f.close()
                f = open(folder / f"{shards}.tar", "wb")  # closed below, also on errors
                sink = wds.TarWriter(f, encoder=False, mtime=0)  # a fixed mtime: same samples, same bytes
                shards += 1
            sink.write(sample)
            count += 1
            bar.update(1)
    finally:
        if sink is not None:
            sink.close()
        if f is not None:
            f.close()
    (folder / NSHARDS).write_text(f"{shards}\n", encoding="utf-8")
    return count, shards


def _write_metadata(root: Path, task: str, classes: tuple[str, ...]) -> None:
    if task == "zeroshot_retrieval":
        (root / DATASET_TYPE).write_text("retrieval\n", encoding="utf-8")
    else:
        (root / CLASSNAMES).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
        (root / TEMPLATES_FILE).write_text("".join(f"{t}\n" for t in TEMPLATES), encoding="utf-8")


def _manifest(cfg: BenchConfig, shards: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format": 1,
        "name": cfg.name,
        "task": cfg.task,
        "generator_version": GENERATOR_VERSION,
        "generator_versions": cfg.versions(),
        "key": cfg.key(),
        "params": cfg.params(),
        "split": cfg.split,
        "num_samples": cfg.num_samples,
        "num_shards": shards,
        "clip_benchmark": {"dataset": f"wds/{cfg.name}", "task": cfg.task},
    }
    if cfg.name in OBJECT_KINDS:
        lo, hi = object_sizes(cfg.image_size)
        out.update(kind=OBJECT_KINDS[cfg.name], image_format="png", classes=list(cfg.classes),
                   num_classes=len(cfg.classes), per_class=cfg.per_class, templates=list(TEMPLATES),
                   template_names=list(TEMPLATE_NAMES), object_sizes={"min": lo, "max": hi})  # fmt: skip
    else:
        out.update(kind="comco", image_format="jpg", objects=list(object_names("comco")))
    return out


def generate_benchset(cfg: BenchConfig, out: str | os.PathLike, overwrite: bool = False, progress: bool = True) -> Path:
    """Write the set ``cfg`` to ``out`` (staged: ``out`` appears complete or not at all).

    Raises:
        UserError: ``out`` is not empty and ``overwrite`` is false, cannot be written, or the set would not fit on
            its disk.
    """
    from tqdm import tqdm

    out = check_output_dir(out, overwrite)
    check_disk(cfg.num_samples * MIN_SAMPLE_BYTES, out, f"{cfg.num_samples} samples",
               "make fewer samples or choose another --out")  # fmt: skip
    with staged_dir(out) as root:
        _write_metadata(root, cfg.task, cfg.classes)
        with tqdm(total=cfg.num_samples, desc=cfg.name, unit="sample", disable=None if progress else True) as bar:
            _, shards = _write_split(root / cfg.split, iter_samples(cfg), cfg.shard_size, bar)
        atomic_write_json(root / MANIFEST, _manifest(cfg, shards))
    return out


def convert_corpus(corpus: str, out: str | os.PathLike, shard_size: int = 1000, split: str = "test",
                   overwrite: bool = False, progress: bool = True) -> Path:  # fmt: skip
    """Write a corpus of ``clipprobe data corpus`` (or a split of one) as a retrieval set (``wds/heldout``): its
    samples in order, with their keys, JPEG bytes, captions and metadata.

    Args:
        corpus: a shard spec (a folder, ``corpus/{00000..00009}.tar``, ``a.tar::b.tar``).
        out: the set's folder (refused if not empty, unless ``overwrite``).
        shard_size: samples per shard.
        split: the split's folder name.
        overwrite: replace a non-empty ``out``.
        progress: show a progress bar.

    Raises:
        UserError: no shard matches, a shard is unreadable, the corpus holds no sample, ``out`` holds the corpus,
            is not empty (unless ``overwrite``) or cannot be written, or a bad ``shard_size`` or ``split``.
    """
    from tqdm import tqdm

    _check_types({"shard_size": shard_size, "split": split})
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, got {shard_size}")
    if not _SPLIT.match(split) or split in (".", ".."):
        raise UserError(f"--split {split!r} is not a folder name; use letters, digits, '_', '-', e.g. test")
    urls = expand_urls(corpus, option="--corpus")
    check_not_input(out, [u.removeprefix("file:") for u in urls if is_local(u)])
    out = check_output_dir(out, overwrite)

    def samples() -> Iterator[dict[str, Any]]:
        for s in iter_corpus_samples(urls):
            yield {"__key__": s["__key__"], "jpg": s["jpg"], "txt": s["txt"].encode("utf-8"),
                   "json": json.dumps(s["json"], sort_keys=True).encode("utf-8")}  # fmt: skip

    with staged_dir(out) as root:
        _write_metadata(root, "zeroshot_retrieval", ())
        with tqdm(desc="heldout", unit="sample", disable=None if progress else True) as bar:
            count, shards = _write_split(root / split, samples(), shard_size, bar)
        if count == 0:
            raise UserError(f"--corpus {corpus} holds no samples; give a corpus written by 'clipprobe data corpus'")
        source = [str(Path(u.removeprefix("file:")).resolve()) if is_local(u) else u for u in urls]
        atomic_write_json(root / MANIFEST, {
            "format": 1, "name": "heldout", "task": "zeroshot_retrieval", "generator_version": GENERATOR_VERSION,
            "params": {"corpus": source, "shard_size": shard_size, "split": split}, "split": split,
            "num_samples": count, "num_shards": shards, "image_format": "jpg",
            "clip_benchmark": {"dataset": "wds/heldout", "task": "zeroshot_retrieval"},
        })  # fmt: skip
    return out


def default_benchset_dir() -> Path:
    """Where :func:`ensure_benchset` keeps sets: ``benchsets`` beside the probe-set cache
    (``$CLIPPROBE_CACHE/../benchsets``, default ``~/.cache/clipprobe/benchsets``)."""
    return default_cache_dir().parent / "benchsets"


def ensure_benchset(name: str, /, cache_dir: str | os.PathLike | None = None, **params: Any) -> Path:
    """The folder (CLIP_benchmark's ``--dataset_root``) of a set with these parameters, generated once into a
    cache and then reused.

    The folder, ``<cache>/<name>-<hash16>``, is named after a hash of the resolved parameters (defaults filled in)
    and the generator versions, so equal requests share one folder. Processes sharing the cache (the tasks of an array)
    take turns through a lock file; under DDP call it on rank 0 first, then a barrier.

    Args:
        name: one of :data:`BENCHSETS`.
        cache_dir: cache root (default: :func:`default_benchset_dir`).
        **params: any option of ``clipprobe data benchset`` except ``out``, ``corpus`` and ``overwrite``;
            ``progress`` only changes how it is generated (default: no bar).

    Raises:
        UserError: bad parameters (see :func:`resolve_benchset`), or a cache that cannot be written when the set
            must be generated.
    """
    reserved = sorted(set(params) & {"name", "out", "corpus", "overwrite"})
    if reserved:
        raise UserError(
            f"benchset option(s) {', '.join(reserved)} cannot be set for a cached set (its folder is in the cache "
            "and named after its options); remove them"
        )
    progress = params.pop("progress", False)
    cfg = resolve_benchset(name, **params)
    path = (Path(cache_dir) if cache_dir is not None else default_benchset_dir()) / f"{name}-{cfg.key()[:16]}"
    if not (path / MANIFEST).is_file():
        where = "cache_dir" if cache_dir is not None else "$CLIPPROBE_CACHE"
        check_writable(path, "the benchset cache", f"set {where} to a folder you can write")
        with file_lock(path.with_name(path.name + ".lock")):  # processes sharing the cache take turns
            if not (path / MANIFEST).is_file():  # another process may have made it meanwhile
                generate_benchset(cfg, path, overwrite=True, progress=progress)
    return path


def benchset(
    name: str,
    out: str | None = None,
    per_class: int | None = None,
    num_samples: int | None = None,
    image_size: int | None = None,
    seed: int | None = None,
    order: str | None = None,
    p_order: float | None = None,
    objects: str | None = None,
    shard_size: int = 1000,
    split: str = "test",
    corpus: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write an offline zero-shot dataset in CLIP_benchmark's webdataset layout (clip_benchmark eval --dataset
    wds/NAME --dataset_root OUT).

    comco-objects and simco-objects are classification sets (one object per image, one class per object);
    heldout is an image-caption retrieval set from the synthetic corpus generator with a seed of its own.

    Args:
        name: comco-objects, simco-objects or heldout.
        out: output folder (default: benchsets/NAME; refused if not empty, unless --overwrite).
        per_class: objects sets: images per object (default 10).
        num_samples: heldout: image-caption pairs (default 1000).
        image_size: image side in pixels (default: 224 for the objects sets, as the probe sets; 64 for heldout,
            as the corpus).
        seed: random seed; sample i depends only on (seed, i) (default: 0 for the objects sets, 1000003 for
            heldout, distinct from the training corpora's 0).
        order: heldout: mention order of the objects in a caption: random (default), size_first or small_first.
        p_order: heldout: probability that size_first (small_first) names the largest (smallest) object first
            (default 1).
        objects: heldout: objects per image, a range or list such as 1-4 (default) or 2,3.
        shard_size: samples per tar shard.
        split: the split's folder name (clip_benchmark --split).
        corpus: heldout: convert this corpus (a folder of 'clipprobe data corpus' shards) instead of generating
            one; only --shard-size and --split apply then.
        overwrite: replace a non-empty output folder.
        progress: show a progress bar.
    """
    _check_name(name)
    out = out if out is not None else f"benchsets/{name}"
    if corpus is not None:
        given = {"per_class": per_class, "num_samples": num_samples, "image_size": image_size, "seed": seed,
                 "order": order, "p_order": p_order, "objects": objects}  # fmt: skip
        extra = [k for k, v in given.items() if v is not None]
        if name != "heldout" or extra:
            shown = ", ".join("--" + k.replace("_", "-") for k in extra) or f"name {name}"
            raise UserError(f"--corpus converts a corpus to heldout; {shown} does not apply then, leave it out")
        path = convert_corpus(corpus, out, shard_size=shard_size, split=split, overwrite=overwrite, progress=progress)
        count = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["num_samples"]
        print(f"wrote heldout ({count} image-caption pairs from {corpus}) to {path}")
    else:
        cfg = resolve_benchset(name, per_class, num_samples, image_size, seed, order, p_order, objects, shard_size,
                               split)  # fmt: skip
        path = generate_benchset(cfg, out, overwrite=overwrite, progress=progress)
        what = (f"{len(cfg.classes)} classes x {cfg.per_class} images" if cfg.name in OBJECT_KINDS
                else f"{cfg.num_samples} image-caption pairs")  # fmt: skip
        shards = f"{cfg.num_shards} shard" + ("s" if cfg.num_shards > 1 else "")
        print(f"wrote {name} ({what}, {cfg.image_size} px, {shards}) to {path}")
    print(f"evaluate: clip_benchmark eval --dataset wds/{name} --dataset_root {path} --task {TASKS[name]} "
          f"--split {split} --model ... --pretrained ...")  # fmt: skip
    return path
