"""Deterministic synthetic radiographs with landmarks, written as a dataset folder of the bundle.

The bundle trains on these when no real data is given, so the demo data goes through the same
loading code as real data: ``generate_demo_dataset`` writes a folder with ``images/<id>.png``
(16-bit grey PNG, bright = bone), ``landmarks.csv`` (``id,x0,y0,...``) and ``splits.csv``
(``id,split,width,height`` plus ``spacing_x,spacing_y`` in mm/px when the spacing is known).
Coordinates follow :mod:`scripts.coords`: points are ``(x, y)`` = (column, row) in pixels of the
written image, integer = pixel centre.

Two kinds of image exist:

* ``"hand"``: a left hand, palm down, thumb on the image's right, with the 37 landmarks laid out
  like the hand atlas of Payer et al. (0-1 ulna, 2-4 radius, 5-12 carpals, 13-17 metacarpal bases
  from the little finger to the thumb, then the joints of each finger from its base to its tip:
  thumb 18-20, index 21-24, middle 25-28, ring 29-32, little 33-36). The template is an original
  rough mean shape; every joint is drawn the same way so that only the configuration tells the
  landmarks apart. No spacing (like the real hand atlas).
* ``"lower_limb"``: an AP long-leg radiograph (pelvis, femurs, tibias, fibulas) with 6 landmarks
  (see ``LOWER_LIMB_LANDMARKS``); the patient's right is on the image's left. The physical field
  of view is that of a real long-leg film (about 1044 x 400 mm), so the spacing scales with the
  image size: 0.143 mm/px at the full 7300 x 2800 px. Optional metal implants (hip stems, knee
  replacements; ``LOWER_LIMB_IMPLANTS``) cover the joints without changing anatomy or landmarks.

Shapes are rendered analytically on a float32 grid of at most ``MAX_RENDER_PIXELS`` pixels and
upsampled in row chunks (with per-pixel noise) to the output size, so a full-size long-leg image
needs well under 1 GB.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

__all__ = [
    "DEMO_KINDS",
    "HAND_LANDMARKS",
    "LOWER_LIMB_LANDMARKS",
    "LOWER_LIMB_IMPLANTS",
    "HAND_DEFAULT_HW",
    "LOWER_LIMB_DEFAULT_HW",
    "LOWER_LIMB_FULL_HW",
    "LOWER_LIMB_FULL_SPACING",
    "MAX_VALUE",
    "MAX_RENDER_PIXELS",
    "render_hand",
    "render_lower_limb",
    "lower_limb_spacing",
    "generate_demo_dataset",
    "ensure_demo_dataset",
    "main",
]

_FINGER_NAMES = ("thumb", "index", "middle", "ring", "little")
# Joint chain of each finger, from its metacarpal base to its tip (landmark indices).
_FINGER_CHAINS = {
    "thumb": (17, 18, 19, 20),
    "index": (16, 21, 22, 23, 24),
    "middle": (15, 25, 26, 27, 28),
    "ring": (14, 29, 30, 31, 32),
    "little": (13, 33, 34, 35, 36),
}

HAND_LANDMARKS = (
    ["ulna_0", "ulna_1", "radius_0", "radius_1", "radius_2"]
    + [f"carpal_{i}" for i in range(8)]
    + [f"{name}_mc_base" for name in ("little", "ring", "middle", "index", "thumb")]
    + ["thumb_mcp", "thumb_ip", "thumb_tip"]
    + [f"{name}_{joint}" for name in _FINGER_NAMES[1:] for joint in ("mcp", "pip", "dip", "tip")]
)
"""Names of the 37 hand landmarks, in the column order of ``landmarks.csv``."""

LOWER_LIMB_LANDMARKS = [
    "femoral_head_right",
    "knee_right",
    "ankle_right",
    "femoral_head_left",
    "knee_left",
    "ankle_left",
]
"""Names of the 6 lower-limb landmarks; the patient's right leg is on the image's left."""

LOWER_LIMB_IMPLANTS = ("hip_right", "hip_left", "knee_right", "knee_left")
"""Metal implants :func:`render_lower_limb` can draw: a hip stem with its ball (centred on the femoral head
landmark) and a knee replacement (femoral component over the joint space, tibial tray and stem)."""
METAL_LEVEL = 0.97
"""Raw grey level of metal before the acquisition model: above any bone, close to saturation."""

DEMO_KINDS = ("hand", "lower_limb")
HAND_DEFAULT_HW = (400, 320)
"""Nominal ``(H, W)`` of a demo hand image, pixels; each image varies by up to 10 % per axis."""
LOWER_LIMB_DEFAULT_HW = (1024, 400)
LOWER_LIMB_FULL_HW = (7300, 2800)
LOWER_LIMB_FULL_SPACING = 0.143
"""Spacing of a full-size long-leg radiograph, mm/px (isotropic)."""
MAX_VALUE = 40000
"""Grey value of the brightest possible pixel of a demo image (16-bit PNG)."""
MAX_RENDER_PIXELS = 1_500_000
"""Largest analytic render grid, pixels; bigger images are upsampled from it."""

_DEFAULT_COUNTS = {"hand": (48, 12), "lower_limb": (32, 8)}
_ID_PREFIX = {"hand": "hand", "lower_limb": "limb"}
_MARKER = ".complete"
_FORMAT_VERSION = 1

# Rough mean hand in template units (1 unit ~ 225 mm), x right, y down: an original hand-made
# layout, not derived coordinate by coordinate from any data set.
_HAND_TEMPLATE = np.array(
    [
        (0.290, 0.955), (0.305, 0.905),  # ulna
        (0.365, 0.955), (0.395, 0.940), (0.545, 0.950),  # radius
        (0.530, 0.880), (0.330, 0.870), (0.400, 0.895), (0.475, 0.895),  # carpals
        (0.375, 0.835), (0.445, 0.850), (0.520, 0.820), (0.585, 0.840),
        (0.330, 0.780), (0.385, 0.765), (0.445, 0.760), (0.520, 0.765), (0.615, 0.790),  # bases
        (0.770, 0.640), (0.850, 0.530), (0.915, 0.445),  # thumb
        (0.595, 0.470), (0.635, 0.300), (0.650, 0.200), (0.665, 0.120),  # index
        (0.455, 0.460), (0.460, 0.270), (0.460, 0.145), (0.455, 0.060),  # middle
        (0.330, 0.490), (0.300, 0.320), (0.285, 0.205), (0.275, 0.120),  # ring
        (0.215, 0.540), (0.150, 0.420), (0.110, 0.340), (0.080, 0.265),  # little
    ],
    dtype=np.float64,
)
_HAND_CENTRE = np.array([0.5, 0.52])
# Semi-axes of the carpal bones drawn around landmarks 5-12, template units.
_CARPAL_AXES = np.array(
    [(0.035, 0.027), (0.032, 0.028), (0.034, 0.030), (0.032, 0.029),
     (0.034, 0.031), (0.038, 0.033), (0.030, 0.028), (0.032, 0.030)]
)
# Bone half-widths (shaft, proximal end, distal end), template units, per bone of a finger chain.
_FINGER_BONE_RADII = {
    "thumb": [(0.021, 0.028, 0.029), (0.018, 0.025, 0.024), (0.014, 0.021, 0.014)],
    "finger": [(0.019, 0.026, 0.029), (0.016, 0.023, 0.021), (0.013, 0.019, 0.018), (0.010, 0.016, 0.012)],
}
_JOINT_HALF_GAP = 0.006
"""Half the gap between two bones at a joint, template units."""


# ----------------------------------------------------------------------------- rendering kernel


def _rotation(angle_deg: float) -> np.ndarray:
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


class _Canvas:
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
        hull = _convex_hull(np.asarray(points, np.float64))
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


def _convex_hull(points: np.ndarray) -> np.ndarray:
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


def _finish(canvas: _Canvas, raw: np.ndarray, rng: np.random.Generator, gain_amplitude: float,
            gain_grid: Sequence[int]) -> np.ndarray:
    """Shared acquisition model: smooth gain, gamma, contrast/brightness, noise, 16-bit output."""
    gain = 1.0 + gain_amplitude * canvas.smooth_field(rng, gain_grid)
    image = np.power(np.maximum(raw * gain, 0.0), rng.uniform(0.85, 1.15))
    image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.01, 0.04)
    return canvas.to_uint16(image.astype(np.float32), rng, noise_sigma=rng.uniform(0.006, 0.015))


def _fit_into_image(points: np.ndarray, out_hw: Sequence[int], margin: float):
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


def _check_implants(implants, what: str) -> tuple[str, ...]:
    implants = (implants,) if isinstance(implants, str) else tuple(implants or ())
    unknown = [i for i in implants if i not in LOWER_LIMB_IMPLANTS]
    if unknown:
        raise ValueError(f"{what}: unknown implant(s) {unknown}; choose from {list(LOWER_LIMB_IMPLANTS)}.")
    return implants


def _check_hw(image_hw, what: str) -> tuple[int, int]:
    hw = tuple(int(v) for v in image_hw)
    if len(hw) != 2 or min(hw) < 16:
        raise ValueError(f"{what}: image_hw must be (H, W) with both at least 16 pixels, got {image_hw!r}.")
    return hw


# ----------------------------------------------------------------------------- hand


def _hand_pose(rng: np.random.Generator) -> np.ndarray:
    """Template landmarks (37, 2) with a random per-finger pose, template units."""
    pts = _HAND_TEMPLATE.copy()
    pts[5:13] += rng.normal(0.0, 0.004, size=(8, 2))
    for name in _FINGER_NAMES:
        chain = list(_FINGER_CHAINS[name])
        base, rest = pts[chain[0]], chain[1:]
        pts[rest] = base + rng.uniform(0.9, 1.1) * (pts[rest] - base)  # finger length
        swing = rng.uniform(-12.0, 12.0) if name == "thumb" else rng.uniform(-3.0, 3.0)
        pts[rest] = base + (pts[rest] - base) @ _rotation(swing).T
        # spread of the phalanges about the first joint after the base, then a little flexion
        pivot, phalanges = pts[rest[0]], rest[1:]
        spread = rng.uniform(-6.0, 6.0) if name == "thumb" else rng.uniform(-9.0, 9.0)
        pts[phalanges] = pivot + (pts[phalanges] - pivot) @ _rotation(spread).T
        for j in range(1, len(phalanges)):
            pivot = pts[phalanges[j - 1]]
            pts[phalanges[j:]] = pivot + (pts[phalanges[j:]] - pivot) @ _rotation(rng.uniform(-4.0, 4.0)).T
    return pts


def render_hand(rng: np.random.Generator, image_hw: Sequence[int] = HAND_DEFAULT_HW):
    """Render one synthetic left-hand radiograph.

    Args:
        rng: the random generator; the image is a deterministic function of its state.
        image_hw: output ``(H, W)``, pixels.

    Returns:
        ``(image, points)``: ``image`` uint16 ``(H, W)``, values ``0..MAX_VALUE``, bone bright;
        ``points`` float64 ``(37, 2)`` landmark ``(x, y)`` in pixels (see :mod:`scripts.coords`),
        all inside the image, in the order of ``HAND_LANDMARKS``.
    """
    out_h, out_w = _check_hw(image_hw, "render_hand")
    pose = _hand_pose(rng)
    # global pose: rotation, scale, aspect, translation (template units -> output px)
    rot = _rotation(rng.uniform(-15.0, 15.0))
    aspect = math.sqrt(rng.uniform(0.92, 1.08))
    unit = 0.80 * min(out_h, out_w / 0.8) * rng.uniform(0.85, 1.15)  # px per template unit
    linear = rot @ np.diag([unit * aspect, unit / aspect])
    offset = np.array([out_w, out_h]) / 2.0 + rng.uniform(-0.06, 0.06, size=2) * np.array([out_w, out_h])

    def to_px(p):
        return (np.asarray(p, np.float64) - _HAND_CENTRE) @ linear.T + offset

    points = to_px(pose)
    scale, centre, shift = _fit_into_image(points, (out_h, out_w), margin=0.03 * min(out_h, out_w) + 3.0)
    linear, offset = linear * scale, (offset - centre) * scale + centre + shift
    unit *= scale
    points = to_px(pose)

    canvas = _Canvas((out_h, out_w))
    bone, tissue = canvas.zeros(), canvas.zeros()
    gap = _JOINT_HALF_GAP * unit

    def bone_segment(p, q, radii, start_inside=False, end_inside=False):
        """Bone between joints ``p`` and ``q``: ends stop short of the joints by the half gap, or
        (``*_inside``) reach half their radius past a base/tip landmark, which then lies on bone."""
        r_shaft, r_p, r_q = (r * unit for r in radii)
        axis = (q - p) / max(np.hypot(*(q - p)), 1e-9)
        a = p + axis * 0.5 * r_p if start_inside else p + axis * (gap + r_p)
        b = q - axis * 0.5 * r_q if end_inside else q - axis * (gap + r_q)
        canvas.capsule(bone, a, b, r_p, r_q, r_shaft)

    for name in _FINGER_NAMES:
        chain = _FINGER_CHAINS[name]
        radii = _FINGER_BONE_RADII["thumb" if name == "thumb" else "finger"]
        size = 0.85 if name == "little" else 1.0
        for k, (i, j) in enumerate(zip(chain[:-1], chain[1:])):
            r = tuple(size * v for v in radii[k])
            bone_segment(points[i], points[j], r, start_inside=k == 0, end_inside=j == chain[-1])
            r_i, r_j = (1.8 * r[1] + 0.012) * unit, (1.8 * r[2] + 0.012) * unit
            canvas.capsule(tissue, points[i], points[j], r_i, r_j)
        tip_dir = points[chain[-1]] - points[chain[-2]]
        tip_out = points[chain[-1]] + 0.03 * unit * tip_dir / max(np.hypot(*tip_dir), 1e-9)
        canvas.capsule(tissue, points[chain[-1]], tip_out, 0.03 * unit, 0.025 * unit)
    for k in range(8):
        canvas.ellipse(bone, points[5 + k], tuple(_CARPAL_AXES[k] * unit), rng.uniform(-20.0, 20.0))
    # forearm: ulna (ends at its head around landmarks 0-1) and radius (flared distal end, 2-4)
    aux = to_px(np.array([(0.275, 1.6), (0.305, 0.93), (0.48, 1.6), (0.462, 1.03), (0.455, 0.947)]))
    canvas.capsule(bone, aux[0], aux[1], 0.024 * unit, 0.033 * unit, 0.022 * unit)
    canvas.capsule(bone, aux[2], aux[3], 0.03 * unit, 0.05 * unit)
    wrist_dir = points[4] - points[2]
    wrist_angle = math.degrees(math.atan2(wrist_dir[1], wrist_dir[0]))
    canvas.ellipse(bone, aux[4], (0.115 * unit, 0.03 * unit), wrist_angle)
    # soft tissue: palm (hull of the base and first finger joints, wrist and thumb base), forearm
    palm = points[[0, 1, 4, 5, 12, 13, 16, 17, 18, 21, 25, 29, 33]]
    canvas.convex_polygon(tissue, palm)
    hull = _convex_hull(palm)
    for p, q in zip(hull, np.roll(hull, -1, axis=0)):
        canvas.capsule(tissue, p, q, 0.04 * unit, 0.04 * unit)
    canvas.capsule(tissue, to_px((0.42, 0.9)), to_px((0.42, 1.8)), 0.17 * unit, 0.19 * unit)
    tissue = canvas.blur(tissue, 0.012 * unit)
    tissue *= 1.0 + 0.1 * canvas.smooth_field(rng, (3, 3))

    bone = canvas.cortex(bone, 0.008 * unit, gain=0.7)
    raw = rng.uniform(0.02, 0.06) + rng.uniform(0.13, 0.2) * tissue + rng.uniform(0.32, 0.4) * bone
    image = _finish(canvas, raw, rng, gain_amplitude=rng.uniform(0.05, 0.12), gain_grid=(4, 4))
    return image, points


# ----------------------------------------------------------------------------- lower limb


def lower_limb_spacing(image_hw: Sequence[int]) -> float:
    """Isotropic spacing, mm/px, that gives an image of ``image_hw`` the field of view of a real
    long-leg radiograph (``LOWER_LIMB_FULL_HW`` at ``LOWER_LIMB_FULL_SPACING``)."""
    h, w = _check_hw(image_hw, "lower_limb_spacing")
    full_h, full_w = LOWER_LIMB_FULL_HW
    return LOWER_LIMB_FULL_SPACING * max(full_h / h, full_w / w)


def render_lower_limb(rng: np.random.Generator, image_hw: Sequence[int] = LOWER_LIMB_DEFAULT_HW,
                      spacing: float | None = None, implants: Sequence[str] = ()):
    """Render one synthetic AP long-leg radiograph (both legs, patient's right on the image's left).

    Args:
        rng: the random generator; the image is a deterministic function of its state.
        image_hw: output ``(H, W)``, pixels; up to the full ``(7300, 2800)`` (rendered at most at
            ``MAX_RENDER_PIXELS`` and upsampled in chunks, well under 1 GB).
        spacing: isotropic mm/px; default ``lower_limb_spacing(image_hw)``. Anatomy that does not
            fit the field of view (a spacing much smaller than the default) is scaled down to fit.
        implants: any of ``LOWER_LIMB_IMPLANTS``: metal (grey level ``METAL_LEVEL``, brighter than bone)
            drawn over those joints. Their geometry follows the anatomy and draws nothing from ``rng``, so
            the same ``rng`` state gives the same anatomy, noise and landmarks with or without implants.

    Returns:
        ``(image, points)``: ``image`` uint16 ``(H, W)``, values ``0..MAX_VALUE``, bone bright;
        ``points`` float64 ``(6, 2)`` landmark ``(x, y)`` in pixels, inside the image, in the order
        of ``LOWER_LIMB_LANDMARKS``.
    """
    out_h, out_w = _check_hw(image_hw, "render_lower_limb")
    implants = _check_implants(implants, "render_lower_limb")
    spacing = lower_limb_spacing((out_h, out_w)) if spacing is None else float(spacing)
    if not spacing > 0:
        raise ValueError(f"render_lower_limb: spacing must be positive mm/px, got {spacing!r}.")

    # Skeleton in mm: x right (towards the patient's left), y down; origin between the hip centres.
    half_hips = rng.uniform(82.0, 98.0)
    femur_len = rng.uniform(410.0, 470.0)
    tibia_len = femur_len * rng.uniform(0.78, 0.86)
    joints = {}
    frames = {}
    for side, lateral in (("right", -1.0), ("left", 1.0)):
        asym = rng.uniform(0.97, 1.03)
        head = np.array([lateral * half_hips, 0.0])
        femur_angle = lateral * rng.uniform(1.5, 4.5)  # the knee lies medial of the hip
        knee = head + femur_len * asym * (_rotation(femur_angle) @ np.array([0.0, 1.0]))
        tibia_angle = lateral * float(np.clip(rng.normal(0.0, 2.5), -6.0, 6.0))  # with femur: varus/valgus
        ankle = knee + tibia_len * asym * (_rotation(tibia_angle) @ np.array([0.0, 1.0]))
        joints[side] = (head, knee, ankle)
        frames[side] = (lateral, femur_angle, tibia_angle)
    mm_points = np.array([*joints["right"], *joints["left"]])
    extent = np.concatenate([mm_points, [[-170.0, -150.0], [170.0, -150.0]], mm_points[[2, 5]] + [0.0, 70.0]])

    # global pose (mm -> output px) and fitting into the image
    rot_deg = rng.uniform(-2.0, 2.0)
    px_per_mm = rng.uniform(0.94, 1.06) / spacing
    linear = _rotation(rot_deg) * px_per_mm
    centre_mm = (extent.min(0) + extent.max(0)) / 2.0
    offset = np.array([out_w, out_h]) / 2.0 + rng.uniform(-15.0, 15.0, size=2) / spacing

    def to_px(p):
        return (np.asarray(p, np.float64) - centre_mm) @ linear.T + offset

    scale, centre, shift = _fit_into_image(to_px(extent), (out_h, out_w), margin=5.0 / spacing)
    linear, offset = linear * scale, (offset - centre) * scale + centre + shift
    mm = px_per_mm * scale  # output px per anatomical mm
    points = to_px(mm_points)

    canvas = _Canvas((out_h, out_w))
    bone, tissue, overlay = canvas.zeros(), canvas.zeros(), canvas.zeros()

    def along(side, joint, distance, sideways=0.0):
        """Output px of the point ``distance`` mm below joint ``joint`` (0 hip, 1 knee, 2 ankle)
        along the femur (above the knee) or tibia (below), and ``sideways`` mm to the lateral side."""
        lateral, femur_angle, tibia_angle = frames[side]
        on_femur = joint == 0 or (joint == 1 and distance < 0)
        down = _rotation(femur_angle if on_femur else tibia_angle) @ (0.0, 1.0)
        out = lateral * np.array([down[1], -down[0]])
        return to_px(joints[side][joint] + distance * down + sideways * out)

    def bone_angle(side, joint):
        """Image angle, degrees, of the femur (hip) or tibia (knee, ankle) of ``side``."""
        return rot_deg + frames[side][1 if joint == 0 else 2]

    # pelvis, sacrum, lower lumbar spine
    for lateral in (-1.0, 1.0):
        c = np.array([lateral * half_hips, 0.0])
        wing_angle = rot_deg - lateral * 25.0
        canvas.ellipse(bone, to_px(c + [lateral * 5.0, -80.0]), (72 * mm, 55 * mm), wing_angle, value=0.55)
        canvas.ellipse(bone, to_px(c + [-lateral * 3.0, -10.0]), (34 * mm, 30 * mm), rot_deg, value=0.62)
        canvas.capsule(bone, to_px(c + [-lateral * 25.0, 12.0]), to_px([lateral * 14.0, 38.0]), 11 * mm, 9 * mm,
                       value=0.6)
        canvas.ellipse(bone, to_px(c + [-lateral * 30.0, 62.0]), (22 * mm, 20 * mm), rot_deg, value=0.6)
        canvas.capsule(bone, to_px(c + [-lateral * 45.0, 72.0]), to_px([lateral * 16.0, 58.0]), 7 * mm, 7 * mm,
                       value=0.58)
    canvas.ellipse(bone, to_px([0.0, -70.0]), (42 * mm, 58 * mm), rot_deg, value=0.5)
    for k, y in enumerate((-150.0, -185.0)):
        canvas.ellipse(bone, to_px([0.0, y]), ((26 + 2 * k) * mm, 14 * mm), rot_deg, value=0.55)

    for side in ("right", "left"):
        head, knee, ankle = (to_px(p) for p in joints[side])
        # femur: round head, neck, trochanters, shaft, flared distal end and condyles; the knee and
        # ankle landmarks lie in the middle of 5 mm joint spaces
        r_head = rng.uniform(22.0, 26.0) * mm
        canvas.ellipse(bone, head, (r_head, r_head), value=1.0)
        trochanter = along(side, 0, 45.0, 55.0)
        canvas.capsule(bone, head, trochanter, 15 * mm, 17 * mm, value=0.9)
        canvas.ellipse(bone, along(side, 0, 35.0, 68.0), (18 * mm, 28 * mm), bone_angle(side, 0), value=0.85)
        canvas.ellipse(bone, along(side, 0, 85.0, 20.0), (9 * mm, 12 * mm), bone_angle(side, 0), value=0.8)
        canvas.capsule(bone, along(side, 0, 55.0, 42.0), along(side, 1, -90.0, 2.0), 17 * mm, 15 * mm,
                       value=0.85)
        canvas.capsule(bone, along(side, 1, -110.0, 2.0), along(side, 1, -45.0), 15 * mm, 34 * mm,
                       value=0.85)
        for dx in (-19.0, 19.0):
            canvas.ellipse(bone, along(side, 1, -25.5, dx), (19 * mm, 23 * mm), bone_angle(side, 0), value=0.95)
        patella = along(side, 1, -35.0, -3.0)
        canvas.ellipse(overlay, patella, (20 * mm, 24 * mm), bone_angle(side, 0), value=0.15)
        # tibia: plateau, shaft, distal end; fibula; talus and calcaneus
        canvas.ellipse(bone, along(side, 1, 14.5), (39 * mm, 12 * mm), bone_angle(side, 1), value=0.95)
        canvas.capsule(bone, along(side, 1, 33.5), along(side, 1, 110.0), 31 * mm, 14 * mm, value=0.85)
        canvas.capsule(bone, along(side, 1, 80.0), along(side, 2, -70.0), 14 * mm, 11 * mm, value=0.85)
        canvas.capsule(bone, along(side, 2, -90.0), along(side, 2, -25.0), 11 * mm, 20 * mm, value=0.85)
        canvas.ellipse(bone, along(side, 2, -12.5), (23 * mm, 10 * mm), bone_angle(side, 2), value=0.9)
        canvas.capsule(bone, along(side, 2, -20.0, -20.0), along(side, 2, 10.0, -21.0), 7 * mm, 6 * mm,
                       value=0.85)
        canvas.ellipse(bone, along(side, 1, 30.0, 34.0), (11 * mm, 10 * mm), value=0.8)
        canvas.capsule(bone, along(side, 1, 35.0, 36.0), along(side, 2, -5.0, 24.0), 7 * mm, 6 * mm,
                       value=0.75)
        canvas.capsule(bone, along(side, 2, -10.0, 24.0), along(side, 2, 14.0, 25.0), 8 * mm, 6 * mm,
                       value=0.8)
        canvas.ellipse(bone, along(side, 2, 15.5), (21 * mm, 13 * mm), bone_angle(side, 2), value=0.95)
        canvas.ellipse(bone, along(side, 2, 50.0, 4.0), (22 * mm, 22 * mm), value=0.8)
        # soft tissue of the thigh, calf and foot
        canvas.capsule(tissue, along(side, 0, -20.0, 15.0), knee, 100 * mm, 58 * mm)
        canvas.capsule(tissue, knee, along(side, 1, 120.0), 58 * mm, 62 * mm)
        canvas.capsule(tissue, along(side, 1, 120.0), ankle, 62 * mm, 36 * mm)
        canvas.ellipse(tissue, along(side, 2, 55.0), (45 * mm, 45 * mm))
    canvas.ellipse(tissue, to_px([0.0, -90.0]), (175 * mm, 150 * mm))
    tissue = canvas.blur(tissue, 12.0 * mm)
    tissue *= 1.0 + 0.1 * canvas.smooth_field(rng, (6, 3))

    bone = canvas.cortex(bone, 3.0 * mm, gain=0.7) + overlay
    raw = rng.uniform(0.02, 0.05) + rng.uniform(0.15, 0.22) * tissue + rng.uniform(0.34, 0.4) * bone
    heel_effect = np.linspace(1.05, 0.95, canvas.hw[0], dtype=np.float32)[:, None] ** rng.choice([-1.0, 1.0])
    raw *= heel_effect
    if implants:
        metal = canvas.zeros()
        for implant in implants:
            joint, side = implant.split("_")
            if joint == "hip":  # ball on the femoral head, neck, stem down the femoral shaft
                canvas.ellipse(metal, to_px(joints[side][0]), (14 * mm, 14 * mm))
                canvas.capsule(metal, to_px(joints[side][0]), along(side, 0, 40.0, 40.0), 7 * mm, 9 * mm)
                canvas.capsule(metal, along(side, 0, 40.0, 40.0), along(side, 0, 190.0, 28.0), 10 * mm, 5 * mm)
            else:  # femoral component over the joint space, tibial tray, tibial stem
                canvas.ellipse(metal, along(side, 1, -12.0), (40 * mm, 16 * mm), bone_angle(side, 0))
                canvas.ellipse(metal, along(side, 1, 9.0), (38 * mm, 5 * mm), bone_angle(side, 1))
                canvas.capsule(metal, along(side, 1, 10.0), along(side, 1, 70.0), 7 * mm, 5 * mm)
        raw = np.maximum(raw, METAL_LEVEL * metal)
    image = _finish(canvas, raw, rng, gain_amplitude=rng.uniform(0.05, 0.1), gain_grid=(6, 3))
    return image, points


# ----------------------------------------------------------------------------- dataset folder


def _parameters(kind, num_train, num_valid, num_test, seed, image_hw, implants=()) -> dict:
    params = {
        "format_version": _FORMAT_VERSION,
        "kind": kind,
        "num_train": int(num_train),
        "num_valid": int(num_valid),
        "num_test": int(num_test),
        "seed": int(seed),
        "image_hw": None if image_hw is None else [int(v) for v in image_hw],
    }
    if implants:  # only then, so that the markers of existing demo folders stay valid
        params["implants"] = list(implants)
    return params


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def _write_dataset(folder: Path, params: dict) -> None:
    kind = params["kind"]
    (folder / "images").mkdir(parents=True)
    names = HAND_LANDMARKS if kind == "hand" else LOWER_LIMB_LANDMARKS
    splits = [split for split in ("train", "valid", "test") for _ in range(params[f"num_{split}"])]
    landmark_rows, split_rows = [], []
    for index, split in enumerate(splits):
        rng = _image_rng(params["seed"], index)
        image_id = f"{_ID_PREFIX[kind]}_{index:04d}"
        if kind == "hand":
            hw = params["image_hw"] or [round(v * rng.uniform(0.9, 1.1)) for v in HAND_DEFAULT_HW]
            image, points = render_hand(rng, hw)
            spacing = []
        else:
            hw = params["image_hw"] or LOWER_LIMB_DEFAULT_HW
            image, points = render_lower_limb(rng, hw, implants=params.get("implants", ()))
            spacing = [f"{lower_limb_spacing(hw):.9g}"] * 2
        Image.fromarray(image).save(folder / "images" / f"{image_id}.png")
        landmark_rows.append([image_id] + [f"{v:.3f}" for v in points.reshape(-1)])
        split_rows.append([image_id, split, image.shape[1], image.shape[0]] + spacing)
    with open(folder / "landmarks.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id"] + [f"{axis}{i}" for i in range(len(names)) for axis in "xy"])
        writer.writerows(landmark_rows)
    with open(folder / "splits.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        spacing_columns = ["spacing_x", "spacing_y"] if kind != "hand" else []
        writer.writerow(["id", "split", "width", "height"] + spacing_columns)
        writer.writerows(split_rows)
    (folder / "README.md").write_text(
        f"# Synthetic {kind} radiographs (demo data)\n\n"
        "Generated by `scripts/demo_data.py`; not real patients. Landmarks, in the column order of\n"
        f"`landmarks.csv`: {', '.join(names)}.\n"
        "Coordinates are (x, y) = (column, row) pixels, integer = pixel centre.\n\n"
        f"Parameters: `{json.dumps(params)}`\n"
    )
    (folder / _MARKER).write_text(json.dumps(params, indent=1) + "\n")


def generate_demo_dataset(
    out_dir,
    kind: str = "hand",
    num_train: int | None = None,
    num_valid: int | None = None,
    num_test: int = 0,
    seed: int = 0,
    image_hw: Sequence[int] | None = None,
    implants: Sequence[str] = (),
) -> Path:
    """Write a synthetic dataset folder (``images/``, ``landmarks.csv``, ``splits.csv``).

    The folder is written next to ``out_dir`` under a temporary name and renamed into place when
    complete, with a ``.complete`` marker holding the parameters. If ``out_dir`` already holds a
    complete demo dataset with the same parameters it is left alone; a demo dataset with other
    parameters is replaced; any other non-empty folder raises ``FileExistsError``. The output is
    a deterministic function of the arguments (same arguments, byte-identical files).

    Args:
        out_dir: the dataset folder to create.
        kind: ``"hand"`` or ``"lower_limb"``.
        num_train, num_valid: images per split; default 48/12 (hand) or 32/8 (lower limb).
        num_test: images of a ``test`` split.
        seed: image ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.
        image_hw: ``(H, W)`` of every image, pixels; default: hand about 400 x 320 varying by up to
            10 % per image, lower limb ``LOWER_LIMB_DEFAULT_HW``.
        implants: lower limb only: metal implants drawn in every image (``LOWER_LIMB_IMPLANTS``). The images
            are those of the same arguments without implants, plus the metal (same anatomy and landmarks),
            e.g. to test a model trained on the plain folder.

    Returns:
        the absolute path of the dataset folder.
    """
    if kind not in DEMO_KINDS:
        raise ValueError(f"generate_demo_dataset: kind must be one of {DEMO_KINDS}, got {kind!r}.")
    default_train, default_valid = _DEFAULT_COUNTS[kind]
    num_train = default_train if num_train is None else num_train
    num_valid = default_valid if num_valid is None else num_valid
    counts = {"num_train": num_train, "num_valid": num_valid, "num_test": num_test}
    if any(int(v) != v or v < 0 for v in counts.values()) or sum(counts.values()) == 0:
        raise ValueError(
            f"generate_demo_dataset: image counts must be non-negative integers, not all 0; got {counts}."
        )
    if image_hw is not None:
        image_hw = _check_hw(image_hw, "generate_demo_dataset")
    implants = _check_implants(implants, "generate_demo_dataset")
    if implants and kind != "lower_limb":
        raise ValueError(f"generate_demo_dataset: implants exist for kind 'lower_limb' only, got kind {kind!r}.")
    params = _parameters(kind, num_train, num_valid, num_test, seed, image_hw, implants)

    out_dir = Path(out_dir).expanduser().absolute()
    old = None
    if out_dir.exists():
        marker = _read_marker(out_dir)
        if marker == params:
            return out_dir
        if marker is None and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise FileExistsError(
                f"generate_demo_dataset: {out_dir} exists and is not a demo dataset "
                f"(no {_MARKER} marker); refusing to overwrite it."
            )
        old = marker
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_dataset(tmp / "data", params)
        if out_dir.exists():
            if old is None:
                out_dir.rmdir()  # empty folder
            else:
                out_dir.rename(tmp / "replaced")
        try:
            os.rename(tmp / "data", out_dir)
        except OSError:
            if _read_marker(out_dir) != params:  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_demo_dataset(out_dir, kind: str = "hand", **kwargs) -> str:
    """Generate the demo dataset at ``out_dir`` unless it is already there; return its path as str.

    ``kwargs`` are those of :func:`generate_demo_dataset`. Meant for configs, e.g.
    ``"dataset_dir": "$scripts.demo_data.ensure_demo_dataset(@bundle_root + '/demo_data/hand')"``.
    """
    return str(generate_demo_dataset(out_dir, kind=kind, **kwargs))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo_data", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="dataset folder to write")
    parser.add_argument("--kind", choices=DEMO_KINDS, default="hand")
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-valid", type=int, default=None)
    parser.add_argument("--num-test", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-hw", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument("--implants", nargs="+", choices=LOWER_LIMB_IMPLANTS, default=(),
                        help="lower limb: metal implants drawn in every image")
    args = parser.parse_args(argv)
    path = generate_demo_dataset(
        args.out_dir, kind=args.kind, num_train=args.num_train, num_valid=args.num_valid,
        num_test=args.num_test, seed=args.seed, image_hw=args.image_hw, implants=args.implants,
    )
    print(path)


if __name__ == "__main__":
    main()
