"""Standard evaluation beside the bias: zero-shot classification and retrieval through CLIP_benchmark.

clipprobe does not re-implement these metrics. Two tasks, registered like probes so that ``clipprobe
eval``, the training callback and the experiments run them through the one evaluation function
(:func:`clipprobe.evaluation.runner.run_evaluation`), call CLIP_benchmark's own functions on the model:

- ``zeroshot_classification``: ``clip_benchmark.metrics.zeroshot_classification.evaluate`` -> top-1 and
  top-5 accuracy (``acc1``, ``acc5``; top-5 only with 5 classes or more) and ``mean_per_class_recall``;
- ``zeroshot_retrieval``: ``clip_benchmark.metrics.zeroshot_retrieval.evaluate`` -> image and text
  ``recall@k`` (CLIP-paper style: a query counts when any of its positives is among the top k).

They run on a :class:`Benchmark`: any CLIP_benchmark dataset by its own name (``cifar10``, ``imagenet1k``,
``mscoco_captions``, ``flickr30k``, ``wds/<name>``) in a local folder (clipprobe never downloads), or one
of the project's offline sets (``comco-objects``, ``simco-objects``, ``heldout``; :mod:`clipprobe.data.benchsets`),
generated once into the cache and read through CLIP_benchmark's webdataset reader.

The model reaches CLIP_benchmark through the :class:`~clipprobe.probes.encode.CachedEncoder`: texts are
encoded once per evaluation (a class prompt shared with a text probe is not encoded again) and images
once by their pixels' content, shared by ranks under DDP. Values are CLIP_benchmark's numbers as it
returns them; each entry adds its count and a 95% Wilson interval.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipprobe.errors import UserError
from clipprobe.probes.base import Metric, ProbeContext, ProbeResult, register
from clipprobe.probes.common import check_option, parse_options, probe_options
from clipprobe.probes.stats import wilson

TASKS = ("zeroshot_classification", "zeroshot_retrieval")
OFFLINE = ("comco-objects", "simco-objects", "heldout")  # the project's own sets (clipprobe.data.benchsets)

# CLIP_benchmark 1.6's datasets whose task clipprobe runs (its builder's names; retrieval ones marked).
_CLASSIFICATION = (
    "cifar10", "cifar100", "imagenet1k", "imagenet1k-unverified", "imagenet-w", "imagenetv2", "imagenet_sketch",
    "imagenet-a", "imagenet-r", "imagenet-o", "objectnet", "voc2007", "food101", "sun397", "cars", "fgvc_aircraft",
    "dtd", "pets", "caltech101", "flowers", "mnist", "stl10", "eurosat", "gtsrb", "country211", "pcam",
    "renderedsst2", "fer2013", "dummy",
)  # fmt: skip
_RETRIEVAL = ("mscoco_captions", "flickr30k", "flickr8k")
_PREFIXES = ("wds/", "vtab/", "tfds/")
_NOT_SUPPORTED = ("voc2007_multilabel", "winoground", "sugar_crepe", "multilingual_mscoco_captions",
                  "crossmodal3600", "xtd10", "xtd200", "flickr30k-200", "babel_imagenet")  # fmt: skip


@dataclass(frozen=True)
class Benchmark:
    """A dataset a standard task runs on.

    Attributes:
        label: its name in result files, log keys (``eval/<label>/acc1``) and reports.
        name: CLIP_benchmark's name (``cifar10``, ``wds/comco-objects``).
        root: the local folder it is read from.
        task: ``zeroshot_classification`` or ``zeroshot_retrieval``.
        split: the split read (``test``).
        fingerprint: SHA-256 of the folder's file list and sizes and its small text files (identity).
    """

    label: str
    name: str
    root: str
    task: str
    split: str = "test"
    fingerprint: str = field(default="", compare=False)

    def describe(self) -> dict[str, Any]:
        """The dataset as recorded in a result's ``probe_set`` field."""
        return {"name": self.name, "kind": "benchmark", "task": self.task, "split": self.split, "path": self.root,
                "manifest_sha256": self.fingerprint}  # fmt: skip


def benchmark_label(name: str) -> str:
    """``cifar10`` -> ``cifar10``, ``wds/vtab/cifar10`` -> ``wds-vtab-cifar10`` (file-name safe)."""
    return name.replace("/", "-")


def resolve_benchmark(
    entry: str,
    dataset_root: str | None = None,
    split: str = "test",
    cache_dir: str | None = None,
    generate: dict[str, Any] | None = None,
) -> Benchmark:
    """The :class:`Benchmark` for a dataset name, checked (name, folder, task) before any model is built.

    Args:
        entry: a CLIP_benchmark dataset name, or an offline set (``comco-objects``, ``simco-objects``,
            ``heldout``), generated once into the cache unless ``dataset_root`` is given.
        dataset_root: the dataset's local folder; ``{dataset}`` in it is replaced by the name after ``wds/``
            (or the name itself), as CLIP_benchmark's ``--dataset_root`` does.
        split: the split to read.
        cache_dir: where offline sets are generated (default: the cache).
        generate: generation options of offline sets, by name (``{comco-objects: {per_class: 5}}``; those of
            ``clipprobe data benchset``).

    Raises:
        UserError: an unknown or unsupported dataset, a missing ``--dataset_root``, a folder that does not
            hold the dataset.
    """
    entry = str(entry).strip()
    if entry in OFFLINE and not dataset_root:
        from clipprobe.data.benchsets import ensure_benchset

        params = dict((generate or {}).get(entry) or {})
        split = str(params.get("split", split))  # a set generated under another split name is read there
        root = ensure_benchset(entry, cache_dir=cache_dir, **params)
        return _checked(Benchmark(entry, f"wds/{entry}", str(Path(root).resolve()), _wds_task(Path(root)), split))
    name = check_benchmark(entry, dataset_root)
    if name == "dummy":
        return Benchmark("dummy", "dummy", "", "zeroshot_classification", split, "dummy")
    short = name.split("/", 1)[1] if name.startswith("wds/") else name
    root = Path(dataset_root.replace("{dataset}", short).replace("{dataset_cleaned}", short.replace("/", "-")))
    root = root.expanduser()
    if not root.is_dir():
        raise UserError(f"dataset {name}: --dataset_root {root} is not a folder; give the folder that holds it "
                        "(clipprobe never downloads)")  # fmt: skip
    task = _wds_task(root) if name.startswith("wds/") else ("zeroshot_retrieval" if name in _RETRIEVAL
                                                             else "zeroshot_classification")  # fmt: skip
    return _checked(Benchmark(benchmark_label(name), name, str(root.resolve()), task, split))


def check_benchmark(entry: str, dataset_root: str | None) -> str:
    """Check a dataset name (and that a root is given where one is needed) without reading anything; return
    CLIP_benchmark's name for it.

    Raises:
        UserError: an unknown or unsupported dataset, or a missing ``--dataset_root``.
    """
    entry = str(entry).strip()
    if entry in OFFLINE:
        return f"wds/{entry}"
    if not entry:
        raise UserError(f"an empty dataset name in --benchmarks; give names such as {', '.join(OFFLINE)}, cifar10")
    name = entry
    if any(name == n or name.startswith(n + "/") for n in _NOT_SUPPORTED):
        raise UserError(f"dataset {name}: its task is not zero-shot classification or retrieval, which clipprobe "
                        "runs; evaluate it with clip_benchmark itself")  # fmt: skip
    if name not in _CLASSIFICATION + _RETRIEVAL and not (name.startswith(_PREFIXES) and len(name.split("/", 1)[1])):
        raise UserError(f"unknown dataset {name!r}; give a CLIP_benchmark dataset name (cifar10, imagenet1k, "
                        f"mscoco_captions, flickr30k, wds/<name>, ...) or one of {', '.join(OFFLINE)}")  # fmt: skip
    if name.startswith(("vtab/", "tfds/")):
        raise UserError(f"dataset {name} needs tensorflow-datasets, which clipprobe does not install; convert it "
                        "to CLIP_benchmark's webdataset layout (clip_benchmark_export_wds) and pass wds/<name>")  # fmt: skip
    if name != "dummy" and not dataset_root:
        raise UserError(f"dataset {name} needs --dataset_root, the local folder that holds it (clipprobe never "
                        "downloads); prepare it there as CLIP_benchmark expects")  # fmt: skip
    return name


def _wds_task(root: Path) -> str:
    """A webdataset set's task, from its ``dataset_type.txt`` as CLIP_benchmark reads it."""
    kind_file = root / "dataset_type.txt"
    kind = kind_file.read_text(encoding="utf-8").strip() if kind_file.is_file() else ""
    if kind == "retrieval":
        return "zeroshot_retrieval"
    if kind and kind != "classification":
        raise UserError(f"{root}: dataset_type.txt says {kind!r}; clipprobe runs classification and retrieval sets")
    return "zeroshot_classification"


def _download_needed(bench: Benchmark) -> str | None:
    """The file CLIP_benchmark would fetch with wget for this dataset even with ``download=False`` (its caption
    sets fetch their annotations and archives whenever they are missing), or None."""
    root, split = Path(bench.root), bench.split
    needed: list[Path] = []
    if bench.name == "mscoco_captions":
        needed = [root / ("train2014" if split == "train" else "val2014"), root / f"coco_{split}_karpathy.json"]
    elif bench.name in ("flickr30k", "flickr8k"):
        needed = [root / f"{bench.name}_{split}_karpathy.txt"]
    missing = next((p for p in needed if not p.exists()), None)
    return None if missing is None else missing.name


def _checked(bench: Benchmark) -> Benchmark:
    """Open the dataset once without a transform (a missing or incomplete folder fails now, in one line)
    and fill in its fingerprint."""
    missing = _download_needed(bench)
    if missing is not None:
        raise UserError(f"dataset {bench.name}: {missing} is missing from {bench.root} (CLIP_benchmark would download "
                        "it; clipprobe never does); put it there first")  # fmt: skip
    open_dataset(bench, None)
    return Benchmark(bench.label, bench.name, bench.root, bench.task, bench.split, folder_fingerprint(bench.root))


def folder_fingerprint(root: str | os.PathLike) -> str:
    """SHA-256 of a dataset folder: every file's relative path and size, and the bytes of its small text
    files (class names, templates, manifests), so a changed or replaced dataset gets another identity."""
    digest = hashlib.sha256()
    base = Path(root)
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        rel = path.relative_to(base).as_posix()
        size = path.stat().st_size
        digest.update(f"{rel}:{size}\n".encode())
        if path.suffix in (".txt", ".json") and size <= 1 << 20:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def open_dataset(bench: Benchmark, transform: Any) -> Any:
    """CLIP_benchmark's dataset object (``build_dataset`` with ``download=False``).

    Raises:
        UserError: the folder does not hold the dataset (missing files, a dataset that would need a download).
    """
    import warnings

    from clip_benchmark.datasets.builder import build_dataset

    try:
        with warnings.catch_warnings():  # CLIP_benchmark's webdataset reader leaves shardshuffle unset (no shuffle)
            warnings.filterwarnings("ignore", message=r"WebDataset\(shardshuffle=")
            return build_dataset(bench.name, root=bench.root or "root", transform=transform, split=bench.split,
                                 download=False, task=bench.task)  # fmt: skip
    except (RuntimeError, OSError, AssertionError, ValueError, KeyError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"dataset {bench.name} cannot be read from {bench.root} ({first}); prepare it there first "
                        "(clipprobe never downloads) or fix --dataset_root") from None  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Options.


@probe_options("zeroshot_classification")
@dataclass
class ClassificationOptions:
    """Options of ``zeroshot_classification`` (and the loader options ``zeroshot_retrieval`` shares).

    Attributes:
        batch_size: images per loader batch (as CLIP_benchmark's ``--batch_size``).
        num_workers: loader workers (a webdataset set uses at most one per shard).
    """

    batch_size: int = 64
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_option(self, "batch_size", self.batch_size >= 1, "at least 1")
        check_option(self, "num_workers", self.num_workers >= 0, "0 or more")


@probe_options("zeroshot_retrieval")
@dataclass
class RetrievalOptions(ClassificationOptions):
    """Options of ``zeroshot_retrieval``: the loader's (``batch_size``, ``num_workers``) and

    Attributes:
        recall_k: the k of recall@k (CLIP_benchmark's ``--recall_k``).
    """

    recall_k: list[int] = field(default_factory=lambda: [1, 5, 10])

    def __post_init__(self) -> None:
        super().__post_init__()
        check_option(self, "recall_k", bool(self.recall_k) and all(k >= 1 for k in self.recall_k),
                     "a non-empty list of integers, each at least 1")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The model as CLIP_benchmark calls it.


class _Texts:
    """CLIP_benchmark's tokenizer and text side: "tokens" are row numbers of the texts asked, and the
    model encodes those texts through the cached encoder (so shared prompts are encoded once)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.texts: list[str] = []

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        start = len(self.texts)
        self.texts.extend(str(t) for t in texts)
        return torch.arange(start, len(self.texts))  # [B]

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_texts([self.texts[i] for i in rows.tolist()])


class _Model:
    """What CLIP_benchmark's evaluate functions call: ``encode_image`` / ``encode_text``, answered by the
    cached encoder (L2-normalised float32 on the CPU; CLIP_benchmark normalises again, which changes nothing)."""

    def __init__(self, encoder: Any, texts: _Texts) -> None:
        self.encoder, self.texts = encoder, texts

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_pixels(images)

    def encode_text(self, rows: torch.Tensor) -> torch.Tensor:
        return self.texts.encode(rows)


@contextlib.contextmanager
def _bars(progress: bool) -> Iterator[None]:
    """CLIP_benchmark's own tqdm bars, hidden unless progress is asked for, and its known NumPy warning."""
    import warnings

    from clip_benchmark.metrics import zeroshot_classification as zc
    from clip_benchmark.metrics import zeroshot_retrieval as zr

    saved = zc.tqdm, zr.tqdm
    with warnings.catch_warnings():  # CLIP_benchmark 1.6's accuracy() converts a 1-element array (NumPy 1.25+ warns)
        warnings.filterwarnings("ignore", message="Conversion of an array with ndim > 0", category=DeprecationWarning)
        if not progress:
            zc.tqdm = zr.tqdm = functools.partial(saved[0], disable=True)
        try:
            yield
        finally:
            zc.tqdm, zr.tqdm = saved


class _Counted:
    """The loader's batches, counting images and texts as CLIP_benchmark reads them; replayed from memory
    when the encoder keeps inputs (the training callback) and they fit its pixel budget."""

    def __init__(self, encoder: Any, key: Any, make: Any, dataset: Any) -> None:
        self.encoder, self.key, self.make = encoder, key, make
        self.dataset = dataset  # CLIP_benchmark reads the class names from the loader's dataset
        self.images = self.texts = 0

    def __iter__(self) -> Iterator[Any]:
        keep = getattr(self.encoder, "keep_batches", None)
        batches = keep(self.key, self.make) if keep else self.make()
        for images, labels in batches:
            self.images += len(images)
            if isinstance(labels, (list, tuple)) and labels and isinstance(labels[0], (list, tuple)):
                self.texts += sum(len(c) for c in labels)
            yield images, labels


def _dataset(ctx: ProbeContext) -> Any:
    """The task's dataset through the model's image preprocess."""
    bench: Benchmark = ctx.dataset
    if getattr(ctx.encoder, "preprocess", None) is None or not hasattr(ctx.encoder, "encode_pixels"):
        raise UserError(f"{bench.task} needs a real model (an image preprocess and pixel encoding)")
    return open_dataset(bench, ctx.encoder.preprocess)


def _loader(ctx: ProbeContext, dataset: Any, batch_size: int, num_workers: int) -> _Counted:
    bench: Benchmark = ctx.dataset

    def make() -> Any:
        from clip_benchmark.datasets.builder import get_dataset_collate_fn

        if bench.name.startswith("wds/"):
            workers = min(num_workers, _num_shards(bench))  # an idle webdataset worker is an error
            return torch.utils.data.DataLoader(dataset.batched(batch_size), batch_size=None, shuffle=False,
                                               num_workers=workers)  # fmt: skip
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                           collate_fn=get_dataset_collate_fn(bench.name))  # fmt: skip

    return _Counted(ctx.encoder, (bench.fingerprint, bench.root, bench.split, batch_size), make, dataset)


def _num_shards(bench: Benchmark) -> int:
    try:
        return max(1, int((Path(bench.root) / bench.split / "nshards.txt").read_text().strip()))
    except (OSError, ValueError):
        return 1


# ---------------------------------------------------------------------------------------------
# The tasks.


@register(
    "zeroshot_classification",
    needs_probe_set=False,
    needs_dataset=True,
    by_default=False,
    summary="Zero-shot classification (CLIP_benchmark): top-1/top-5 accuracy, mean per-class recall.",
)
def zeroshot_classification(ctx: ProbeContext) -> ProbeResult:
    """CLIP_benchmark's zero-shot classification of ``ctx.dataset`` with its class names and templates."""
    from clip_benchmark.metrics import zeroshot_classification as zc

    opts = parse_options(ClassificationOptions, ctx.options, "zeroshot_classification")
    bench: Benchmark = ctx.dataset
    dataset = _dataset(ctx)
    classes, templates = list(dataset.classes), dataset.templates
    batches = _loader(ctx, dataset, opts.batch_size, opts.num_workers)
    texts = _Texts(ctx.encoder)
    # Every class prompt in one batched pass (CLIP_benchmark then asks class by class and finds them encoded).
    ctx.encoder.encode_texts([p for c in classes for p in (templates[c] if isinstance(templates, dict) else
                                                            [t.format(c=c) for t in templates])])  # fmt: skip
    with _bars(ctx.progress):
        got = zc.evaluate(_Model(ctx.encoder, texts), batches, texts, classes, templates, device="cpu", amp=False)
    if "acc1" not in got:
        raise UserError(f"dataset {bench.name} is multi-label; clipprobe runs single-label classification")
    n, c = batches.images, len(classes)
    result = ProbeResult("zeroshot_classification", config={**vars(opts), "classes": c, "images": n,
                                                              "templates": len(templates)})  # fmt: skip
    for name, key, k in (("acc1", "top1", 1), ("acc5", "top5", 5)):
        value = float(got[name])
        if value == value:  # CLIP_benchmark gives NaN for top-5 with fewer than 5 classes
            result.add(
                Metric(name, "accuracy", value, n, wilson(round(value * n), n), None, key, None, min(1.0, k / c))
            )
    recall = float(got["mean_per_class_recall"])
    result.add(Metric("mean_per_class_recall", "mean_per_class_recall", recall, n, (float("nan"), float("nan")),
                      None, None, None, 1.0 / c))  # fmt: skip
    return result


@register(
    "zeroshot_retrieval",
    needs_probe_set=False,
    needs_dataset=True,
    by_default=False,
    summary="Zero-shot image-text retrieval (CLIP_benchmark): image and text recall@k.",
)
def zeroshot_retrieval(ctx: ProbeContext) -> ProbeResult:
    """CLIP_benchmark's image and text retrieval recall@k on ``ctx.dataset``."""
    from clip_benchmark.metrics import zeroshot_retrieval as zr

    opts = parse_options(RetrievalOptions, ctx.options, "zeroshot_retrieval")
    bench: Benchmark = ctx.dataset
    batches = _loader(ctx, _dataset(ctx), opts.batch_size, opts.num_workers)
    texts = _Texts(ctx.encoder)
    try:
        with _bars(ctx.progress):
            got = zr.evaluate(_Model(ctx.encoder, texts), batches, texts, device="cpu", amp=False,
                              recall_k_list=list(opts.recall_k))  # fmt: skip
    except RuntimeError as exc:
        if "selected index k out of range" in str(exc):
            raise UserError(f"zeroshot_retrieval.recall_k={opts.recall_k}: {bench.name} has only {batches.images} "
                            "images; use smaller k") from None  # fmt: skip
        raise
    images, captions = batches.images, batches.texts
    result = ProbeResult("zeroshot_retrieval", config={**vars(opts), "images": images, "texts": captions})
    per_image = captions / max(images, 1)
    for k in opts.recall_k:
        for side, count, chance in (("image", captions, k / images), ("text", images, k * per_image / captions)):
            value = float(got[f"{side}_retrieval_recall@{k}"])
            result.add(Metric(f"{side}_retrieval_recall@{k}", f"{side}_retrieval_recall", value, count,
                              wilson(round(value * count), count), None, str(k), None, min(1.0, chance)))  # fmt: skip
    return result
