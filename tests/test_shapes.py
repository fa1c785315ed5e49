"""SimCO shapes: registry, format, determinism, colour, shading, and what each silhouette looks like.

Most checks describe the drawings (holes where a shape has a hole, mirror symmetry where the shape is
symmetric, apexes and points where they belong, light from the upper left) rather than pinning
bytes; ``PINNED`` holds two coarse numbers per shape, with tolerances, to catch unnoticed changes.
"""

from __future__ import annotations

import colorsys
import itertools
import random

import numpy as np
import pytest

from clipprobe.data.shapes import SHAPES, draw_shape
from clipprobe.data.vocab import SIMCO_NAMES
from clipprobe.errors import UserError

SIZE = 64  # small, so the whole module runs in about a second

# (opaque fraction, mean blue channel of the fully opaque pixels) of every shape at SIZE px. A
# regression guard, with tolerances (PINNED_TOL) wide enough for float noise across machines and
# narrow enough to catch a changed radius, extent, light or colour. After an intended change to a
# drawing, look at the pictures (`clipprobe data preview` of a simco set), then print a new table
# with `python tests/test_shapes.py` and paste it here.
PINNED: dict[str, tuple[float, float]] = {
    "cube": (0.534, 152.1),
    "sphere": (0.574, 162.7),
    "cylinder": (0.479, 153.6),
    "mug": (0.521, 124.7),
    "pentagon": (0.480, 175.7),
    "heart": (0.411, 177.5),
    "cone": (0.360, 177.4),
    "pyramid": (0.234, 198.4),
    "diamond": (0.320, 182.4),
    "moon": (0.287, 170.5),
    "cross": (0.426, 176.1),
    "snowflake": (0.336, 146.2),
    "leaf": (0.353, 169.0),
    "arrow": (0.197, 169.6),
    "star": (0.292, 170.9),
    "torus": (0.453, 187.0),
    "pot": (0.496, 103.7),
    "cap": (0.316, 186.0),
}
PINNED_TOL = (0.015, 4.0)


@pytest.fixture(scope="module")
def drawn() -> dict[str, np.ndarray]:
    """Every shape at SIZE, as [SIZE, SIZE, 4] uint8 arrays."""
    return {name: np.asarray(draw_shape(name, SIZE)) for name in SIMCO_NAMES}


@pytest.fixture(scope="module")
def masks(drawn: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every shape's silhouette: alpha above one half."""
    return {name: a[..., 3] > 128 for name, a in drawn.items()}


def holes(mask: np.ndarray) -> np.ndarray:
    """Transparent pixels that no 4-connected transparent path links to the canvas border."""
    free = np.pad(~mask, 1, constant_values=True)
    outside = np.zeros_like(free)
    outside[0] = True
    while True:  # grow the outside region from the border, through transparent pixels only
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= free
        if np.array_equal(grown, outside):
            return (free & ~outside)[1:-1, 1:-1]
        outside = grown


def crop(mask: np.ndarray) -> np.ndarray:
    """The mask cut to its bounding box."""
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def solidity(mask: np.ndarray) -> float:
    """Silhouette area over the area of its convex hull (1 for convex shapes, low for stars and crescents)."""
    ys, xs = np.nonzero(mask)
    corners = {
        (x + dx, y + dy) for x, y in zip(xs.tolist(), ys.tolist(), strict=True) for dx in (0, 1) for dy in (0, 1)
    }
    pts = sorted(corners)

    def turn(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    hull: list[tuple[int, int]] = []
    for sweep in (pts, pts[::-1]):  # Andrew's monotone chain: lower hull, then upper hull
        chain: list[tuple[int, int]] = []
        for p in sweep:
            while len(chain) >= 2 and turn(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        hull += chain[:-1]
    x, y = np.array(hull, float).T
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    return float(mask.sum() / area)


def end_widths(mask: np.ndarray) -> tuple[float, float]:
    """Mean width of the silhouette's top fifth and bottom fifth of rows."""
    c = crop(mask)
    q = max(1, len(c) // 5)
    return float(c[:q].sum(1).mean()), float(c[-q:].sum(1).mean())


def coverage_and_brightness(a: np.ndarray) -> tuple[float, float]:
    """Opaque fraction and mean blue channel of the fully opaque pixels of an RGBA array (``PINNED``'s numbers)."""
    return float((a[..., 3] > 128).mean()), float(a[..., 2][a[..., 3] == 255].astype(float).mean())


def test_registry_is_exactly_the_simco_names() -> None:
    assert sorted(SHAPES) == sorted(SIMCO_NAMES)
    assert len(SHAPES) == 18


def test_registry_entry_draws_its_own_shape(drawn: dict[str, np.ndarray]) -> None:
    """Each registry entry is bound to its own name (no late-bound loop variable, no swapped keys)."""
    for name in SIMCO_NAMES:
        assert np.array_equal(np.asarray(SHAPES[name](SIZE)), drawn[name]), name


@pytest.mark.parametrize("size", [8, 40, 65])
def test_mode_and_size(size: int) -> None:
    for name in ("cube", "star", "cap"):
        im = draw_shape(name, size)
        assert im.mode == "RGBA"
        assert im.size == (size, size)


def test_drawing_ignores_global_rng_and_draw_order(drawn: dict[str, np.ndarray]) -> None:
    """Same name and size, same bytes: whatever the global random state, whatever was drawn before.

    Guards the promise the corpus relies on (sample i depends only on i): a drawer using numpy's or
    Python's global generator, or state left behind by another drawer, breaks it.
    """
    np.random.seed(12345)
    random.seed(12345)
    for name in reversed(SIMCO_NAMES):
        assert np.array_equal(np.asarray(draw_shape(name, SIZE)), drawn[name]), name


def test_background_transparent_and_object_roughly_centred(drawn: dict[str, np.ndarray]) -> None:
    for name, a in drawn.items():
        alpha = a[..., 3]
        assert alpha[0, 0] == alpha[0, -1] == alpha[-1, 0] == alpha[-1, -1] == 0, name
        ys, xs = np.nonzero(alpha > 128)
        assert abs(xs.mean() - SIZE / 2) < SIZE * 0.15, name
        assert abs(ys.mean() - SIZE / 2) < SIZE * 0.15, name
        # the object fills most of the canvas along its longer side
        assert max(np.ptp(xs), np.ptp(ys)) > 0.75 * SIZE, name


def test_opaque_fraction_in_range(drawn: dict[str, np.ndarray]) -> None:
    for name, a in drawn.items():
        frac = (a[..., 3] > 128).mean()
        assert 0.12 < frac < 0.8, (name, frac)


def test_opaque_pixels_are_blue(drawn: dict[str, np.ndarray]) -> None:
    for name, a in drawn.items():
        rgb = a[a[..., 3] == 255][:, :3].astype(float)
        r, g, b = rgb.mean(0)
        assert b > g > r, name
        assert b > 1.5 * g, name
        hue = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)[0] * 360
        assert 200 < hue < 240, (name, hue)
        # shaded, not flat: the brightness of the blue channel varies across the object
        assert rgb[:, 2].std() > 8, name


def test_silhouettes_pairwise_distinct(masks: dict[str, np.ndarray]) -> None:
    for (n1, m1), (n2, m2) in itertools.combinations(masks.items(), 2):
        assert iou(m1, m2) < 0.9, (n1, n2, iou(m1, m2))


def test_ring_shapes_have_holes_and_solid_shapes_none(masks: dict[str, np.ndarray]) -> None:
    """The torus shows its centre hole, the mug the gap inside its handle (right of the body); no other
    shape has an enclosed transparent region. The snowflake is left out: at small sizes the extruded
    branch tips of neighbouring arms may close small gaps, which is a rendering detail, not the shape."""
    torus = holes(masks["torus"])
    ys, xs = np.nonzero(torus)
    assert torus.sum() > 0.03 * SIZE**2
    assert abs(xs.mean() - SIZE / 2) < 2 and abs(ys.mean() - SIZE / 2) < 2  # the hole is the ring's centre
    mug = holes(masks["mug"])
    assert mug.sum() > 0.01 * SIZE**2
    assert np.nonzero(mug)[1].min() > np.nonzero(masks["mug"])[1].mean()  # inside the handle, right of the body
    for name, mask in masks.items():
        if name not in ("torus", "mug", "snowflake"):
            assert not holes(mask).any(), name


def test_mirror_symmetry(masks: dict[str, np.ndarray]) -> None:
    """Solids of revolution seen head-on are exactly left-right symmetric; symmetric flat shapes nearly so
    (their extrusion to the lower right breaks it a little); the mug, moon, leaf, arrow and cap are not."""
    lr = {name: iou(crop(m), crop(m)[:, ::-1]) for name, m in masks.items()}
    for name in ("sphere", "cylinder", "cone", "pot", "torus"):
        assert lr[name] > 0.98, (name, lr[name])
    for name in ("pentagon", "heart", "cross", "star", "diamond"):
        assert lr[name] > 0.87, (name, lr[name])
    for name in ("mug", "moon", "leaf", "arrow", "cap"):
        assert lr[name] < 0.75, (name, lr[name])
    arrow = crop(masks["arrow"])
    assert iou(arrow, arrow[::-1]) > 0.9  # the arrow lies along the horizontal: symmetric top to bottom


def test_convex_and_concave_silhouettes(masks: dict[str, np.ndarray]) -> None:
    """Convex solids fill their convex hull; stars, crosses, crescents, snowflakes and arrows do not."""
    for name in ("cube", "sphere", "cylinder", "pentagon"):
        assert solidity(masks[name]) > 0.94, (name, solidity(masks[name]))
    for name in ("moon", "star", "snowflake", "cross", "arrow"):
        assert solidity(masks[name]) < 0.8, (name, solidity(masks[name]))


def test_orientation_of_each_shape(masks: dict[str, np.ndarray]) -> None:
    """Apexes up (cone, pyramid), points down (diamond, heart), pot widening to its rim, cylinder upright,
    torus and arrow lying wide, the arrow's head on the right, the moon's bite on the upper right."""
    for name in ("cone", "pyramid"):
        top, bottom = end_widths(masks[name])
        assert top < 0.35 * bottom, (name, top, bottom)
    for name in ("diamond", "heart"):
        top, bottom = end_widths(masks[name])
        assert bottom < 0.4 * top, (name, top, bottom)
    top, bottom = end_widths(masks["pot"])
    assert top > 1.3 * bottom
    cylinder = crop(masks["cylinder"])
    top, bottom = end_widths(masks["cylinder"])
    assert cylinder.shape[0] > 1.2 * cylinder.shape[1] and abs(top - bottom) < 0.1 * top
    for name in ("torus", "arrow"):
        h, w = crop(masks[name]).shape
        assert h < 0.8 * w, (name, h, w)
    arrow = crop(masks["arrow"])
    assert np.argmax(arrow.sum(0)) > arrow.shape[1] / 2  # the tallest column is in the head
    ys, xs = np.nonzero(masks["moon"])
    assert xs.mean() < SIZE / 2 - 4 and ys.mean() > SIZE / 2  # the disc's upper right is bitten off


def test_lit_from_the_upper_left(drawn: dict[str, np.ndarray]) -> None:
    """The key light comes from the upper left front: every shape's left half is brighter than its right
    half, and the sphere's highlight sits in its upper left, higher than it is left (light (-0.45, -0.7))."""
    for name, a in drawn.items():
        opaque = a[..., 3] == 255
        blue = a[..., 2].astype(float)
        cx = np.nonzero(opaque)[1].mean()
        cols = np.arange(SIZE)[None, :]
        left, right = blue[opaque & (cols < cx)].mean(), blue[opaque & (cols > cx)].mean()
        assert left > 1.02 * right, (name, left, right)
    sphere = drawn["sphere"]
    blue = np.where(sphere[..., 3] == 255, sphere[..., 2].astype(float), -1)
    y, x = np.unravel_index(np.argmax(blue), blue.shape)
    dx, dy = x - SIZE / 2, y - SIZE / 2
    assert dx < 0 and dy < 0 and abs(dy) > abs(dx), (dx, dy)
    rows = np.arange(SIZE)[:, None]
    upper, lower = blue[(blue >= 0) & (rows < SIZE / 2)].mean(), blue[(blue >= 0) & (rows > SIZE / 2)].mean()
    assert upper > 1.2 * lower


def test_pinned_coverage_and_brightness(drawn: dict[str, np.ndarray]) -> None:
    """Regression guard: opaque fraction and mean brightness per shape match ``PINNED`` (see its comment)."""
    assert sorted(PINNED) == sorted(SIMCO_NAMES)
    for name, a in drawn.items():
        frac, blue = coverage_and_brightness(a)
        want_frac, want_blue = PINNED[name]
        assert abs(frac - want_frac) < PINNED_TOL[0] and abs(blue - want_blue) < PINNED_TOL[1], (name, frac, blue)


def test_unknown_name_raises_user_error() -> None:
    with pytest.raises(UserError, match="unknown SimCO shape 'hexagon'.*clipprobe data objects simco") as err:
        draw_shape("hexagon", 64)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("size", [7, 0, -3])
def test_too_small_size_raises_user_error(size: int) -> None:
    with pytest.raises(UserError, match="at least 8"):
        draw_shape("cube", size)


if __name__ == "__main__":  # print a new PINNED table
    for _name in SIMCO_NAMES:
        _frac, _blue = coverage_and_brightness(np.asarray(draw_shape(_name, SIZE)))
        print(f'    "{_name}": ({_frac:.3f}, {_blue:.1f}),')
