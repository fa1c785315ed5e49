"""Multi-object captions for the text probes (PROBES.md, section 2).

Two ways to choose which objects a caption names, and in what order:

- **paper** mode (the study's protocol): ``itertools.combinations(vocab, n)``, in vocabulary order.
  An object's position is then tied to its place in the vocabulary. With 90 COCO names, n=4 gives
  2,555,190 captions, so ``max_captions`` caps the set with a seeded, order-preserving subsample of
  the combinations (``None`` or 0 = all, exactly the study's set).
- **balanced** mode (clipprobe's default): random n-subsets without repeats, each in a random order
  (``orders="random"``) or in all n! orders (``orders="all"``), so every object is equally often
  at every position.

Templates (a registry) render the objects as text: ``bare`` ("pizza and apple"), ``article``
("a pizza and an apple"), ``a`` (always "a", as the study's TOC sentences), ``long`` (the study's
descriptive sentence for n=2 and longer variants in its spirit up to n=5).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from typing import NamedTuple

from clipprobe.errors import UserError

MODES = ("paper", "balanced")
ORDERS = ("random", "all")


class Caption(NamedTuple):
    """A caption and the objects it names, in mention order."""

    objects: tuple[str, ...]
    text: str


def article(name: str) -> str:
    """``"an"`` before a vowel letter, else ``"a"`` (good enough for COCO and SimCO names)."""
    return "an" if name[:1].lower() in "aeiou" else "a"


# The long template: the study's n=2 sentence, extended with one descriptive clause per object.
# Every adjective starts with a consonant, so "a" is right whatever the object.
_LONG_OPENING = "This vibrant display features "
_LONG_CLAUSES = (
    "a stunning {} with its radiant glow",
    "a mesmerizing {} with bold contours",
    "a graceful {} that catches the soft light",
    "a striking {} with rich, deep colours",
    "a delicate {} that rounds off the scene with quiet elegance",
)


def _long(objects: Sequence[str]) -> str:
    if len(objects) > len(_LONG_CLAUSES):
        raise UserError(f"the long template describes at most {len(_LONG_CLAUSES)} objects, got {len(objects)}")
    parts = [clause.format(o) for clause, o in zip(_LONG_CLAUSES, objects, strict=False)]
    if len(parts) >= 3:  # "..., and a ..." reads naturally from three objects on
        parts[-1] = "and " + parts[-1]
    return _LONG_OPENING + ", ".join(parts) + "."


TEMPLATES: dict[str, Callable[[Sequence[str]], str]] = {
    "bare": lambda objs: " and ".join(objs),
    "article": lambda objs: " and ".join(f"{article(o)} {o}" for o in objs),
    "a": lambda objs: " and ".join(f"a {o}" for o in objs),
    "long": _long,
}


def render(template: str, objects: Sequence[str]) -> str:
    """The caption text for ``objects`` (in mention order) under a named template.

    Raises:
        UserError: unknown template.
    """
    if template not in TEMPLATES:
        raise UserError(f"unknown caption template {template!r}; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[template](objects)


def nth_combination(pool: Sequence[str], r: int, index: int) -> tuple[str, ...]:
    """The ``index``-th item of ``itertools.combinations(pool, r)`` without enumerating the rest
    (the combinatorial number system)."""
    n = len(pool)
    total = math.comb(n, r)
    if not 0 <= index < total:
        raise IndexError(f"combination index {index} outside [0, {total})")
    out: list[str] = []
    start = 0
    for left in range(r, 0, -1):
        # Skip whole blocks of combinations whose next element is pool[start].
        while (block := math.comb(n - start - 1, left - 1)) <= index:
            index -= block
            start += 1
        out.append(pool[start])
        start += 1
    return tuple(out)


def _rng(seed: int, *parts: object) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and processes.
    return random.Random(":".join(["clipprobe", str(seed), *map(str, parts)]))


def paper_subsets(
    vocab: Sequence[str], n: int, max_captions: int | None = None, seed: int = 0
) -> list[tuple[str, ...]]:
    """The study's caption objects: ``combinations(vocab, n)`` in order; above ``max_captions``, a
    seeded subsample that keeps the combinations' order (``None`` or 0 = all)."""
    total = math.comb(len(vocab), n)
    if not max_captions or total <= max_captions:
        return list(itertools.combinations(vocab, n))
    picked = sorted(_rng(seed, "paper", n).sample(range(total), max_captions))
    return [nth_combination(vocab, n, i) for i in picked]


def balanced_subsets(
    vocab: Sequence[str], n: int, num_captions: int, orders: str = "random", seed: int = 0
) -> list[tuple[str, ...]]:
    """Objects of about ``num_captions`` captions: distinct random n-subsets, each shuffled
    (``orders="random"``) or in all n! orders (``orders="all"``; ``num_captions // n!`` subsets, at
    least one). Never more subsets than exist."""
    if orders not in ORDERS:
        raise UserError(f"unknown orders {orders!r}; choose one of {', '.join(ORDERS)}")
    per_subset = math.factorial(n) if orders == "all" else 1
    rng = _rng(seed, "balanced", n, orders)
    count = min(max(1, num_captions // per_subset), math.comb(len(vocab), n))
    out: list[tuple[str, ...]] = []
    for index in rng.sample(range(math.comb(len(vocab), n)), count):
        subset = list(nth_combination(vocab, n, index))
        if orders == "all":
            out.extend(itertools.permutations(subset))
        else:
            rng.shuffle(subset)
            out.append(tuple(subset))
    return out


def make_captions(
    vocab: Sequence[str],
    n: int,
    mode: str = "balanced",
    template: str = "bare",
    *,
    max_captions: int | None = 20_000,
    num_captions: int = 2_000,
    orders: str = "random",
    seed: int = 0,
) -> list[Caption]:
    """Captions naming ``n`` objects of ``vocab``.

    Args:
        vocab: object names (order matters in paper mode).
        n: objects per caption, ``2 <= n <= len(vocab)``.
        mode: ``paper`` (combinations in vocabulary order) or ``balanced``.
        template: a key of :data:`TEMPLATES`.
        max_captions: paper mode's cap (``None`` or 0 = all combinations).
        num_captions: balanced mode's number of captions.
        orders: balanced mode's ``random`` (one shuffled order per subset) or ``all`` (n! orders).
        seed: seeds every random choice.

    Raises:
        UserError: unknown mode, template or orders; ``n`` out of range.
    """
    if mode not in MODES:
        raise UserError(f"unknown caption mode {mode!r}; choose one of {', '.join(MODES)}")
    if template not in TEMPLATES:
        raise UserError(f"unknown caption template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if not 1 <= n <= len(vocab):
        raise UserError(f"cannot name {n} objects from a vocabulary of {len(vocab)}; use a smaller n")
    if mode == "paper":
        subsets = paper_subsets(vocab, n, max_captions, seed)
    else:
        subsets = balanced_subsets(vocab, n, num_captions, orders, seed)
    return [Caption(objs, render(template, objs)) for objs in subsets]
