"""Trust flags of a prediction: is the image a radiograph the model can handle, is the output confident?

Every output of folder inference carries a per-image ``status`` (one of
:data:`scripts.writers.landmarks.STATUSES`), from the most serious finding:

* ``out_of_distribution``: the input is not what the model was trained on, whatever the network
  says: a DICOM ``Modality`` that is not a projection radiograph (not one of
  :data:`RADIOGRAPH_MODALITIES`, e.g. CT, MR, US, RTDOSE, SEG), a constant image, an image smaller
  than ``min_size`` pixels on a side, or a header spacing outside
  :data:`scripts.data.image_reader.PLAUSIBLE_SPACING_MM` (then the mm values are left out).
* ``low_confidence``: the median landmark confidence (heatmap peak / its training height) is below
  ``min_confidence``.
* ``ok``: neither.

The image checks run at load time on the decoded image (:func:`image_problems`, used by
:class:`scripts.transforms.io.LoadLandmarkImaged`); :class:`TrustStatusd` adds the confidence check in
the post-processing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from scripts.keys import LandmarkKeys

__all__ = ["RADIOGRAPH_MODALITIES", "PROBLEM_SEPARATOR", "image_problems", "TrustStatus", "TrustStatusd"]

#: DICOM modalities of projection radiographs (CR, DX, RF, XA, MG, panoramic PX, intra-oral IO) and
#: "other" (OT, e.g. secondary captures of scanned films). A file without ``Modality`` is not flagged.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RF", "XA", "MG", "PX", "IO", "OT")

#: Joins the problems of one image into the single string that travels in the sample (it collates
#: like any string) and into the CSV's ``status_reason`` cell.
PROBLEM_SEPARATOR = "; "


def image_problems(
    array: np.ndarray,
    modality: str | None = None,
    spacing_problem: str | None = None,
    min_size: int = 32,
) -> list[str]:
    """Why an image is out of the model's distribution (empty list: no reason found).

    Args:
        array: the decoded image ``(H, W)``, any grey values.
        modality: DICOM ``Modality`` or ``None`` (not DICOM, or absent: not checked).
        spacing_problem: :attr:`scripts.data.image_reader.ImageRecord.spacing_problem` (a header spacing that was ignored).
        min_size: smallest height and width, pixels, of an image the model can place landmarks in.
    """
    problems = []
    if modality is not None and modality.upper() not in RADIOGRAPH_MODALITIES:
        problems.append(f"DICOM modality {modality} is not a projection radiograph ({'/'.join(RADIOGRAPH_MODALITIES)})")
    array = np.asarray(array)
    if array.size and float(array.max()) == float(array.min()):
        problems.append(f"constant image (every pixel is {float(array.flat[0]):g})")
    if min(array.shape[-2:]) < min_size:
        problems.append(f"image of {array.shape[-2]}x{array.shape[-1]} px is smaller than {min_size} px on a side")
    if spacing_problem:
        problems.append(spacing_problem)
    return problems


class TrustStatus(Transform):
    """``(confidence (N,), image problems)`` -> ``(status, reasons)``.

    Args:
        min_confidence: a median landmark confidence below it gives ``low_confidence``.
    """

    def __init__(self, min_confidence: float = 0.2) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}.")
        self.min_confidence = float(min_confidence)

    def __call__(self, confidence, problems: Sequence[str] = ()) -> tuple[str, list[str]]:
        problems = [str(p) for p in problems if p]
        if problems:
            return "out_of_distribution", problems
        values = np.asarray(torch.as_tensor(confidence).detach().cpu(), dtype=np.float64).reshape(-1)
        values = values[np.isfinite(values)]
        median = float(np.median(values)) if values.size else 0.0
        if median < self.min_confidence:
            return "low_confidence", [f"median landmark confidence {median:.3f} is below {self.min_confidence:g}"]
        return "ok", []


class TrustStatusd(MapTransform):
    """Dictionary version of :class:`TrustStatus`.

    Reads the confidences ``d[key]`` ``(N,)`` and ``d[problems_key]`` (the image problems joined by
    :data:`PROBLEM_SEPARATOR`, as :class:`scripts.transforms.io.LoadLandmarkImaged` writes them; absent =
    none) and writes ``d[status_key]`` (str) and ``d[reasons_key]`` (list of str).
    """

    def __init__(
        self,
        keys: KeysCollection = LandmarkKeys.PRED_CONFIDENCE,
        problems_key: str = LandmarkKeys.IMAGE_PROBLEMS,
        status_key: str = LandmarkKeys.STATUS,
        reasons_key: str = LandmarkKeys.STATUS_REASONS,
        min_confidence: float = 0.2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.problems_key, self.status_key, self.reasons_key = str(problems_key), str(status_key), str(reasons_key)
        self.trust = TrustStatus(min_confidence)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        problems = d.get(self.problems_key) or ""
        problems = problems.split(PROBLEM_SEPARATOR) if isinstance(problems, str) else list(problems)
        for key in self.key_iterator(d):
            d[self.status_key], d[self.reasons_key] = self.trust(d[key], problems)
        return d
