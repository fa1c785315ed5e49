"""Drawing scenes: a light-grey studio background, a soft shadow under each object, the sprites.

Everything that does not change from scene to scene (the background, each scaled sprite with its
shadow and opaque-pixel statistics) is made once per process and cached, so drawing a scene is a
copy and a few pastes; most of the time goes into PNG encoding.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clipprobe.data.sprites import sprite_at

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

# PNG settings for every image clipprobe writes (and the benchmark's floor). On 224 px scenes zlib
# level 1 encodes in half the time of the default 6 (1.7 vs 3.2 ms) for files about 15% larger;
# level 0 (no compression) would be faster still but six times larger.
PNG_OPTIONS: dict[str, int | bool] = {"compress_level": 1, "optimize": False}
BG_TOP = (236, 236, 236)  # studio backdrop: a subtle vertical gradient, lighter at the top
BG_BOTTOM = (210, 210, 210)
SHADOW_ALPHA = 0.35  # peak darkness of a shadow
OPAQUE = 127  # a pixel belongs to the object where its alpha exceeds this


@dataclass(frozen=True)
class Sprite:
    """A scaled sprite ready to paste, with its shadow and opaque-pixel statistics.

    ``bbox`` is the box of the opaque pixels relative to the sprite's top-left corner; ``shadow``
    is an L mask pasted (as black) at ``shadow_offset`` relative to the same corner.
    """

    image: Image.Image
    bbox: Box
    area: int
    shadow: Image.Image
    shadow_offset: tuple[int, int]


@lru_cache(maxsize=8)
def background(size: int) -> Image.Image:
    """The empty studio backdrop, ``size`` x ``size`` RGB (cached; copy before drawing on it)."""
    t = np.linspace(0.0, 1.0, size, dtype=np.float64)[:, None]  # [size, 1], top to bottom
    rows = np.asarray(BG_TOP) * (1 - t) + np.asarray(BG_BOTTOM) * t  # [size, 3]
    arr = np.broadcast_to(np.round(rows).astype(np.uint8)[:, None, :], (size, size, 3))
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _shadow(width: int, height: int) -> tuple[Image.Image, tuple[int, int]]:
    """A blurred flat ellipse for an object whose opaque box is ``width`` x ``height``.

    Returns the mask and the offset of its top-left corner from the centre of the object's base.
    """
    ew, eh = max(2, round(0.85 * width)), max(2, round(0.16 * width))
    blur = max(1, round(0.06 * max(width, height)))
    pad = 2 * blur
    mask = Image.new("L", (ew + 2 * pad, eh + 2 * pad), 0)
    ImageDraw.Draw(mask).ellipse((pad, pad, pad + ew - 1, pad + eh - 1), fill=round(255 * SHADOW_ALPHA))
    mask = mask.filter(ImageFilter.GaussianBlur(blur))
    # the ellipse's centre sits a little above the object's base, so the shadow peeks out below it
    return mask, (-(ew // 2) - pad, -round(0.6 * eh) - pad)


@lru_cache(maxsize=4096)
def prepared_sprite(kind: str, name: str, size: int) -> Sprite:
    """The object's sprite at ``size`` (longer side) with shadow and statistics (cached per process)."""
    im = sprite_at(kind, name, size)
    opaque = np.asarray(im.getchannel("A")) > OPAQUE  # [h, w]
    ys, xs = np.nonzero(opaque)
    if len(xs) == 0:
        bbox = (0, 0, im.width, im.height)
    else:
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    shadow, (dx, dy) = _shadow(bbox[2] - bbox[0], bbox[3] - bbox[1])
    base_x, base_y = (bbox[0] + bbox[2]) // 2, bbox[3]
    return Sprite(im, bbox, int(opaque.sum()), shadow, (base_x + dx, base_y + dy))


def render(kind: str, names: tuple[str, ...], boxes: tuple[Box, ...], image_size: int) -> tuple[Image.Image, list]:
    """Draw one scene: each object centred in its box (box side = the object's longer side).

    Args:
        kind: sprite source ("comco" or "simco").
        names: objects in slot order.
        boxes: one square box per object (see ``scenes.Geometry.boxes``).
        image_size: side of the image in pixels.

    Returns:
        The RGB image and, per object, ``(bbox, area)``: the box of its opaque pixels in the image
        and their number. Boxes do not overlap (the layouts guarantee it), so these are exact.
    """
    img = background(image_size).copy()
    placed = []
    for name, box in zip(names, boxes, strict=True):
        sp = prepared_sprite(kind, name, box[2] - box[0])
        x = box[0] + (box[2] - box[0] - sp.image.width) // 2
        y = box[1] + (box[3] - box[1] - sp.image.height) // 2
        placed.append((sp, x, y))
    for sp, x, y in placed:  # all shadows first, so that no shadow falls on an object
        img.paste((0, 0, 0), (x + sp.shadow_offset[0], y + sp.shadow_offset[1]), sp.shadow)
    stats = []
    for sp, x, y in placed:
        img.paste(sp.image, (x, y), sp.image)
        b = sp.bbox
        stats.append(((x + b[0], y + b[1], x + b[2], y + b[3]), sp.area))
    return img, stats


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes with clipprobe's settings (deterministic: same pixels, same bytes)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", **PNG_OPTIONS)
    return buf.getvalue()


def save_png(img: Image.Image, path: Path) -> None:
    """Write a PNG with clipprobe's settings (inside a staging folder, so no rename is needed)."""
    img.save(path, format="PNG", **PNG_OPTIONS)
