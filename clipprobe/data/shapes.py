"""SimCO's 18 shapes, drawn procedurally in one matte blue (PROBES.md, section 1).

Every drawer paints into a ``_Canvas`` at 4x the requested size: an opacity mask plus a shade
(brightness) per pixel, in normalised coordinates (x right, y down, both in [-1, 1]). Solids are
shaded by Lambert's law from their surface normals (polyhedra, surfaces of revolution, sphere
sweeps); flat shapes are extruded toward the lower right and bevelled. ``_Canvas.image`` colours
the shade with the base blue and downsamples with Lanczos for anti-aliasing. No randomness: the
same name and size give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image, ImageDraw

from clipprobe.errors import UserError

BASE_RGB = (50, 100, 200)
SUPERSAMPLE = 4
MIN_SIZE = 8
AMBIENT = 0.42
# key light from the upper left front, a weak fill from the right (image frame: x right, y down, z out)
LIGHTS = [(w, np.array(d) / np.linalg.norm(d)) for w, d in ((0.72, (-0.45, -0.7, 0.55)), (0.14, (0.7, -0.1, 0.7)))]
ELEV = math.radians(24)  # camera elevation for solids: we look slightly down on them
EXTRUDE = (0.05, 0.08)  # flat shapes' thickness, as an offset toward the lower right

Region = tuple[slice, slice]


class _Canvas:
    """Supersampled mask + shade buffers; ``x``/``y`` hold each pixel's normalised coordinates."""

    def __init__(self, size: int) -> None:
        self.size, self.n = size, size * SUPERSAMPLE
        c = (np.arange(self.n, dtype=np.float32) + 0.5) / self.n * 2 - 1
        self.x, self.y = np.meshgrid(c, c)  # [n, n] each
        self.alpha = np.zeros((self.n, self.n), bool)
        self.shade = np.zeros((self.n, self.n), np.float32)

    def px(self, v: float) -> float:
        """Normalised coordinate -> pixel coordinate."""
        return (v + 1) / 2 * self.n

    def box(self, cx: float, cy: float, r: float) -> Region:
        """Row and column slices covering the square of half-side r around (cx, cy), clipped."""

        def span(c: float) -> slice:
            return slice(max(0, int(self.px(c - r)) - 1), min(self.n, int(self.px(c + r)) + 2))

        return span(cy), span(cx)

    def paint(self, mask: np.ndarray, shade: np.ndarray | float, region: Region | None = None) -> None:
        """Paint ``shade`` where ``mask`` (both full-size, or both the size of ``region``)."""
        region = region or (slice(None), slice(None))
        self.alpha[region] |= mask
        self.shade[region][mask] = shade if np.ndim(shade) == 0 else shade[mask]

    def polygon(self, pts: np.ndarray | list) -> np.ndarray:
        """Boolean mask of a filled polygon given in normalised coordinates."""
        im = Image.new("L", (self.n, self.n), 0)
        ImageDraw.Draw(im).polygon([(self.px(a), self.px(b)) for a, b in pts], fill=255)
        return np.asarray(im) > 0

    def lines(self, segments: list, width: float) -> np.ndarray:
        """Boolean mask of thick round-capped segments ((x0, y0), (x1, y1)); width normalised."""
        im = Image.new("L", (self.n, self.n), 0)
        draw, w = ImageDraw.Draw(im), max(1, round(width * self.n / 2))
        for seg in segments:
            ends = [(self.px(a), self.px(b)) for a, b in seg]
            draw.line(ends, fill=255, width=w)
            for u, v in ends:
                draw.ellipse([u - w / 2, v - w / 2, u + w / 2, v + w / 2], fill=255)
        return np.asarray(im) > 0

    def ellipse(self, cx: float, cy: float, a: float, b: float) -> np.ndarray:
        """Boolean mask of an axis-aligned ellipse."""
        return ((self.x - cx) / a) ** 2 + ((self.y - cy) / b) ** 2 <= 1

    def image(self) -> Image.Image:
        """Colour the shade with the base blue, downsample to the requested size (RGBA)."""
        rgb = np.clip(self.shade[..., None] * np.array(BASE_RGB, np.float32), 0, 255)
        rgba = np.dstack([rgb, self.alpha[..., None] * 255.0]).round().astype(np.uint8)
        rgba[~self.alpha] = 0
        return Image.fromarray(rgba, "RGBA").resize((self.size, self.size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------- shading helpers


def _lambert(nx: np.ndarray | float, ny: np.ndarray | float, nz: np.ndarray | float) -> np.ndarray:
    """Matte brightness of (unnormalised) image-frame normals."""
    norm = np.sqrt(np.square(nx) + np.square(ny) + np.square(nz)) + 1e-9
    out = AMBIENT
    for weight, (lx, ly, lz) in LIGHTS:
        out = out + weight * np.clip((lx * nx + ly * ny + lz * nz) / norm, 0, None)
    return np.asarray(out, np.float32)


def _view(yaw: float, elev: float) -> np.ndarray:
    """3x3 matrix: object frame (X right, Y up, Z front) -> image frame (x right, y down, z out)."""
    cy, sy, ce, se = math.cos(yaw), math.sin(yaw), math.cos(elev), math.sin(elev)
    turn = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    tilt = np.array([[1, 0, 0], [0, ce, -se], [0, se, ce]])
    return np.diag([1.0, -1.0, 1.0]) @ tilt @ turn


def _fit(pts: np.ndarray, extent: float = 0.86, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Scale and move points (x, y[, z]) so their x-y box is centred and spans ``2 * extent``."""
    pts = np.asarray(pts, float).copy()
    lo, hi = pts[:, :2].min(0), pts[:, :2].max(0)
    scale = 2 * extent / (hi - lo).max()
    pts[:, :2] = (pts[:, :2] - (lo + hi) / 2) * scale + np.array(shift)
    if pts.shape[1] > 2:
        pts[:, 2] *= scale
    return pts


def _blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Approximate Gaussian blur: three box passes along the rows, then the same on the transpose."""
    out = a.astype(np.float32)
    for _ in range(2):
        for _ in range(3):  # cumulative sums along the last (contiguous) axis, which numpy does fastest
            c = np.cumsum(np.pad(out, ((0, 0), (radius + 1, radius)), mode="edge"), axis=1, dtype=np.float32)
            out = (c[:, 2 * radius + 1 :] - c[:, : -2 * radius - 1]) / (2 * radius + 1)
        out = np.ascontiguousarray(out.T)
    return out


def _polyhedron(cv: _Canvas, verts: list, faces: list, yaw: float, elev: float, extent: float = 0.86) -> None:
    """Paint a convex polyhedron: front faces only, each flat-shaded by its normal."""
    v = _fit(np.asarray(verts, float) @ _view(yaw, elev).T, extent)
    centre = v.mean(0)
    index = Image.new("L", (cv.n, cv.n), 0)
    draw, lut = ImageDraw.Draw(index), np.zeros(256, np.float32)
    for i, face in enumerate(faces):
        p = v[face]
        normal = np.cross(p[1] - p[0], p[2] - p[0])
        normal = normal if normal @ (p.mean(0) - centre) > 0 else -normal
        if normal[2] > 1e-6:
            draw.polygon([(cv.px(a), cv.px(b)) for a, b, _ in p], fill=i + 1)
            lut[i + 1] = _lambert(*normal)
    idx = np.asarray(index)
    cv.paint(idx > 0, lut[idx])


def _lathe(cv: _Canvas, profile: list, y_base: float, cx: float = 0.0, dark_below: float | None = None) -> None:
    """Paint a surface of revolution (vertical axis at ``cx``) seen from ``ELEV`` above.

    ``profile`` lists (height, radius) pairs, bottom to top; height 0 is drawn at image ``y_base``.
    The object is a stack of horizontal slices (ellipses in the image); a higher slice is always
    nearer the camera, so each pixel shows the highest slice whose ellipse holds it, shaded by the
    normal at that slice's rim. ``dark_below``: height of a ledge that shades the wall under it.
    """
    hs, rs = np.array(profile, float).T
    heights = np.arange(hs[0], hs[-1] + 1e-9, 1.0 / cv.n)  # [S] slices, finer than a pixel row
    radii = np.maximum(np.interp(heights, hs, rs), 1e-4)
    slopes = np.gradient(radii, heights)
    se, ce, n = math.sin(ELEV), math.cos(ELEV), cv.n
    dx = cv.x[0] - cx  # [n] per column
    q = radii[:, None] ** 2 - dx[None, :] ** 2  # [S, n]
    half = se * np.sqrt(np.clip(q, 0, None))
    centre = y_base - heights * ce  # [S] image y of each slice's centre
    lower = np.where(q > 0, centre[:, None] + half, -np.inf)
    reach = np.maximum.accumulate(lower[::-1], axis=0)[::-1]  # lowest edge of any slice at or above
    # thr[s, j]: rows above it lie at or above reach; the pixel's slice is the highest s with row < thr
    thr = np.searchsorted(cv.y[:, 0], reach, side="right")
    hist = np.bincount((thr * n + np.arange(n)).ravel(), minlength=(n + 1) * n).reshape(n + 1, n)
    idx = hist[::-1].cumsum(0)[::-1][1:] - 1  # [n, n] slice index per pixel, -1 for none
    safe = np.maximum(idx, 0)
    cols = np.broadcast_to(np.arange(n), (n, n))
    mask = (idx >= 0) & (cv.y >= centre[safe] - half[safe, cols])
    r = radii[safe]
    c, s = (cv.x - cx) / r, np.clip((cv.y - centre[safe]) / (r * se), -1, 1)  # cos, sin of the rim angle
    view, k = _view(0.0, ELEV), slopes[safe]
    shade = _lambert(*[view[i, 0] * c - view[i, 1] * k + view[i, 2] * s for i in range(3)])
    if dark_below is not None:
        gap = np.clip(dark_below - heights[safe], 0, None)
        shade *= np.where(heights[safe] < dark_below, 1 - 0.35 * np.exp(-gap / 0.04), 1).astype(np.float32)
    cv.paint(mask, shade)


def _sweep(cv: _Canvas, centres: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Mask and shade of a union of spheres (image-frame centres) with a z-buffer: tubes, balls."""
    zbuf = np.full((cv.n, cv.n), -np.inf, np.float32)
    normals = np.zeros((3, cv.n, cv.n), np.float32)
    for cx, cy, cz in centres:
        region = cv.box(cx, cy, radius)
        dx, dy = cv.x[region] - cx, cv.y[region] - cy
        dz = np.sqrt(np.clip(radius**2 - dx**2 - dy**2, 0, None))
        z = np.where(dx**2 + dy**2 <= radius**2, cz + dz, -np.inf)
        win = z > zbuf[region]
        zbuf[region][win] = z[win]
        for i, comp in enumerate((dx, dy, dz)):
            normals[i][region][win] = comp[win]
    mask = np.isfinite(zbuf)
    return mask, _lambert(*normals)


def _flat(cv: _Canvas, mask: np.ndarray, bevel: float = 0.05) -> None:
    """Paint a flat shape as a thick slab: extruded sides, then a bevelled front face."""
    n = cv.n
    soft = _blur(mask, max(1, round(0.006 * n)))
    gy, gx = np.gradient(soft)
    out = -np.stack([gx, gy]) / (np.hypot(gx, gy) + 1e-6)  # outward contour normal
    side = _lambert(out[0], out[1], 0.3) * 0.8
    ox, oy = EXTRUDE[0] * n / 2, EXTRUDE[1] * n / 2
    steps = max(2, round(max(ox, oy) / 1.5))
    for k in range(steps, 0, -1):
        sx, sy = round(ox * k / steps), round(oy * k / steps)
        cv.paint(np.roll(mask, (sy, sx), (0, 1)), np.roll(side, (sy, sx), (0, 1)))
    radius = max(1, round(bevel * n / 2 / 2.2))
    height = _blur(mask, radius)
    hy, hx = np.gradient(height)
    tilt = 1.3 * 2.2 * radius  # makes the steepest bevel slope about 1.3
    front = _lambert(-hx * tilt, -hy * tilt, 1.0) - 0.06 * (cv.x + cv.y)
    cv.paint(mask, front)


# ---------------------------------------------------------------- solids


def _cube(cv: _Canvas) -> None:
    verts = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    faces = [[0, 1, 3, 2], [4, 5, 7, 6], [0, 1, 5, 4], [2, 3, 7, 6], [0, 2, 6, 4], [1, 3, 7, 5]]
    _polyhedron(cv, verts, faces, math.radians(35), math.radians(28))


def _pyramid(cv: _Canvas) -> None:
    verts = [(-1, 0, -1), (1, 0, -1), (1, 0, 1), (-1, 0, 1), (0, 1.45, 0)]
    faces = [[0, 1, 2, 3], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]]
    _polyhedron(cv, verts, faces, math.radians(36), math.radians(14))


def _diamond(cv: _Canvas) -> None:
    ring = [k * math.pi / 4 for k in range(8)]
    table = [(0.55 * math.cos(a), 0.38, 0.55 * math.sin(a)) for a in ring]
    girdle = [(math.cos(a + math.pi / 8), 0.0, math.sin(a + math.pi / 8)) for a in ring]
    verts = table + girdle + [(0.0, -1.0, 0.0)]
    faces = [list(range(8))]
    for k in range(8):
        faces += [[k, (k + 1) % 8, 8 + k], [8 + (k - 1) % 8, k, 8 + k], [8 + k, 8 + (k + 1) % 8, 16]]
    _polyhedron(cv, verts, faces, math.radians(10), math.radians(22), extent=0.84)


def _sphere(cv: _Canvas) -> None:
    cv.paint(*_sweep(cv, np.array([[0.0, 0.0, 0.0]]), 0.86))


def _top(cv: _Canvas, cy: float, r: float, wall: float | None = None, cx: float = 0.0) -> None:
    """A horizontal top disc of radius r seen from ``ELEV``; open (dark inside) when ``wall`` is given."""
    se = math.sin(ELEV)
    cv.paint(cv.ellipse(cx, cy, r, r * se), _lambert(0, -math.cos(ELEV), se))
    if wall is not None:  # the inside is lit on its back wall
        cv.paint(
            cv.ellipse(cx, cy, r - wall, (r - wall) * se), 0.25 + 0.25 * np.clip((cy - cv.y) / (r * se) + 0.2, 0, 1)
        )


def _cylinder(cv: _Canvas) -> None:
    h, r = 1.25, 0.62
    base = h / 2 * math.cos(ELEV)
    _lathe(cv, [(0, r), (h, r)], base)
    _top(cv, base - h * math.cos(ELEV), r)


def _cone(cv: _Canvas) -> None:
    h, r = 1.6, 0.74
    _lathe(cv, [(0, r), (h, 0.0)], 0.6)


def _mug(cv: _Canvas) -> None:
    h, r, cx = 1.3, 0.6, -0.2
    base = h / 2 * math.cos(ELEV) + 0.06
    t = np.linspace(-math.pi / 2, math.pi / 2, 90)
    handle = np.stack([cx + r - 0.06 + 0.42 * np.cos(t), base - 0.62 + 0.36 * np.sin(t), 0.15 * np.cos(t)], 1)
    cv.paint(*_sweep(cv, handle, 0.1))
    _lathe(cv, [(0, r), (h, r)], base, cx)
    _top(cv, base - h * math.cos(ELEV), r, 0.07, cx)


def _pot(cv: _Canvas) -> None:
    h, rim = 1.2, 0.22
    base = 0.66
    _lathe(cv, [(0, 0.5), (h - rim, 0.7), (h - rim + 1e-3, 0.8), (h, 0.8)], base, dark_below=h - rim)
    _top(cv, base - h * math.cos(ELEV), 0.8, 0.08)


def _torus(cv: _Canvas) -> None:
    big, tube = 0.64, 0.27
    t = np.linspace(0, 2 * math.pi, 240, endpoint=False)
    ring = np.stack([big * np.cos(t), np.zeros_like(t), big * np.sin(t)], 1) @ _view(0, math.radians(42)).T
    cv.paint(*_sweep(cv, ring, tube))


def _cap(cv: _Canvas) -> None:
    r, yaw, se, ce = 0.68, math.radians(-50), math.sin(ELEV), math.cos(ELEV)
    oy = 0.16  # image y of the dome's base centre
    # the dome: front points of a sphere above the cut plane Y = 0
    vx, vy = cv.x - 0.2, -(cv.y - oy)
    vz = np.sqrt(np.clip(r**2 - vx**2 - vy**2, 0, None))
    obj_y = ce * vy + se * vz
    dome = (vx**2 + vy**2 <= r**2) & (obj_y >= 0)
    shade = _lambert(vx, -vy, vz)
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
    cv.paint(visor, _lambert(0.25 * bx, -ce, se) - 0.05)
    cv.paint(*_sweep(cv, np.array([[0.2, oy - r * ce, r * se]]), 0.065))


# ---------------------------------------------------------------- flat shapes


def _regular(k: int, inner: float | None = None, turn: float = -math.pi / 2) -> np.ndarray:
    """Vertices of a regular k-gon (radius 1), or of a k-pointed star when ``inner`` is given."""
    radii = np.resize([1.0] if inner is None else [1.0, inner], k if inner is None else 2 * k)
    ang = turn + 2 * math.pi * np.arange(len(radii)) / len(radii)
    return np.stack([radii * np.cos(ang), radii * np.sin(ang)], 1)


FLAT_SHIFT = (-EXTRUDE[0] / 2, -EXTRUDE[1] / 2)


def _flat_polygon(pts: np.ndarray | list, bevel: float, cv: _Canvas) -> None:
    _flat(cv, cv.polygon(_fit(pts, 0.82, FLAT_SHIFT)), bevel)


def _heart_outline() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 400, endpoint=False)
    return np.stack([16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)


def _moon(cv: _Canvas) -> None:
    sx, sy = FLAT_SHIFT
    mask = cv.ellipse(sx, sy, 0.8, 0.8) & ~cv.ellipse(sx + 0.38, sy - 0.2, 0.66, 0.66)
    _flat(cv, mask, 0.08)


def _snowflake(cv: _Canvas) -> None:
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
    _flat(cv, mask, 0.035)


def _cross(cv: _Canvas) -> None:
    bar = np.array([(-1, -3), (1, -3), (1, 3), (-1, 3)])
    _flat(cv, cv.polygon(_fit(bar, 0.82, FLAT_SHIFT)) | cv.polygon(_fit(bar[:, ::-1], 0.82, FLAT_SHIFT)), 0.06)


def _leaf(cv: _Canvas) -> None:
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
    _flat(cv, cv.polygon(place(np.concatenate([half, -half]))) | cv.lines(segs[-1:], 0.05), 0.06)
    cv.shade[cv.lines(segs[:-1], 0.022) & cv.alpha] *= 0.7


_DRAWERS: dict[str, Callable[[_Canvas], None]] = {
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
    cv = _Canvas(int(size))
    _DRAWERS[name](cv)
    return cv.image()


# The registry: SimCO name -> function(size) -> RGBA image.
SHAPES: dict[str, Callable[[int], Image.Image]] = {name: partial(draw_shape, name) for name in _DRAWERS}
