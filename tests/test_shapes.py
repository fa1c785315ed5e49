"""SimCO shapes: registry, format, determinism, colour, and that the 18 silhouettes differ."""

from __future__ import annotations

import colorsys
import itertools

import numpy as np
import pytest

from clipprobe.data.shapes import SHAPES, draw_shape
from clipprobe.data.vocab import SIMCO_NAMES
from clipprobe.errors import UserError

SIZE = 64  # small, so the whole module runs in about a second


@pytest.fixture(scope="module")
def drawn() -> dict[str, np.ndarray]:
    """Every shape at SIZE, as [SIZE, SIZE, 4] uint8 arrays."""
    return {name: np.asarray(draw_shape(name, SIZE)) for name in SIMCO_NAMES}


def test_registry_is_exactly_the_simco_names() -> None:
    assert sorted(SHAPES) == sorted(SIMCO_NAMES)
    assert len(SHAPES) == 18


def test_registry_entries_draw_the_same_as_draw_shape() -> None:
    assert SHAPES["torus"](24).tobytes() == draw_shape("torus", 24).tobytes()


@pytest.mark.parametrize("size", [8, 40, 65])
def test_mode_and_size(size: int) -> None:
    for name in ("cube", "star", "cap"):
        im = draw_shape(name, size)
        assert im.mode == "RGBA"
        assert im.size == (size, size)


def test_deterministic_bytes() -> None:
    for name in ("sphere", "leaf", "mug"):
        assert draw_shape(name, 48).tobytes() == draw_shape(name, 48).tobytes()


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


def test_silhouettes_pairwise_distinct(drawn: dict[str, np.ndarray]) -> None:
    masks = {name: a[..., 3] > 128 for name, a in drawn.items()}
    for (n1, m1), (n2, m2) in itertools.combinations(masks.items(), 2):
        iou = (m1 & m2).sum() / (m1 | m2).sum()
        assert iou < 0.9, (n1, n2, iou)


def test_unknown_name_raises_user_error() -> None:
    with pytest.raises(UserError, match="unknown SimCO shape 'hexagon'.*clipprobe data objects simco") as err:
        draw_shape("hexagon", 64)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("size", [7, 0, -3])
def test_too_small_size_raises_user_error(size: int) -> None:
    with pytest.raises(UserError, match="at least 8"):
        draw_shape("cube", size)
