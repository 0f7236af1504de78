"""DICOM Structured Report of one DICOM image's landmarks (Comprehensive SR, TID 1500), with ``highdicom``.

Written only for DICOM inputs (it references the source image by its Study, Series and SOP Instance
UIDs, which other formats do not have). Content of the TID 1500 "Imaging Measurement Report":

* per found landmark, a TID 1410 planar ROI group: tracking identifier = the landmark name, an
  image region ``SCOORD`` of graphic type ``POINT`` on the source image, and the measurement
  "Landmark detection confidence" (unit ``1``, in ``[0, 1]``);
* per missing landmark, a TID 1501 group with the landmark name and the qualitative evaluation
  "Landmark presence" = Absent (SCT 2667000) and no coordinates;
* for the ``lower_limb`` preset, a TID 1501 group "lower limb measurements" with the hip-knee-ankle
  angles (deg), mechanical axis deviations (deg), leg lengths (mm) and leg-length difference (mm) of
  :mod:`scripts.measurements` (values that are unknown are left out);
* provenance: an algorithm identification (name, bundle version, parameters: model file and
  sha256, preprocessing grid, spacing source) on every group, which covers the measurements in it (once
  per group, not repeated on each confidence: a third fewer content items to build and write); the
  lower-limb measurements carry it too; the bundle version also in ``SoftwareVersions``.

SCOORD coordinates follow DICOM (PS3.3 C.18.6.1.2): ``(column, row)`` with ``(0, 0)`` the top-left
corner of the top-left pixel, so the centre of pixel ``(x, y)`` of :mod:`scripts.coords` is
``(x + 0.5, y + 0.5)``. Codes that no public terminology has (landmark confidence, the lower-limb
quantities) use the private coding scheme ``99XRLM``.

``highdicom`` (which needs ``pydicom >= 3``) is imported on first use, so the other outputs work
without it (e.g. in the MONAI Label environment, which keeps pydicom 2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from scripts.writers.files import PathLike, atomic_write
from scripts.writers.landmarks import LandmarkResult

__all__ = ["is_dicom", "require_highdicom", "PRIVATE_SCHEME", "pixel_to_scoord", "scoord_to_pixel", "landmark_report", "write_landmark_sr"]


PRIVATE_SCHEME = "99XRLM"
_ALGORITHM_NAME = "X-ray landmark detection bundle"
#: meaning of the lower-limb quantities of scripts.measurements, and their units
_LOWER_LIMB_QUANTITIES = {
    "hka_angle_deg": ("Hip-knee-ankle angle", "deg"),
    "mechanical_axis_deviation_deg": ("Mechanical axis deviation (varus positive)", "deg"),
    "leg_length_mm": ("Leg length, femoral head to ankle", "mm"),
}


def is_dicom(path: PathLike) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm``/``.dicom`` suffix or the ``DICM`` magic (as :mod:`scripts.data.image_reader`)."""
    from pydicom.misc import is_dicom as has_dicom_magic

    from scripts.data.image_reader import image_suffix

    if image_suffix(path) in (".dcm", ".dicom"):
        return True
    try:
        return has_dicom_magic(os.fspath(path))
    except OSError:
        return False


def require_highdicom() -> None:
    """Raise an ``ImportError`` that says what to do when ``highdicom`` cannot be imported."""
    try:
        import highdicom  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"DICOM SR output needs highdicom (pip install -r requirements.txt; it needs pydicom >= 3): {err}. "
            "Pass --write_sr false to skip the SR files."
        ) from err


def pixel_to_scoord(points_px: np.ndarray) -> np.ndarray:
    """``(N, 2)`` ``(x, y)`` bundle pixels (centres at integers) -> DICOM SCOORD ``(column, row)`` (centres at +0.5)."""
    return np.asarray(points_px, dtype=np.float64) + 0.5


def scoord_to_pixel(graphic_data: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pixel_to_scoord`."""
    return np.asarray(graphic_data, dtype=np.float64) - 0.5


#: type 2 patient and study attributes that an SR copies from its evidence; absent ones are added empty
_TYPE2_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "StudyID", "AccessionNumber", "ReferringPhysicianName")


def _with_type2_attributes(source_ds):
    """A copy of the source header with the absent type 2 attributes of :data:`_TYPE2_ATTRIBUTES` empty."""
    import copy

    ds = copy.deepcopy(source_ds)
    for keyword in _TYPE2_ATTRIBUTES:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _code(value: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, PRIVATE_SCHEME, meaning)


def _algorithm(provenance: Mapping, spacing_source: str):
    import highdicom as hd

    grid = provenance.get("preprocessing_grid") or {}
    parameters = [
        f"model_file={provenance.get('model_file')}",
        f"model_sha256={provenance.get('model_sha256')}",
        f"preprocessing_grid={grid.get('height')}x{grid.get('width')} keep_aspect={grid.get('keep_aspect')}",
        f"spacing_source={spacing_source}",
    ]
    return hd.sr.AlgorithmIdentification(
        name=_ALGORITHM_NAME, version=str(provenance.get("bundle_version", "unknown")), parameters=parameters)


def _lower_limb_group(measurements: Mapping, algorithm, source_ds):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    units = {"deg": codes.UCUM.Degree, "mm": codes.UCUM.Millimeter}
    items = []
    for side in ("right", "left"):
        for key, (meaning, unit) in _LOWER_LIMB_QUANTITIES.items():
            value = measurements[side][key]["value"]
            if value is None:
                continue
            items.append(hd.sr.Measurement(
                name=_code(f"{side}_{key}", f"{meaning}, {side}"), value=float(value), unit=units[unit],
                algorithm_id=algorithm))
    difference = measurements["leg_length_difference_mm"]["value"]
    if difference is not None:
        items.append(hd.sr.Measurement(
            name=_code("leg_length_difference_mm", "Leg length difference, right minus left"),
            value=float(difference), unit=codes.UCUM.Millimeter, algorithm_id=algorithm))
    if not items:
        return None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lower limb measurements"),
        referenced_real_world_value_map=None,
        algorithm_id=algorithm,
        measurements=items,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source_ds)],
    )


def landmark_report(
    source_ds,
    result: LandmarkResult,
    landmark_names: Sequence[str],
    provenance: Mapping | None = None,
    measurements: Mapping | None = None,
):
    """The Comprehensive SR (a ``highdicom.sr.ComprehensiveSR`` dataset) of one DICOM image.

    Args:
        source_ds: the source image's pydicom dataset (header is enough).
        result: its landmarks (original pixels, confidence, spacing source).
        landmark_names: ``N`` names (tracking identifiers).
        provenance: the run's provenance record (:func:`scripts.provenance.provenance_record`).
        measurements: lower-limb measurements (:class:`scripts.measurements.LowerLimbMeasurements`), or ``None``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    provenance = dict(provenance or {})
    names = [str(n) for n in landmark_names]
    if len(names) != result.num_landmarks:
        raise ValueError(f"{result.image}: {len(names)} landmark names for {result.num_landmarks} landmarks.")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not source_ds.get(keyword):
            raise ValueError(
                f"{result.image}: the DICOM has no {keyword}, so no SR can reference it (--write_sr false skips SRs).")
    source_ds = _with_type2_attributes(source_ds)
    algorithm = _algorithm(provenance, result.spacing_source)
    source_image = hd.sr.SourceImageForRegion.from_source_image(source_ds)
    scoords = pixel_to_scoord(result.points_px)
    confidence_name = _code("landmark_confidence", "Landmark detection confidence")
    landmark = Code("91723000", "SCT", "Anatomical structure")
    groups = []
    for k, name in enumerate(names):
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name)
        if np.isfinite(scoords[k]).all():
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=scoords[k][None], source_image=source_image)
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_region=region, finding_type=landmark,
                algorithm_id=algorithm,
                measurements=[hd.sr.Measurement(
                    name=confidence_name, value=float(result.confidence[k]), unit=codes.UCUM.NoUnits)],
            ))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=landmark, algorithm_id=algorithm,
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                    name=_code("landmark_presence", "Landmark presence"), value=codes.SCT.Absent)],
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source_ds)],
            ))
    if measurements is not None:
        group = _lower_limb_group(measurements, algorithm, source_ds)
        if group is not None:
            groups.append(group)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=_ALGORITHM_NAME, model_name=str(provenance.get("model_file"))))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=Code("363680008", "SCT", "Radiographic imaging procedure"),
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source_ds],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=int(source_ds.get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="X-ray landmark bundle",
        series_description="landmarks",
    )
    sr.ContentDescription = f"Landmarks, bundle {provenance.get('bundle_version', 'unknown')}"[:64]
    sr.SoftwareVersions = str(provenance.get("bundle_version", "unknown"))
    return sr


def write_landmark_sr(path: PathLike, source_path: PathLike, result: LandmarkResult, landmark_names: Sequence[str],
                      provenance: Mapping | None = None, measurements: Mapping | None = None):
    """Read the header of ``source_path`` and write :func:`landmark_report` to ``path`` atomically."""
    import pydicom

    source_ds = pydicom.dcmread(os.fspath(source_path), stop_before_pixels=True, force=True)
    sr = landmark_report(source_ds, result, landmark_names, provenance, measurements)
    return atomic_write(path, lambda tmp: sr.save_as(tmp, enforce_file_format=True))
