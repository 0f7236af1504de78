"""Spatial transforms that move the landmarks with the image: resizing (stretch or letterbox) and a
random affine + elastic augmentation.

Each has an array version on one image ``(C, H, W)`` and points ``(N, 2)`` and a dictionary version
(suffix ``d``). Every map of the points goes through a 3x3 matrix of :mod:`scripts.coords`; the image
is resampled with the same pixel-centre convention (``align_corners=False``), so image and points stay
consistent to a small fraction of a pixel. ``ResizeWithLandmarksd`` keeps ``net_from_orig`` (3, 3)
mapping original pixels to the current network pixels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import ensure_tuple

from scripts.coords import apply_matrix, centred_affine_matrix, resize_matrix
from scripts.keys import LandmarkKeys
from scripts.transforms.utils import (
    check_image,
    float_tensor,
    like_input,
    pixel_to_grid,
    points_array,
    points_like,
    range_pair,
    sample_field,
    translation_matrix,
)

__all__ = ["ResizeWithLandmarks", "ResizeWithLandmarksd", "RandLandmarkAffineElastic", "RandLandmarkAffineElasticd"]


class ResizeWithLandmarks(Transform):
    """Resize an image to ``spatial_size`` and move its points with it.

    The image goes through ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
    antialias=True)``, whose pixel-centre convention is the one of :mod:`scripts.coords`; the points
    through the matching matrix ``net_from_orig``. Big images (e.g. 7300 x 2800, 16-bit values) are
    converted to float32 once, without float64 copies.

    With ``keep_aspect=True`` the image is scaled by ``s = min(H'/H, W'/W)`` to an *integer* content
    size ``round(H s) x round(W s)`` and centred with integer padding (letterbox, padded with the
    image minimum). The matrix describes exactly this (resize to the content size, then shift), so it
    can differ from ``coords.resize_matrix(..., keep_aspect=True)`` by less than half a pixel.

    Args:
        spatial_size: ``(H', W')`` output size, pixels.
        keep_aspect: letterbox instead of stretching.
    """

    def __init__(self, spatial_size: Sequence[int], keep_aspect: bool = False) -> None:
        size = ensure_tuple(spatial_size)
        if len(size) != 2 or min(int(s) for s in size) < 1:
            raise ValueError(f"spatial_size must be (H, W) with positive sizes, got {spatial_size!r}.")
        self.spatial_size = (int(size[0]), int(size[1]))
        self.keep_aspect = keep_aspect

    def matrix(self, in_hw: Sequence[int]) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """``net_from_orig`` (3, 3) float64 for an input of ``in_hw``, the content size and pad (top, left)."""
        out_h, out_w = self.spatial_size
        if not self.keep_aspect:
            return resize_matrix(in_hw, self.spatial_size), self.spatial_size, (0, 0)
        scale = min(out_h / in_hw[0], out_w / in_hw[1])
        content = (min(out_h, max(1, round(in_hw[0] * scale))), min(out_w, max(1, round(in_hw[1] * scale))))
        top, left = (out_h - content[0]) // 2, (out_w - content[1]) // 2
        return translation_matrix(left, top) @ resize_matrix(in_hw, content), content, (top, left)

    def __call__(self, img, points=None):
        """Resize ``img`` ``(C, H, W)`` and map ``points`` ``(N, 2)`` (or ``None``).

        Returns:
            ``(image (C, H', W') float32, points (N, 2) float32 or None, net_from_orig (3, 3) float64)``.
        """
        check_image(img, type(self).__name__)
        in_hw = (int(img.shape[-2]), int(img.shape[-1]))
        matrix, content, (top, left) = self.matrix(in_hw)
        x = float_tensor(img)
        if content == in_hw:
            resized = x.clone()  # never share memory with the input
        else:
            resized = F.interpolate(x[None], size=content, mode="bilinear", align_corners=False, antialias=True)[0]
        if content != self.spatial_size:
            canvas = torch.full((x.shape[0], *self.spatial_size), float(x.min()), dtype=x.dtype, device=x.device)
            canvas[:, top : top + content[0], left : left + content[1]] = resized
            resized = canvas
        out_points = None
        if points is not None:
            out_points = points_like(apply_matrix(points_array(points, "points"), matrix), points)
        return like_input(resized, img), out_points, matrix


class ResizeWithLandmarksd(MapTransform):
    """Dictionary version of :class:`ResizeWithLandmarks`.

    All image ``keys`` (same size) are resized, all ``points_keys`` mapped, and
    ``d[matrix_key]`` becomes ``M_resize @ d[matrix_key]`` (identity if absent), so it keeps mapping
    original pixels to the current network pixels.
    """

    def __init__(
        self,
        keys: KeysCollection = (LandmarkKeys.IMAGE,),
        *,
        spatial_size: Sequence[int],
        points_keys: KeysCollection = (LandmarkKeys.LANDMARKS,),
        keep_aspect: bool = False,
        matrix_key: str = LandmarkKeys.NET_FROM_ORIG,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizer = ResizeWithLandmarks(spatial_size, keep_aspect)
        self.points_keys = ensure_tuple(points_keys)
        self.matrix_key = str(matrix_key)  # plain str: samples stay loadable with weights_only=True

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        in_hw = tuple(d[keys[0]].shape[-2:])
        for key in keys:
            if tuple(d[key].shape[-2:]) != in_hw:
                size = tuple(d[key].shape[-2:])
                raise ValueError(f"{type(self).__name__}: image '{key}' has size {size}, expected {in_hw}.")
            d[key], _, matrix = self.resizer(d[key])
        for key in self.points_keys:
            if d.get(key) is not None:
                d[key] = points_like(apply_matrix(points_array(d[key], key), matrix), d[key])
            elif key not in d and not self.allow_missing_keys:
                raise KeyError(f"{type(self).__name__}: points key '{key}' is missing.")
        previous = np.asarray(d.get(self.matrix_key, np.eye(3)), dtype=np.float64)
        d[self.matrix_key] = matrix @ previous
        return d



class RandLandmarkAffineElastic(RandomizableTransform):
    """Random affine + smooth elastic deformation of an image and its points, one draw per call.

    The forward map of a point ``p`` (input pixels) to output pixels ``o`` is defined by
    ``o + u(o) = A p``: ``A`` is a rotation by ``angle`` and isotropic scaling by ``scale`` about the
    image centre ``((W-1)/2, (H-1)/2)`` followed by a translation, and ``u`` a displacement field on
    the output grid (control-point displacements ``~ U(-elastic_magnitude, elastic_magnitude)`` px
    on an ``elastic_grid x elastic_grid`` lattice spanning the pixel centres, upsampled bicubically).

    * The image is resampled with ``grid_sample`` (bilinear, ``align_corners=False``) using the
      backward map ``in = A^-1 (o + u(o))`` at every output pixel centre ``o``.
    * The points solve ``o + u(o) = A p`` by Newton iterations (bilinear samples of ``u`` and of
      its gradient; a fixed-point step ``o <- A p - u(o)`` where the Jacobian is near singular),
      to a residual below ``1e-4`` px. NaN points stay NaN; points leaving the grid keep their
      outside coordinates.

    Keep ``elastic_magnitude`` below about a third of the control spacing
    (``(W - 1) / (elastic_grid - 1)``) so the deformation does not fold.

    Args:
        prob: probability of transforming at all.
        rotate_range: angle ``~ U(-r, r)`` radians, or a ``(low, high)`` pair.
        scale_range: ``(low, high)`` isotropic scale factor.
        translate_range: shift in px ``~ U(-t, t)`` for x and y, or ``(tx, ty)`` maxima.
        elastic_magnitude: maximum control-point displacement in px; 0 disables the elastic part.
        elastic_grid: control points per axis (>= 2).
        padding_mode: ``grid_sample`` padding for pixels mapped from outside the input:
            ``"zeros"``, ``"border"`` or ``"reflection"``.
    """

    def __init__(
        self,
        prob: float = 1.0,
        rotate_range: float | Sequence[float] = 0.0,
        scale_range: Sequence[float] = (1.0, 1.0),
        translate_range: float | Sequence[float] = 0.0,
        elastic_magnitude: float = 0.0,
        elastic_grid: int = 8,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(prob)
        self.rotate_range = range_pair(rotate_range, "rotate_range", symmetric=True)
        self.scale_range = range_pair(scale_range, "scale_range", symmetric=False)
        translate = ensure_tuple(translate_range)
        self.translate_range = (float(translate[0]),) * 2 if len(translate) == 1 else tuple(map(float, translate))
        if len(self.translate_range) != 2 or min(self.translate_range) < 0:
            raise ValueError(f"translate_range must be t >= 0 or (tx, ty), got {translate_range!r}.")
        if elastic_magnitude < 0 or int(elastic_grid) < 2:
            raise ValueError("elastic_magnitude must be >= 0 and elastic_grid >= 2.")
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(f"padding_mode must be 'zeros', 'border' or 'reflection', got {padding_mode!r}.")
        self.elastic_magnitude = float(elastic_magnitude)
        self.elastic_grid = int(elastic_grid)
        self.padding_mode = padding_mode
        self.spatial_hw: tuple[int, int] | None = None
        self.affine = np.eye(3)
        self.control: np.ndarray | None = None
        self._grid: torch.Tensor | None = None
        self._field: torch.Tensor | None = None

    def randomize(self, spatial_hw: Sequence[int]) -> None:
        """Draw one transform for images of size ``spatial_hw`` ``(H, W)``."""
        super().randomize(None)
        h, w = int(spatial_hw[0]), int(spatial_hw[1])
        angle = self.R.uniform(*self.rotate_range)
        scale = self.R.uniform(*self.scale_range)
        shift = self.R.uniform(-1.0, 1.0, size=2) * np.asarray(self.translate_range)
        g = self.elastic_grid
        m = self.elastic_magnitude
        control = self.R.uniform(-m, m, size=(2, g, g)) if m > 0 else None
        self.affine = centred_affine_matrix((h, w), angle, scale, shift)
        self.control = control
        self.spatial_hw = (h, w)
        self._grid = self._field = None

    def _displacement(self, device: torch.device) -> torch.Tensor | None:
        """The field ``u`` as a float64 ``(2, H, W)`` tensor (x then y displacement, px), or None."""
        if self.control is None:
            return None
        if self._field is None or self._field.device != device:
            control = torch.as_tensor(self.control, dtype=torch.float64, device=device)[None]
            self._field = F.interpolate(control, size=self.spatial_hw, mode="bicubic", align_corners=True)[0]
        return self._field

    def _sampling_grid(self, device: torch.device) -> torch.Tensor:
        """``grid_sample`` grid ``(1, H, W, 2)`` of the backward map, cached for the current draw."""
        if self._grid is None or self._grid.device != device:
            h, w = self.spatial_hw
            rows, cols = torch.meshgrid(
                torch.arange(h, dtype=torch.float64, device=device),
                torch.arange(w, dtype=torch.float64, device=device),
                indexing="ij",
            )
            out_xy = torch.stack((cols, rows), dim=-1)
            field = self._displacement(device)
            if field is not None:
                out_xy = out_xy + field.permute(1, 2, 0)
            in_xy = apply_matrix(out_xy, torch.as_tensor(np.linalg.inv(self.affine), device=device))
            self._grid = pixel_to_grid(in_xy, (h, w)).float()[None]
        return self._grid

    def _check_drawn(self, hw: Sequence[int]) -> None:
        if self.spatial_hw is None:
            raise RuntimeError(f"{type(self).__name__}: call randomize(spatial_hw) first.")
        if tuple(int(s) for s in hw) != self.spatial_hw:
            raise ValueError(f"{type(self).__name__}: drawn for size {self.spatial_hw}, got size {tuple(hw)}.")

    def transform_image(self, img):
        """Apply the current draw to ``img`` ``(C, H, W)``; float32 of the same kind."""
        check_image(img, type(self).__name__)
        x = float_tensor(img)
        if not self._do_transform:
            return like_input(x.clone(), img)
        self._check_drawn(x.shape[-2:])
        grid = self._sampling_grid(x.device)
        out = F.grid_sample(x[None], grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)[0]
        return like_input(out, img)

    def transform_points(self, points, max_iter: int = 20, tol: float = 1e-4):
        """Apply the current draw to ``points`` ``(N, 2)`` input pixels -> output pixels."""
        pts = points_array(points, "points")
        if not self._do_transform:
            return points_like(pts, points)
        if self.spatial_hw is None:
            raise RuntimeError(f"{type(self).__name__}: call randomize(spatial_hw) first.")
        present = np.isfinite(pts).all(axis=1)
        target = torch.from_numpy(apply_matrix(np.where(present[:, None], pts, 0.0), self.affine))
        field = self._displacement(torch.device("cpu"))
        out = target
        if field is not None and len(pts):
            # Newton on r(o) = o + u(o) - A p; the Jacobian of u from central differences (+-0.5 px)
            probes = torch.tensor([[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0], [0.0, 0.5], [0.0, -0.5]], dtype=torch.float64)
            out = target - sample_field(field, target)
            for _ in range(max_iter):
                u = sample_field(field, (out[None] + probes[:, None]).reshape(-1, 2)).reshape(5, -1, 2)
                residual = out + u[0] - target
                if residual.abs().max() < tol:
                    break
                du_dx, du_dy = u[1] - u[2], u[3] - u[4]
                a, b, c, e = 1 + du_dx[:, 0], du_dy[:, 0], du_dx[:, 1], 1 + du_dy[:, 1]  # I + J = [[a, b], [c, e]]
                det = a * e - b * c
                solvable = det.abs() > 0.1
                det = torch.where(solvable, det, torch.ones_like(det))
                rx, ry = residual[:, 0], residual[:, 1]
                newton = torch.stack((e * rx - b * ry, a * ry - c * rx), 1)
                out = out - torch.where(solvable[:, None], newton / det[:, None], residual)
        result = out.numpy().copy()
        result[~present] = np.nan
        return points_like(result, points)

    def __call__(self, img, points=None, randomize: bool = True):
        """Transform ``img`` ``(C, H, W)`` and ``points`` ``(N, 2)`` (or None) with one draw.

        Returns ``(image, points)``.
        """
        check_image(img, type(self).__name__)
        if randomize:
            self.randomize(img.shape[-2:])
        out_points = None if points is None else self.transform_points(points)
        return self.transform_image(img), out_points


class RandLandmarkAffineElasticd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandLandmarkAffineElastic`.

    One draw per call moves every image in ``keys`` (all of the same size) and every point set in
    ``points_keys``. Arguments as in the array version.
    """

    def __init__(
        self,
        keys: KeysCollection = (LandmarkKeys.IMAGE,),
        points_keys: KeysCollection = (LandmarkKeys.LANDMARKS,),
        prob: float = 1.0,
        rotate_range: float | Sequence[float] = 0.0,
        scale_range: Sequence[float] = (1.0, 1.0),
        translate_range: float | Sequence[float] = 0.0,
        elastic_magnitude: float = 0.0,
        elastic_grid: int = 8,
        padding_mode: str = "zeros",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.points_keys = ensure_tuple(points_keys)
        self.spatial = RandLandmarkAffineElastic(
            1.0, rotate_range, scale_range, translate_range, elastic_magnitude, elastic_grid, padding_mode
        )

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.spatial.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        self.randomize(None)
        if not keys or not self._do_transform:
            return d
        hw = tuple(d[keys[0]].shape[-2:])
        self.spatial.randomize(hw)
        for key in keys:
            d[key] = self.spatial.transform_image(d[key])
        for key in self.points_keys:
            if d.get(key) is not None:
                d[key] = self.spatial.transform_points(d[key])
            elif key not in d and not self.allow_missing_keys:
                raise KeyError(f"{type(self).__name__}: points key '{key}' is missing.")
        return d

