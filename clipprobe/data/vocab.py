"""Vocabularies: the study's COCO names (90, in its order) and SimCO's 18 shapes."""

from __future__ import annotations

import os
from pathlib import Path

from clipprobe.errors import UserError

# The 91 original COCO category names minus "sports ball", in the study's order (PROBES.md, section 2).
COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "dining table", "cell phone", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella",
    "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "kite", "baseball bat",
    "baseball glove", "tennis racket", "wine glass", "hot dog", "potted plant", "teddy bear", "hair drier",
    "hair brush", "skateboard", "surfboard", "bottle", "plate", "cup", "fork", "knife", "spoon", "bowl", "banana",
    "apple", "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "cake", "chair", "couch", "bed",
    "mirror", "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "microwave",
    "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "toothbrush",
)  # fmt: skip

# SimCO's shapes (PROBES.md, section 1), all drawn in one matte blue.
SIMCO_NAMES: tuple[str, ...] = (
    "cube", "sphere", "cylinder", "mug", "pentagon", "heart", "cone", "pyramid", "diamond", "moon", "cross",
    "snowflake", "leaf", "arrow", "star", "torus", "pot", "cap",
)  # fmt: skip

VOCABULARIES: dict[str, tuple[str, ...]] = {"coco": COCO_NAMES, "comco": COCO_NAMES, "simco": SIMCO_NAMES}


def load_vocab(source: str | os.PathLike) -> list[str]:
    """A vocabulary by name (``coco``, ``simco``) or from a text file (one name a line, ``#`` comments).

    Raises:
        UserError: the file is missing, empty, or names an object twice.
    """
    if str(source) in VOCABULARIES:
        return list(VOCABULARIES[str(source)])
    path = Path(source)
    if not path.is_file():
        raise UserError(f"vocabulary {source} is neither a known name ({', '.join(VOCABULARIES)}) nor a file")
    names = [ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"vocabulary file {path} holds no names; write one name a line")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"vocabulary file {path} names {', '.join(dupes)} more than once; remove the repeats")
    return names
