"""Helpers shared by the landmark transforms: input kinds, point arrays, sampling grids, ranges.

Images are channel-first ``(C, H, W)``; points ``(N, 2)`` ``(x, y)`` pixels with pixel centres at integers
(:mod:`scripts.coords`). Transforms return the kind they were given (numpy in, numpy out).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import ensure_tuple

__all__ = [
    "float_tensor",
    "like_input",
    "check_image",
    "points_array",
    "points_like",
    "translation_matrix",
    "pixel_to_grid",
    "sample_field",
    "percentiles",
    "range_pair",
]


def float_tensor(img) -> torch.Tensor:
    """``img`` as a plain float32 tensor, copying only when the input is not float32 already."""
    if isinstance(img, torch.Tensor):
        t = img.as_tensor() if hasattr(img, "as_tensor") else img  # MetaTensor -> Tensor
        return t.float()
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))


def like_input(result: torch.Tensor, reference):
    """``result`` as numpy if ``reference`` was numpy (or other array-like), else as a tensor."""
    if isinstance(reference, torch.Tensor):
        return result
    return result.detach().cpu().numpy()


def check_image(img, name: str) -> None:
    if img.ndim != 3:
        raise ValueError(f"{name}: expected a channel-first image (C, H, W), got shape {tuple(img.shape)}.")


def points_array(points, name: str) -> np.ndarray:
    pts = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name}: expected points of shape (N, 2), got {pts.shape}.")
    return pts


def points_like(points_f64: np.ndarray, reference):
    if isinstance(reference, torch.Tensor):
        dtype = reference.dtype if reference.is_floating_point() else torch.float32
        return torch.as_tensor(points_f64, dtype=dtype, device=reference.device)
    return points_f64.astype(np.float32)


def translation_matrix(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def pixel_to_grid(xy: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """Pixel ``(x, y)`` -> ``grid_sample`` coordinates in ``[-1, 1]`` for ``align_corners=False``."""
    size = torch.tensor([hw[1], hw[0]], dtype=xy.dtype, device=xy.device)
    return (2.0 * xy + 1.0) / size - 1.0


def sample_field(field: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``field`` ``(K, H, W)`` at pixel points ``xy`` ``(N, 2)`` -> ``(N, K)``.

    Outside the grid the border values are continued.
    """
    grid = pixel_to_grid(xy, field.shape[-2:])[None, None]  # (1, 1, N, 2)
    out = F.grid_sample(field[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0, :].T


def percentiles(img, q: Sequence[float]) -> list[float]:
    """Linear-interpolated percentiles (numpy's default method) of all values of ``img``."""
    if isinstance(img, torch.Tensor):
        values = img.detach().reshape(-1).double().sort().values
        pos = torch.tensor(q, dtype=torch.float64, device=values.device) / 100.0 * (values.numel() - 1)
        low = pos.floor().long()
        high = pos.ceil().long()
        frac = pos - low
        return (values[low] * (1 - frac) + values[high] * frac).tolist()
    return [float(v) for v in np.percentile(np.asarray(img), q)]


def range_pair(value, name: str, symmetric: bool) -> tuple[float, float]:
    """``value`` as ``(low, high)``; a single number ``r`` means ``(-r, r)`` when ``symmetric``."""
    pair = ensure_tuple(value)
    if len(pair) == 1:
        r = float(pair[0])
        pair = (-r, r) if symmetric else (r, r)
    if len(pair) != 2 or float(pair[0]) > float(pair[1]):
        raise ValueError(f"{name} must be a number or a (low, high) pair with low <= high, got {value!r}.")
    return float(pair[0]), float(pair[1])

