"""Post-processing transforms of landmark inference: heatmaps -> points -> original pixels and mm -> outputs.

Used as the ``postprocessing`` of ``configs/inference.json`` (folder inference, MONAI Label), in this order:

* :class:`DecodeLandmarks` / :class:`DecodeLandmarksd`: heatmaps ``pred`` ``(N, H', W')`` -> sub-pixel
  maxima ``(N, 2)`` ``(x, y)`` in network pixels and a confidence ``(N,)`` (:func:`scripts.heatmap.decode_heatmaps`).
* :class:`LandmarksToOriginal` / :class:`LandmarksToOriginald`: network pixels -> original pixels (through the
  preprocessing's ``net_from_orig``) and mm (through the spacing), axis order and pixel centres of
  :mod:`scripts.coords`.
* :func:`landmark_result`: the post-processed sample as a :class:`scripts.writers.LandmarkResult`.
* :class:`LandmarkLabelOutputd`: the bundle's post-processed output in the form MONAI Label's bundle tasks
  expect: ``pred`` becomes the label image of the predicted landmarks (disc of value ``k + 1`` per
  landmark) and ``result`` their coordinates (JSON).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from scripts.heatmap import decode_heatmaps, points_to_mm, points_to_original, resolve_decode_method
from scripts.writers import LandmarkResult, landmark_label_image, landmarks_document

__all__ = [
    "DecodeLandmarks",
    "DecodeLandmarksd",
    "LandmarksToOriginal",
    "LandmarksToOriginald",
    "landmark_result",
    "LandmarkLabelOutputd",
]


class DecodeLandmarks(Transform):
    """Heatmaps of one image -> sub-pixel maxima and a confidence per landmark.

    Args:
        gamma: height of the target Gaussians in training; the confidence is ``peak / gamma`` clipped
            to ``[0, 1]``.
        method: sub-pixel refinement of :func:`scripts.heatmap.decode_heatmaps` (``"parabola"`` or
            ``"gaussian_fit"``; the configs' ``decode_method``); ``None``: its default, the parabola.
    """

    def __init__(self, gamma: float = 100.0, method: str | None = None) -> None:
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma}.")
        self.gamma = float(gamma)
        self.method = resolve_decode_method(method)

    def __call__(self, heatmaps) -> tuple[np.ndarray, np.ndarray]:
        """``heatmaps`` ``(N, H, W)`` tensor or array -> ``(points (N, 2) float32 (x, y) heatmap px,
        confidence (N,) float32)``."""
        hm = torch.as_tensor(heatmaps.as_tensor() if hasattr(heatmaps, "as_tensor") else heatmaps)
        if hm.ndim != 3:
            raise ValueError(f"{type(self).__name__}: expected heatmaps (N, H, W), got shape {tuple(hm.shape)}.")
        points, peak = decode_heatmaps(hm.detach().float()[None], self.method)
        confidence = (peak[0] / self.gamma).clamp(0.0, 1.0)
        return points[0].cpu().numpy().astype(np.float32), confidence.cpu().numpy().astype(np.float32)


class DecodeLandmarksd(MapTransform):
    """Dictionary version of :class:`DecodeLandmarks`.

    Reads the heatmaps ``d[key]`` ``(N, H, W)`` and writes ``d[points_key]`` ``(N, 2)`` network pixels
    and ``d[confidence_key]`` ``(N,)``, decoded with ``method`` (see :class:`DecodeLandmarks`).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        points_key: str = "pred_landmarks",
        confidence_key: str = "pred_confidence",
        gamma: float = 100.0,
        method: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"{type(self).__name__}: exactly one heatmap key, got {self.keys}.")
        self.points_key = points_key
        self.confidence_key = confidence_key
        self.decoder = DecodeLandmarks(gamma, method)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.points_key], d[self.confidence_key] = self.decoder(d[key])
        return d


class LandmarksToOriginal(Transform):
    """Network-pixel points -> original pixels (through ``net_from_orig``) and mm (through the spacing)."""

    def __call__(self, points, net_from_orig, spacing=None) -> tuple[np.ndarray, np.ndarray]:
        """``points`` ``(N, 2)`` ``(x, y)`` network pixels, ``net_from_orig`` ``(3, 3)``, ``spacing`` ``(sx, sy)``
        mm/px (``None`` or the NaN pair when unknown) -> ``(original pixels (N, 2), mm (N, 2))``, float64,
        mm NaN when the spacing is unknown."""
        points = np.asarray(torch.as_tensor(points).cpu(), dtype=np.float64)
        matrix = np.asarray(torch.as_tensor(net_from_orig).cpu(), dtype=np.float64)
        spacing = np.full(2, np.nan) if spacing is None else np.asarray(torch.as_tensor(spacing).cpu(), np.float64)
        orig = points_to_original(points, matrix)
        return orig, points_to_mm(orig, spacing.reshape(2))


class LandmarksToOriginald(MapTransform):
    """Dictionary version of :class:`LandmarksToOriginal`.

    Writes ``d[orig_key]`` ``(N, 2)`` ``(x, y)`` original pixels and ``d[mm_key]`` ``(N, 2)`` mm
    (NaN when the spacing is the NaN pair, i.e. unknown), both float64.

    Args:
        keys: the points ``(N, 2)`` in network pixels (``DecodeLandmarksd``'s ``points_key``).
        orig_key, mm_key: keys written; for several ``keys`` they are suffixed with the key.
        matrix_key: the ``(3, 3)`` ``net_from_orig`` of the preprocessing.
        spacing_key: ``(sx, sy)`` mm/px, NaN pair when unknown (``LoadLandmarkImaged``).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred_landmarks",
        orig_key: str = "pred_landmarks_orig",
        mm_key: str = "pred_landmarks_mm",
        matrix_key: str = "net_from_orig",
        spacing_key: str = "spacing",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.orig_key, self.mm_key = orig_key, mm_key
        self.matrix_key, self.spacing_key = matrix_key, spacing_key
        self.converter = LandmarksToOriginal()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        several = len(self.keys) > 1
        for key in self.key_iterator(d):
            suffix = f"_{key}" if several else ""
            d[self.orig_key + suffix], d[self.mm_key + suffix] = self.converter(
                d[key], d[self.matrix_key], d.get(self.spacing_key))
        return d


def landmark_result(sample: Mapping, image_id: str) -> LandmarkResult:
    """The :class:`scripts.writers.LandmarkResult` of a post-processed sample.

    Reads ``orig_hw``, ``pred_landmarks_orig`` ``(N, 2)``, ``pred_landmarks_mm`` ``(N, 2)``,
    ``pred_confidence`` ``(N,)``, ``spacing`` (NaN pair when unknown), ``spacing_source`` and, where
    :class:`scripts.trust.TrustStatusd` ran, ``status`` and ``status_reasons`` (else ``"ok"``).
    """
    spacing = np.asarray(sample.get("spacing", (np.nan, np.nan)), dtype=np.float64).reshape(2)
    known = bool(np.isfinite(spacing).all())
    return LandmarkResult(
        image=image_id,
        image_hw=tuple(int(v) for v in np.asarray(sample["orig_hw"]).reshape(2)),
        points_px=sample["pred_landmarks_orig"],
        confidence=sample["pred_confidence"],
        spacing=(float(spacing[0]), float(spacing[1])) if known else None,
        spacing_source=str(sample.get("spacing_source", "unknown")) if known else "unknown",
        points_mm=sample["pred_landmarks_mm"],
        status=str(sample.get("status", "ok")),
        status_reasons=tuple(sample.get("status_reasons", ())),
    )


class LandmarkLabelOutputd(MapTransform):
    """Post-processed output: the label image of the predicted landmarks, plus their coordinates as JSON.

    Replaces ``d[label_key]`` (the heatmaps) with a uint8 label image of the original image's size,
    a disc of value ``k + 1`` and radius ``radius`` original pixels around landmark ``k``
    (:func:`scripts.writers.landmark_label_image`), and writes ``d[result_key]`` =
    :func:`scripts.writers.landmarks_document` (original pixels, mm, confidence; JSON-serialisable).

    The label array is indexed ``[x, y]``, shape ``(W, H)`` (a transposed view, no copy): the spatial
    order of arrays from MONAI's ``LoadImage``, which MONAI's and MONAI Label's image writers
    transpose back when saving, so the saved file is upright. This is the one place where the bundle's ``[row, col]`` arrays
    are converted (see :mod:`scripts.coords`); the coordinates in ``result`` are ``(x, y)`` pixels.

    Args:
        radius: disc radius, original pixels.
        landmark_names: the ``N`` names of the JSON (default ``landmark_00`` ...).
        label_key, result_key: keys written.
        image_path_keys: keys tried, in order, for the image name in the JSON (``id`` of the folder
            datalist, ``image_path`` of MONAI Label).
    """

    def __init__(
        self,
        radius: float = 5.0,
        landmark_names: Sequence[str] | None = None,
        label_key: str = "pred",
        result_key: str = "result",
        image_path_keys: Sequence[str] = ("id", "image_path"),
    ) -> None:
        super().__init__(label_key)
        self.radius = float(radius)
        self.landmark_names = None if landmark_names is None else list(landmark_names)
        self.label_key, self.result_key = label_key, result_key
        self.image_path_keys = tuple(image_path_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        name = next((str(d[k]) for k in self.image_path_keys if d.get(k) is not None), "")
        result = landmark_result(d, os.path.basename(name) if os.path.isabs(name) else name)
        d[self.label_key] = landmark_label_image(result.points_px, result.image_hw, self.radius).T
        d[self.result_key] = landmarks_document(result, self.landmark_names)
        return d
