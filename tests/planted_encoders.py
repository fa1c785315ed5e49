"""Encoders with planted answers for the probe tests (they implement the Encoder protocol with
``model=None``) and a tiny in-memory probe set. Not a test module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from clipprobe.data.probeset import ProbeSet, Scene, SceneObject


def name_vectors(names: Sequence[str], dim: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random unit vectors, nearly orthogonal for ``dim`` well above ``len(names)``."""
    g = torch.Generator().manual_seed(seed)
    vecs = torch.nn.functional.normalize(torch.randn(len(names), dim, generator=g), dim=-1)
    return dict(zip(names, vecs, strict=True))


def parse_objects(text: str) -> list[str]:
    """Objects of a bare or article caption, in mention order."""
    out = []
    for part in text.split(" and "):
        for art in ("a ", "an "):
            if part.startswith(art):
                part = part[len(art) :]
                break
        out.append(part)
    return out


Rule = Callable[[list[torch.Tensor]], torch.Tensor]

RULES: dict[str, Rule] = {
    "first": lambda vs: vs[0],  # the caption is its first object
    "weighted": lambda vs: 2 * vs[0] + sum(vs[1:], torch.zeros_like(vs[0])),  # first strongest, all present
    "mean": lambda vs: torch.stack(vs).mean(0),  # order-invariant
    "last": lambda vs: vs[-1],
}


class Recorder:
    """Counts encode calls and inputs, to check that probes encode each unique input once."""

    def __init__(self) -> None:
        self.text_calls = 0
        self.image_calls = 0
        self.texts: list[str] = []
        self.images: list[str] = []

    def assert_unique(self) -> None:
        assert len(self.texts) == len(set(self.texts)), "a text was encoded twice"
        assert len(self.images) == len(set(self.images)), "an image was encoded twice"


class PlantedTextEncoder(Recorder):
    """Caption embedding = normalised ``rule`` over its objects' name vectors."""

    model = None
    preprocess = None
    tokenizer = None
    device = "cpu"

    def __init__(self, names: Sequence[str], rule: str | Rule = "first", dim: int = 256, seed: int = 0) -> None:
        super().__init__()
        self.vecs = name_vectors(names, dim, seed)
        self.rule = RULES[rule] if isinstance(rule, str) else rule

    def text_vector(self, text: str) -> torch.Tensor:
        return torch.nn.functional.normalize(self.rule([self.vecs[o] for o in parse_objects(text)]), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        self.text_calls += 1
        self.texts += list(texts)
        return torch.stack([self.text_vector(t) for t in texts]) if texts else torch.zeros(0, 1)

    def encode_images(self, paths: Sequence[str | Path]) -> torch.Tensor:
        raise AssertionError("a text probe encoded images")


class PlantedImageEncoder(PlantedTextEncoder):
    """Images map to embeddings through a dict ``path -> vector``; texts as PlantedTextEncoder."""

    def __init__(self, names: Sequence[str], image_vectors: dict[str, torch.Tensor], rule: str = "first") -> None:
        super().__init__(names, rule)
        self.image_vectors = image_vectors

    def encode_images(self, paths: Sequence[str | Path]) -> torch.Tensor:
        self.image_calls += 1
        self.images += [str(p) for p in paths]
        return torch.stack([torch.nn.functional.normalize(self.image_vectors[str(p)], dim=-1) for p in paths])


def tiny_probe_set(root: Path, names: Sequence[str], counts: Sequence[int] = (2, 3), per_slot: int = 6,
                   seed: int = 0, equal: bool = False) -> ProbeSet:  # fmt: skip
    """An in-memory probe set (no image files): every layout with the large object in every slot
    (and equal-size scenes with ``equal``), objects drawn at random; boxes on a 64 px canvas side by
    side (large ones about 3x the side of small ones)."""
    import random

    rng = random.Random(seed)
    scenes: list[Scene] = []
    for n in counts:
        cell = 64 // n  # objects side by side, boxes never overlap
        for large in [*range(n), *([None] if equal else [])]:
            for i in range(per_slot):
                objs = rng.sample(list(names), n)
                items = []
                for k, name in enumerate(objs):
                    side = cell - 1 if k == large else (cell - 1) // 3
                    x0 = k * cell
                    items.append(SceneObject(name, k, (x0, 20, x0 + side, 20 + side), side * side, k == large))
                group = f"{n}obj_large{large}" if large is not None else f"{n}obj_equal"
                variant = "large" if large is not None else "equal"
                scenes.append(Scene(f"scenes/{group}/{i:04d}.png", n, variant, tuple(items), f"{group}/{i}"))
    refs = {name: root / "references" / f"{name}.png" for name in names}
    return ProbeSet(root, "comco", list(names), refs, scenes, {"name": "tiny", "objects": list(names)})
