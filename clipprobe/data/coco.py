"""MS-COCO as a probe target, read from a local copy (docs/PROBES.md "The study's COCO probes"; its Tables 3-4).

The folder is COCO's own (clipprobe never downloads it)::

    ROOT/annotations/instances_{split}.json   categories and instance annotations (``area``: mask pixels)
    ROOT/annotations/captions_{split}.json    five captions per image
    ROOT/{split}/<file_name>                  the images (``val2017/000000000139.jpg``)

:func:`load_coco` turns it into a :class:`~clipprobe.data.probeset.ProbeSet` of kind ``mscoco``:

- **scenes**: the images annotating 2-5 distinct vocabulary objects, each object's area the sum of its
  instances' areas; objects are ordered by area, largest first (``slot`` = size rank from 0), and the largest
  is the scene's large object, so IOR and I2TOR report ``large``, ``small_1`` (the second largest), ... as the
  study's Table 4. An image that also annotates an object outside the vocabulary (COCO's ``sports ball`` is
  not among the study's 90 names) is left out: that object could never be retrieved.
- **captions**: COCO's captions that name 2-5 vocabulary objects, found by the mention matcher of
  ``clipprobe analyze corpus`` (plurals, multi-word names, COCO synonyms: "a man" mentions person), objects in
  mention order, for COCO-TOR (the study's Table 3).
- **references** (IOR only): one image per object from a folder the user has: a probe set's ``references/``
  (e.g. a generated ComCO's, whose names are COCO's), a folder of ``<name>.png|jpg`` files, or a
  DomainNet-style folder of class folders (the first image of each, by name). Folder and file names are matched
  to vocabulary names when they are one of a name's forms (``hot_dog`` -> hot dog, ``dogs`` -> dog, a synonym);
  the others (``police_car``: not car) stay as distractors under their own names.

Everything is read once and fingerprinted (the annotation files' and the reference images' SHA-256, the
vocabulary and counts), so records say exactly which COCO they measured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipprobe.data.probeset import MANIFEST, ProbeSet, Scene, SceneObject
from clipprobe.data.vocab import COCO_NAMES
from clipprobe.errors import UserError
from clipprobe.fileio import file_sha256

log = logging.getLogger(__name__)

KIND = "mscoco"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_COUNTS = (2, 3, 4, 5)


def coco_files(root: str | os.PathLike, split: str) -> tuple[Path, Path, Path]:
    """``(instances, captions, images folder)`` of a COCO folder and split, checked to exist.

    Raises:
        UserError: the folder or an annotation file is missing (naming what the folder should hold).
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"--coco_root {root} is not a folder; point it at COCO's folder (holding annotations/ and "
                        f"{split}/)")  # fmt: skip
    instances = base / "annotations" / f"instances_{split}.json"
    captions = base / "annotations" / f"captions_{split}.json"
    for path in (instances, captions):
        if not path.is_file():
            have = (
                sorted(p.name for p in (base / "annotations").glob("*.json")) if (base / "annotations").is_dir() else []
            )
            hint = f" (annotations/ holds {', '.join(have[:6])}: choose --coco_split)" if have else ""
            raise UserError(f"--coco_root {root} has no annotations/{path.name}{hint}; unpack COCO's annotations "
                            "there, or choose the split with --coco_split")  # fmt: skip
    return instances, captions, base / split


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({' '.join(str(e).split())[:160]}); unpack it again") from None


def _matcher(vocab: Sequence[str]) -> Any:
    from clipprobe.analysis.mentions import COCO_SYNONYMS, Matcher

    return Matcher(vocab, COCO_SYNONYMS)


def load_coco(
    root: str | os.PathLike,
    split: str = "val2017",
    *,
    vocab: Sequence[str] | None = None,
    references: str | os.PathLike | None = None,
    counts: Sequence[int] = DEFAULT_COUNTS,
    need_images: bool = True,
) -> ProbeSet:
    """A local COCO split as a probe set of kind ``mscoco`` (module docstring), with its captions.

    Args:
        root: COCO's folder (``annotations/``, ``{split}/``).
        split: ``val2017`` (default), ``train2017``, ``val2014``, ...
        vocab: the object names (default: the study's 90 COCO names); COCO's category names are matched to them
            as the mention matcher does (plurals, synonyms).
        references: a folder of reference images for IOR (see :func:`load_references`), or None (no IOR).
        counts: numbers of distinct objects kept (images and captions).
        need_images: check that every scene's image file exists (image probes); off for COCO-TOR alone.

    Raises:
        UserError: a missing or malformed file, missing images, no scene and no caption within ``counts``.
    """
    names = list(vocab or COCO_NAMES)
    counts = sorted(set(counts))
    if not counts or any(n < 2 for n in counts):
        raise UserError(f"COCO object counts must be 2 or more, got {counts}")
    instances_path, captions_path, images = coco_files(root, split)
    matcher = _matcher(names)
    scenes, dropped = _scenes(instances_path, split, names, matcher, counts)
    captions = _captions(captions_path, matcher, counts)
    if not scenes and not captions:
        raise UserError(f"COCO {split} at {root}: no image annotates and no caption names {counts[0]}-{counts[-1]} "
                        "objects of the vocabulary; check --vocab")  # fmt: skip
    if need_images:
        _check_images(Path(root).expanduser(), images, scenes)
    refs = load_references(references, names) if references is not None else {}
    manifest: dict[str, Any] = {
        "kind": KIND, "format": "coco", "name": f"{KIND}-{split}", "split": split, "counts": counts,
        "num_scenes": len(scenes), "num_captions": len(captions),
        "scenes_per_n": {str(n): sum(s.n == n for s in scenes) for n in counts},
        "captions_per_n": {str(n): sum(len(o) == n for o, _ in captions) for n in counts},
        "dropped_images": dropped, "instances_sha256": file_sha256(instances_path),
        "captions_sha256": file_sha256(captions_path),
        "vocabulary_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
        "references": _describe_references(references, refs),
    }  # fmt: skip
    manifest["fingerprint"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return ProbeSet(Path(root).expanduser(), KIND, names, refs, scenes, manifest, captions)


def _scenes(
    path: Path, split: str, names: list[str], matcher: Any, counts: list[int]
) -> tuple[list[Scene], dict[str, int]]:
    """The images with ``counts`` distinct vocabulary objects, objects by area (largest first), in image-id order;
    and how many images were left out and why."""
    data = _read_json(path)
    order = {n: i for i, n in enumerate(names)}
    try:
        categories = {int(c["id"]): _name(matcher, str(c["name"])) for c in data["categories"]}
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        areas: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        boxes: dict[int, dict[str, list[float]]] = defaultdict(dict)
        unknown = 0
        for ann in data["annotations"]:
            image, name = int(ann["image_id"]), categories[int(ann["category_id"])]
            if image not in files:  # a subset whose images list was filtered but not its annotations
                unknown += 1
                continue
            areas[image][name] += float(ann["area"])
            x, y, w, h = (float(v) for v in ann.get("bbox") or (0, 0, 0, 0))
            box = boxes[image].get(name)
            boxes[image][name] = (
                [x, y, x + w, y + h]
                if box is None
                else [min(box[0], x), min(box[1], y), max(box[2], x + w), max(box[3], y + h)]
            )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path} is not a COCO instances file (missing or bad {e}); use annotations/instances_*.json") \
            from None  # fmt: skip
    dropped = {"outside_vocabulary": 0, "object_count": 0, "annotations_without_image": unknown}
    scenes = []
    for image in sorted(areas):
        objs = areas[image]
        if any(name not in order for name in objs):
            dropped["outside_vocabulary"] += 1
            continue
        if len(objs) not in counts:
            dropped["object_count"] += 1
            continue
        ranked = sorted(objs, key=lambda name: (-objs[name], order[name]))
        scene_objects = tuple(
            SceneObject(name, rank, tuple(round(v) for v in boxes[image][name]), round(objs[name]), rank == 0)  # type: ignore[arg-type]
            for rank, name in enumerate(ranked)
        )
        scenes.append(Scene(f"{split}/{files[image]}", len(ranked), "large", scene_objects, str(image)))
    return scenes, dropped


def _name(matcher: Any, label: str) -> str:
    """A COCO category or reference label as a vocabulary name when it is one of its forms (``hot_dog``,
    ``Dogs``, a synonym), else the label itself: ``police_car`` stays police car, not car."""
    text = label.replace("_", " ")
    return matcher.exact(text) or " ".join(text.split()).casefold()


def _captions(path: Path, matcher: Any, counts: list[int]) -> list[tuple[tuple[str, ...], str]]:
    """``(objects in mention order, caption)`` for each caption naming ``counts`` distinct objects, in file order."""
    data = _read_json(path)
    rows = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(rows, list) or any(
        not isinstance(r, dict) or not isinstance(r.get("caption"), str) for r in rows
    ):
        raise UserError(f"{path} is not a COCO captions file (needs 'annotations' rows with a caption); use "
                        "annotations/captions_*.json")  # fmt: skip
    out = []
    for row in rows:
        text = " ".join(row["caption"].split())
        found = tuple(matcher.find(text))
        if len(found) in counts:
            out.append((found, text))
    return out


def _check_images(root: Path, images: Path, scenes: list[Scene]) -> None:
    missing = [s.file_name for s in scenes if not (root / s.file_name).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(scenes)} COCO images are missing under {images} (first: "
                        f"{missing[0]}); unpack the {images.name} images there")  # fmt: skip


def load_references(folder: str | os.PathLike, vocab: Sequence[str]) -> dict[str, Path]:
    """One reference image per object, from a probe set's ``references/``, a folder of image files, or a folder
    of class folders (the first image of each, by file name). Names are matched to ``vocab`` as COCO's labels
    (``hot_dog``, ``Hot Dog`` -> hot dog); unmatched names are kept as they are (distractors).

    Raises:
        UserError: the folder is missing, holds no image, or two of its images stand for one object.
    """
    base = Path(folder).expanduser()
    if (base / MANIFEST).is_file() and (base / "references").is_dir():
        base = base / "references"
    if not base.is_dir():
        raise UserError(f"--coco_references {folder} is not a folder; give a folder of one image per object "
                        "(e.g. a ComCO probe set, or DomainNet-style class folders)")  # fmt: skip
    matcher = _matcher(vocab)
    found: dict[str, Path] = {}
    labels: dict[str, str] = {}
    for entry in sorted(base.iterdir()):
        if entry.is_dir():
            image = next((p for p in sorted(entry.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES), None)
            label = entry.name
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            image, label = entry, entry.stem
        else:
            continue
        if image is None:
            continue
        name = _name(matcher, label)
        if name in found:
            raise UserError(f"--coco_references {folder}: {labels[name]} and {entry.name} both stand for "
                            f"'{name}'; keep one image or class folder per object")  # fmt: skip
        found[name], labels[name] = image, entry.name
    if not found:
        raise UserError(f"--coco_references {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}) or class folder")
    return found


def _describe_references(folder: str | os.PathLike | None, refs: dict[str, Path]) -> dict[str, Any] | None:
    if folder is None:
        return None
    digest = hashlib.sha256()
    for name, path in sorted(refs.items()):
        digest.update(f"{name}:{path.name}:{file_sha256(path)}\n".encode())
    return {"path": str(Path(folder).expanduser().resolve()), "count": len(refs), "sha256": digest.hexdigest()}
