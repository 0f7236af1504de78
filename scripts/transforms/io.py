"""Loading transforms: an image file with its frames and landmarks, landmarks from a label image.

A datalist item (docs/DESIGN.md) carries file paths; :class:`LoadLandmarkImaged` reads the image with
:func:`scripts.data.image_reader.read_image` and writes ``orig_hw``, ``spacing``, ``spacing_source``,
``net_from_orig`` and ``landmarks_orig`` (keys of :class:`scripts.keys.LandmarkKeys`). MONAI Label items
carry a label image instead of landmarks: :class:`LandmarksFromLabelImaged` decodes it with
:func:`scripts.writers.label_image.landmarks_from_label_image`, the one owner of that format.
Points follow :mod:`scripts.coords`: ``(x, y)`` original pixels, NaN rows for missing landmarks.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from scripts.data.image_reader import read_image
from scripts.keys import LandmarkKeys
from scripts.transforms.utils import points_array
from scripts.trust import PROBLEM_SEPARATOR, image_problems
from scripts.writers.images import downscale_image
from scripts.writers.label_image import landmarks_from_label_image

__all__ = ["LoadLandmarkImaged", "LabelImageToLandmarks", "LandmarksFromLabelImaged"]


class LoadLandmarkImaged(MapTransform):
    """Read the image of a datalist item with :func:`scripts.data.image_reader.read_image` and set up the frames.

    Writes ``d[key]`` = float32 ``(1, H, W)`` numpy array (grey values as in the file) and, from the
    first image key: ``orig_hw`` = ``[H, W]`` (int64), ``spacing`` = float32 ``(sx, sy)`` mm/px (the
    item's own spacing from the CSV if given, else the file header's, else ``[nan, nan]``),
    ``spacing_source`` (``"csv"``, the header field name, or ``"unknown"``), ``net_from_orig`` =
    identity (float64 ``(3, 3)``) and, if the item has landmarks (not at inference),
    ``landmarks_orig`` = a float32 copy of ``d[points_key]`` ``(N, 2)`` original pixels.
    Optionally (folder inference) also ``d[problems_key]`` = the image's out-of-distribution findings
    (:func:`scripts.trust.image_problems`, joined into one string, ``""`` = none) and
    ``d[preview_key]`` = the image shrunk to ``preview_max_size`` pixels on its longer side (float32
    ``(H', W')``, :func:`scripts.writers.images.downscale_image`), so that the overlay needs no second decoding.

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
        scripts.data.image_reader.ImageReadError: the file cannot be read (message names it).
        ValueError: bad spacing or landmarks shape (message names the file).
    """

    def __init__(
        self,
        keys: KeysCollection = LandmarkKeys.IMAGE,
        spacing_key: str = LandmarkKeys.SPACING,
        points_key: str = LandmarkKeys.LANDMARKS,
        orig_points_key: str = LandmarkKeys.LANDMARKS_ORIG,
        orig_hw_key: str = LandmarkKeys.ORIG_HW,
        source_key: str = LandmarkKeys.SPACING_SOURCE,
        matrix_key: str = LandmarkKeys.NET_FROM_ORIG,
        problems_key: str | None = None,
        preview_key: str | None = None,
        preview_max_size: int = 1024,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        # written keys as plain str (not LandmarkKeys members): samples stay loadable with weights_only=True
        self.problems_key = None if problems_key is None else str(problems_key)
        self.preview_key = None if preview_key is None else str(preview_key)
        self.preview_max_size = int(preview_max_size)
        self.spacing_key, self.points_key, self.orig_points_key = str(spacing_key), str(points_key), str(orig_points_key)
        self.orig_hw_key, self.source_key, self.matrix_key = str(orig_hw_key), str(source_key), str(matrix_key)

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
                    points = points_array(d[self.points_key], self.points_key)
                except ValueError as err:
                    raise ValueError(f"{record.path}: {err}") from None
                d[self.points_key] = points.astype(np.float32)
                d[self.orig_points_key] = points.astype(np.float32)
        return d



class LabelImageToLandmarks(Transform):
    """Landmarks from a label image with one region of value ``k + 1`` per landmark ``k`` (0 = background).

    Landmark ``k`` is the centroid of the pixels equal to ``k + 1`` (see
    :func:`scripts.writers.label_image.landmarks_from_label_image`, which inverts
    :func:`scripts.writers.label_image.landmark_label_image`). A value absent from the label gives a
    NaN row (missing landmark); values above ``num_landmarks`` are an error.

    Args:
        num_landmarks: number of landmarks ``N``.

    Input: ``(H, W)`` or ``(1, H, W)`` label array of whole numbers. Output: ``(N, 2)`` float32.
    """

    def __init__(self, num_landmarks: int) -> None:
        if int(num_landmarks) < 1:
            raise ValueError(f"LabelImageToLandmarks: num_landmarks must be >= 1, got {num_landmarks!r}.")
        self.num_landmarks = int(num_landmarks)

    def __call__(self, label) -> np.ndarray:
        return landmarks_from_label_image(label, self.num_landmarks)


class LandmarksFromLabelImaged(MapTransform):
    """Dictionary version of :class:`LabelImageToLandmarks` for datalist items ``{"image", "label"}``.

    MONAI Label's training task gives items whose ``label`` is the path of a label image of the same
    size as the image (e.g. the discs written by ``configs/inference.json``). Run after
    :class:`LoadLandmarkImaged`: for an item with a label path and no landmarks, it reads the label
    with :func:`scripts.data.image_reader.read_image`, checks its size against ``orig_hw``, and writes
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
        label_key: str = LandmarkKeys.LABEL,
        points_key: str = LandmarkKeys.LANDMARKS,
        orig_points_key: str = LandmarkKeys.LANDMARKS_ORIG,
        orig_hw_key: str = LandmarkKeys.ORIG_HW,
        image_key: str = LandmarkKeys.IMAGE,
    ) -> None:
        super().__init__(label_key, allow_missing_keys=True)
        self.converter = LabelImageToLandmarks(num_landmarks)
        self.label_key, self.points_key, self.orig_points_key = str(label_key), str(points_key), str(orig_points_key)
        self.orig_hw_key, self.image_key = str(orig_hw_key), str(image_key)

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

