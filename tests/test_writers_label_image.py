"""Tests of scripts.writers.label_image: the landmark label image drawn, saved, read back and decoded to points.

(Drawing and saving alone are also exercised by tests/test_inference.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.data.image_reader import read_image
from scripts.writers.label_image import landmark_label_image, landmarks_from_label_image, write_label_image


@pytest.mark.parametrize("suffix", [".png", ".nii.gz"])
def test_points_survive_draw_save_read_decode(tmp_path, suffix):
    # centres on pixel centres keep their position exactly; a NaN landmark stays missing
    points = np.array([[4.0, 3.0], [np.nan, np.nan], [12.0, 9.0], [20.0, 2.0]])
    label = landmark_label_image(points, (14, 24), radius=2.0)
    record = read_image(write_label_image(tmp_path / f"label{suffix}", label, spacing=(0.3, 0.3)))
    decoded = landmarks_from_label_image(record.array, num_landmarks=4)
    assert decoded.dtype == np.float32 and decoded.shape == (4, 2)
    np.testing.assert_allclose(decoded, points, atol=1e-6)


def test_sub_pixel_points_decode_within_half_a_pixel_and_border_discs_move_inwards():
    points = np.array([[5.3, 6.8], [0.2, 7.1]])
    label = landmark_label_image(points, (16, 16), radius=3.0)
    decoded = landmarks_from_label_image(torch.as_tensor(label)[None], num_landmarks=2)
    assert np.abs(decoded[0] - points[0]).max() < 0.5
    assert decoded[1, 0] > points[1, 0]  # the disc cut by the left border pulls its centroid inwards


def test_bad_label_images_are_refused():
    with pytest.raises(ValueError, match="value 3 but only 2 landmarks"):
        landmarks_from_label_image(np.array([[0, 3]]), num_landmarks=2)
    with pytest.raises(ValueError, match="whole numbers"):
        landmarks_from_label_image(np.array([[0.5, 1.0]]), num_landmarks=2)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(1, H, W\)"):
        landmarks_from_label_image(np.zeros((2, 3, 3)), num_landmarks=2)


def test_label_image_discs():
    points = np.array([[5.0, 4.0], [np.nan, np.nan], [-10.0, 3.0], [19.4, 0.2]])
    label = landmark_label_image(points, (8, 20), radius=1.5)
    assert label.dtype == np.uint8 and label.shape == (8, 20)
    assert set(np.unique(label)) == {0, 1, 4}
    assert (label == 1).sum() == 9 and label[4, 5] == 1 and label[4, 7] == 0  # 3 x 3 disc of radius 1.5
    assert label[0, 19] == 4  # a disc cut by the border
    assert landmark_label_image(np.zeros((300, 2)), (4, 4), radius=1).dtype == np.uint16


@pytest.mark.parametrize("suffix", [".png", ".nii.gz"])
def test_label_image_files_read_back(tmp_path, suffix):
    label = landmark_label_image(np.array([[3.0, 1.0], [8.0, 5.0]]), (7, 11), radius=1)
    path = write_label_image(tmp_path / f"label{suffix}", label, spacing=(0.5, 0.25))
    record = read_image(path)
    np.testing.assert_array_equal(record.array, label)
    assert record.spacing == ((0.5, 0.25) if suffix == ".nii.gz" else None)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
