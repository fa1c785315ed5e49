"""Scene layouts and the balanced plan of which object goes where.

Geometry (PROBES.md, section 1): fixed slots per number of objects n, as fractions of the image
side. In a ``large`` scene one slot holds an object whose longer side is ``ratio`` times that of
the others; in an ``equal`` scene all are small. Each layout gets the largest small size at which
every choice of large slot fits inside the image without two object boxes touching, so that the
image is used well and nothing overlaps (the cramped layouts, 3 and 5 objects with a centre slot,
get smaller objects than the 2 and 4 object ones).

Balance: a group (n objects, one size variant) is built from *rounds* of m scenes (m = number of
objects). A round is a Latin rectangle: column j is a permutation of all objects and no row holds
an object twice, so in a round every object fills every slot exactly once. Column 0 goes to the
large slot. A group of N scenes takes whole rounds plus a prefix of one more, so each
(object, slot) count in a group is floor(N/m) or that plus one. The prefix's large column is filled
with the objects that have been large least often so far, over all large groups, so the number of
times each object is large differs by at most one across the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from clipprobe.data.probeset import SLOT_NAMES

# Slot centres (x, y) as fractions of the image side, in slot order (probeset.SLOT_NAMES).
SLOT_CENTRES: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.5, 0.5),),
    2: ((0.25, 0.5), (0.75, 0.5)),
    3: ((0.2, 0.2), (0.5, 0.5), (0.8, 0.8)),
    4: ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)),
    5: ((0.18, 0.18), (0.82, 0.18), (0.5, 0.5), (0.18, 0.82), (0.82, 0.82)),
}
COUNTS = tuple(n for n in SLOT_CENTRES if n >= 2)  # object counts a scene may have
MARGIN = 0.03  # free border, fraction of the image side
GAP = 0.03  # least free space between two object boxes, fraction of the image side
MIN_SMALL_PX = 6  # below this a small object is unrecognisable
EQUAL = "equal"
LARGE = "large"
_MAX_TRIES = 2000  # rejection sampling of a Latin column before falling back to a cyclic one

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


@dataclass(frozen=True)
class Geometry:
    """Pixel geometry of one layout: slot centres and the small and large object sizes.

    Sizes are the longer side of an object's sprite; an object is centred in its slot's square box.
    """

    n: int
    image_size: int
    small: int
    large: int
    centres: tuple[tuple[int, int], ...]

    def box(self, slot: int, size: int) -> Box:
        """The ``size`` x ``size`` box of a slot: centred on the slot, shifted inside the margin."""
        margin = _px(MARGIN, self.image_size)
        lo, hi = margin, self.image_size - margin - size
        cx, cy = self.centres[slot]
        x0 = min(max(cx - size // 2, lo), hi)
        y0 = min(max(cy - size // 2, lo), hi)
        return (x0, y0, x0 + size, y0 + size)

    def sizes(self, large_slot: int | None) -> tuple[int, ...]:
        """Object size per slot: ``large`` at ``large_slot`` (None: all small)."""
        return tuple(self.large if k == large_slot else self.small for k in range(self.n))

    def boxes(self, large_slot: int | None) -> tuple[Box, ...]:
        return tuple(self.box(k, z) for k, z in enumerate(self.sizes(large_slot)))


def _px(frac: float, image_size: int) -> int:
    return max(1, round(frac * image_size))


def _separated(a: Box, b: Box, gap: int) -> bool:
    return max(a[0] - b[2], b[0] - a[2]) >= gap or max(a[1] - b[3], b[1] - a[3]) >= gap


def _fits(geo: Geometry) -> bool:
    gap, margin = _px(GAP, geo.image_size), _px(MARGIN, geo.image_size)
    if geo.large > geo.image_size - 2 * margin:
        return False
    for large_slot in range(geo.n) if geo.n > 1 else [None]:
        boxes = geo.boxes(large_slot)
        for i in range(len(boxes)):
            if any(not _separated(boxes[i], boxes[j], gap) for j in range(i + 1, len(boxes))):
                return False
    return True


@cache
def layout_geometry(n: int, image_size: int, ratio: float) -> Geometry:
    """The layout for ``n`` objects with the largest small size that fits (small may be 0 if none fits).

    Args:
        n: number of objects (1..5; 1 is the reference layout).
        image_size: image side in pixels.
        ratio: large side / small side (>= 1).
    """
    centres = tuple((round(fx * image_size), round(fy * image_size)) for fx, fy in SLOT_CENTRES[n])
    for small in range(image_size, 0, -1):
        geo = Geometry(n, image_size, small, max(small, round(ratio * small)), centres)
        if _fits(geo):
            return geo
    return Geometry(n, image_size, 0, 0, centres)


def reference_size(image_size: int, ratio: float) -> int:
    """Size of the object in a reference image: the small size of the roomiest layout (2 objects)."""
    return layout_geometry(2, image_size, ratio).small


# ---------------------------------------------------------------------------------------------
# The balanced plan.


@dataclass(frozen=True)
class SceneSpec:
    """What one scene shows: its group and index, and the objects in slot order."""

    group: str  # folder name: "3obj_large1" or "3obj_equal"
    index: int
    n: int
    variant: str  # LARGE or EQUAL
    large_slot: int | None
    names: tuple[str, ...]

    @property
    def scene_id(self) -> str:
        return f"{self.group}/{self.index:05d}"

    @property
    def file_name(self) -> str:
        return f"scenes/{self.scene_id}.png"


def group_name(n: int, large_slot: int | None) -> str:
    """Folder name of a group (contract): ``{n}obj_large{k}`` or ``{n}obj_equal``."""
    return f"{n}obj_{EQUAL}" if large_slot is None else f"{n}obj_{LARGE}{large_slot}"


def latin_round(m: int, n: int, rng: np.random.Generator, first: np.ndarray | None = None) -> np.ndarray:
    """An [m, n] array of object indices: every column a permutation of range(m), no row repeating one.

    Columns after the first are random permutations that avoid the earlier columns' value at every
    row (rejection sampling; success odds about exp(-j) for column j); if that fails, all columns
    become cyclic shifts of the first, which is always valid for n <= m.
    """
    if n > m:
        raise ValueError(f"a scene of {n} objects needs at least {n} distinct objects, got {m}")
    cols = [rng.permutation(m) if first is None else np.asarray(first)]
    for _ in range(1, n):
        for _try in range(_MAX_TRIES):
            cand = rng.permutation(m)
            if not any(np.any(cand == c) for c in cols):
                cols.append(cand)
                break
        else:
            return np.stack([np.roll(cols[0], -j) for j in range(n)], axis=1)
    return np.stack(cols, axis=1)


def _least_used_first(extras: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of the objects: fewest extras first, ties in random order."""
    return np.lexsort((rng.permutation(len(extras)), extras))


def _group_rows(m: int, n: int, count: int, rng: np.random.Generator, extras: np.ndarray | None) -> np.ndarray:
    """[count, n] object indices for one group; column 0 is the large slot's. ``extras`` (updated in
    place) counts, per object, how often it filled column 0 of a partial round so far."""
    rows = []
    for start in range(0, count, m):
        take = min(m, count - start)
        first = None
        if take < m and extras is not None:
            order = _least_used_first(extras, rng)
            head, tail = order[:take], order[take:]
            first = np.concatenate([rng.permutation(head), rng.permutation(tail)])
            extras[head] += 1
        rows.append(latin_round(m, n, rng, first)[:take])
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, n), dtype=int)


def plan_scenes(
    names: list[str], counts: list[int], scenes_per_layout: int, equal_size: bool, seed: int
) -> list[SceneSpec]:
    """Every scene of a probe set, group by group: for each n, the large slot cycling over all slots,
    then the equal-size group. Each group's random draws come from its own generator seeded by
    (seed, n, variant), so the plan does not depend on worker count or timing.

    Args:
        names: the objects, in vocabulary order.
        counts: numbers of objects per scene (each in 2..5, at most ``len(names)``).
        scenes_per_layout: scenes per group.
        equal_size: also make the equal-size group for each n.
        seed: base seed.
    """
    m = len(names)
    extras = np.zeros(m, dtype=int)  # partial-round large placements, shared by all large groups
    specs: list[SceneSpec] = []
    for n in sorted(set(counts)):
        variants: list[int | None] = [*range(n), *([None] if equal_size else [])]
        for large_slot in variants:
            code = 1000 if large_slot is None else large_slot
            rng = np.random.default_rng([seed, n, code])
            rows = _group_rows(m, n, scenes_per_layout, rng, extras if large_slot is not None else None)
            group = group_name(n, large_slot)
            variant = EQUAL if large_slot is None else LARGE
            for index, row in enumerate(rows):
                specs.append(SceneSpec(group, index, n, variant, large_slot, _to_slots(row, names, large_slot)))
    return specs


def _to_slots(row: np.ndarray, names: list[str], large_slot: int | None) -> tuple[str, ...]:
    """Column 0 goes to the large slot, the other columns fill the remaining slots in order."""
    if large_slot is None:
        return tuple(names[i] for i in row)
    others = iter(row[1:])
    return tuple(names[row[0]] if k == large_slot else names[next(others)] for k in range(len(row)))


def slot_names(n: int) -> tuple[str, ...]:
    """Human names of the slots of an n-object layout."""
    return SLOT_NAMES[n]
