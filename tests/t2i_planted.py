"""Planted text-to-image generators for the t2i tests (plugged in as ``t2i_planted:first_large``): each object is a
square of its own colour, so a planted scorer can read which one is largest from the pixels. Not a test module."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

NAMES = ["dog", "pizza", "car", "cup", "apple", "bus"]
COLOURS = {name: ((40 * i + 30) % 256, (90 * i + 60) % 256, (150 * i + 20) % 256) for i, name in enumerate(NAMES)}


def objects_of(prompt: str) -> list[str]:
    out = []
    for part in prompt.split(" and "):
        for art in ("a ", "an "):
            if part.startswith(art):
                part = part[len(art) :]
        out.append(part)
    return out


def _draw(objects: Sequence[str], large: str, size: int | None) -> Image.Image:
    side = size or 48
    image = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell = side // len(objects)
    for k, name in enumerate(objects):
        extent = cell - 2 if name == large else max(2, cell // 3)
        draw.rectangle([k * cell, 2, k * cell + extent, 2 + extent], fill=COLOURS[name])
    return image


def first_large():  # noqa: ANN201
    """Draws the first-named object large, the others small."""
    return lambda prompt, seed, size: _draw(objects_of(prompt), objects_of(prompt)[0], size)


def order_blind():  # noqa: ANN201
    """Draws the alphabetically first object large, whatever the prompt's order."""
    return lambda prompt, seed, size: _draw(sorted(objects_of(prompt)), min(objects_of(prompt)), size)


class ColourEncoder:
    """Planted scorer: an image's embedding is the share of its pixels in each object's colour; a name's is its
    colour's axis. So the nearest name is the object drawn largest."""

    model = preprocess = tokenizer = None
    device = "cpu"

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.stack([torch.nn.functional.one_hot(torch.tensor(NAMES.index(t)), len(NAMES)).float()
                            for t in texts])  # fmt: skip

    def encode_images(self, paths: Sequence[str | Path]) -> torch.Tensor:
        out = []
        for p in paths:
            with Image.open(p) as im:
                pixels = list(im.convert("RGB").getdata())
            counts = torch.tensor([float(sum(px == COLOURS[n] for px in pixels)) for n in NAMES])
            out.append(torch.nn.functional.normalize(counts + 1e-3, dim=0))
        return torch.stack(out)
