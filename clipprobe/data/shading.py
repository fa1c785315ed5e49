"""Drawing primitives for SimCO's shapes: a supersampled canvas of opacity and shade, Lambert
shading from surface normals, polyhedra, surfaces of revolution, sphere sweeps and bevelled flat
shapes. Coordinates are normalised (x right, y down, both in [-1, 1]); ``Canvas.image`` colours the
shade with the base blue and downsamples with Lanczos for anti-aliasing.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

BASE_RGB = (50, 100, 200)
SUPERSAMPLE = 4
MIN_SIZE = 8
AMBIENT = 0.42
# key light from the upper left front, a weak fill from the right (image frame: x right, y down, z out)
LIGHTS = [(w, np.array(d) / np.linalg.norm(d)) for w, d in ((0.72, (-0.45, -0.7, 0.55)), (0.14, (0.7, -0.1, 0.7)))]
ELEV = math.radians(24)  # camera elevation for solids: we look slightly down on them
EXTRUDE = (0.05, 0.08)  # flat shapes' thickness, as an offset toward the lower right

Region = tuple[slice, slice]


class Canvas:
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


def lambert(nx: np.ndarray | float, ny: np.ndarray | float, nz: np.ndarray | float) -> np.ndarray:
    """Matte brightness of (unnormalised) image-frame normals."""
    norm = np.sqrt(np.square(nx) + np.square(ny) + np.square(nz)) + 1e-9
    out = AMBIENT
    for weight, (lx, ly, lz) in LIGHTS:
        out = out + weight * np.clip((lx * nx + ly * ny + lz * nz) / norm, 0, None)
    return np.asarray(out, np.float32)


def view_matrix(yaw: float, elev: float) -> np.ndarray:
    """3x3 matrix: object frame (X right, Y up, Z front) -> image frame (x right, y down, z out)."""
    cy, sy, ce, se = math.cos(yaw), math.sin(yaw), math.cos(elev), math.sin(elev)
    turn = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    tilt = np.array([[1, 0, 0], [0, ce, -se], [0, se, ce]])
    return np.diag([1.0, -1.0, 1.0]) @ tilt @ turn


def fit_points(pts: np.ndarray, extent: float = 0.86, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Scale and move points (x, y[, z]) so their x-y box is centred and spans ``2 * extent``."""
    pts = np.asarray(pts, float).copy()
    lo, hi = pts[:, :2].min(0), pts[:, :2].max(0)
    scale = 2 * extent / (hi - lo).max()
    pts[:, :2] = (pts[:, :2] - (lo + hi) / 2) * scale + np.array(shift)
    if pts.shape[1] > 2:
        pts[:, 2] *= scale
    return pts


def box_blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Approximate Gaussian blur: three box passes along the rows, then the same on the transpose."""
    out = a.astype(np.float32)
    for _ in range(2):
        for _ in range(3):  # cumulative sums along the last (contiguous) axis, which numpy does fastest
            c = np.cumsum(np.pad(out, ((0, 0), (radius + 1, radius)), mode="edge"), axis=1, dtype=np.float32)
            out = (c[:, 2 * radius + 1 :] - c[:, : -2 * radius - 1]) / (2 * radius + 1)
        out = np.ascontiguousarray(out.T)
    return out


def polyhedron(cv: Canvas, verts: list, faces: list, yaw: float, elev: float, extent: float = 0.86) -> None:
    """Paint a convex polyhedron: front faces only, each flat-shaded by its normal."""
    v = fit_points(np.asarray(verts, float) @ view_matrix(yaw, elev).T, extent)
    centre = v.mean(0)
    index = Image.new("L", (cv.n, cv.n), 0)
    draw, lut = ImageDraw.Draw(index), np.zeros(256, np.float32)
    for i, face in enumerate(faces):
        p = v[face]
        normal = np.cross(p[1] - p[0], p[2] - p[0])
        normal = normal if normal @ (p.mean(0) - centre) > 0 else -normal
        if normal[2] > 1e-6:
            draw.polygon([(cv.px(a), cv.px(b)) for a, b, _ in p], fill=i + 1)
            lut[i + 1] = lambert(*normal)
    idx = np.asarray(index)
    cv.paint(idx > 0, lut[idx])


def lathe(cv: Canvas, profile: list, y_base: float, cx: float = 0.0, dark_below: float | None = None) -> None:
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
    view, k = view_matrix(0.0, ELEV), slopes[safe]
    shade = lambert(*[view[i, 0] * c - view[i, 1] * k + view[i, 2] * s for i in range(3)])
    if dark_below is not None:
        gap = np.clip(dark_below - heights[safe], 0, None)
        shade *= np.where(heights[safe] < dark_below, 1 - 0.35 * np.exp(-gap / 0.04), 1).astype(np.float32)
    cv.paint(mask, shade)


def sweep(cv: Canvas, centres: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
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
    return mask, lambert(*normals)


def flat_bevel(cv: Canvas, mask: np.ndarray, bevel: float = 0.05) -> None:
    """Paint a flat shape as a thick slab: extruded sides, then a bevelled front face."""
    n = cv.n
    soft = box_blur(mask, max(1, round(0.006 * n)))
    gy, gx = np.gradient(soft)
    out = -np.stack([gx, gy]) / (np.hypot(gx, gy) + 1e-6)  # outward contour normal
    side = lambert(out[0], out[1], 0.3) * 0.8
    ox, oy = EXTRUDE[0] * n / 2, EXTRUDE[1] * n / 2
    steps = max(2, round(max(ox, oy) / 1.5))
    for k in range(steps, 0, -1):
        sx, sy = round(ox * k / steps), round(oy * k / steps)
        cv.paint(np.roll(mask, (sy, sx), (0, 1)), np.roll(side, (sy, sx), (0, 1)))
    radius = max(1, round(bevel * n / 2 / 2.2))
    height = box_blur(mask, radius)
    hy, hx = np.gradient(height)
    tilt = 1.3 * 2.2 * radius  # makes the steepest bevel slope about 1.3
    front = lambert(-hx * tilt, -hy * tilt, 1.0) - 0.06 * (cv.x + cv.y)
    cv.paint(mask, front)


# ---------------------------------------------------------------- solids
