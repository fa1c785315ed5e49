"""Layout geometry and the balanced plan (no drawing: pure functions)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from clipprobe.data import scenes
from clipprobe.data.scenes import (
    EQUAL,
    GAP,
    MARGIN,
    latin_round,
    layout_geometry,
    plan_scenes,
    reference_size,
)

NAMES = [f"obj{i}" for i in range(13)]


def _separated(a: tuple[int, ...], b: tuple[int, ...], gap: int) -> bool:
    return max(a[0] - b[2], b[0] - a[2]) >= gap or max(a[1] - b[3], b[1] - a[3]) >= gap


@pytest.mark.parametrize("image_size", [64, 224, 512])
@pytest.mark.parametrize("ratio", [1.0, 2.0, 3.0, 4.5])
def test_layouts_fit_inside_without_overlap(image_size: int, ratio: float) -> None:
    margin, gap = round(MARGIN * image_size), round(GAP * image_size)
    for n in (2, 3, 4, 5):
        geo = layout_geometry(n, image_size, ratio)
        assert geo.small > 0 and geo.large == max(geo.small, round(ratio * geo.small))
        for large_slot in [*range(n), None]:
            boxes = geo.boxes(large_slot)
            sizes = [b[2] - b[0] for b in boxes]
            assert sizes == [geo.large if k == large_slot else geo.small for k in range(n)]
            for b in boxes:
                assert margin <= b[0] and margin <= b[1] and b[2] <= image_size - margin and b[3] <= image_size - margin
            for i in range(n):
                for j in range(i + 1, n):
                    assert _separated(boxes[i], boxes[j], gap), (n, large_slot, boxes)
        # the size is the largest that fits: one more pixel breaks some arrangement
        bigger = scenes.Geometry(n, image_size, geo.small + 1, round(ratio * (geo.small + 1)), geo.centres)
        assert not scenes._fits(bigger)


def test_slot_positions_follow_the_study() -> None:
    # 2: left/right; 3: a diagonal from upper-left; 4: 2x2 grid; 5: corners + centre
    c = {n: layout_geometry(n, 224, 3.0).centres for n in (2, 3, 4, 5)}
    assert c[2][0][0] < c[2][1][0] and c[2][0][1] == c[2][1][1]
    assert c[3][0][0] < c[3][1][0] < c[3][2][0] and c[3][0][1] < c[3][1][1] < c[3][2][1]
    assert c[5][2] == (112, 112)
    assert reference_size(224, 3.0) == layout_geometry(2, 224, 3.0).small


@pytest.mark.parametrize("m,n", [(5, 5), (6, 5), (13, 4), (69, 5), (18, 3)])
def test_latin_round_is_a_latin_rectangle(m: int, n: int) -> None:
    rows = latin_round(m, n, np.random.default_rng(0))
    assert rows.shape == (m, n)
    for j in range(n):
        assert sorted(rows[:, j]) == list(range(m))
    assert all(len(set(r)) == n for r in rows)


def test_latin_round_fallback_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenes, "_MAX_TRIES", 0)
    rows = latin_round(7, 5, np.random.default_rng(1))
    for j in range(5):
        assert sorted(rows[:, j]) == list(range(7))
    assert all(len(set(r)) == 5 for r in rows)


def _slot_counts(specs: list[scenes.SceneSpec], group: str) -> Counter[tuple[str, int]]:
    return Counter((name, k) for s in specs if s.group == group for k, name in enumerate(s.names))


@pytest.mark.parametrize("per_group", [13, 26, 7, 30])
def test_plan_is_balanced(per_group: int) -> None:
    """The stated guarantee: within a group each (object, slot) count is floor(N/m) or ceil(N/m),
    and over all large groups the times each object is large differ by at most one."""
    m = len(NAMES)
    specs = plan_scenes(NAMES, [2, 3, 4, 5], per_group, equal_size=True, seed=3)
    groups = sorted({s.group for s in specs})
    assert len(groups) == 2 + 3 + 4 + 5 + 4 and len(specs) == len(groups) * per_group
    lo, hi = per_group // m, -(-per_group // m)
    for g in groups:
        counts = _slot_counts(specs, g)
        n = next(s.n for s in specs if s.group == g)
        for name in NAMES:
            for k in range(n):
                assert lo <= counts[(name, k)] <= hi, (g, name, k, counts[(name, k)])
    large = Counter(s.names[s.large_slot] for s in specs if s.large_slot is not None)
    assert max(large[nm] for nm in NAMES) - min(large[nm] for nm in NAMES) <= 1


def test_plan_scenes_are_valid_and_seeded() -> None:
    specs = plan_scenes(NAMES, [2, 5], 20, equal_size=False, seed=0)
    for s in specs:
        assert len(s.names) == s.n == len(set(s.names))  # no object twice in a scene
        assert set(s.names) <= set(NAMES)
        assert s.variant != EQUAL and s.group == f"{s.n}obj_large{s.large_slot}"
        assert s.file_name == f"scenes/{s.group}/{s.index:05d}.png"
    assert specs == plan_scenes(NAMES, [2, 5], 20, equal_size=False, seed=0)
    assert specs != plan_scenes(NAMES, [2, 5], 20, equal_size=False, seed=1)
    # a group's scenes depend only on (seed, n, variant) when every group is whole rounds
    whole = plan_scenes(NAMES, [3], 26, equal_size=True, seed=0)
    assert [s for s in plan_scenes(NAMES, [2, 3], 26, equal_size=True, seed=0) if s.n == 3] == whole


def test_combinations_vary() -> None:
    """Rounds are random Latin rectangles, not fixed cyclic shifts: an object meets many partners."""
    specs = plan_scenes(NAMES, [3], 13 * 4, equal_size=False, seed=0)
    partners = {nm: {o for s in specs if nm in s.names for o in s.names} - {nm} for nm in NAMES}
    assert min(len(p) for p in partners.values()) >= 6
