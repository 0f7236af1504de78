"""Overlay images (JPEG or PNG): the image, windowed to 8 bits, with numbered landmark markers.

Points are ``(x, y)`` original pixels (:mod:`scripts.coords`); a shrunk image carries them with the
pixel-centre convention.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scripts.coords import apply_matrix, resize_matrix
from scripts.writers.files import PathLike, atomic_write

__all__ = ["OVERLAY_FORMATS", "downscale_image", "render_overlay", "write_overlay"]

#: overlay file formats (file suffix without the dot) and Pillow's save options for each: JPEG quality 90 without
#: chroma subsampling (coloured markers stay sharp; about 5 ms for 1024 x 820 px against 60 ms for a level-1 PNG),
#: or a lossless PNG at zlib level 1 (a third of level 6's time for a slightly larger file)
OVERLAY_FORMATS = {"jpg": {"format": "JPEG", "quality": 90, "subsampling": 0}, "png": {"format": "PNG", "compress_level": 1}}


def _to_8bit(image: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """Window ``image`` ``(H, W)`` linearly between its ``lower``/``upper`` percentiles into uint8.

    The percentiles are taken on every 2nd pixel of every 2nd row (a quarter of the sort, the same window
    within the sampling error of a percentile)."""
    low, high = np.percentile(image[::2, ::2], (lower, upper))
    if not high > low:
        low, high = float(image.min()), float(image.max())
    if not high > low:
        return np.zeros(image.shape, dtype=np.uint8)
    scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def downscale_image(image: np.ndarray, max_size: int) -> np.ndarray:
    """``image`` ``(H, W)`` shrunk (antialiased) so that its longer side is at most ``max_size``."""
    h, w = image.shape
    scale = min(1.0, max_size / max(h, w))
    if scale >= 1.0:
        return np.asarray(image, dtype=np.float32)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()


@functools.lru_cache(maxsize=8)
def _font(size: int):
    """Pillow's default (FreeType) font at ``size`` pixels, loaded once per size and process."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


_COLOURS = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
]


def render_overlay(
    image: np.ndarray,
    points_px: np.ndarray,
    labels: Sequence[str] | None = None,
    max_size: int = 1024,
    image_hw: Sequence[int] | None = None,
):
    """The image as 8-bit RGB with numbered landmark markers, shrunk if large.

    Args:
        image: ``(H, W)`` original image, any grey values (windowed to the 1st-99th percentiles).
        points_px: ``(N, 2)`` ``(x, y)`` original pixels; NaN rows are not drawn.
        labels: text drawn next to each marker, default ``"0"``, ``"1"``, ...
        max_size: longest side of the overlay, pixels; larger images are shrunk (points follow with
            the pixel-centre convention of :mod:`scripts.coords`).
        image_hw: ``(H, W)`` of the original image when ``image`` is a shrunk copy of it (e.g. the
            preview of :class:`scripts.transforms.io.LoadLandmarkImaged`); ``points_px`` stay in original pixels.

    Returns:
        a ``PIL.Image.Image`` in mode ``"RGB"``.
    """
    from PIL import Image, ImageDraw

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"overlay: expected an (H, W) image, got shape {image.shape}.")
    points = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    labels = [str(k) for k in range(len(points))] if labels is None else [str(t) for t in labels]
    small = downscale_image(image, int(max_size))
    original_hw = image.shape if image_hw is None else (int(image_hw[0]), int(image_hw[1]))
    points = apply_matrix(points, resize_matrix(original_hw, small.shape))
    canvas = Image.fromarray(_to_8bit(small)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    size = max(small.shape)
    radius = max(2.0, size / 250.0)
    font = _font(max(10, round(size / 70)))
    for k, (x, y) in enumerate(points):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        colour = _COLOURS[k % len(_COLOURS)]
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=max(1, round(radius / 2)))
        draw.text(
            (x + 1.5 * radius, y - 1.5 * radius), labels[k], fill=colour, font=font,
            stroke_width=max(1, round(radius / 3)), stroke_fill=(0, 0, 0),
        )
    return canvas


def write_overlay(
    path: PathLike,
    image: np.ndarray,
    points_px: np.ndarray,
    labels: Sequence[str] | None = None,
    max_size: int = 1024,
    image_hw: Sequence[int] | None = None,
) -> Path:
    """Render with :func:`render_overlay` and save it atomically, as JPEG or PNG by the suffix of ``path``
    (``.jpg``/``.jpeg`` or ``.png``; see :data:`OVERLAY_FORMATS`)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    options = OVERLAY_FORMATS.get("jpg" if suffix == "jpeg" else suffix)
    if options is None:
        raise ValueError(f"{path}: overlay suffix must be one of {sorted(OVERLAY_FORMATS)}, got {suffix!r}.")
    overlay = render_overlay(image, points_px, labels, max_size, image_hw)
    return atomic_write(path, lambda tmp: overlay.save(tmp, **options))
