"""The keys of the sample dictionaries that flow through this bundle's transforms, engines and writers.

Like :class:`monai.utils.CommonKeys`, each member is a ``str``, so ``LandmarkKeys.IMAGE == "image"`` and
configs may keep writing the plain string. Points follow :mod:`scripts.coords`: ``(x, y)`` pixels, NaN
rows for missing landmarks.
"""

from __future__ import annotations

from monai.utils import StrEnum

__all__ = ["LandmarkKeys"]


class LandmarkKeys(StrEnum):
    """Sample keys, with the value each one holds.

    Inputs (datalist items and loaded samples):

    - ``ID``: the image's identifier, a relative POSIX path or the CSV ``id``.
    - ``IMAGE``: a file path in the datalist; a ``(1, H, W)`` float tensor once loaded.
    - ``LABEL``: path of a landmark label image (alternative to ``LANDMARKS`` in datalists).
    - ``LANDMARKS``: ``(N, 2)`` points in the current (network after resizing) frame.
    - ``LANDMARKS_MASK``: ``(N,)`` 1.0 where the landmark is annotated and inside the grid, else 0.0.
    - ``LANDMARKS_ORIG``: ``(N, 2)`` points in original file pixels.
    - ``ORIG_HW``: ``(H, W)`` of the file as read.
    - ``SPACING``: ``(sx, sy)`` mm/px, NaN or None when unknown.
    - ``SPACING_SOURCE``: where the spacing came from (a DICOM tag, the CSV, ``"unknown"``).
    - ``NET_FROM_ORIG``: ``(3, 3)`` matrix mapping original pixels to network pixels.
    - ``IMAGE_PREVIEW``: a reduced ``(h, w)`` copy of the original image for overlays.
    - ``IMAGE_PROBLEMS``: reasons the image is outside what the model was trained on, joined.
    - ``HEATMAPS``: ``(N, H, W)`` training targets.

    Outputs:

    - ``PRED``: ``(N, H', W')`` predicted heatmaps.
    - ``PRED_POINTS`` / ``TRUE_POINTS``: ``(B, N, 2)`` points handed to metrics.
    - ``PRED_CONFIDENCE``: ``(N,)`` heatmap peak values.
    - ``PRED_LANDMARKS_ORIG``: ``(N, 2)`` predicted points in original pixels.
    - ``PRED_LANDMARKS_MM``: ``(N, 2)`` predicted points in mm, NaN when spacing is unknown.
    - ``STATUS`` / ``STATUS_REASONS``: trust flag (``ok``, ``low_confidence``, ``out_of_distribution``)
      and its reasons.
    """

    ID = "id"
    IMAGE = "image"
    LABEL = "label"
    LANDMARKS = "landmarks"
    LANDMARKS_MASK = "landmarks_mask"
    LANDMARKS_ORIG = "landmarks_orig"
    ORIG_HW = "orig_hw"
    SPACING = "spacing"
    SPACING_SOURCE = "spacing_source"
    NET_FROM_ORIG = "net_from_orig"
    IMAGE_PREVIEW = "image_preview"
    IMAGE_PROBLEMS = "image_problems"
    HEATMAPS = "heatmaps"
    PRED = "pred"
    PRED_POINTS = "pred_points"
    TRUE_POINTS = "true_points"
    PRED_CONFIDENCE = "pred_confidence"
    PRED_LANDMARKS_ORIG = "pred_landmarks_orig"
    PRED_LANDMARKS_MM = "pred_landmarks_mm"
    STATUS = "status"
    STATUS_REASONS = "status_reasons"
