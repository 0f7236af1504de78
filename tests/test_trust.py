"""Trust flags (scripts.trust): image problems found at load time, the status from them and the confidences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.data.image_reader import read_image
from scripts.transforms.io import LoadLandmarkImaged
from scripts.trust import PROBLEM_SEPARATOR, TrustStatus, TrustStatusd, image_problems
from tests.helpers import write_dicom


def _radiograph(hw=(64, 48)) -> np.ndarray:
    rows, cols = np.mgrid[: hw[0], : hw[1]]
    return (1000 + 800 * np.sin(cols / 7.0) * np.cos(rows / 5.0)).astype(np.uint16)


def test_image_problems():
    image = _radiograph()
    assert image_problems(image, "DX") == [] and image_problems(image, None) == [] and image_problems(image, "ot") == []
    assert image_problems(image, "CT") == ["DICOM modality CT is not a projection radiograph (CR/DX/RF/XA/MG/PX/IO/OT)"]
    assert image_problems(np.full((64, 64), 7.0)) == ["constant image (every pixel is 7)"]
    tiny = image_problems(np.zeros((1, 1)))
    assert "constant image (every pixel is 0)" in tiny and "image of 1x1 px is smaller than 32 px on a side" in tiny
    assert image_problems(image, spacing_problem="spacing ignored") == ["spacing ignored"]


def test_trust_status_order_and_confidence_rule():
    trust = TrustStatus(min_confidence=0.3)
    assert trust(np.array([0.9, 0.8, 0.1])) == ("ok", [])
    status, reasons = trust(torch.tensor([0.9, 0.2, 0.1]))
    assert status == "low_confidence" and reasons == ["median landmark confidence 0.200 is below 0.3"]
    assert trust(np.array([np.nan, np.nan]))[0] == "low_confidence"
    # a problem of the image outranks any confidence
    assert trust(np.ones(3), ["constant image"]) == ("out_of_distribution", ["constant image"])
    with pytest.raises(ValueError, match="min_confidence"):
        TrustStatus(1.5)


def test_load_then_status_on_real_files(tmp_path):
    """LoadLandmarkImaged records the problems of a CT slice, a constant image and an absurd spacing;
    TrustStatusd turns them into the status; a DX radiograph with good peaks is ok."""
    files = {
        "dx": write_dicom(tmp_path / "dx.dcm", _radiograph(), PixelSpacing=[0.15, 0.15]),
        "ct": write_dicom(tmp_path / "ct.dcm", _radiograph(), Modality="CT", RescaleIntercept=-1024,
                          PixelSpacing=[0.7, 0.7]),
        "constant": write_dicom(tmp_path / "flat.dcm", np.full((64, 64), 300, np.uint16)),
        "absurd": write_dicom(tmp_path / "absurd.dcm", _radiograph(), PixelSpacing=[1e30, 1e30]),
    }
    load = LoadLandmarkImaged("image", problems_key="image_problems", preview_key="preview", preview_max_size=16)
    status = TrustStatusd("confidence", problems_key="image_problems", min_confidence=0.2)
    found = {}
    for name, path in files.items():
        sample = load({"image": path})
        assert isinstance(sample["image_problems"], str)  # collates like any string
        assert max(sample["preview"].shape) == 16 and sample["preview"].dtype == np.float32
        found[name] = status({**sample, "confidence": np.full(37, 0.9, np.float32)})
    assert found["dx"]["status"] == "ok" and found["dx"]["status_reasons"] == []
    assert found["ct"]["status"] == "out_of_distribution" and "modality CT" in found["ct"]["status_reasons"][0]
    assert found["constant"]["status"] == "out_of_distribution"
    assert found["constant"]["status_reasons"] == ["constant image (every pixel is 300)"]
    assert found["absurd"]["status"] == "out_of_distribution"
    assert np.isnan(found["absurd"]["spacing"]).all() and found["absurd"]["spacing_source"] == "unknown"
    assert "outside the plausible" in found["absurd"]["status_reasons"][0]
    assert PROBLEM_SEPARATOR not in found["absurd"]["status_reasons"][0]
    assert read_image(files["ct"]).modality == "CT"
