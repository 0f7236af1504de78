"""The landmark label image: one region of value ``k + 1`` per landmark ``k`` (0 = background).

The one owner of this encoding (MONAI Label's label format for this bundle): :func:`landmark_label_image`
draws it, :func:`write_label_image` saves it, :func:`landmarks_from_label_image` reads the landmarks back
(used by :class:`scripts.transforms.io.LabelImageToLandmarks`). Points are ``(x, y)`` pixels, pixel centres at
integers (:mod:`scripts.coords`); the label array is ``(H, W)`` indexed ``[row, column]``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scripts.writers.files import PathLike, atomic_write

__all__ = ["landmark_label_image", "write_label_image", "landmarks_from_label_image"]


def landmark_label_image(points_px: np.ndarray, image_hw: Sequence[int], radius: float = 5.0) -> np.ndarray:
    """A label image with a filled disc of value ``k + 1`` around landmark ``k`` (0 = background).

    A pixel ``[row, col]`` belongs to the disc of ``(x, y)`` when ``(col - x)^2 + (row - y)^2 <= radius^2``
    (pixel centres at integers); where discs overlap the later landmark wins; NaN landmarks and the
    parts of discs outside the image are left out.

    Args:
        points_px: ``(N, 2)`` ``(x, y)`` original pixels.
        image_hw: ``(H, W)`` of the label image (the original image's size).
        radius: disc radius in pixels (>= 0; 0 marks the pixel nearest to the point).

    Returns:
        ``(H, W)`` uint8 label image (uint16 for more than 255 landmarks).
    """
    points = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    if radius < 0:
        raise ValueError(f"label disc radius must be >= 0, got {radius}.")
    h, w = int(image_hw[0]), int(image_hw[1])
    label = np.zeros((h, w), dtype=np.uint8 if len(points) < 256 else np.uint16)
    reach = max(float(radius), 0.5)
    for k, (x, y) in enumerate(points):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        c0, c1 = max(0, math.ceil(x - reach)), min(w - 1, math.floor(x + reach))
        r0, r1 = max(0, math.ceil(y - reach)), min(h - 1, math.floor(y + reach))
        if c0 > c1 or r0 > r1:
            continue
        cols = np.arange(c0, c1 + 1, dtype=np.float64)
        rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
        inside = (cols - x) ** 2 + (rows - y) ** 2 <= reach**2
        label[r0 : r1 + 1, c0 : c1 + 1][inside] = k + 1
    return label


def write_label_image(path: PathLike, label: np.ndarray, spacing: Sequence[float] | None = None) -> Path:
    """Save a label image ``(H, W)`` (atomically) as PNG (``.png``, uint8 or uint16 grey) or NIfTI
    (``.nii`` / ``.nii.gz``, array stored as ``[x, y, 1]`` with pixdim ``(sx, sy, 1)`` mm when
    ``spacing`` is given, so that :func:`scripts.data.image_reader.read_image` reads back the same ``(H, W)``).
    """
    path = Path(path)
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: a label image must be (H, W) uint8 or uint16, got {label.dtype} {label.shape}.")
    name = path.name.lower()
    if name.endswith(".png"):
        from PIL import Image

        image = Image.fromarray(label)  # mode "L" or "I;16"
        return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=1))
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        sx, sy = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
        nifti = nib.Nifti1Image(np.ascontiguousarray(label.T[:, :, None]), np.diag([sx, sy, 1.0, 1.0]))
        nifti.header.set_xyzt_units("mm")
        suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"

        def write(tmp: str) -> None:
            # nibabel picks the compression from the file name: save under the real suffix, then move
            named = tmp + suffix
            try:
                nib.save(nifti, named)
                os.replace(named, tmp)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(named)

        return atomic_write(path, write)
    raise ValueError(f"{path}: label images are written as .png, .nii or .nii.gz.")



def landmarks_from_label_image(label, num_landmarks: int) -> np.ndarray:
    """The landmarks of a label image: landmark ``k`` is the centroid of the pixels equal to ``k + 1``.

    ``(x, y)`` = (mean column, mean row) in the label's pixels; this inverts :func:`landmark_label_image`
    (a disc, or a single pixel, per landmark); a disc cut by the image border pulls its centroid inwards.

    Args:
        label: ``(H, W)`` or ``(1, H, W)`` array (numpy or torch) of whole numbers ``>= 0``.
        num_landmarks: number of landmarks ``N`` (values ``1..N``).

    Returns:
        ``(N, 2)`` float32, a NaN row for a value absent from the label (missing landmark).

    Raises:
        ValueError: bad shape, values that are not whole numbers ``>= 0``, or a value above ``N``.
    """
    lab = np.asarray(label.detach().cpu() if hasattr(label, "detach") else label)
    if lab.ndim == 3 and lab.shape[0] == 1:
        lab = lab[0]
    if lab.ndim != 2:
        raise ValueError(f"label image must be (H, W) or (1, H, W), got shape {lab.shape}.")
    if not np.all(np.isfinite(lab)) or np.any(lab < 0) or np.any(lab != np.round(lab)):
        raise ValueError("label image values must be whole numbers >= 0 (0 background, k + 1 landmark k).")
    lab = lab.astype(np.int64)
    top = int(lab.max(initial=0))
    if top > num_landmarks:
        raise ValueError(f"label image has value {top} but only {num_landmarks} landmarks (values 1..N).")
    rows, cols = np.nonzero(lab)
    values = lab[rows, cols] - 1
    count = np.bincount(values, minlength=num_landmarks).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.bincount(values, weights=cols, minlength=num_landmarks) / count
        y = np.bincount(values, weights=rows, minlength=num_landmarks) / count
    points = np.stack([x, y], axis=1)
    points[count == 0] = np.nan
    return points.astype(np.float32)
