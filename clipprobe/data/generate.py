"""``clipprobe data comco | simco | objects``: generate probe sets (PROBES.md, section 1).

Every input is checked before anything is written. The plan (which objects go where) is made up
front in one process from seeded generators (``scenes.plan_scenes``); drawing a scene is a pure
function of its plan entry, so the files are byte-identical whatever the number of workers. Scenes
are drawn by a process pool in order and written into a staging folder that replaces ``--out`` in
one rename when everything is done.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import numbers
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clipprobe.data.limits import check_disk, check_memory, choose_workers
from clipprobe.data.probeset import MANIFEST, METADATA
from clipprobe.data.render import PNG_OPTIONS, render, save_png
from clipprobe.data.scenes import COUNTS, MIN_SMALL_PX, Geometry, SceneSpec, layout_geometry, plan_scenes
from clipprobe.data.scenes import reference_size as _reference_size
from clipprobe.data.sprites import check_objects, object_names
from clipprobe.errors import UserError
from clipprobe.fileio import (
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    check_writable,
    file_lock,
    staged_dir,
)

GENERATOR_VERSION = "1"
MIN_DEFAULT_SCENES = 200  # default scenes per group: the least multiple of the object count >= this
DEFAULT_COUNTS = (2, 3, 4, 5)
RUN_OPTIONS = ("workers", "progress")  # arguments that change how, not what, is generated
CONTENT_OPTIONS = ("objects", "scenes_per_layout", "image_size", "size_ratio", "equal_size", "names", "seed")
SCENE_MEMORY = 1024  # bytes a scene takes while a set is generated (its plan entry and metadata row)
MIN_SCENE_BYTES = 300  # the smallest scene PNG (16 px), and at least a tenth of a byte per pixel


@dataclass(frozen=True)
class GenConfig:
    """Everything that determines a probe set's content (and nothing else: not workers, not paths)."""

    kind: str
    objects: tuple[str, ...]
    counts: tuple[int, ...]
    scenes_per_layout: int
    image_size: int
    size_ratio: float
    equal_size: bool
    seed: int

    def params(self) -> dict[str, Any]:
        return {**asdict(self), "objects": list(self.objects), "counts": list(self.counts)}

    def key(self) -> str:
        """A hash of the content-determining parameters and the generator version."""
        blob = json.dumps({**self.params(), "generator_version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def resolve_config(
    kind: str,
    objects: tuple[int, ...] | list[int] = DEFAULT_COUNTS,
    scenes_per_layout: int | None = None,
    image_size: int = 224,
    size_ratio: float = 3.0,
    equal_size: bool = True,
    names: list[str] | None = None,
    seed: int = 0,
    **unknown: Any,
) -> GenConfig:
    """Check the generation arguments and fill in defaults (see ``comco`` for their meaning).

    The arguments may come from a user's ``--generate`` mapping (``clipprobe eval``, the probe callback),
    so unknown names and values of the wrong type are user errors too.

    Raises:
        UserError: an unknown kind, option or object name, a value of the wrong type, an invalid object
            count, a ratio below 1, a negative seed, an image too small for the layouts, too few objects
            for the largest scene, or more scenes than memory holds.
    """
    if unknown:
        raise UserError(
            f"unknown probe-set generation option(s) {', '.join(sorted(unknown))} (in --generate); "
            f"choose from those of 'clipprobe data comco': {', '.join(CONTENT_OPTIONS + RUN_OPTIONS)}"
        )
    _check_types(objects, scenes_per_layout, image_size, size_ratio, equal_size, names, seed)
    all_names = object_names(kind)
    counts = sorted(set(objects or ()))
    bad = [n for n in counts if n not in COUNTS]
    if not counts or bad:
        shown = ", ".join(map(str, bad)) or "none"
        raise UserError(f"invalid object count(s) in --objects: {shown}; choose from {', '.join(map(str, COUNTS))}")
    chosen = list(all_names) if names is None else list(names)
    check_objects(kind, chosen)
    if len(set(chosen)) != len(chosen):
        raise UserError("--names lists an object more than once; list each object once")
    chosen = [n for n in all_names if n in set(chosen)]  # vocabulary order, whatever the order given
    if len(chosen) < counts[-1]:
        raise UserError(
            f"--names gives {len(chosen)} objects but {counts[-1]}-object scenes need at least {counts[-1]}; "
            "name more objects or lower --objects"
        )
    if not (math.isfinite(size_ratio) and size_ratio >= 1.0):
        raise UserError(f"--size-ratio must be a number >= 1 (large side / small side), got {size_ratio}")
    _check_image_size(image_size, size_ratio, counts)
    if scenes_per_layout is None:
        scenes_per_layout = len(chosen) * math.ceil(MIN_DEFAULT_SCENES / len(chosen))
    if scenes_per_layout < 1:
        raise UserError(f"--scenes-per-layout must be at least 1, got {scenes_per_layout}")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    total = scenes_per_layout * sum(n + int(bool(equal_size)) for n in counts)
    check_memory(total * SCENE_MEMORY, f"--scenes-per-layout {scenes_per_layout} ({total} scenes)",
                 "lower --scenes-per-layout")  # fmt: skip
    return GenConfig(kind, tuple(chosen), tuple(int(n) for n in counts), int(scenes_per_layout), int(image_size),
                     float(size_ratio), bool(equal_size), int(seed))  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_types(objects: Any, scenes_per_layout: Any, image_size: Any, size_ratio: Any, equal_size: Any,
                 names: Any, seed: Any) -> None:  # fmt: skip
    """Refuse values of the wrong type (possible in a ``--generate`` mapping; the CLI converts its options)."""
    checks = [
        ("--objects", objects, "a list of object counts",
         isinstance(objects, (list, tuple)) and all(map(_is_int, objects))),
        ("--scenes-per-layout", scenes_per_layout, "a whole number", scenes_per_layout is None
         or _is_int(scenes_per_layout)),
        ("--image-size", image_size, "a whole number of pixels", _is_int(image_size)),
        ("--size-ratio", size_ratio, "a number", isinstance(size_ratio, numbers.Real)
         and not isinstance(size_ratio, bool)),
        ("--equal-size", equal_size, "true or false", isinstance(equal_size, bool)),
        ("--names", names, "a list of object names", names is None
         or (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names))),
        ("--seed", seed, "a whole number", _is_int(seed)),
    ]  # fmt: skip
    for option, value, kind, ok in checks:
        if not ok:
            raise UserError(f"{option} must be {kind}, got {value!r}")


def _check_image_size(image_size: int, ratio: float, counts: list[int]) -> None:
    if image_size < 16 or image_size > 4096:
        raise UserError(f"--image-size must be between 16 and 4096 pixels, got {image_size}")
    for n in counts:
        small = layout_geometry(n, image_size, ratio).small
        if small < MIN_SMALL_PX:
            raise UserError(
                f"--image-size {image_size} is too small for --size-ratio {ratio:g}: small objects in {n}-object "
                f"scenes would be {small} px (need >= {MIN_SMALL_PX}); raise --image-size or lower --size-ratio"
            )


# ---------------------------------------------------------------------------------------------
# Drawing, in worker processes. Each worker holds the layouts and caches its scaled sprites.

_WORKER: dict[str, Any] = {}


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one, e.g. under SLURM)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _init_worker(kind: str, root: str, image_size: int, geometries: dict[int, Geometry]) -> None:
    _WORKER.update(kind=kind, root=Path(root), image_size=image_size, geometries=geometries)


def _draw_scene(spec: SceneSpec) -> dict[str, Any]:
    """Draw and write one scene; return its metadata row (= ``Scene.to_json()``, built directly
    because ``dataclasses.asdict`` would cost a tenth of the generation time)."""
    geo: Geometry = _WORKER["geometries"][spec.n]
    img, stats = render(_WORKER["kind"], spec.names, geo.boxes(spec.large_slot), _WORKER["image_size"])
    save_png(img, _WORKER["root"] / spec.file_name)
    objs = [
        {"name": name, "slot": k, "bbox": list(bbox), "area": area, "is_large": k == spec.large_slot}
        for k, (name, (bbox, area)) in enumerate(zip(spec.names, stats, strict=True))
    ]
    return {"file_name": spec.file_name, "n": spec.n, "layout": f"{spec.n}obj", "variant": spec.variant,
            "objects": objs, "scene_id": spec.scene_id}  # fmt: skip


def _draw_all(specs: list[SceneSpec], workers: int, progress: bool) -> list[str]:
    """Draw every scene; return the metadata rows (JSON) in plan order, which ``imap`` keeps whatever
    finishes first. The pool is started before the progress bar, whose monitor thread must not be
    forked."""
    from tqdm import tqdm

    pool = None
    if workers > 1:  # fork shares the parent's sprite caches; elsewhere spawn (macOS: fork is unsafe)
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        init_args = (_WORKER["kind"], str(_WORKER["root"]), _WORKER["image_size"], _WORKER["geometries"])
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=init_args)
    try:
        chunk = max(1, min(64, len(specs) // (8 * workers)))
        rows_in = pool.imap(_draw_scene, specs, chunksize=chunk) if pool else map(_draw_scene, specs)
        bar = tqdm(
            rows_in,
            total=len(specs),
            desc=f"{_WORKER['kind']} scenes",
            unit="scene",
            disable=None if progress else True,
        )
        return [json.dumps(row, sort_keys=True) for row in bar]
    finally:
        if pool is not None:
            pool.terminate()  # all results are in (or an error is on its way up): stop the workers
            pool.join()


def _write_references(cfg: GenConfig, root: Path) -> None:
    geo = layout_geometry(1, cfg.image_size, cfg.size_ratio)
    box = geo.box(0, _reference_size(cfg.image_size, cfg.size_ratio))
    (root / "references").mkdir()
    for name in cfg.objects:
        img, _ = render(cfg.kind, (name,), (box,), cfg.image_size)
        save_png(img, root / "references" / f"{name}.png")


def _manifest(cfg: GenConfig, specs: list[SceneSpec]) -> dict[str, Any]:
    geos = {n: layout_geometry(n, cfg.image_size, cfg.size_ratio) for n in cfg.counts}
    is_default = cfg == resolve_config(cfg.kind)
    return {
        "kind": cfg.kind,
        "name": cfg.kind if is_default else f"{cfg.kind}-{cfg.key()[:8]}",
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "image_size": cfg.image_size,
        "size_ratio": cfg.size_ratio,
        "objects": list(cfg.objects),
        "vocabulary": list(cfg.objects),
        "counts": list(cfg.counts),
        "scenes_per_layout": cfg.scenes_per_layout,
        "num_scenes": len(specs),
        "groups": sorted({s.group for s in specs}),
        "object_sizes": {str(n): {"small": g.small, "large": g.large} for n, g in geos.items()},
        "reference_size": _reference_size(cfg.image_size, cfg.size_ratio),
        "png": dict(PNG_OPTIONS),
        "params": cfg.params(),
    }


def worker_memory(cfg: GenConfig) -> int:
    """Bytes a drawing process takes at most: its cache of scaled sprites (every object at the small and
    the large size of every layout, RGBA) and a few images of the full size (backdrop, scene, PNG)."""
    sprites = sum((g.small**2 + g.large**2) for g in (layout_geometry(n, cfg.image_size, cfg.size_ratio)
                                                      for n in cfg.counts))  # fmt: skip
    return 4 * len(cfg.objects) * sprites + 4 * 3 * cfg.image_size**2


def generate(cfg: GenConfig, out: str | os.PathLike, overwrite: bool = False, workers: int | None = None,
             progress: bool = True) -> Path:  # fmt: skip
    """Write the probe set ``cfg`` to ``out`` (staged; ``out`` appears complete or not at all).

    Raises:
        UserError: ``out`` is not empty and ``overwrite`` is false, cannot be written or would not fit on
            its disk, or ``workers`` < 1 (or far more than the cores).
    """
    workers = choose_workers(workers, available_cores(), worker_memory(cfg),
                             f"--image-size {cfg.image_size} ({len(cfg.objects)} objects)",
                             "--image-size, or draw fewer --names")  # fmt: skip
    out = check_output_dir(out, overwrite)
    total = cfg.scenes_per_layout * sum(n + int(cfg.equal_size) for n in cfg.counts) + len(cfg.objects)
    check_disk(total * max(MIN_SCENE_BYTES, cfg.image_size**2 // 10), out,
               f"{total} images of {cfg.image_size} px", "lower --scenes-per-layout or choose another --out")  # fmt: skip
    specs = plan_scenes(list(cfg.objects), list(cfg.counts), cfg.scenes_per_layout, cfg.equal_size, cfg.seed)
    geos = {n: layout_geometry(n, cfg.image_size, cfg.size_ratio) for n in cfg.counts}
    with staged_dir(out) as root:
        for group in sorted({s.group for s in specs}):
            (root / "scenes" / group).mkdir(parents=True)
        _init_worker(cfg.kind, str(root), cfg.image_size, geos)
        _write_references(cfg, root)
        rows = _draw_all(specs, min(workers, max(1, len(specs))), progress)
        atomic_write_text(root / METADATA, "\n".join(rows) + "\n")
        atomic_write_json(root / MANIFEST, _manifest(cfg, specs))
    return out


def _command(kind: str, out: str, objects: tuple[int, ...], scenes_per_layout: int | None, image_size: int,
             size_ratio: float, equal_size: bool, names: list[str] | None, seed: int, workers: int | None,
             overwrite: bool, progress: bool) -> Path:  # fmt: skip
    cfg = resolve_config(kind, objects, scenes_per_layout, image_size, size_ratio, equal_size, names, seed)
    path = generate(cfg, out, overwrite=overwrite, workers=workers, progress=progress)
    groups = len({(n, v) for n in cfg.counts for v in range(n + int(cfg.equal_size))})
    print(f"wrote {cfg.kind} probe set to {path}: {len(cfg.objects)} objects, {groups} groups x "
          f"{cfg.scenes_per_layout} scenes, {cfg.image_size} px")  # fmt: skip
    return path


def comco(
    out: str = "probesets/comco",
    objects: tuple[int, ...] = DEFAULT_COUNTS,
    scenes_per_layout: int | None = None,
    image_size: int = 224,
    size_ratio: float = 3.0,
    equal_size: bool = True,
    names: list[str] | None = None,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate a ComCO probe set: emoji objects named after COCO categories, in fixed-slot scenes.

    For each object count n there is one group of scenes per large slot (folder ``{n}obj_large{k}``)
    and an equal-size group (``{n}obj_equal``); every object fills every slot equally often.

    Args:
        out: output folder (refused if not empty, unless --overwrite).
        objects: object counts per scene, each in 2..5.
        scenes_per_layout: scenes per group (n objects, one size variant); default: the least
            multiple of the number of objects that is >= 200, so every object fills every slot
            equally often.
        image_size: image side in pixels.
        size_ratio: side of the large object / side of a small one (area ratio = its square).
        equal_size: also generate the equal-size group for each n.
        names: draw only these objects (default: all; see 'clipprobe data objects comco').
        seed: random seed of the object assignment.
        workers: processes drawing scenes (default: all cores); the output does not depend on it.
        overwrite: replace a non-empty output folder.
        progress: show a progress bar.
    """
    return _command("comco", out, objects, scenes_per_layout, image_size, size_ratio, equal_size, names, seed,
                    workers, overwrite, progress)  # fmt: skip


def simco(
    out: str = "probesets/simco",
    objects: tuple[int, ...] = DEFAULT_COUNTS,
    scenes_per_layout: int | None = None,
    image_size: int = 224,
    size_ratio: float = 3.0,
    equal_size: bool = True,
    names: list[str] | None = None,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate a SimCO probe set: 18 matte blue shapes in fixed-slot scenes.

    Same scene groups and balance as ``clipprobe data comco``.

    Args:
        out: output folder (refused if not empty, unless --overwrite).
        objects: object counts per scene, each in 2..5.
        scenes_per_layout: scenes per group (n objects, one size variant); default: the least
            multiple of the number of objects that is >= 200.
        image_size: image side in pixels.
        size_ratio: side of the large object / side of a small one (area ratio = its square).
        equal_size: also generate the equal-size group for each n.
        names: draw only these shapes (default: all 18; see 'clipprobe data objects simco').
        seed: random seed of the object assignment.
        workers: processes drawing scenes (default: all cores); the output does not depend on it.
        overwrite: replace a non-empty output folder.
        progress: show a progress bar.
    """
    return _command("simco", out, objects, scenes_per_layout, image_size, size_ratio, equal_size, names, seed,
                    workers, overwrite, progress)  # fmt: skip


def objects(kind: str) -> None:
    """Print the objects a probe-set kind can draw, one a line, in vocabulary order.

    Args:
        kind: ``comco`` (emoji objects with COCO names) or ``simco`` (18 shapes).
    """
    print("\n".join(object_names(kind)))


def default_cache_dir() -> Path:
    """Where ``ensure_probe_set`` keeps generated sets: $CLIPPROBE_CACHE or ~/.cache/clipprobe/probesets."""
    env = os.environ.get("CLIPPROBE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "clipprobe" / "probesets"


def ensure_probe_set(kind: str, /, cache_dir: str | os.PathLike | None = None, **params: Any) -> Path:
    """The folder of a probe set with these parameters, generated once into a cache and then reused.

    The folder is named after a hash of the resolved parameters (defaults filled in) and the
    generator version, so equal requests share one folder. Processes sharing the cache (the tasks of an array) take
    turns through a lock file; under DDP call it on rank 0 first, then a barrier.

    Args:
        kind: ``comco`` or ``simco``.
        cache_dir: cache root (default: ``default_cache_dir()``).
        **params: any argument of ``clipprobe data comco`` except ``out`` and ``overwrite``;
            ``workers`` and ``progress`` only change how it is generated.

    Raises:
        UserError: bad parameters (see ``resolve_config``), or a cache that cannot be written when the
            set must be generated.
    """
    reserved = sorted(set(params) & {"kind", "out", "overwrite"})
    if reserved:
        raise UserError(
            f"probe-set generation option(s) {', '.join(reserved)} cannot be set for a cached set (its kind is "
            "its name, comco or simco, and its folder is in the cache); remove them from --generate"
        )
    run = {k: params.pop(k) for k in RUN_OPTIONS if k in params}
    cfg = resolve_config(kind, **params)
    if run.get("workers") is not None:  # checked before the cache (or its lock file) is touched
        from clipprobe.data.limits import check_workers

        check_workers(run["workers"], os.cpu_count() or 1)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{kind}-{cfg.key()[:16]}"
    if not (path / MANIFEST).is_file():
        where = "cache_dir" if cache_dir is not None else "$CLIPPROBE_CACHE"
        check_writable(path, "the probe-set cache", f"set {where} to a folder you can write")
        with file_lock(path.with_name(path.name + ".lock")):  # processes sharing the cache take turns
            if not (path / MANIFEST).is_file():  # another process may have made it meanwhile
                generate(cfg, path, overwrite=True, workers=run.get("workers"), progress=run.get("progress", False))
    return path
