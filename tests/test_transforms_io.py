"""Tests of scripts.transforms.io: loading images with their frames and landmarks, landmarks from label images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from PIL import Image

from scripts.data.image_reader import ImageReadError
from scripts.heatmap import decode_heatmaps, points_to_original
from scripts.transforms.intensity import RobustNormalizeIntensityd
from scripts.transforms.io import LoadLandmarkImaged
from scripts.transforms.spatial import ResizeWithLandmarksd
from scripts.transforms.targets import LandmarkHeatmapd
from tests.helpers import blob_image, centroid, write_dicom, write_png16


def test_load_png16_without_spacing(tmp_path):
    pixels = np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) * 200
    path = write_png16(tmp_path / "a.png", pixels)
    points = [[3.5, 10.25], [np.nan, np.nan]]
    d = LoadLandmarkImaged()({"image": path, "landmarks": points, "spacing": None, "id": "a"})
    assert d["image"].shape == (1, 12, 20) and d["image"].dtype == np.float32
    assert d["image"].max() == pixels.max()  # 16-bit values kept
    assert d["orig_hw"].tolist() == [12, 20]
    assert d["spacing"].dtype == np.float32 and np.isnan(d["spacing"]).all() and d["spacing"].shape == (2,)
    assert d["spacing_source"] == "unknown"
    assert d["landmarks_orig"].dtype == np.float32 and d["landmarks_orig"].shape == (2, 2)
    np.testing.assert_array_equal(d["landmarks_orig"], np.array(points, np.float32))
    assert d["landmarks_orig"] is not d["landmarks"]
    np.testing.assert_array_equal(d["net_from_orig"], np.eye(3))
    with_csv = LoadLandmarkImaged()({"image": path, "landmarks": points, "spacing": [0.3, 0.4]})
    assert with_csv["spacing_source"] == "csv" and with_csv["spacing"].tolist() == pytest.approx([0.3, 0.4])
    inference = LoadLandmarkImaged()({"image": path})
    assert "landmarks_orig" not in inference and "landmarks" not in inference


def test_load_dicom_spacing_precedence(tmp_path):
    pixels = np.zeros((10, 16), np.uint16)
    pixels[2, 13] = 1000
    path = write_dicom(tmp_path / "x.dcm", pixels, PixelSpacing=[0.2, 0.1])  # [row, column]
    header = LoadLandmarkImaged()({"image": path, "landmarks": [[13.0, 2.0]], "spacing": None})
    assert header["spacing"].tolist() == pytest.approx([0.1, 0.2])  # (sx, sy)
    assert header["spacing_source"] == "PixelSpacing"
    assert header["image"][0, 2, 13] == 1000
    csv = LoadLandmarkImaged()({"image": path, "landmarks": [[13.0, 2.0]], "spacing": [0.15, 0.15]})
    assert csv["spacing"].tolist() == pytest.approx([0.15, 0.15]) and csv["spacing_source"] == "csv"
    nan_pair = LoadLandmarkImaged()({"image": path, "spacing": [np.nan, np.nan]})
    assert nan_pair["spacing_source"] == "PixelSpacing"


def test_load_errors_name_the_file(tmp_path):
    path = write_png16(tmp_path / "b.png", np.ones((4, 5)))
    with pytest.raises(ValueError, match="b.png.*spacing"):
        LoadLandmarkImaged()({"image": path, "spacing": [0.1, -1.0]})
    with pytest.raises(ValueError, match=r"b.png.*\(N, 2\)"):
        LoadLandmarkImaged()({"image": path, "landmarks": [1.0, 2.0, 3.0]})
    with pytest.raises(ImageReadError, match="missing.png"):
        LoadLandmarkImaged()({"image": str(tmp_path / "missing.png")})


def test_pipeline_from_file_to_targets(tmp_path):
    h, w = 180, 420
    points = np.array([[390.3, 22.7], [30.6, 160.2], [np.nan, np.nan]], np.float32)
    pixels = (blob_image((h, w), points[:2], sigma=5.0) * 60000).astype(np.uint16)
    path = write_png16(tmp_path / "c.png", pixels)
    pipeline = Compose(
        [
            LoadLandmarkImaged(),
            ResizeWithLandmarksd(spatial_size=(64, 96)),
            RobustNormalizeIntensityd(lower=0.0, upper=100.0, b_min=0.0, b_max=1.0),
            LandmarkHeatmapd(spatial_size=(64, 96), sigma=[2.0, 2.5, 3.0]),
        ]
    )
    d = pipeline({"image": path, "landmarks": points, "spacing": None})
    assert d["heatmaps"].shape == (3, 64, 96) and d["landmarks_mask"].tolist() == [1.0, 1.0, 0.0]
    decoded, _ = decode_heatmaps(torch.from_numpy(d["heatmaps"])[None])
    back = points_to_original(decoded[0].numpy(), d["net_from_orig"])
    np.testing.assert_allclose(back[:2], points[:2], atol=0.05)
    for (x, y) in d["landmarks"][:2]:  # the image blob is where the landmark is
        assert np.abs(centroid(d["image"][0], x, y, radius=3) - [x, y]).max() < 0.3


def test_label_image_to_landmarks_inverts_the_disc_writer(tmp_path):
    from scripts.transforms.io import LabelImageToLandmarks, LandmarksFromLabelImaged, LoadLandmarkImaged
    from scripts.writers.label_image import landmark_label_image, write_label_image

    hw = (48, 80)
    points = np.array([[10.0, 20.0], [60.5, 7.5], [np.nan, np.nan], [33.0, 40.0], [2.0, 2.0]])
    label = landmark_label_image(points, hw, radius=3.0)
    found = LabelImageToLandmarks(5)(label)
    assert found.shape == (5, 2) and found.dtype == np.float32
    np.testing.assert_allclose(found[[0, 1, 3]], points[[0, 1, 3]], atol=1e-6)  # whole symmetric discs
    assert np.isnan(found[2]).all()  # absent value -> missing landmark
    assert np.hypot(*(found[4] - points[4])) < 1.0  # a disc cut by the border: close, pulled inwards

    # dictionary version on real files: image + label image, as in a MONAI Label datalist item
    Image.fromarray(np.random.default_rng(0).integers(0, 255, hw, dtype=np.uint8)).save(tmp_path / "img.png")
    write_label_image(tmp_path / "img_label.png", label)
    item = {"image": str(tmp_path / "img.png"), "label": str(tmp_path / "img_label.png")}
    d = LandmarksFromLabelImaged(num_landmarks=5)(LoadLandmarkImaged("image")(item))
    np.testing.assert_allclose(d["landmarks"], found, equal_nan=True)
    np.testing.assert_allclose(d["landmarks_orig"], found, equal_nan=True)
    # an item that already has landmarks (landmark CSV) is left alone
    given = {"landmarks": np.zeros((5, 2), np.float32), "label": item["label"]}
    assert LandmarksFromLabelImaged(num_landmarks=5)(given)["landmarks"] is given["landmarks"]


def test_label_image_errors_name_the_file(tmp_path):
    from scripts.transforms.io import LabelImageToLandmarks, LandmarksFromLabelImaged, LoadLandmarkImaged
    from scripts.writers.label_image import write_label_image

    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "img.png")
    small = np.zeros((10, 30), np.uint8)
    small[5, 5] = 1
    write_label_image(tmp_path / "small.png", small)
    item = LoadLandmarkImaged("image")({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "small.png")})
    with pytest.raises(ValueError, match=r"small\.png: label image is 10 x 30"):
        LandmarksFromLabelImaged(num_landmarks=3)(item)
    big = np.zeros((20, 30), np.uint8)
    big[3, 3] = 7
    write_label_image(tmp_path / "big.png", big)
    item = LoadLandmarkImaged("image")({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "big.png")})
    with pytest.raises(ValueError, match=r"big\.png: label image has value 7 but only 3 landmarks"):
        LandmarksFromLabelImaged(num_landmarks=3)(item)
    with pytest.raises(ValueError, match="whole numbers"):
        LabelImageToLandmarks(3)(np.full((4, 4), 0.5))
