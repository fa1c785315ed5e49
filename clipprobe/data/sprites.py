"""Object sprites: ComCO's emoji objects (shipped as package data) and SimCO's procedural shapes.

A sprite is an RGBA image trimmed to the object's opaque pixels. ``sprite_at`` scales it so that
its longer side is ``size`` pixels; results are cached per process, so a worker scales each
(object, size) once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path

from PIL import Image

from clipprobe.data.vocab import COCO_NAMES, SIMCO_NAMES
from clipprobe.errors import UserError

ASSETS = Path(__file__).parent / "assets"
COMCO_DIR = ASSETS / "comco"
SIMCO_MASTER_SIZE = 256  # SimCO shapes are drawn at this size, then scaled like the emoji


def _comco_names() -> list[str]:
    index = json.loads((COMCO_DIR / "index.json").read_text(encoding="utf-8"))
    return [n for n in COCO_NAMES if n in index]


def _simco_names() -> list[str]:
    return list(SIMCO_NAMES)


def _comco_master(name: str) -> Image.Image:
    path = COMCO_DIR / f"{name.replace(' ', '_')}.png"
    with Image.open(path) as im:
        return im.convert("RGBA")


def _simco_master(name: str) -> Image.Image:
    from clipprobe.data.shapes import draw_shape

    return draw_shape(name, SIMCO_MASTER_SIZE)


SOURCES: dict[str, tuple[Callable[[], list[str]], Callable[[str], Image.Image]]] = {
    "comco": (_comco_names, _comco_master),
    "simco": (_simco_names, _simco_master),
}


def _source(kind: str) -> tuple[Callable[[], list[str]], Callable[[str], Image.Image]]:
    if kind not in SOURCES:
        raise UserError(f"unknown probe-set kind '{kind}'; choose one of: {', '.join(SOURCES)}")
    return SOURCES[kind]


@cache
def object_names(kind: str) -> tuple[str, ...]:
    """The objects a kind can draw, in vocabulary order (ComCO: COCO names with a shipped sprite)."""
    return tuple(_source(kind)[0]())


def check_objects(kind: str, names: list[str]) -> None:
    """Raise a one-line UserError if any name cannot be drawn for this kind."""
    known = set(object_names(kind))
    bad = [n for n in names if n not in known]
    if bad:
        raise UserError(
            f"unknown {kind} object(s): {', '.join(repr(b) for b in bad)}; "
            f"choose from the {len(known)} names listed by 'clipprobe data objects {kind}'"
        )


@cache
def load_sprite(kind: str, name: str) -> Image.Image:
    """The object's master sprite: RGBA, trimmed to its opaque pixels (do not modify it)."""
    check_objects(kind, [name])
    im = _source(kind)[1](name)
    box = im.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    return im.crop(box) if box else im


@lru_cache(maxsize=4096)
def sprite_at(kind: str, name: str, size: int) -> Image.Image:
    """The sprite scaled (Lanczos) so that its longer side is ``size`` pixels (do not modify it)."""
    im = load_sprite(kind, name)
    scale = size / max(im.size)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    return im.resize((w, h), Image.Resampling.LANCZOS)
