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


def study_vocab(kind: str | None) -> list[str]:
    """The study's text vocabulary for a probe set of ``kind``, in the study's order: SimCO's 18 shapes for
    ``simco``, else the 90 COCO names (its TOR scripts list exactly these, in this order). Paper-mode TOR uses
    it unless a vocabulary is given (PROBES.md, section 2), whatever names a set holds: a published-layout
    set's vocabulary is only the names found in its folders, in alphabetical order."""
    return list(SIMCO_NAMES if kind == "simco" else COCO_NAMES)


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of a user's file.

    Args:
        path: the file.
        what: how to name it in messages, e.g. ``vocabulary file``.

    Raises:
        UserError: the file cannot be read or is not UTF-8, naming the file (and the first bad byte).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{what} {path} is not readable ({e.strerror or e}); check the path and permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8"
        ) from None


def load_vocab(source: str | os.PathLike) -> list[str]:
    """A vocabulary by name (``coco``, ``simco``) or from a text file (one name a line, ``#`` comments).

    Raises:
        UserError: the file is missing, unreadable, not UTF-8, empty, or names an object twice.
    """
    if str(source) in VOCABULARIES:
        return list(VOCABULARIES[str(source)])
    path = Path(source)
    if not path.is_file():
        raise UserError(f"vocabulary {source} is neither a known name ({', '.join(VOCABULARIES)}) nor a file")
    names = [ln.split("#", 1)[0].strip() for ln in read_text_file(path, "vocabulary file").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"vocabulary file {path} holds no names; write one name a line")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"vocabulary file {path} names {', '.join(dupes)} more than once; remove the repeats")
    return names
