"""Landmark-aware MONAI transforms: load, resize, histogram match, normalise, augment, heatmaps.

Each transform has an array version working on one image ``(C, H, W)`` and/or points ``(N, 2)``
and a dictionary version (suffix ``d``) working on the sample dictionaries of ``docs/DESIGN.md``.
Points follow :mod:`scripts.coords`: ``(x, y)`` = (column, row) in pixels, integer ``k`` = centre
of pixel ``k``, ``NaN`` for a missing landmark. Every map of the points goes through a 3x3 matrix of
:mod:`scripts.coords`; the image is resampled with the same pixel-centre convention
(``align_corners=False``), so image and points stay consistent to a small fraction of a pixel.

Inputs may be numpy arrays or torch tensors; images come back float32 of the same kind (numpy in,
numpy out). Random transforms draw one state per call and apply it to every image and point key.

Sample keys written here: ``orig_hw`` (2,), ``spacing`` (2,) float32 (NaN pair if unknown),
``spacing_source``, ``landmarks_orig`` (N, 2) (the annotation in original pixels, never changed),
``net_from_orig`` (3, 3) float64 (original -> network pixels), ``landmarks_mask`` (N,) and
``heatmaps`` (N, H, W). Decoded network points go back to original pixels / mm with
:func:`scripts.heatmap.points_to_original` and :func:`scripts.heatmap.points_to_mm`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import ensure_tuple

from scripts.coords import apply_matrix, resize_matrix
from scripts.heatmap import gaussian_heatmaps, landmark_mask
from scripts.io import read_image
from scripts.trust import PROBLEM_SEPARATOR, image_problems
from scripts.writers import downscale_image

__all__ = [
    "LoadLandmarkImaged",
    "LabelImageToLandmarks",
    "LandmarksFromLabelImaged",
    "ResizeWithLandmarks",
    "ResizeWithLandmarksd",
    "HistogramMatch",
    "HistogramMatchd",
    "RobustNormalizeIntensity",
    "RobustNormalizeIntensityd",
    "RandIntensityScaleShift",
    "RandIntensityScaleShiftd",
    "RandLandmarkAffineElastic",
    "RandLandmarkAffineElasticd",
    "LandmarkHeatmap",
    "LandmarkHeatmapd",
    "LandmarkMaskd",
]


# ----------------------------------------------------------------------------------------------
# helpers


def _float_tensor(img) -> torch.Tensor:
    """``img`` as a plain float32 tensor, copying only when the input is not float32 already."""
    if isinstance(img, torch.Tensor):
        t = img.as_tensor() if hasattr(img, "as_tensor") else img  # MetaTensor -> Tensor
        return t.float()
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))


def _like(result: torch.Tensor, reference):
    """``result`` as numpy if ``reference`` was numpy (or other array-like), else as a tensor."""
    if isinstance(reference, torch.Tensor):
        return result
    return result.detach().cpu().numpy()


def _check_image(img, name: str) -> None:
    if img.ndim != 3:
        raise ValueError(f"{name}: expected a channel-first image (C, H, W), got shape {tuple(img.shape)}.")


def _points_array(points, name: str) -> np.ndarray:
    pts = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name}: expected points of shape (N, 2), got {pts.shape}.")
    return pts


def _points_like(points_f64: np.ndarray, reference):
    if isinstance(reference, torch.Tensor):
        dtype = reference.dtype if reference.is_floating_point() else torch.float32
        return torch.as_tensor(points_f64, dtype=dtype, device=reference.device)
    return points_f64.astype(np.float32)


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _pixel_to_grid(xy: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """Pixel ``(x, y)`` -> ``grid_sample`` coordinates in ``[-1, 1]`` for ``align_corners=False``."""
    size = torch.tensor([hw[1], hw[0]], dtype=xy.dtype, device=xy.device)
    return (2.0 * xy + 1.0) / size - 1.0


def _sample_field(field: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``field`` ``(K, H, W)`` at pixel points ``xy`` ``(N, 2)`` -> ``(N, K)``.

    Outside the grid the border values are continued.
    """
    grid = _pixel_to_grid(xy, field.shape[-2:])[None, None]  # (1, 1, N, 2)
    out = F.grid_sample(field[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0, :].T


def _percentiles(img, q: Sequence[float]) -> list[float]:
    """Linear-interpolated percentiles (numpy's default method) of all values of ``img``."""
    if isinstance(img, torch.Tensor):
        values = img.detach().reshape(-1).double().sort().values
        pos = torch.tensor(q, dtype=torch.float64, device=values.device) / 100.0 * (values.numel() - 1)
        low = pos.floor().long()
        high = pos.ceil().long()
        frac = pos - low
        return (values[low] * (1 - frac) + values[high] * frac).tolist()
    return [float(v) for v in np.percentile(np.asarray(img), q)]


def _range_pair(value, name: str, symmetric: bool) -> tuple[float, float]:
    """``value`` as ``(low, high)``; a single number ``r`` means ``(-r, r)`` when ``symmetric``."""
    pair = ensure_tuple(value)
    if len(pair) == 1:
        r = float(pair[0])
        pair = (-r, r) if symmetric else (r, r)
    if len(pair) != 2 or float(pair[0]) > float(pair[1]):
        raise ValueError(f"{name} must be a number or a (low, high) pair with low <= high, got {value!r}.")
    return float(pair[0]), float(pair[1])


# ----------------------------------------------------------------------------------------------
# loading


class LoadLandmarkImaged(MapTransform):
    """Read the image of a datalist item with :func:`scripts.io.read_image` and set up the frames.

    Writes ``d[key]`` = float32 ``(1, H, W)`` numpy array (grey values as in the file) and, from the
    first image key: ``orig_hw`` = ``[H, W]`` (int64), ``spacing`` = float32 ``(sx, sy)`` mm/px (the
    item's own spacing from the CSV if given, else the file header's, else ``[nan, nan]``),
    ``spacing_source`` (``"csv"``, the header field name, or ``"unknown"``), ``net_from_orig`` =
    identity (float64 ``(3, 3)``) and, if the item has landmarks (not at inference),
    ``landmarks_orig`` = a float32 copy of ``d[points_key]`` ``(N, 2)`` original pixels.
    Optionally (folder inference) also ``d[problems_key]`` = the image's out-of-distribution findings
    (:func:`scripts.trust.image_problems`, joined into one string, ``""`` = none) and
    ``d[preview_key]`` = the image shrunk to ``preview_max_size`` pixels on its longer side (float32
    ``(H', W')``, :func:`scripts.writers.downscale_image`), so that the overlay needs no second decoding.

    Args:
        keys: image key(s); each value is a file path.
        spacing_key: key of the CSV spacing ``[sx, sy]`` or ``None`` (absent / NaN pair = not given).
        points_key: key of the landmarks ``(N, 2)`` original pixels; absent or ``None`` is allowed.
        orig_points_key, orig_hw_key, source_key, matrix_key: names of the keys written.
        problems_key: if set, key of the image problems written (see above).
        preview_key: if set, key of the shrunk copy written (see above).
        preview_max_size: longer side of that copy, pixels.
        allow_missing_keys: don't raise if an image key is absent.

    Raises:
        scripts.io.ImageReadError: the file cannot be read (message names it).
        ValueError: bad spacing or landmarks shape (message names the file).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        spacing_key: str = "spacing",
        points_key: str = "landmarks",
        orig_points_key: str = "landmarks_orig",
        orig_hw_key: str = "orig_hw",
        source_key: str = "spacing_source",
        matrix_key: str = "net_from_orig",
        problems_key: str | None = None,
        preview_key: str | None = None,
        preview_max_size: int = 1024,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.problems_key, self.preview_key = problems_key, preview_key
        self.preview_max_size = int(preview_max_size)
        self.spacing_key = spacing_key
        self.points_key = points_key
        self.orig_points_key = orig_points_key
        self.orig_hw_key = orig_hw_key
        self.source_key = source_key
        self.matrix_key = matrix_key

    def _given_spacing(self, value, path: str) -> np.ndarray | None:
        if value is None:
            return None
        sp = np.asarray(value, dtype=np.float64).reshape(-1)
        if sp.shape == (2,) and np.isnan(sp).all():
            return None
        if sp.shape != (2,) or not np.isfinite(sp).all() or (sp <= 0).any():
            raise ValueError(f"{path}: spacing must be two positive numbers (sx, sy) mm/px, got {value!r}.")
        return sp

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        first = True
        for key in self.key_iterator(d):
            record = read_image(d[key])
            d[key] = np.ascontiguousarray(record.array, dtype=np.float32)[None]
            if not first:
                continue
            first = False
            given = self._given_spacing(d.get(self.spacing_key), record.path)
            if given is not None:
                spacing, source = given, "csv"
            elif record.spacing is not None:
                spacing, source = np.asarray(record.spacing, dtype=np.float64), record.spacing_source
            else:
                spacing, source = np.full(2, np.nan), "unknown"
            d[self.spacing_key] = spacing.astype(np.float32)
            d[self.source_key] = source
            d[self.orig_hw_key] = np.array(record.array.shape, dtype=np.int64)
            d[self.matrix_key] = np.eye(3, dtype=np.float64)
            if self.problems_key is not None:
                d[self.problems_key] = PROBLEM_SEPARATOR.join(
                    image_problems(record.array, record.modality, record.spacing_problem))
            if self.preview_key is not None:
                d[self.preview_key] = downscale_image(record.array, self.preview_max_size)
            if d.get(self.points_key) is not None:
                try:
                    points = _points_array(d[self.points_key], self.points_key)
                except ValueError as err:
                    raise ValueError(f"{record.path}: {err}") from None
                d[self.points_key] = points.astype(np.float32)
                d[self.orig_points_key] = points.astype(np.float32)
        return d


# ----------------------------------------------------------------------------------------------
# landmarks from label images (MONAI Label datastores)


class LabelImageToLandmarks(Transform):
    """Landmarks from a label image with one region of value ``k + 1`` per landmark ``k`` (0 = background).

    Landmark ``k`` is the centroid of the pixels equal to ``k + 1``: ``(x, y)`` = (mean column, mean
    row) in the label's pixels (pixel centres at integers, :mod:`scripts.coords`). This inverts
    :func:`scripts.writers.landmark_label_image` (a disc, or a single pixel, per landmark); a disc cut
    by the image border pulls its centroid inwards. A value absent from the label gives a NaN row
    (missing landmark); values above ``num_landmarks`` are an error.

    Args:
        num_landmarks: number of landmarks ``N``.

    Input: ``(H, W)`` or ``(1, H, W)`` label array of whole numbers. Output: ``(N, 2)`` float32.
    """

    def __init__(self, num_landmarks: int) -> None:
        if int(num_landmarks) < 1:
            raise ValueError(f"LabelImageToLandmarks: num_landmarks must be >= 1, got {num_landmarks!r}.")
        self.num_landmarks = int(num_landmarks)

    def __call__(self, label) -> np.ndarray:
        lab = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
        if lab.ndim == 3 and lab.shape[0] == 1:
            lab = lab[0]
        if lab.ndim != 2:
            raise ValueError(f"label image must be (H, W) or (1, H, W), got shape {lab.shape}.")
        if not np.all(np.isfinite(lab)) or np.any(lab < 0) or np.any(lab != np.round(lab)):
            raise ValueError("label image values must be whole numbers >= 0 (0 background, k + 1 landmark k).")
        lab = lab.astype(np.int64)
        top = int(lab.max(initial=0))
        if top > self.num_landmarks:
            raise ValueError(f"label image has value {top} but only {self.num_landmarks} landmarks (values 1..N).")
        rows, cols = np.nonzero(lab)
        values = lab[rows, cols] - 1
        count = np.bincount(values, minlength=self.num_landmarks).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.bincount(values, weights=cols, minlength=self.num_landmarks) / count
            y = np.bincount(values, weights=rows, minlength=self.num_landmarks) / count
        points = np.stack([x, y], axis=1)
        points[count == 0] = np.nan
        return points.astype(np.float32)


class LandmarksFromLabelImaged(MapTransform):
    """Dictionary version of :class:`LabelImageToLandmarks` for datalist items ``{"image", "label"}``.

    MONAI Label's training task gives items whose ``label`` is the path of a label image of the same
    size as the image (e.g. the discs written by ``configs/inference.json``). Run after
    :class:`LoadLandmarkImaged`: for an item with a label path and no landmarks, it reads the label
    with :func:`scripts.io.read_image`, checks its size against ``orig_hw``, and writes
    ``d[points_key]`` and ``d[orig_points_key]`` = ``(N, 2)`` float32 original pixels. Items that
    already carry landmarks (the landmark-CSV datalists) or have no label pass through unchanged.

    Args:
        num_landmarks: number of landmarks ``N``.
        label_key, points_key, orig_points_key, orig_hw_key, image_key: keys read and written.

    Raises:
        ValueError: unreadable label, size mismatch or bad values; the message names the label file.
    """

    def __init__(
        self,
        num_landmarks: int,
        label_key: str = "label",
        points_key: str = "landmarks",
        orig_points_key: str = "landmarks_orig",
        orig_hw_key: str = "orig_hw",
        image_key: str = "image",
    ) -> None:
        super().__init__(label_key, allow_missing_keys=True)
        self.converter = LabelImageToLandmarks(num_landmarks)
        self.label_key, self.points_key, self.orig_points_key = label_key, points_key, orig_points_key
        self.orig_hw_key, self.image_key = orig_hw_key, image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        path = d.get(self.label_key)
        if d.get(self.points_key) is not None or not isinstance(path, (str, os.PathLike)):
            return d
        record = read_image(path)
        hw = tuple(int(v) for v in record.array.shape)
        if self.orig_hw_key in d and hw != tuple(int(v) for v in np.asarray(d[self.orig_hw_key]).reshape(-1)):
            raise ValueError(
                f"{record.path}: label image is {hw[0]} x {hw[1]} (H x W) but its image "
                f"{d.get(self.image_key, '')} is {tuple(int(v) for v in d[self.orig_hw_key])}."
            )
        try:
            points = self.converter(record.array)
        except ValueError as err:
            raise ValueError(f"{record.path}: {err}") from None
        d[self.points_key] = points
        d[self.orig_points_key] = points.copy()
        return d


# ----------------------------------------------------------------------------------------------
# resizing


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
        return _translation(left, top) @ resize_matrix(in_hw, content), content, (top, left)

    def __call__(self, img, points=None):
        """Resize ``img`` ``(C, H, W)`` and map ``points`` ``(N, 2)`` (or ``None``).

        Returns:
            ``(image (C, H', W') float32, points (N, 2) float32 or None, net_from_orig (3, 3) float64)``.
        """
        _check_image(img, type(self).__name__)
        in_hw = (int(img.shape[-2]), int(img.shape[-1]))
        matrix, content, (top, left) = self.matrix(in_hw)
        x = _float_tensor(img)
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
            out_points = _points_like(apply_matrix(_points_array(points, "points"), matrix), points)
        return _like(resized, img), out_points, matrix


class ResizeWithLandmarksd(MapTransform):
    """Dictionary version of :class:`ResizeWithLandmarks`.

    All image ``keys`` (same size) are resized, all ``points_keys`` mapped, and
    ``d[matrix_key]`` becomes ``M_resize @ d[matrix_key]`` (identity if absent), so it keeps mapping
    original pixels to the current network pixels.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image",),
        *,
        spatial_size: Sequence[int],
        points_keys: KeysCollection = ("landmarks",),
        keep_aspect: bool = False,
        matrix_key: str = "net_from_orig",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizer = ResizeWithLandmarks(spatial_size, keep_aspect)
        self.points_keys = ensure_tuple(points_keys)
        self.matrix_key = matrix_key

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
                d[key] = _points_like(apply_matrix(_points_array(d[key], key), matrix), d[key])
            elif key not in d and not self.allow_missing_keys:
                raise KeyError(f"{type(self).__name__}: points key '{key}' is missing.")
        previous = np.asarray(d.get(self.matrix_key, np.eye(3)), dtype=np.float64)
        d[self.matrix_key] = matrix @ previous
        return d


# ----------------------------------------------------------------------------------------------
# intensity


class HistogramMatch(Transform):
    """Histogram matching inside the object (Otsu) mask, as in the SCN preprocessing.

    Both the input and the reference are masked by an Otsu threshold (see ``_otsu_mask``); the
    input pixels inside its mask get the grey values that give the reference's masked histogram
    (exact cumulative-histogram matching, ``skimage.exposure.match_histograms`` on the masked
    values); pixels outside the mask are untouched. Every channel is matched on its own.

    Args:
        reference: image file path (read with :func:`scripts.io.read_image`), a ``(H, W)`` /
            ``(1, H, W)`` array, or ``None`` (identity). The reference is resized to the input's size
            on first use (cached per size), so its histogram has the input's number of pixels.
        outside_mask: ``"keep"`` leaves pixels outside the mask untouched (the published
            preprocessing); ``"map"`` applies the same monotone grey-value mapping, learnt inside the
            mask, to every pixel (continued with slope 1 beyond the masked range), which avoids the
            step at the mask border where the mask cuts through an object (e.g. fingers whose soft
            tissue is darker than the palm's).
    """

    def __init__(self, reference=None, outside_mask: str = "keep") -> None:
        if outside_mask not in ("keep", "map"):
            raise ValueError(f"outside_mask must be 'keep' or 'map', got {outside_mask!r}.")
        self.outside_mask = outside_mask
        self.reference = reference
        self._reference_image: np.ndarray | None = None
        self._masked_reference: dict[tuple[int, int], np.ndarray] = {}

    def _reference_values(self, hw: tuple[int, int]) -> np.ndarray:
        if hw not in self._masked_reference:
            if self._reference_image is None:
                if isinstance(self.reference, (str, bytes)) or hasattr(self.reference, "__fspath__"):
                    ref = read_image(self.reference).array
                else:
                    ref = _float_tensor(self.reference).cpu().numpy()
                ref = np.asarray(ref, dtype=np.float32)
                if ref.ndim == 3 and ref.shape[0] == 1:
                    ref = ref[0]
                if ref.ndim != 2:
                    raise ValueError(f"{type(self).__name__}: reference must be a 2D image, got shape {ref.shape}.")
                self._reference_image = ref
            ref = self._reference_image
            if ref.shape != hw:
                ref = F.interpolate(
                    torch.from_numpy(ref)[None, None], size=hw, mode="bilinear", align_corners=False, antialias=True
                )[0, 0].numpy()
            mask = _otsu_mask(ref)
            if mask is None:
                raise ValueError(f"{type(self).__name__}: the reference image is constant.")
            self._masked_reference[hw] = ref[mask]
        return self._masked_reference[hw]

    def __call__(self, img):
        """Match ``img`` ``(C, H, W)``; returns float32 of the same kind."""
        from skimage.exposure import match_histograms

        _check_image(img, type(self).__name__)
        if self.reference is None:
            return _like(_float_tensor(img).clone(), img)
        x = _float_tensor(img).cpu().numpy().copy()
        ref_values = self._reference_values((x.shape[1], x.shape[2]))
        for channel in x:
            mask = _otsu_mask(channel)
            if mask is None:
                continue
            if self.outside_mask == "keep":
                channel[mask] = match_histograms(channel[mask], ref_values)
            else:
                channel[:] = _monotone_match(channel, channel[mask], ref_values)
        out = torch.from_numpy(x)
        if isinstance(img, torch.Tensor):
            out = out.to(img.device)
        return _like(out, img)


def _monotone_match(image: np.ndarray, source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map ``image`` by the quantile mapping that takes ``source`` values to ``reference`` values.

    Below/above the source range the mapping continues with slope 1, so it stays continuous and monotone.
    """
    q = np.linspace(0.0, 1.0, 1025)
    src_q, ref_q = np.quantile(source, q), np.quantile(reference, q)
    src_q = np.maximum.accumulate(src_q + np.arange(q.size) * 1e-9 * max(1.0, float(np.ptp(src_q))))
    out = np.interp(image, src_q, ref_q)
    low, high = image < src_q[0], image > src_q[-1]
    out[low] = image[low] - src_q[0] + ref_q[0]
    out[high] = image[high] - src_q[-1] + ref_q[-1]
    return out.astype(np.float32)


def _otsu_mask(image: np.ndarray) -> np.ndarray | None:
    """Object mask: Otsu threshold of the lightly smoothed image, closed and with holes filled.

    Smoothing, closing and filling make one solid region for the object (a hand, not speckles of
    bone), so histogram matching does not leave blotches where noisy pixels straddle the threshold.
    Returns ``None`` for a constant image or an empty mask.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    if image.min() == image.max():
        return None
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma=max(1.0, 0.005 * min(image.shape)))
    mask = smooth > threshold_otsu(smooth)
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
    return mask if mask.any() else None


class HistogramMatchd(MapTransform):
    """Dictionary version of :class:`HistogramMatch` (one cached reference for all keys)."""

    def __init__(
        self, keys: KeysCollection = ("image",), reference=None, outside_mask: str = "keep", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.matcher = HistogramMatch(reference, outside_mask)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.matcher(d[key])
        return d


class RobustNormalizeIntensity(Transform):
    """Map the ``lower``/``upper`` percentiles of the image to ``b_min``/``b_max`` (linearly).

    Independent of the bit depth: an 8-bit image and its x257 16-bit version give the same output.
    A constant image (equal percentiles) gives zeros.

    Args:
        lower, upper: percentiles in ``[0, 100]``, computed over all pixels and channels.
        b_min, b_max: output values of those percentiles.
        clip: clip the output to ``[b_min, b_max]``.
    """

    def __init__(
        self, lower: float = 1.0, upper: float = 99.0, b_min: float = -1.0, b_max: float = 1.0, clip: bool = False
    ) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}.")
        self.lower, self.upper = float(lower), float(upper)
        self.b_min, self.b_max = float(b_min), float(b_max)
        self.clip = clip

    def __call__(self, img):
        """Normalise ``img`` (any shape); returns float32 of the same kind."""
        x = _float_tensor(img)
        low, high = _percentiles(img if isinstance(img, torch.Tensor) else x.numpy(), (self.lower, self.upper))
        if not high - low > 1e-12 * max(1.0, abs(high), abs(low)):
            return _like(torch.zeros_like(x), img)
        scale = (self.b_max - self.b_min) / (high - low)
        out = (x - low) * scale + self.b_min
        if self.clip:
            out = out.clamp(min(self.b_min, self.b_max), max(self.b_min, self.b_max))
        return _like(out, img)


class RobustNormalizeIntensityd(MapTransform):
    """Dictionary version of :class:`RobustNormalizeIntensity`."""

    def __init__(
        self,
        keys: KeysCollection = ("image",),
        lower: float = 1.0,
        upper: float = 99.0,
        b_min: float = -1.0,
        b_max: float = 1.0,
        clip: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = RobustNormalizeIntensity(lower, upper, b_min, b_max, clip)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


class RandIntensityScaleShift(RandomizableTransform):
    """``image * scale + shift``, ``scale ~ U(scale_range)``, ``shift ~ U(shift_range)``, with probability ``prob``."""

    def __init__(
        self,
        prob: float = 1.0,
        scale_range: Sequence[float] = (0.75, 1.25),
        shift_range: Sequence[float] = (-0.25, 0.25),
    ) -> None:
        super().__init__(prob)
        self.scale_range = _range_pair(scale_range, "scale_range", symmetric=False)
        self.shift_range = _range_pair(shift_range, "shift_range", symmetric=True)
        self.scale, self.shift = 1.0, 0.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.scale = float(self.R.uniform(*self.scale_range))
        self.shift = float(self.R.uniform(*self.shift_range))

    def __call__(self, img, randomize: bool = True):
        """Apply to ``img`` (any shape); returns float32 of the same kind."""
        if randomize:
            self.randomize()
        x = _float_tensor(img)
        out = x * self.scale + self.shift if self._do_transform else x.clone()
        return _like(out, img)


class RandIntensityScaleShiftd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandIntensityScaleShift`: one draw for all ``keys``."""

    def __init__(
        self,
        keys: KeysCollection = ("image",),
        prob: float = 1.0,
        scale_range: Sequence[float] = (0.75, 1.25),
        shift_range: Sequence[float] = (-0.25, 0.25),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.intensity = RandIntensityScaleShift(1.0, scale_range, shift_range)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.intensity.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.intensity.randomize()
        for key in self.key_iterator(d):
            d[key] = self.intensity(d[key], randomize=False)
        return d


# ----------------------------------------------------------------------------------------------
# spatial augmentation


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
        self.rotate_range = _range_pair(rotate_range, "rotate_range", symmetric=True)
        self.scale_range = _range_pair(scale_range, "scale_range", symmetric=False)
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
        centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
        linear = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
        self.affine = _translation(*(centre + shift)) @ linear @ _translation(*(-centre))
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
            self._grid = _pixel_to_grid(in_xy, (h, w)).float()[None]
        return self._grid

    def _check_drawn(self, hw: Sequence[int]) -> None:
        if self.spatial_hw is None:
            raise RuntimeError(f"{type(self).__name__}: call randomize(spatial_hw) first.")
        if tuple(int(s) for s in hw) != self.spatial_hw:
            raise ValueError(f"{type(self).__name__}: drawn for size {self.spatial_hw}, got size {tuple(hw)}.")

    def transform_image(self, img):
        """Apply the current draw to ``img`` ``(C, H, W)``; float32 of the same kind."""
        _check_image(img, type(self).__name__)
        x = _float_tensor(img)
        if not self._do_transform:
            return _like(x.clone(), img)
        self._check_drawn(x.shape[-2:])
        grid = self._sampling_grid(x.device)
        out = F.grid_sample(x[None], grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)[0]
        return _like(out, img)

    def transform_points(self, points, max_iter: int = 20, tol: float = 1e-4):
        """Apply the current draw to ``points`` ``(N, 2)`` input pixels -> output pixels."""
        pts = _points_array(points, "points")
        if not self._do_transform:
            return _points_like(pts, points)
        if self.spatial_hw is None:
            raise RuntimeError(f"{type(self).__name__}: call randomize(spatial_hw) first.")
        present = np.isfinite(pts).all(axis=1)
        target = torch.from_numpy(apply_matrix(np.where(present[:, None], pts, 0.0), self.affine))
        field = self._displacement(torch.device("cpu"))
        out = target
        if field is not None and len(pts):
            # Newton on r(o) = o + u(o) - A p; the Jacobian of u from central differences (+-0.5 px)
            probes = torch.tensor([[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0], [0.0, 0.5], [0.0, -0.5]], dtype=torch.float64)
            out = target - _sample_field(field, target)
            for _ in range(max_iter):
                u = _sample_field(field, (out[None] + probes[:, None]).reshape(-1, 2)).reshape(5, -1, 2)
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
        return _points_like(result, points)

    def __call__(self, img, points=None, randomize: bool = True):
        """Transform ``img`` ``(C, H, W)`` and ``points`` ``(N, 2)`` (or None) with one draw.

        Returns ``(image, points)``.
        """
        _check_image(img, type(self).__name__)
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
        keys: KeysCollection = ("image",),
        points_keys: KeysCollection = ("landmarks",),
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


# ----------------------------------------------------------------------------------------------
# targets


class LandmarkHeatmap(Transform):
    """Gaussian target heatmaps and the landmark mask from points.

    Args:
        spatial_size: ``(H, W)`` of the heatmaps.
        sigma: px, scalar or one per landmark; gamma: peak value (see
            :func:`scripts.heatmap.gaussian_heatmaps`).
        points_spatial_size: ``(H, W)`` of the grid the points refer to, if different from
            ``spatial_size`` (e.g. 256x256 input, 64x64 heatmaps); the points are then mapped with
            ``coords.resize_matrix``.
    """

    def __init__(
        self,
        spatial_size: Sequence[int],
        sigma: float | Sequence[float] = 2.0,
        gamma: float = 100.0,
        points_spatial_size: Sequence[int] | None = None,
    ) -> None:
        self.spatial_size = tuple(int(s) for s in ensure_tuple(spatial_size))
        self.sigma = sigma
        self.gamma = float(gamma)
        self.points_spatial_size = None if points_spatial_size is None else tuple(ensure_tuple(points_spatial_size))

    def grid_points(self, points) -> np.ndarray:
        """``(N, 2)`` float64 points in heatmap pixels."""
        pts = _points_array(points, "points")
        if self.points_spatial_size is not None and self.points_spatial_size != self.spatial_size:
            pts = apply_matrix(pts, resize_matrix(self.points_spatial_size, self.spatial_size))
        return pts

    def mask(self, points):
        """``(N,)`` float32 (array, or tensor for tensor points): 1 = present and inside the heatmap grid."""
        mask = torch.from_numpy(landmark_mask(self.grid_points(points), self.spatial_size))
        return mask.to(points.device) if isinstance(points, torch.Tensor) else mask.numpy()

    def __call__(self, points):
        """``points`` ``(N, 2)`` -> ``(heatmaps (N, H, W) float32, mask (N,) float32)``.

        The heatmap of a masked landmark (missing or outside the grid) is all zero.
        """
        pts = torch.from_numpy(self.grid_points(points))
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
        points_key: str = "landmarks",
        heatmap_key: str = "heatmaps",
        mask_key: str = "landmarks_mask",
        *,
        spatial_size: Sequence[int],
        sigma: float | Sequence[float] = 2.0,
        gamma: float = 100.0,
        points_spatial_size: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(points_key, allow_missing_keys)
        self.heatmap_key = heatmap_key
        self.mask_key = mask_key
        self.generator = LandmarkHeatmap(spatial_size, sigma, gamma, points_spatial_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.heatmap_key], d[self.mask_key] = self.generator(d[key])
        return d


class LandmarkMaskd(MapTransform):
    """Write only the landmark mask ``(N,)`` float32 (1 = present and inside ``spatial_size``).

    For training where the loss draws its own targets. ``points_spatial_size`` as in
    :class:`LandmarkHeatmap`.
    """

    def __init__(
        self,
        points_key: str = "landmarks",
        mask_key: str = "landmarks_mask",
        *,
        spatial_size: Sequence[int],
        points_spatial_size: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(points_key, allow_missing_keys)
        self.mask_key = mask_key
        self.generator = LandmarkHeatmap(spatial_size, points_spatial_size=points_spatial_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.mask_key] = self.generator.mask(d[key])
        return d
