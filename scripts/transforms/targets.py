"""Training targets from landmarks: Gaussian heatmaps and the landmark mask.

Points ``(N, 2)`` ``(x, y)`` pixels (:mod:`scripts.coords`), NaN for a missing landmark; heatmaps
``(N, H, W)`` float32 with peak ``gamma``; mask ``(N,)`` float32, 1 = present and inside the grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple

from scripts.coords import apply_matrix, resize_matrix
from scripts.heatmap import gaussian_heatmaps, landmark_mask
from scripts.keys import LandmarkKeys
from scripts.transforms.utils import points_array

__all__ = ["LandmarkHeatmap", "LandmarkHeatmapd", "LandmarkMask", "LandmarkMaskd"]


def _size(value: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(s) for s in ensure_tuple(value))


class LandmarkMask(Transform):
    """The landmark mask from points: 1 = present (not NaN) and inside the ``spatial_size`` grid.

    Args:
        spatial_size: ``(H, W)`` of the grid the mask refers to (e.g. the heatmaps).
        points_spatial_size: ``(H, W)`` of the grid the points refer to, if different from
            ``spatial_size`` (e.g. 256x256 input, 64x64 heatmaps); the points are then mapped with
            :func:`scripts.coords.resize_matrix`.
    """

    def __init__(self, spatial_size: Sequence[int], points_spatial_size: Sequence[int] | None = None) -> None:
        self.spatial_size = _size(spatial_size)
        self.points_spatial_size = _size(points_spatial_size)

    def grid_points(self, points) -> np.ndarray:
        """``(N, 2)`` float64 points in pixels of the ``spatial_size`` grid."""
        pts = points_array(points, "points")
        if self.points_spatial_size is not None and self.points_spatial_size != self.spatial_size:
            pts = apply_matrix(pts, resize_matrix(self.points_spatial_size, self.spatial_size))
        return pts

    def __call__(self, points):
        """``points`` ``(N, 2)`` -> ``(N,)`` float32 (array, or tensor on the points' device for tensor points)."""
        mask = torch.from_numpy(landmark_mask(self.grid_points(points), self.spatial_size))
        return mask.to(points.device) if isinstance(points, torch.Tensor) else mask.numpy()


class LandmarkHeatmap(Transform):
    """Gaussian target heatmaps and the landmark mask from points.

    The maps are :func:`scripts.heatmap.gaussian_heatmaps`: ``gamma * exp(-d^2 / 2 sigma^2)`` sampled at
    the pixel centres around the *sub-pixel* point, zero for a masked landmark (:class:`LandmarkMask`).
    MONAI 1.6's ``monai.transforms.GenerateHeatmap`` is not used: it rounds each point to the nearest
    pixel before blurring an impulse (``GaussianFilter``, ``approx="erf"``), so for sub-pixel points its
    peak-normalised maps differ from these (``gamma = 1``) by up to 0.21 (sigma 2 px) and 0.27 (sigma
    1.5 px) of the peak, and the decoded positions move by up to 0.69 px; on pixel-centre points the
    maps still differ by 7.7e-3 (sigma 2 px), the erf kernel against the sampled Gaussian
    (``python benchmarks/monai_heatmap.py``, 200 points on a 64 x 64 grid).

    Args:
        spatial_size: ``(H, W)`` of the heatmaps.
        sigma: px, scalar or one per landmark; gamma: peak value (see
            :func:`scripts.heatmap.gaussian_heatmaps`).
        points_spatial_size: ``(H, W)`` of the grid the points refer to, if different from
            ``spatial_size`` (see :class:`LandmarkMask`).
    """

    def __init__(
        self,
        spatial_size: Sequence[int],
        sigma: float | Sequence[float] = 2.0,
        gamma: float = 100.0,
        points_spatial_size: Sequence[int] | None = None,
    ) -> None:
        self.masker = LandmarkMask(spatial_size, points_spatial_size)
        self.spatial_size = self.masker.spatial_size
        self.sigma = sigma
        self.gamma = float(gamma)

    def __call__(self, points):
        """``points`` ``(N, 2)`` -> ``(heatmaps (N, H, W) float32, mask (N,) float32)``.

        The heatmap of a masked landmark (missing or outside the grid) is all zero.
        """
        pts = torch.from_numpy(self.masker.grid_points(points))
        mask = landmark_mask(pts, self.spatial_size)
        sigma = torch.as_tensor(self.sigma, dtype=torch.float64)
        heatmaps = gaussian_heatmaps(pts, self.spatial_size, sigma, self.gamma) * mask[:, None, None]
        heatmaps, mask = heatmaps.float(), mask.float()
        if isinstance(points, torch.Tensor):
            return heatmaps.to(points.device), mask.to(points.device)
        return heatmaps.numpy(), mask.numpy()


class LandmarkHeatmapd(MapTransform):
    """Dictionary version of :class:`LandmarkHeatmap`: writes ``heatmap_key`` and ``mask_key``."""

    def __init__(
        self,
        points_key: str = LandmarkKeys.LANDMARKS,
        heatmap_key: str = LandmarkKeys.HEATMAPS,
        mask_key: str = LandmarkKeys.LANDMARKS_MASK,
        *,
        spatial_size: Sequence[int],
        sigma: float | Sequence[float] = 2.0,
        gamma: float = 100.0,
        points_spatial_size: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(points_key, allow_missing_keys)
        self.heatmap_key, self.mask_key = str(heatmap_key), str(mask_key)  # plain str, see LandmarkKeys
        self.generator = LandmarkHeatmap(spatial_size, sigma, gamma, points_spatial_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.heatmap_key], d[self.mask_key] = self.generator(d[key])
        return d


class LandmarkMaskd(MapTransform):
    """Dictionary version of :class:`LandmarkMask`: writes only ``mask_key`` ``(N,)`` float32.

    For training where the loss draws its own targets.
    """

    def __init__(
        self,
        points_key: str = LandmarkKeys.LANDMARKS,
        mask_key: str = LandmarkKeys.LANDMARKS_MASK,
        *,
        spatial_size: Sequence[int],
        points_spatial_size: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(points_key, allow_missing_keys)
        self.mask_key = str(mask_key)
        self.masker = LandmarkMask(spatial_size, points_spatial_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.mask_key] = self.masker(d[key])
        return d
