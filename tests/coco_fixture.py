"""A tiny COCO folder in COCO's own format, written by the tests (clipprobe never downloads COCO): instance
annotations with areas, five captions per image naming the objects in a known order (with plurals and synonyms
as real captions have them), small JPEG images, and reference images per object. Not a test module."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

# COCO's own ids and names (a subset; "sports ball" is COCO's but not among the study's 90 names).
CATEGORIES = {1: "person", 2: "bicycle", 3: "car", 18: "dog", 17: "cat", 62: "chair", 44: "bottle",
              47: "cup", 51: "bowl", 52: "banana", 53: "apple", 59: "pizza", 37: "sports ball"}  # fmt: skip
# How the captions word each object: synonyms and plurals, as COCO's writers do.
WORDING = {"person": "a man", "bicycle": "a bike", "car": "a car", "dog": "two dogs", "cat": "a kitten",
           "chair": "some chairs", "bottle": "a bottle", "cup": "a mug", "bowl": "a bowl", "banana": "bananas",
           "apple": "an apple", "pizza": "a pizza"}  # fmt: skip


@dataclass
class TinyCoco:
    """What the fixture wrote: the folder, each kept image's objects by area (largest first), and each kept
    caption's objects in mention order."""

    root: Path
    by_area: dict[str, tuple[str, ...]] = field(default_factory=dict)  # "val2017/<file>" -> objects, largest first
    captions: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


def write_tiny_coco(root: Path, images_per_n: int = 12, seed: int = 0, split: str = "val2017") -> TinyCoco:
    """Images with 2-5 objects (``images_per_n`` each), plus images to be left out: one with a sports ball, one
    with a single object, one with six. Each object has one or two instances; areas are distinct, and an object
    of two instances can outrank a bigger single instance (its area is the sum). Each kept image has five
    captions naming its objects in a random order, so mention order and size rank are independent."""
    from PIL import Image

    rng = random.Random(seed)
    names = [n for n in CATEGORIES.values() if n != "sports ball"]
    ids = {n: i for i, n in CATEGORIES.items()}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    out = TinyCoco(root)
    images, anns, caps = [], [], []
    plan = [(n, None) for n in (2, 3, 4, 5) for _ in range(images_per_n)]
    plan += [(3, "sports ball"), (1, None), (6, None)]
    for image_id, (n, extra) in enumerate(plan, start=1):
        objs = rng.sample(names, n)
        if extra:
            objs[-1] = extra
        file_name = f"{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": file_name, "width": 32, "height": 24})
        Image.new("RGB", (32, 24), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(
            root / split / file_name
        )
        areas = rng.sample(range(100, 5000, 7), n)  # distinct totals
        for obj, total in zip(objs, areas, strict=True):
            parts = [total] if rng.random() < 0.5 else [total // 2, total - total // 2]
            for part in parts:
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": ids[obj], "area": float(part),
                             "bbox": [1.0, 1.0, 4.0, 4.0], "iscrowd": 0})  # fmt: skip
        kept = extra is None and 2 <= n <= 5
        if kept:
            out.by_area[f"{split}/{file_name}"] = tuple(
                o for _, o in sorted(zip(areas, objs, strict=True), reverse=True)
            )
        for _ in range(5):
            order = rng.sample(objs, n)
            text = (" and ".join(WORDING.get(o, "a ball") for o in order) + " on the grass.").capitalize()
            caps.append({"id": len(caps) + 1, "image_id": image_id, "caption": text})
            found = tuple(o for o in order if o != "sports ball")
            if 2 <= len(found) <= 5:
                out.captions.append((found, " ".join(text.split())))
    out.dropped = {"outside_vocabulary": 1, "object_count": 2, "annotations_without_image": 0}
    categories = [{"id": i, "name": n, "supercategory": "x"} for i, n in CATEGORIES.items()]
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": caps}))
    return out


def write_references(folder: Path, names: list[str], layout: str = "files") -> Path:
    """One reference image per name: ``<name>.png`` files, or DomainNet-style class folders (``hot_dog/``, two
    images each: the first by name is used)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        colour = (20 * i % 256, 255 - 20 * i % 256, 90)
        if layout == "files":
            Image.new("RGB", (16, 16), colour).save(folder / f"{name}.png")
        else:
            sub = folder / name.replace(" ", "_")
            sub.mkdir(exist_ok=True)
            Image.new("RGB", (16, 16), colour).save(sub / "a_001.jpg")
            Image.new("RGB", (16, 16), (0, 0, 0)).save(sub / "b_002.jpg")
    return folder
