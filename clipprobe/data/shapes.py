"""SimCO's 18 shapes, drawn procedurally in one matte blue (PROBES.md, section 1).

Every drawer paints into a ``Canvas`` (clipprobe.data.shading) at 4x the requested size: an opacity mask plus a shade
(brightness) per pixel, in normalised coordinates (x right, y down, both in [-1, 1]). Solids are
shaded by Lambert's law from their surface normals (polyhedra, surfaces of revolution, sphere
sweeps); flat shapes are extruded toward the lower right and bevelled. ``Canvas.image`` colours
the shade with the base blue and downsamples with Lanczos for anti-aliasing. No randomness: the
same name and size give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image

from clipprobe.data.shading import (
    ELEV,
    EXTRUDE,
    MIN_SIZE,
    Canvas,
    fit_points,
    flat_bevel,
    lambert,
    lathe,
    polyhedron,
    sweep,
    view_matrix,
)
from clipprobe.errors import UserError


def _cube(cv: Canvas) -> None:
    verts = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    faces = [[0, 1, 3, 2], [4, 5, 7, 6], [0, 1, 5, 4], [2, 3, 7, 6], [0, 2, 6, 4], [1, 3, 7, 5]]
    polyhedron(cv, verts, faces, math.radians(35), math.radians(28))


def _pyramid(cv: Canvas) -> None:
    verts = [(-1, 0, -1), (1, 0, -1), (1, 0, 1), (-1, 0, 1), (0, 1.45, 0)]
    faces = [[0, 1, 2, 3], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]]
    polyhedron(cv, verts, faces, math.radians(36), math.radians(14))


def _diamond(cv: Canvas) -> None:
    ring = [k * math.pi / 4 for k in range(8)]
    table = [(0.55 * math.cos(a), 0.38, 0.55 * math.sin(a)) for a in ring]
    girdle = [(math.cos(a + math.pi / 8), 0.0, math.sin(a + math.pi / 8)) for a in ring]
    verts = table + girdle + [(0.0, -1.0, 0.0)]
    faces = [list(range(8))]
    for k in range(8):
        faces += [[k, (k + 1) % 8, 8 + k], [8 + (k - 1) % 8, k, 8 + k], [8 + k, 8 + (k + 1) % 8, 16]]
    polyhedron(cv, verts, faces, math.radians(10), math.radians(22), extent=0.84)


def _sphere(cv: Canvas) -> None:
    cv.paint(*sweep(cv, np.array([[0.0, 0.0, 0.0]]), 0.86))


def _top(cv: Canvas, cy: float, r: float, wall: float | None = None, cx: float = 0.0) -> None:
    """A horizontal top disc of radius r seen from ``ELEV``; open (dark inside) when ``wall`` is given."""
    se = math.sin(ELEV)
    cv.paint(cv.ellipse(cx, cy, r, r * se), lambert(0, -math.cos(ELEV), se))
    if wall is not None:  # the inside is lit on its back wall
        cv.paint(
            cv.ellipse(cx, cy, r - wall, (r - wall) * se), 0.25 + 0.25 * np.clip((cy - cv.y) / (r * se) + 0.2, 0, 1)
        )


def _cylinder(cv: Canvas) -> None:
    h, r = 1.25, 0.62
    base = h / 2 * math.cos(ELEV)
    lathe(cv, [(0, r), (h, r)], base)
    _top(cv, base - h * math.cos(ELEV), r)


def _cone(cv: Canvas) -> None:
    h, r = 1.6, 0.74
    lathe(cv, [(0, r), (h, 0.0)], 0.6)


def _mug(cv: Canvas) -> None:
    h, r, cx = 1.3, 0.6, -0.2
    base = h / 2 * math.cos(ELEV) + 0.06
    t = np.linspace(-math.pi / 2, math.pi / 2, 90)
    handle = np.stack([cx + r - 0.06 + 0.42 * np.cos(t), base - 0.62 + 0.36 * np.sin(t), 0.15 * np.cos(t)], 1)
    cv.paint(*sweep(cv, handle, 0.1))
    lathe(cv, [(0, r), (h, r)], base, cx)
    _top(cv, base - h * math.cos(ELEV), r, 0.07, cx)


def _pot(cv: Canvas) -> None:
    h, rim = 1.2, 0.22
    base = 0.66
    lathe(cv, [(0, 0.5), (h - rim, 0.7), (h - rim + 1e-3, 0.8), (h, 0.8)], base, dark_below=h - rim)
    _top(cv, base - h * math.cos(ELEV), 0.8, 0.08)


def _torus(cv: Canvas) -> None:
    big, tube = 0.64, 0.27
    t = np.linspace(0, 2 * math.pi, 240, endpoint=False)
    ring = np.stack([big * np.cos(t), np.zeros_like(t), big * np.sin(t)], 1) @ view_matrix(0, math.radians(42)).T
    cv.paint(*sweep(cv, ring, tube))


def _cap(cv: Canvas) -> None:
    r, yaw, se, ce = 0.68, math.radians(-50), math.sin(ELEV), math.cos(ELEV)
    oy = 0.16  # image y of the dome's base centre
    # the dome: front points of a sphere above the cut plane Y = 0
    vx, vy = cv.x - 0.2, -(cv.y - oy)
    vz = np.sqrt(np.clip(r**2 - vx**2 - vy**2, 0, None))
    obj_y = ce * vy + se * vz
    dome = (vx**2 + vy**2 <= r**2) & (obj_y >= 0)
    shade = lambert(vx, -vy, vz)
    # seams: great-circle arcs at every 60 degrees of azimuth
    ox, oz = vx, -se * vy + ce * vz
    az = np.arctan2(oz, ox) - yaw
    rho = np.hypot(ox, oz)
    seam = (np.abs((az + math.pi / 6) % (math.pi / 3) - math.pi / 6) * rho < 0.012) & (obj_y < 0.95 * r)
    shade = np.where(seam, shade * 0.72, shade)
    cv.paint(dome, shade)
    # the brim: a flat visor in the plane Y = 0, sticking out to the front left
    bz = -ce * vy / se  # view depth of the plane point under each pixel
    px, pz = vx, -se * vy + ce * bz
    bx, bzz = math.cos(yaw) * px - math.sin(yaw) * pz, math.sin(yaw) * px + math.cos(yaw) * pz
    visor = (((bx / (0.88 * r)) ** 2 + ((bzz - 0.7 * r) / r) ** 2) <= 1) & (bx**2 + bzz**2 > (0.98 * r) ** 2)
    visor &= bzz > 0
    under = np.roll(visor, round(0.035 * cv.n / 2), 0) & ~visor
    cv.paint(under & ~dome, 0.3)
    cv.paint(visor, lambert(0.25 * bx, -ce, se) - 0.05)
    cv.paint(*sweep(cv, np.array([[0.2, oy - r * ce, r * se]]), 0.065))


# ---------------------------------------------------------------- flat shapes


def _regular(k: int, inner: float | None = None, turn: float = -math.pi / 2) -> np.ndarray:
    """Vertices of a regular k-gon (radius 1), or of a k-pointed star when ``inner`` is given."""
    radii = np.resize([1.0] if inner is None else [1.0, inner], k if inner is None else 2 * k)
    ang = turn + 2 * math.pi * np.arange(len(radii)) / len(radii)
    return np.stack([radii * np.cos(ang), radii * np.sin(ang)], 1)


FLAT_SHIFT = (-EXTRUDE[0] / 2, -EXTRUDE[1] / 2)


def _flat_polygon(pts: np.ndarray | list, bevel: float, cv: Canvas) -> None:
    flat_bevel(cv, cv.polygon(fit_points(pts, 0.82, FLAT_SHIFT)), bevel)


def _heart_outline() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 400, endpoint=False)
    return np.stack([16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)


def _moon(cv: Canvas) -> None:
    sx, sy = FLAT_SHIFT
    mask = cv.ellipse(sx, sy, 0.8, 0.8) & ~cv.ellipse(sx + 0.38, sy - 0.2, 0.66, 0.66)
    flat_bevel(cv, mask, 0.08)


def _snowflake(cv: Canvas) -> None:
    sx, sy = FLAT_SHIFT
    segments = []
    for i in range(6):
        a = math.pi / 2 + i * math.pi / 3
        u, v = math.cos(a), math.sin(a)
        segments.append(((sx, sy), (sx + 0.8 * u, sy + 0.8 * v)))
        for d, length in ((0.42, 0.26), (0.64, 0.17)):
            for side in (-1, 1):
                b = a + side * math.pi / 3
                px, py = sx + d * u, sy + d * v
                segments.append(((px, py), (px + length * math.cos(b), py + length * math.sin(b))))
    mask = cv.lines(segments, 0.085) | cv.polygon(0.2 * _regular(6, turn=0) + np.array([sx, sy]))
    flat_bevel(cv, mask, 0.035)


def _cross(cv: Canvas) -> None:
    bar = np.array([(-1, -3), (1, -3), (1, 3), (-1, 3)])
    flat_bevel(
        cv, cv.polygon(fit_points(bar, 0.82, FLAT_SHIFT)) | cv.polygon(fit_points(bar[:, ::-1], 0.82, FLAT_SHIFT)), 0.06
    )


def _leaf(cv: Canvas) -> None:
    t = np.linspace(0, math.pi, 120)
    half = np.stack([np.cos(t), 0.5 * np.sin(t) ** 1.3], 1)  # leaf along x, tip at +1, stem end at -1
    veins = [((-1.0, 0.0), (0.84, 0.0))]
    veins += [((f, 0.0), (f + 0.28 - 0.1 * f, s * 0.25 * (1 - 0.4 * f))) for f in (-0.5, -0.1, 0.3) for s in (-1, 1)]
    veins += [((-1.0, 0.0), (-1.3, 0.0))]  # the stem
    rot, offset = math.radians(-40), np.array(FLAT_SHIFT) + np.array([0.1, -0.04])
    m = 0.9 * np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])

    def place(pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts) @ m.T + offset

    segs = [tuple(map(tuple, place(seg))) for seg in veins]
    flat_bevel(cv, cv.polygon(place(np.concatenate([half, -half]))) | cv.lines(segs[-1:], 0.05), 0.06)
    cv.shade[cv.lines(segs[:-1], 0.022) & cv.alpha] *= 0.7


_DRAWERS: dict[str, Callable[[Canvas], None]] = {
    "cube": _cube,
    "sphere": _sphere,
    "cylinder": _cylinder,
    "mug": _mug,
    "pentagon": partial(_flat_polygon, _regular(5), 0.07),
    "heart": partial(_flat_polygon, _heart_outline(), 0.09),
    "cone": _cone,
    "pyramid": _pyramid,
    "diamond": _diamond,
    "moon": _moon,
    "cross": _cross,
    "snowflake": _snowflake,
    "leaf": _leaf,
    "arrow": partial(
        _flat_polygon, [(-1, -0.22), (0.25, -0.22), (0.25, -0.55), (1, 0), (0.25, 0.55), (0.25, 0.22), (-1, 0.22)], 0.05
    ),
    "star": partial(_flat_polygon, _regular(5, 0.45), 0.06),
    "torus": _torus,
    "pot": _pot,
    "cap": _cap,
}


def draw_shape(name: str, size: int) -> Image.Image:
    """Draw one SimCO shape: matte blue, shaded, centred on a transparent ``size`` x ``size`` canvas.

    Args:
        name: one of the 18 SimCO names (the keys of ``SHAPES``).
        size: canvas side in pixels (at least 8).

    Returns:
        An RGBA image; the same name and size always give the same bytes.

    Raises:
        UserError: unknown name or too small a size.
    """
    if name not in _DRAWERS:
        raise UserError(f"unknown SimCO shape '{name}'; run 'clipprobe data objects simco' to list the 18 valid names")
    if not isinstance(size, int | np.integer) or size < MIN_SIZE:
        raise UserError(
            f"shape size must be an integer of at least {MIN_SIZE} pixels, got {size!r}; pass a larger size"
        )
    cv = Canvas(int(size))
    _DRAWERS[name](cv)
    return cv.image()


# The registry: SimCO name -> function(size) -> RGBA image.
SHAPES: dict[str, Callable[[int], Image.Image]] = {name: partial(draw_shape, name) for name in _DRAWERS}
