"""The one coordinate convention of this bundle, and the maps between its coordinate frames.

Convention (used by every module, CSV file and JSON output of the bundle):

* A point is ``(x, y)``: ``x`` is the column, ``y`` is the row, in pixels. Arrays of points have
  shape ``(N, 2)`` (or ``(B, N, 2)``) in that order.
* Images are arrays indexed ``[row, column]``, i.e. shape ``(H, W)``, or ``(C, H, W)`` channel-first.
* Pixel centres: the integer coordinate ``k`` is the *centre* of pixel ``k``; an image of width ``W``
  covers ``x`` in ``[-0.5, W - 0.5]``. Resizing from ``W`` to ``W'`` pixels therefore maps
  ``x' = (x + 0.5) * W' / W - 0.5`` (the convention of ``torch.nn.functional.interpolate`` with
  ``align_corners=False``).
* A missing landmark is ``NaN`` in both coordinates, never 0.
* Physical spacing is ``(sx, sy)`` in mm per pixel along ``x`` and ``y``; ``None`` when unknown.

Frames: *original* (pixels of the file as read), *network* (pixels of the network input grid, after
resizing and optional letterboxing). At the export edge only, two more: *physical* LPS mm for 3D
Slicer, ``origin + direction @ (x * sx, y * sy, 0)`` with the file header's origin and direction
(:mod:`scripts.writers.slicer_markups`), and DICOM SCOORD ``(x + 0.5, y + 0.5)``, which counts from the
top-left corner of the first pixel (:mod:`scripts.writers.dicom_sr`). A 3x3 homogeneous matrix ``M`` maps column vectors
``(x, y, 1)`` from one frame to the other; ``net_from_orig`` and ``orig_from_net`` are inverses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "resize_matrix",
    "centred_affine_matrix",
    "apply_matrix",
    "invert_matrix",
    "inside_image",
    "to_mm",
    "normalised_mm_per_px",
]


def resize_matrix(
    in_hw: Sequence[int], out_hw: Sequence[int], keep_aspect: bool = False
) -> np.ndarray:
    """Matrix mapping original-image points to points of the image resized to ``out_hw``.

    Args:
        in_hw: ``(H, W)`` of the original image, pixels.
        out_hw: ``(H', W')`` of the resized image, pixels.
        keep_aspect: if True, one scale factor is used for both axes (the smaller one) and the
            resized image is centred in ``out_hw`` (letterboxing), padding the rest.

    Returns:
        ``(3, 3)`` float64 matrix ``net_from_orig`` acting on ``(x, y, 1)``.
    """
    in_h, in_w = float(in_hw[0]), float(in_hw[1])
    out_h, out_w = float(out_hw[0]), float(out_hw[1])
    sx, sy = out_w / in_w, out_h / in_h
    off_x = off_y = 0.0
    if keep_aspect:
        s = min(sx, sy)
        off_x, off_y = (out_w - in_w * s) / 2.0, (out_h - in_h * s) / 2.0
        sx = sy = s
    # x' = (x + 0.5) * s - 0.5 + offset
    return np.array(
        [[sx, 0.0, 0.5 * sx - 0.5 + off_x], [0.0, sy, 0.5 * sy - 0.5 + off_y], [0.0, 0.0, 1.0]],
        dtype=np.float64,
    )


def centred_affine_matrix(hw: Sequence[int], angle_rad: float, scale: float, shift_xy: Sequence[float]) -> np.ndarray:
    """Matrix (float64 ``(3, 3)``) of a rotation by ``angle_rad`` (from +x towards +y, i.e. clockwise as displayed
    with y pointing down) and an isotropic ``scale`` about the centre ``((W-1)/2, (H-1)/2)`` of an image of
    size ``hw`` ``(H, W)``, followed by a shift of ``shift_xy`` ``(dx, dy)`` px."""
    h, w = float(hw[0]), float(hw[1])
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    cos, sin = math.cos(angle_rad) * scale, math.sin(angle_rad) * scale
    to_origin = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    back = np.array([[1.0, 0.0, cx + shift_xy[0]], [0.0, 1.0, cy + shift_xy[1]], [0.0, 0.0, 1.0]])
    linear = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    return back @ linear @ to_origin


def apply_matrix(points, matrix):
    """Apply a ``(3, 3)`` homogeneous matrix to points.

    Args:
        points: ``(..., 2)`` array or tensor of ``(x, y)``; NaN rows stay NaN.
        matrix: ``(3, 3)`` array or tensor, or ``(B, 3, 3)`` for points of shape ``(B, N, 2)``.

    Returns:
        points of the same shape and type as ``points``.
    """
    if isinstance(points, torch.Tensor):
        m = torch.as_tensor(matrix, dtype=points.dtype, device=points.device)
        lin, off = m[..., :2, :2], m[..., :2, 2]
        if m.ndim == 3:
            return torch.einsum("bij,bnj->bni", lin, points) + off[:, None, :]
        return points @ lin.T + off
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    lin, off = m[..., :2, :2], m[..., :2, 2]
    if m.ndim == 3:
        return np.einsum("bij,bnj->bni", lin, p) + off[:, None, :]
    return p @ lin.T + off


def invert_matrix(matrix):
    """Inverse of a ``(3, 3)`` (or ``(B, 3, 3)``) homogeneous matrix, numpy or torch."""
    if isinstance(matrix, torch.Tensor):
        return torch.linalg.inv(matrix.double()).to(matrix.dtype)
    return np.linalg.inv(np.asarray(matrix, dtype=np.float64))


def inside_image(points, hw: Sequence[int]):
    """Boolean mask ``(...,)`` of points that are present and lie inside an image of size ``hw``.

    Inside means ``-0.5 <= x <= W - 0.5`` and ``-0.5 <= y <= H - 0.5`` (pixel-centre convention).
    """
    h, w = float(hw[0]), float(hw[1])
    x, y = points[..., 0], points[..., 1]
    return (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def to_mm(points_px, spacing_xy):
    """Scale pixel coordinates or displacements ``(..., 2)`` by spacing ``(sx, sy)`` mm/px."""
    if isinstance(points_px, torch.Tensor):
        return points_px * torch.as_tensor(spacing_xy, dtype=points_px.dtype, device=points_px.device)
    return np.asarray(points_px, dtype=np.float64) * np.asarray(spacing_xy, dtype=np.float64)


def normalised_mm_per_px(points_px, index_a: int = 1, index_b: int = 5, length_mm: float = 50.0) -> float:
    """Isotropic mm per pixel for an image without spacing, by the normalisation rule of Payer et al.

    The distance between landmarks ``index_a`` and ``index_b`` (original pixels) is defined to be
    ``length_mm``; for the hand atlas, landmarks 1 and 5 are 50 mm apart.

    Args:
        points_px: ``(N, 2)`` ground-truth landmarks in original pixels.

    Returns:
        mm per pixel, or NaN if either reference landmark is missing or they coincide.
    """
    p = np.asarray(points_px, dtype=np.float64)
    d = float(np.linalg.norm(p[index_a] - p[index_b]))
    if not np.isfinite(d) or d == 0.0:
        return float("nan")
    return length_mm / d
