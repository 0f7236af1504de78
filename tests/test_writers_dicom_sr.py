"""DICOM SR of one image's landmarks (scripts.writers.dicom_sr), written and read back with pydicom and highdicom."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from scripts.writers.dicom_sr import is_dicom, pixel_to_scoord, scoord_to_pixel, write_landmark_sr
from scripts.writers.landmarks import LandmarkResult
from tests.helpers import write_dicom

hd = pytest.importorskip("highdicom")
ROOT = Path(__file__).resolve().parents[1]

PROVENANCE = {"model_file": "model.pt", "model_sha256": "ab" * 32, "bundle_version": "0.2.0",
              "preprocessing_grid": {"height": 32, "width": 32, "keep_aspect": False}}


def text_items(item) -> list[tuple[str, str]]:
    """(concept name, text) of every TEXT content item below ``item``, recursively."""
    found = []
    for child in getattr(item, "ContentSequence", []):
        if child.ValueType == "TEXT":
            found.append((child.ConceptNameCodeSequence[0].CodeMeaning, child.TextValue))
        found += text_items(child)
    return found


def test_points_missing_landmarks_and_provenance(tmp_path):
    """Found landmarks are SCOORD POINTs at pixel centre + 0.5; a missing one is a group "Absent"
    without coordinates; the source has no patient/study type 2 attributes and stays unchanged."""
    source = write_dicom(tmp_path / "img", np.zeros((40, 64), np.uint16), PixelSpacing=[0.2, 0.1])
    before = (tmp_path / "img").read_bytes()
    points = np.array([[0.0, 0.0], [63.0, 39.0], [np.nan, np.nan], [10.25, 20.75]])
    result = LandmarkResult("img", (40, 64), points, [0.9, 0.5, 0.0, 0.7], (0.1, 0.2), "PixelSpacing", points * (0.1, 0.2))
    path = write_landmark_sr(tmp_path / "out" / "img.sr.dcm", source, result, ["a", "b", "c", "d"], PROVENANCE)
    assert (tmp_path / "img").read_bytes() == before

    raw = pydicom.dcmread(path)
    assert raw.Modality == "SR" and raw.SoftwareVersions == "0.2.0"
    sr = hd.sr.srread(path)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == ["a", "b", "d"]
    # DICOM puts (0, 0) at the top-left corner of the image: pixel centre (x, y) is (x + 0.5, y + 0.5)
    np.testing.assert_allclose([g.roi.value[0] for g in groups], [[0.5, 0.5], [63.5, 39.5], [10.75, 21.25]])
    assert [g.get_measurements()[0].value for g in groups] == pytest.approx([0.9, 0.5, 0.7])
    texts = text_items(raw)
    assert ("Algorithm Version", "0.2.0") in texts
    assert ("Algorithm Parameters", f"model_sha256={'ab' * 32}") in texts
    assert ("Algorithm Parameters", "spacing_source=PixelSpacing") in texts
    absent = [g for g in sr.content.get_image_measurement_groups() if str(g.tracking_identifier) == "c"]
    evaluation = absent[0].get_qualitative_evaluations()[0]
    assert evaluation.name.meaning == "Landmark presence" and evaluation.value.meaning == "Absent"
    assert not [g for g in sr.content.get_image_measurement_groups() if "lower limb" in str(g.tracking_identifier)]


def test_refuses_a_dicom_without_uids(tmp_path):
    source = write_dicom(tmp_path / "img.dcm", np.zeros((8, 8), np.uint16), StudyInstanceUID=None)
    result = LandmarkResult("img.dcm", (8, 8), [[1.0, 2.0]], [0.5], None, "unknown", [[np.nan, np.nan]])
    with pytest.raises(ValueError, match="img.dcm: the DICOM has no StudyInstanceUID"):
        write_landmark_sr(tmp_path / "img.sr.dcm", source, result, ["a"])
    assert not list(tmp_path.glob("*.sr.dcm*")) and not list(tmp_path.glob(".*"))


def test_is_dicom_and_coordinate_round_trip(tmp_path):
    assert is_dicom(write_dicom(tmp_path / "no_suffix", np.zeros((4, 4), np.uint16)))
    assert is_dicom(tmp_path / "named.dcm")  # by suffix, as scripts.data.image_reader
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert not is_dicom(tmp_path / "a.png")
    points = np.array([[1.25, -0.5], [np.nan, np.nan]])
    np.testing.assert_array_equal(scoord_to_pixel(pixel_to_scoord(points)), points)


def test_bundle_works_without_highdicom_and_mlflow(tmp_path):
    """As in the MONAI Label environment (pydicom 2, no highdicom, no MLflow): the inference modules
    import, and folder inference with SRs on stops at once with an error that says what to do."""
    code = (
        "import sys; sys.modules['highdicom'] = None; sys.modules['mlflow'] = None\n"
        "import scripts.inference, scripts.writers.dicom_sr, scripts.writers.slicer_markups, scripts.measurements\n"
        "try:\n"
        "    scripts.writers.dicom_sr.require_highdicom()\n"
        "except ImportError as err:\n"
        "    print('ERROR', err)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERROR DICOM SR output needs highdicom" in proc.stdout and "--write_sr false" in proc.stdout
