"""The rendering kernel of the synthetic radiographs (:mod:`scripts.data.phantoms`): a float32 grid
on which shapes are drawn analytically in output pixel coordinates, then upsampled in row chunks
(with per-pixel noise) to the output size, so a full-size long-leg image needs well under 1 GB.

Coordinates follow :mod:`scripts.coords`: points ``(x, y)`` = (column, row), integer = pixel centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = [
    "MAX_VALUE",
    "MAX_RENDER_PIXELS",
    "rotation_matrix",
    "Canvas",
    "convex_hull",
    "finish_radiograph",
    "fit_into_image",
    "check_image_hw",
]

MAX_VALUE = 40000
"""Grey value of the brightest possible pixel of a demo image (16-bit PNG)."""
MAX_RENDER_PIXELS = 1_500_000
"""Largest analytic render grid, pixels; bigger images are upsampled from it."""


def rotation_matrix(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _linear_weights(n_in: int, n_out: int, start: int = 0, stop: int | None = None):
    """Source indices and weights of linear resampling from ``n_in`` to ``n_out`` samples.

    Uses the pixel-centre convention of :mod:`scripts.coords` (``x_in = (x_out + 0.5) * n_in /
    n_out - 0.5``), clamped at the borders. Only outputs ``start:stop`` are returned.
    """
    stop = n_out if stop is None else stop
    pos = (np.arange(start, stop, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1.0)
    i0 = np.minimum(np.floor(pos).astype(np.intp), max(n_in - 2, 0))
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def _resize_rows(src: np.ndarray, out_hw: Sequence[int], row_start: int, row_stop: int) -> np.ndarray:
    """Rows ``row_start:row_stop`` of ``src`` (h, w) linearly resized to ``out_hw``, float32."""
    r0, r1, wr = _linear_weights(src.shape[0], out_hw[0], row_start, row_stop)
    c0, c1, wc = _linear_weights(src.shape[1], out_hw[1])
    rows = src[r0] * (1.0 - wr[:, None]) + src[r1] * wr[:, None]
    return rows[:, c0] * (1.0 - wc) + rows[:, c1] * wc


class Canvas:
    """The float32 render grid of an output image of ``out_hw`` pixels.

    Shapes are given in output pixel coordinates ``(x, y)``; the grid has at most
    ``MAX_RENDER_PIXELS`` pixels, whose centres are mapped to output coordinates by the
    pixel-centre convention, so that upsampling the grid to ``out_hw`` keeps every shape in place.
    """

    def __init__(self, out_hw: Sequence[int], max_pixels: int = MAX_RENDER_PIXELS):
        out_h, out_w = int(out_hw[0]), int(out_hw[1])
        factor = max(1.0, math.sqrt(out_h * out_w / max_pixels))
        h, w = max(2, math.ceil(out_h / factor)), max(2, math.ceil(out_w / factor))
        h, w = min(h, out_h), min(w, out_w)
        self.out_hw, self.hw = (out_h, out_w), (h, w)
        self.xs = ((np.arange(w) + 0.5) * (out_w / w) - 0.5).astype(np.float32)
        self.ys = ((np.arange(h) + 0.5) * (out_h / h) - 0.5).astype(np.float32)
        self.step = max(out_w / w, out_h / h)
        """Output pixels per render pixel."""
        self.edge = 0.6 * self.step
        """Half-width of the anti-aliased edge of a shape, output pixels."""

    def zeros(self) -> np.ndarray:
        return np.zeros(self.hw, dtype=np.float32)

    def _grid(self, lo, hi):
        """Render-grid window covering output coordinates ``lo..hi`` ((x, y) each), or None."""
        c0, c1 = np.searchsorted(self.xs, lo[0]), np.searchsorted(self.xs, hi[0], side="right")
        r0, r1 = np.searchsorted(self.ys, lo[1]), np.searchsorted(self.ys, hi[1], side="right")
        if c1 <= c0 or r1 <= r0:
            return None
        return (slice(r0, r1), slice(c0, c1)), self.xs[None, c0:c1], self.ys[r0:r1, None]

    def _paint(self, layer, window, dist, value):
        """Turn a signed distance (output px, < 0 inside) into intensity; keep the max in ``layer``."""
        box = window[0]
        fill = np.clip(0.5 - dist / (2.0 * self.edge), 0.0, 1.0) * value
        np.maximum(layer[box], fill, out=layer[box])

    def capsule(self, layer, a, b, r_a, r_b, r_shaft=None, *, value=1.0, bulge=0.25):
        """Rounded segment ``a``-``b`` (output px) with radius ``r_a`` at ``a`` and ``r_b`` at ``b``.

        With ``r_shaft`` the radius is ``r_shaft`` along the middle and widens smoothly to the end
        radii over the last ``bulge`` fraction at each end (a long bone with its epiphyses).
        """
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        reach = max(r_a, r_b, r_shaft or 0.0) + 2.0 * self.edge
        window = self._grid(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
        if window is None:
            return
        _, x, y = window
        ab = b - a
        t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / max(float(ab @ ab), 1e-12)
        t = np.clip(t, 0.0, 1.0)
        dist = np.hypot(x - a[0] - t * ab[0], y - a[1] - t * ab[1])
        if r_shaft is None:
            radius = r_a + t * (r_b - r_a)
        else:
            near_a = np.square(np.clip(1.0 - t / bulge, 0.0, 1.0))
            near_b = np.square(np.clip(1.0 - (1.0 - t) / bulge, 0.0, 1.0))
            radius = r_shaft + (r_a - r_shaft) * near_a + (r_b - r_shaft) * near_b
        self._paint(layer, window, dist - radius, value)

    def ellipse(self, layer, centre, axes, angle_deg=0.0, *, value=1.0):
        """Filled ellipse, semi-axes ``axes`` (along x, y before rotating by ``angle_deg``), output px."""
        c = np.asarray(centre, np.float64)
        reach = max(axes) + 2.0 * self.edge
        window = self._grid(c - reach, c + reach)
        if window is None:
            return
        _, x, y = window
        cos, sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
        u = ((x - c[0]) * cos + (y - c[1]) * sin) / axes[0]
        v = (-(x - c[0]) * sin + (y - c[1]) * cos) / axes[1]
        q = np.sqrt(u * u + v * v) + 1e-6
        grad = np.sqrt(np.square(u / axes[0]) + np.square(v / axes[1])) / q  # |grad q|
        self._paint(layer, window, (q - 1.0) / np.maximum(grad, 1e-6), value)  # first-order distance

    def convex_polygon(self, layer, points, *, value=1.0):
        """Filled convex hull of ``points`` (M, 2) output px."""
        hull = convex_hull(np.asarray(points, np.float64))
        window = self._grid(hull.min(0) - 2 * self.edge, hull.max(0) + 2 * self.edge)
        if window is None:
            return
        _, x, y = window
        dist = None
        for p, q in zip(hull, np.roll(hull, -1, axis=0)):
            edge = q - p
            normal = np.array([edge[1], -edge[0]]) / max(np.hypot(*edge), 1e-12)  # outward (hull is CCW)
            d = (x - p[0]) * normal[0] + (y - p[1]) * normal[1]
            dist = d if dist is None else np.maximum(dist, d)
        self._paint(layer, window, dist, value)

    def cortex(self, layer, sigma_px: float, gain: float) -> np.ndarray:
        """Brighten ``layer`` just inside the outline of its bright regions (cortical bone), by
        ``gain`` times its excess over a Gaussian blur of ``sigma_px`` output pixels."""
        return layer + gain * np.maximum(layer - self.blur(layer, sigma_px), 0.0)

    def blur(self, layer, sigma_px: float) -> np.ndarray:
        """Gaussian blur with ``sigma_px`` output pixels."""
        sigma = (sigma_px * self.hw[0] / self.out_hw[0], sigma_px * self.hw[1] / self.out_hw[1])
        return gaussian_filter(layer, sigma=sigma)

    def smooth_field(self, rng: np.random.Generator, grid_hw: Sequence[int]) -> np.ndarray:
        """Random low-frequency field in about ``[-1, 1]`` on the render grid."""
        coarse = rng.uniform(-1.0, 1.0, size=tuple(grid_hw)).astype(np.float32)
        return _resize_rows(coarse, self.hw, 0, self.hw[0])

    def to_uint16(
        self, image: np.ndarray, rng: np.random.Generator, noise_sigma: float, chunk_rows: int = 512
    ) -> np.ndarray:
        """Upsample ``image`` (render grid, values ~[0, 1]) to the output size, add Gaussian noise of
        ``noise_sigma`` per output pixel, and quantise to ``0..MAX_VALUE`` uint16, in row chunks."""
        out_h, out_w = self.out_hw
        out = np.empty((out_h, out_w), dtype=np.uint16)
        if self.hw != self.out_hw:  # soften the render grid so that upsampling leaves no steps
            image = gaussian_filter(image, sigma=0.7)
        for start in range(0, out_h, chunk_rows):
            stop = min(start + chunk_rows, out_h)
            rows = _resize_rows(image, self.out_hw, start, stop)
            rows += noise_sigma * rng.standard_normal(rows.shape, dtype=np.float32)
            np.clip(rows, 0.0, 1.0, out=rows)
            out[start:stop] = np.rint(rows * MAX_VALUE).astype(np.uint16)
        return out


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise (in x-right, y-down axes: clockwise on screen) convex hull of (M, 2) points."""
    pts = sorted(map(tuple, points))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1], dtype=np.float64)


def finish_radiograph(canvas: Canvas, raw: np.ndarray, rng: np.random.Generator, gain_amplitude: float,
                      gain_grid: Sequence[int]) -> np.ndarray:
    """Shared acquisition model: smooth gain, gamma, contrast/brightness, noise, 16-bit output."""
    gain = 1.0 + gain_amplitude * canvas.smooth_field(rng, gain_grid)
    image = np.power(np.maximum(raw * gain, 0.0), rng.uniform(0.85, 1.15))
    image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.01, 0.04)
    return canvas.to_uint16(image.astype(np.float32), rng, noise_sigma=rng.uniform(0.006, 0.015))


def fit_into_image(points: np.ndarray, out_hw: Sequence[int], margin: float):
    """Similarity (scale about the box centre, then shift) that brings ``points`` (M, 2) inside
    ``out_hw`` with ``margin`` pixels to spare. Returns ``(scale, centre, shift)``; apply as
    ``(p - centre) * scale + centre + shift``."""
    h, w = float(out_hw[0]), float(out_hw[1])
    lo, hi = points.min(0), points.max(0)
    centre = (lo + hi) / 2.0
    room = np.array([w - 1.0 - 2 * margin, h - 1.0 - 2 * margin])
    scale = min(1.0, float(np.min(room / np.maximum(hi - lo, 1e-9))))
    lo, hi = (lo - centre) * scale + centre, (hi - centre) * scale + centre
    shift = np.maximum(margin - lo, 0.0) - np.maximum(hi - (np.array([w, h]) - 1.0 - margin), 0.0)
    return scale, centre, shift


def check_image_hw(image_hw, what: str) -> tuple[int, int]:
    """``image_hw`` as ``(H, W)`` ints, both at least 16 px; ``what`` names the caller in the error."""
    hw = tuple(int(v) for v in image_hw)
    if len(hw) != 2 or min(hw) < 16:
        raise ValueError(f"{what}: image_hw must be (H, W) with both at least 16 pixels, got {image_hw!r}.")
    return hw

