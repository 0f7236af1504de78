"""3D Slicer markups (``.mrk.json``, schema v1.0.3) of one image's landmarks.

One ``Fiducial`` markup per image, one control point per landmark (label = landmark name,
``positionStatus`` ``"defined"`` for a found landmark and ``"undefined"`` for a missing one), the
confidence of every point as the measurement ``"confidence"`` (``controlPointValues``, one value per
control point, in the control points' order; NaN for missing points is written as ``-1``, since
JSON has no NaN), and the provenance (:mod:`scripts.provenance`) in the markup's ``description``
and in a ``"provenance"`` entry at the top level (extra properties are allowed by the schema).

Physical frame (positions, ``coordinateSystem`` ``"LPS"``): the one 3D Slicer gives the image
when it loads the file, i.e. ITK's header geometry (DICOM ``ImagePositionPatient`` and
``ImageOrientationPatient``, NIfTI/MHA/NRRD origin and direction; origin 0 and identity direction
for PNG/JPEG/TIFF and for DICOM without them), read with SimpleITK. A landmark ``(x, y)`` in
original pixels (:mod:`scripts.coords`: ``x`` = column, ``y`` = row, integers at pixel centres) is
at ``LPS = origin + direction @ (x * sx, y * sy, 0)``, where ``(sx, sy)`` is the bundle's spacing of
the image (the one of the JSON and CSV, mm/px). Without spacing ``(sx, sy) = (1, 1)`` and the
positions are in pixel units: ``coordinateUnits`` is then ``["{pixel}", "UCUM", "pixel"]`` instead
of ``"mm"``. Slicer converts LPS to its RAS display frame itself. Where ITK reads another spacing
from the header than the bundle uses (for DX images GDCM takes ``ImagerPixelSpacing``, else 1 mm,
and ignores ``PixelSpacing``), the provenance records it as ``header_spacing_itk`` (and the log at
INFO level), since Slicer may then display the image with that spacing.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scripts.writers.files import PathLike, write_text
from scripts.writers.landmarks import LandmarkResult

__all__ = [
    "MARKUPS_SCHEMA_URL",
    "PIXEL_UNITS",
    "ImageFrame",
    "image_frame",
    "points_to_lps",
    "markups_document",
    "write_markups_json",
]

logger = logging.getLogger(__name__)


#: the ``@schema`` of the files written (3D Slicer's markups schema v1.0.3).
MARKUPS_SCHEMA_URL = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
#: ``coordinateUnits`` of markups without known spacing (a UCUM annotation, as code / scheme / meaning).
PIXEL_UNITS = ["{pixel}", "UCUM", "pixel"]
MISSING_VALUE = -1.0


@dataclass
class ImageFrame:
    """The physical frame of a 2D image in LPS (as ITK and 3D Slicer read the file).

    Attributes:
        origin: ``(3,)`` LPS position of the centre of pixel ``(0, 0)``, mm.
        direction: ``(3, 3)``, column ``i`` = the LPS direction of image axis ``i`` (x = column, y = row, normal).
        source: ``"header"`` (from the file) or ``"default"`` (origin 0, identity direction).
        spacing: ``(sx, sy)`` mm/px as ITK reads the header (what Slicer displays the image with), or ``None``.
    """

    origin: np.ndarray
    direction: np.ndarray
    source: str
    spacing: tuple[float, float] | None = None


def image_frame(path: PathLike | None) -> ImageFrame:
    """The :class:`ImageFrame` of an image file from its header (SimpleITK, no pixel data read).

    Files that SimpleITK cannot read, and ``path=None``, get origin 0 and the identity direction.
    """
    default = ImageFrame(np.zeros(3), np.eye(3), "default")
    if path is None:
        return default
    try:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(os.fspath(path))
        reader.ReadImageInformation()
        dim = reader.GetDimension()
        origin = np.zeros(3)
        origin[:dim] = np.asarray(reader.GetOrigin(), dtype=np.float64)[:3]
        direction = np.eye(3)
        direction[:dim, :dim] = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
        spacing = tuple(float(v) for v in reader.GetSpacing()[:2])
    except Exception as err:  # no geometry in the header (or no ITK reader for it): default frame
        logger.info("%s: no ITK header geometry (%s); markups use origin 0 and identity direction", path, err)
        return default
    if not (np.isfinite(origin).all() and np.isfinite(direction).all()):
        return default
    is_default = np.allclose(origin, 0) and np.allclose(direction, np.eye(3))
    return ImageFrame(origin, direction, "default" if is_default else "header", spacing)


def points_to_lps(points_px: np.ndarray, spacing: Sequence[float] | None, frame: ImageFrame) -> np.ndarray:
    """``(N, 2)`` ``(x, y)`` original pixels -> ``(N, 3)`` LPS: ``origin + direction @ (x sx, y sy, 0)``.

    ``spacing`` ``(sx, sy)`` mm/px; ``None`` gives pixel units (``sx = sy = 1``). NaN rows stay NaN.
    """
    points = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    sx, sy = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    local = np.stack([points[:, 0] * sx, points[:, 1] * sy, np.zeros(len(points))], axis=1)
    return local @ np.asarray(frame.direction).T + np.asarray(frame.origin)


def _round(value: float, decimals: int = 4) -> float:
    return round(float(value), decimals)


def markups_document(
    result: LandmarkResult,
    landmark_names: Sequence[str],
    frame: ImageFrame,
    provenance: Mapping | None = None,
) -> dict:
    """The markups file of one image as a dictionary (see the module docstring for every field).

    Args:
        result: the image's landmarks (original pixels, confidence, spacing).
        landmark_names: ``N`` names, the control points' labels.
        frame: the image's physical frame (:func:`image_frame`).
        provenance: the run's provenance record (:func:`scripts.provenance.provenance_record`).
    """
    names = [str(n) for n in landmark_names]
    if len(names) != result.num_landmarks:
        raise ValueError(f"{result.image}: {len(names)} landmark names for {result.num_landmarks} landmarks.")
    lps = points_to_lps(result.points_px, result.spacing, frame)
    points, confidences = [], []
    for k, name in enumerate(names):
        found = bool(np.isfinite(lps[k]).all())
        confidence = float(result.confidence[k])
        points.append({
            "id": str(k + 1),
            "label": name,
            "description": f"landmark {k}, confidence {confidence:.3f}" if found else f"landmark {k}: not found",
            "associatedNodeID": "",
            "position": [_round(v) for v in lps[k]] if found else [0.0, 0.0, 0.0],
            "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": True,
            "visibility": found,
            "positionStatus": "defined" if found else "undefined",
        })
        confidences.append(_round(confidence) if found and math.isfinite(confidence) else MISSING_VALUE)
    record = dict(provenance or {})
    record["spacing_source"] = result.spacing_source
    record["frame_source"] = frame.source
    if frame.spacing is not None and result.spacing is not None and not np.allclose(frame.spacing, result.spacing):
        # e.g. a DX with PixelSpacing and ImagerPixelSpacing: ITK (and so Slicer) takes the latter
        record["header_spacing_itk"] = [_round(v, 6) for v in frame.spacing]
        logger.info(
            "%s: markups use the spacing %s (%s); ITK reads %s from the header, with which 3D Slicer may show the image",
            result.image, tuple(result.spacing), result.spacing_source, frame.spacing)
    units = "mm" if result.spacing is not None else PIXEL_UNITS
    markup = {
        "type": "Fiducial",
        "coordinateSystem": "LPS",
        "coordinateUnits": units,
        "locked": True,
        "fixedNumberOfControlPoints": True,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": result.num_landmarks,
        "name": os.path.basename(result.image),
        "description": "landmarks of " + result.image + "; provenance " + json.dumps(record, sort_keys=True),
        "controlPoints": points,
        "measurements": [{
            "name": "confidence",
            "enabled": False,
            "units": "",
            "description": "per control point: decoded heatmap peak / target height, in [0, 1]; -1 = not found",
            "printFormat": "%5.3f",
            "controlPointValues": confidences,
        }],
        "display": {"visibility": True, "pointLabelsVisibility": True, "textScale": 3.0, "glyphType": "Sphere3D"},
    }
    return {"@schema": MARKUPS_SCHEMA_URL, "markups": [markup], "provenance": record}


def write_markups_json(
    path: PathLike,
    result: LandmarkResult,
    landmark_names: Sequence[str],
    frame: ImageFrame,
    provenance: Mapping | None = None,
):
    """Write :func:`markups_document` as ``path`` (``<name>.mrk.json``), atomically."""
    document = markups_document(result, landmark_names, frame, provenance)
    return write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")
