"""3D Slicer markups (scripts.writers.slicer_markups) and the exports of folder inference.

The markups are validated with jsonschema against the required fields, types and enumerations of
3D Slicer's markups schema v1.0.3 (restated below; Slicer's file itself is not copied into this
repository). With ``SLICER_MARKUPS_SCHEMA=/path/to/markups-schema-v1.0.3.json`` (from Slicer's
``Modules/Loadable/Markups/Resources/Schema``) the files are validated against it as well.

The folder test runs the real inference config (with the ``configs/lower_limb.json`` overlay) on a DICOM and a PNG with a
network that draws heatmaps at known points, and checks the markups against the CSV, the DICOM SR
(pydicom / highdicom) against the same points, and the measurements in JSON, CSV and SR.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from scripts.coords import apply_matrix
from scripts.provenance import bundle_version, file_sha256
from scripts.writers.landmarks import LandmarkResult
from scripts.writers.slicer_markups import PIXEL_UNITS, ImageFrame, image_frame, markups_document, points_to_lps
from tests.helpers import write_dicom
from tests.test_inference import FixedPeakNet, workflow

ROOT = Path(__file__).resolve().parents[1]

_NUMBER3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
_CODE = {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}
#: required fields, types and enumerations of Slicer's markups schema v1.0.3, restated
MARKUPS_V1_0_3 = {
    "type": "object",
    "required": ["@schema", "markups"],
    "properties": {
        "@schema": {"type": "string"},
        "markups": {"type": "array", "items": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                "name": {"type": "string"},
                "coordinateSystem": {"enum": ["LPS", "RAS"]},
                "coordinateUnits": {"anyOf": [{"enum": ["mm", "um"]}, _CODE]},
                "locked": {"type": "boolean"},
                "fixedNumberOfControlPoints": {"type": "boolean"},
                "labelFormat": {"type": "string"},
                "controlPoints": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "label": {"type": "string"},
                        "description": {"type": "string"},
                        "associatedNodeID": {"type": "string"},
                        "position": _NUMBER3,
                        "orientation": {"type": "array", "items": {"type": "number"}, "minItems": 9, "maxItems": 9},
                        "selected": {"type": "boolean"},
                        "locked": {"type": "boolean"},
                        "visibility": {"type": "boolean"},
                        "positionStatus": {"enum": ["undefined", "preview", "defined"]},
                    },
                }},
                "display": {"type": "object"},
                "measurements": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "enabled": {"type": "boolean"},
                        "value": {"type": "number"},
                        "units": {"anyOf": [{"type": "string"}, _CODE]},
                        "description": {"type": "string"},
                        "printFormat": {"type": "string"},
                        "controlPointValues": {"type": "array", "items": {"type": "number"}},
                    },
                }},
            },
        }},
    },
}


def validate_markups(document: dict) -> None:
    jsonschema.validate(document, MARKUPS_V1_0_3)
    slicer_schema = os.environ.get("SLICER_MARKUPS_SCHEMA")
    if slicer_schema:
        jsonschema.validate(document, json.loads(Path(slicer_schema).read_text()))
    markup = document["markups"][0]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    values = markup["measurements"][0]["controlPointValues"]
    assert markup["measurements"][0]["name"] == "confidence" and len(values) == len(markup["controlPoints"])


def result_of(points, spacing, image="img.png", hw=(40, 64)):
    points = np.asarray(points, dtype=np.float64)
    mm = points * (np.nan if spacing is None else np.asarray(spacing))
    confidence = np.linspace(0.9, 0.1, len(points))
    source = "unknown" if spacing is None else "PixelSpacing"
    return LandmarkResult(image, hw, points, confidence, spacing, source, mm)


def test_positions_in_each_frame(tmp_path):
    points = np.array([[3.0, 4.0], [60.5, 39.0], [np.nan, np.nan]])
    # DICOM with ImagePositionPatient / ImageOrientationPatient: LPS = IPP + x sx row_dir + y sy col_dir
    dicom = write_dicom(tmp_path / "a.dcm", np.zeros((40, 64), np.uint16), PixelSpacing=[0.2, 0.1],
                        ImagePositionPatient=[10, 20, 30], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    frame = image_frame(dicom)
    assert frame.source == "header"
    lps = points_to_lps(points, (0.1, 0.2), frame)
    expected = np.array([10, 20, 30]) + points[:, :1] * 0.1 * np.array([0, 1, 0]) + points[:, 1:] * 0.2 * np.array([0, 0, -1])
    np.testing.assert_allclose(lps[:2], expected[:2], atol=1e-9)
    assert np.isnan(lps[2]).all()
    # NIfTI (RAS affine diag(sx, sy, 1)) is LPS (-x sx, -y sy, 0), as ITK and Slicer read it
    nib.save(nib.Nifti1Image(np.zeros((64, 40, 1), np.float32), np.diag([0.1, 0.2, 1.0, 1.0])), tmp_path / "b.nii.gz")
    np.testing.assert_allclose(points_to_lps(points[:2], (0.1, 0.2), image_frame(tmp_path / "b.nii.gz")),
                               [[-0.3, -0.8, 0], [-6.05, -7.8, 0]], atol=1e-9)
    # PNG: origin 0, identity direction; without spacing, pixel units
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(tmp_path / "c.png")
    frame = image_frame(tmp_path / "c.png")
    assert frame.source == "default"
    np.testing.assert_allclose(points_to_lps(points[:2], None, frame), [[3, 4, 0], [60.5, 39, 0]])
    assert image_frame(tmp_path / "no_such_file.png").source == "default"
    # a DX with PixelSpacing and ImagerPixelSpacing: ITK takes the latter, the markups say so
    both = write_dicom(tmp_path / "d.dcm", np.zeros((40, 64), np.uint16), PixelSpacing=[0.2, 0.1],
                       ImagerPixelSpacing=[0.3, 0.3])
    frame = image_frame(both)
    document = markups_document(result_of(points[:2], (0.1, 0.2)), ["a", "b"], frame)
    assert frame.spacing == (0.3, 0.3) and document["provenance"]["header_spacing_itk"] == [0.3, 0.3]
    # ... and ITK ignores the PixelSpacing of a DX without ImagerPixelSpacing (1 mm); NIfTI agrees
    assert image_frame(dicom).spacing == (1.0, 1.0)
    nifti = markups_document(result_of(points[:2], (0.1, 0.2)), ["a", "b"], image_frame(tmp_path / "b.nii.gz"))
    assert "header_spacing_itk" not in nifti["provenance"]


def test_markups_document_fields():
    points = np.array([[3.0, 4.0], [np.nan, np.nan], [10.25, 20.5]])
    provenance = {"model_file": "model.pt", "model_sha256": "0" * 64, "bundle_version": "9.9.9",
                  "preprocessing_grid": {"height": 32, "width": 32, "keep_aspect": False}}
    frame = ImageFrame(np.zeros(3), np.eye(3), "default")
    document = markups_document(result_of(points, (0.5, 0.25)), ["a", "b", "c"], frame, provenance)
    validate_markups(document)
    markup = document["markups"][0]
    assert markup["coordinateUnits"] == "mm"
    cps = markup["controlPoints"]
    assert [cp["label"] for cp in cps] == ["a", "b", "c"]
    assert [cp["positionStatus"] for cp in cps] == ["defined", "undefined", "defined"]
    assert cps[2]["position"] == [5.125, 5.125, 0.0] and cps[1]["visibility"] is False
    assert markup["measurements"][0]["controlPointValues"] == [0.9, -1.0, 0.1]
    assert document["provenance"]["spacing_source"] == "PixelSpacing"
    assert document["provenance"]["model_sha256"] == "0" * 64 and "9.9.9" in markup["description"]
    # unknown spacing: pixel units, stated as a code triplet the schema allows
    unknown = markups_document(result_of(points, None), ["a", "b", "c"], frame)
    validate_markups(unknown)
    assert unknown["markups"][0]["coordinateUnits"] == PIXEL_UNITS
    assert unknown["markups"][0]["controlPoints"][2]["position"] == [10.25, 20.5, 0.0]
    with pytest.raises(ValueError, match="2 landmark names for 3"):
        markups_document(result_of(points, None), ["a", "b"], frame)


# ----------------------------------------------------------------------------------------------
# folder inference: markups for every image, SR for DICOM, lower-limb measurements everywhere

LIMB_HW = (96, 40)
LIMB_SPACING = (0.9, 1.1)  # (sx, sy) mm/px; DICOM PixelSpacing is [sy, sx]


def read_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["image"]: row for row in csv.DictReader(f)}


def test_folder_inference_exports(tmp_path):
    import highdicom as hd
    import pydicom

    from scripts.writers.dicom_sr import scoord_to_pixel
    from scripts.measurements import LowerLimbMeasurements

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4000, LIMB_HW).astype(np.uint16)
    dicom = write_dicom(inp / "leg.dcm", pixels, PixelSpacing=[LIMB_SPACING[1], LIMB_SPACING[0]],
                        StudyInstanceUID=pydicom.uid.generate_uid(), SeriesInstanceUID=pydicom.uid.generate_uid(),
                        PatientID="P1", PatientName="Test^Leg")
    Image.fromarray((pixels // 16).astype(np.uint8)).save(inp / "leg.png")
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"stands for the weights")  # the provenance hashes this file

    grid = (32, 32)  # SMALL's grid, letterboxed by the overlay: the image spans x in [9.3, 22.7]
    # hips, knees, ankles (right leg on the image's left) in network pixels
    points_net = np.array([[11.2, 3.1], [11.9, 15.6], [11.4, 28.3], [19.3, 3.0], [18.6, 15.2], [19.1, 28.6]])
    wf = workflow(inp, out, ["configs/lower_limb.json"], allow_random_weights=True, ckpt_path=str(checkpoint),
                  landmark_sd_px=1.5)
    runner = wf.evaluator
    runner.network, runner.ckpt_path = FixedPeakNet(points_net), None  # runs FixedPeakNet as it is
    summary = runner.run()
    assert sorted(summary["succeeded"]) == ["leg.dcm", "leg.png"] and not summary["failed"]

    net_from_orig = np.asarray(wf.dataset[0]["net_from_orig"], dtype=np.float64)  # the preprocessing's letterbox
    expected_px = apply_matrix(points_net, np.linalg.inv(net_from_orig))
    rows = read_rows(out / "landmarks.csv")
    provenance = {"model_file": "weights.pt", "model_sha256": file_sha256(checkpoint),
                  "bundle_version": bundle_version(ROOT / "configs" / "metadata.json")}
    for image in ("leg.dcm", "leg.png"):
        row = rows[image]
        csv_px = np.array([[float(row[f"landmark_{k:02d}_x"]), float(row[f"landmark_{k:02d}_y"])] for k in range(6)])
        np.testing.assert_allclose(csv_px, expected_px, atol=0.05)
        for key, value in provenance.items():
            assert row[key] == value
        assert row["preprocessing_grid"] == "32x32 letterboxed"

        # markups: valid, one control point per landmark, positions = CSV pixels in the image's frame
        document = json.loads((out / "markups" / f"{image}.mrk.json").read_text())
        validate_markups(document)
        markup = document["markups"][0]
        spacing = LIMB_SPACING if image == "leg.dcm" else None
        assert markup["coordinateUnits"] == ("mm" if spacing else PIXEL_UNITS)
        positions = np.array([cp["position"] for cp in markup["controlPoints"]])
        scale = np.array(spacing or (1.0, 1.0))
        np.testing.assert_allclose(positions[:, :2], csv_px * scale, atol=1e-3)
        values = markup["measurements"][0]["controlPointValues"]
        assert values == pytest.approx([float(row[f"landmark_{k:02d}_confidence"]) for k in range(6)], abs=1e-4)
        assert document["provenance"]["spacing_source"] == row["spacing_source"]
        assert document["provenance"]["model_sha256"] == provenance["model_sha256"]

        # measurements in the JSON and the CSV, equal to those of the CSV points
        landmarks = json.loads((out / "landmarks" / f"{image}.json").read_text())
        assert landmarks["provenance"]["bundle_version"] == provenance["bundle_version"]
        expected = LowerLimbMeasurements(1.5)(csv_px, spacing)
        assert landmarks["measurements"]["right"]["hka_angle_deg"]["value"] == pytest.approx(
            expected["right"]["hka_angle_deg"]["value"], abs=0.01)
        assert float(row["right_hka_angle_deg"]) == pytest.approx(expected["right"]["hka_angle_deg"]["value"], abs=0.01)
        assert float(row["right_hka_angle_deg_sd"]) > 0
        if spacing:
            truth = LowerLimbMeasurements()(expected_px, spacing)
            assert float(row["leg_length_difference_mm"]) == pytest.approx(
                truth["leg_length_difference_mm"]["value"], abs=0.2)
            for side in ("right", "left"):
                assert abs(float(row[f"{side}_hka_angle_deg"]) - truth[side]["hka_angle_deg"]["value"]) <= 0.5
                assert abs(float(row[f"{side}_leg_length_mm"]) - truth[side]["leg_length_mm"]["value"]) <= 1.0
        else:
            assert row["right_leg_length_mm"] == "" and row["leg_length_difference_mm"] == ""

    # SR only for the DICOM input; every point read back; references the source image
    assert sorted(p.name for p in (out / "sr").iterdir()) == ["leg.dcm.sr.dcm"]
    source = pydicom.dcmread(dicom)
    sr = hd.sr.srread(out / "sr" / "leg.dcm.sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == "P1"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == [f"landmark_{k:02d}" for k in range(6)]
    row = rows["leg.dcm"]
    for k, group in enumerate(groups):
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POINT
        np.testing.assert_allclose(scoord_to_pixel(group.roi.value)[0],
                                   [float(row[f"landmark_{k:02d}_x"]), float(row[f"landmark_{k:02d}_y"])], atol=1e-3)
        referenced = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        confidence = group.get_measurements()[0]
        assert confidence.name.meaning == "Landmark detection confidence"
        assert confidence.value == pytest.approx(float(row[f"landmark_{k:02d}_confidence"]), abs=1e-4)
    limb = [g for g in sr.content.get_image_measurement_groups() if str(g.tracking_identifier) == "lower limb measurements"]
    values = {m.name.value: m.value for m in limb[0].get_measurements()}
    assert values["right_hka_angle_deg"] == pytest.approx(float(row["right_hka_angle_deg"]), abs=1e-3)
    assert values["leg_length_difference_mm"] == pytest.approx(float(row["leg_length_difference_mm"]), abs=1e-3)
    assert float(row["right_leg_length_mm"]) == pytest.approx(values["right_leg_length_mm"], abs=1e-3)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left


def test_mixed_folder_through_the_cli_writes_markups_and_srs(tmp_path):
    """The CLI on DICOM (with and without suffix), PNG, JPEG and MHA inputs: a valid markups file for
    every image, with the CSV's points in its frame, and an SR for every DICOM input, for no other."""
    import subprocess
    import sys

    import highdicom as hd

    from scripts.writers.dicom_sr import scoord_to_pixel
    from tests.helpers import tiny_checkpoint
    from tests.test_inference import make_mixed_folder

    inp, out = tmp_path / "in", tmp_path / "out"
    good, _, _ = make_mixed_folder(inp)
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
        "--bundle_root", ".", "--dataset_dir", str(inp), "--output_dir", str(out), "--ckpt_path", str(checkpoint),
        "--num_filters", "4", "--network_def#sc_num_filters", "4", "--spatial_size", "[32, 32]",
    ]
    proc = subprocess.run(command, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(out / "landmarks.csv")
    assert set(rows) == good
    dicoms = {"dicom/spaced.dcm", "dicom/no_suffix"}
    sha = file_sha256(checkpoint)
    for image in good:
        row = rows[image]
        assert row["model_sha256"] == sha and row["preprocessing_grid"] == "32x32"
        document = json.loads((out / "markups" / f"{image}.mrk.json").read_text())
        validate_markups(document)
        markup = document["markups"][0]
        assert len(markup["controlPoints"]) == 37 and document["provenance"]["model_sha256"] == sha
        px = np.array([[float(row[f"landmark_{k:02d}_x"]), float(row[f"landmark_{k:02d}_y"])] for k in range(37)])
        spacing = None if row["spacing_x_mm"] == "" else (float(row["spacing_x_mm"]), float(row["spacing_y_mm"]))
        expected = points_to_lps(px, spacing, image_frame(inp / image))
        np.testing.assert_allclose([cp["position"] for cp in markup["controlPoints"]], expected, atol=2e-3)
        assert markup["coordinateUnits"] == ("mm" if spacing else PIXEL_UNITS)
        sr_path = out / "sr" / f"{image}.sr.dcm"
        assert sr_path.is_file() == (image in dicoms)
        if image in dicoms:
            groups = hd.sr.srread(sr_path).content.get_planar_roi_measurement_groups()
            np.testing.assert_allclose([scoord_to_pixel(g.roi.value)[0] for g in groups], px, atol=1e-3)
    # the MHA's header spacing puts its markups in mm
    assert rows["volume.mha"]["spacing_source"] == "header"
