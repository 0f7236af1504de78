"""Tests of scripts.coords: the pixel-centre convention, resize and letterbox matrices and their round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scripts.coords import apply_matrix, inside_image, invert_matrix, normalised_mm_per_px, resize_matrix, to_mm

SIZES = [((100, 60), (64, 64)), ((37, 251), (256, 256)), ((7300, 2800), (512, 256)), ((64, 64), (16, 16))]


@pytest.mark.parametrize("in_hw, out_hw", SIZES)
@pytest.mark.parametrize("keep_aspect", [False, True])
def test_resize_round_trip_is_exact_and_keeps_nan(in_hw, out_hw, keep_aspect):
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.5, 1.0, size=(20, 2)) * [in_hw[1] - 0.5, in_hw[0] - 0.5]
    points[3] = np.nan
    forward = resize_matrix(in_hw, out_hw, keep_aspect=keep_aspect)
    back = apply_matrix(apply_matrix(points, forward), invert_matrix(forward))
    np.testing.assert_allclose(back[~np.isnan(points[:, 0])], points[~np.isnan(points[:, 0])], atol=1e-9)
    assert np.isnan(back[3]).all()
    # the inverse is the resize back only without letterboxing (letterboxing pads, its inverse crops)
    if not keep_aspect:
        np.testing.assert_allclose(invert_matrix(forward), resize_matrix(out_hw, in_hw), atol=1e-12)


@pytest.mark.parametrize("in_hw, out_hw", SIZES)
def test_image_corners_map_to_image_corners(in_hw, out_hw):
    # pixel centres at integers: the image spans [-0.5, W - 0.5] x [-0.5, H - 0.5] in every frame
    corners = np.array([[-0.5, -0.5], [in_hw[1] - 0.5, in_hw[0] - 0.5]])
    mapped = apply_matrix(corners, resize_matrix(in_hw, out_hw))
    np.testing.assert_allclose(mapped, [[-0.5, -0.5], [out_hw[1] - 0.5, out_hw[0] - 0.5]], atol=1e-9)


def test_letterbox_scales_isotropically_and_centres_the_content():
    in_hw, out_hw = (100, 50), (64, 64)  # tall image: scale 0.64, content 64 x 32, 16 px on each side
    m = resize_matrix(in_hw, out_hw, keep_aspect=True)
    assert m[0, 0] == m[1, 1] == pytest.approx(0.64)
    corners = apply_matrix(np.array([[-0.5, -0.5], [49.5, 99.5]]), m)
    np.testing.assert_allclose(corners, [[15.5, -0.5], [47.5, 63.5]], atol=1e-9)


def test_matrix_agrees_with_torch_interpolate_on_a_dot():
    # a bright pixel moved by F.interpolate(align_corners=False) lands where the matrix maps its centre
    in_hw, out_hw = (20, 30), (40, 90)
    image = torch.zeros(1, 1, *in_hw, dtype=torch.float64)
    image[0, 0, 7, 11] = 1.0
    resized = F.interpolate(image, size=out_hw, mode="bilinear", align_corners=False)[0, 0]
    rows, cols = torch.meshgrid(torch.arange(out_hw[0]), torch.arange(out_hw[1]), indexing="ij")
    centroid = [float((resized * cols).sum() / resized.sum()), float((resized * rows).sum() / resized.sum())]
    np.testing.assert_allclose(centroid, apply_matrix(np.array([[11.0, 7.0]]), resize_matrix(in_hw, out_hw))[0], atol=1e-6)


def test_batched_matrices_and_tensors_match_numpy():
    points = np.array([[[1.0, 2.0], [3.5, np.nan]], [[0.0, 0.0], [9.0, 4.0]]])
    matrices = np.stack([resize_matrix((10, 20), (5, 5)), resize_matrix((40, 10), (8, 8), keep_aspect=True)])
    expected = np.stack([apply_matrix(points[b], matrices[b]) for b in range(2)])
    np.testing.assert_allclose(apply_matrix(points, matrices), expected, equal_nan=True)
    as_tensor = apply_matrix(torch.as_tensor(points), torch.as_tensor(matrices))
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_allclose(as_tensor.numpy(), expected, equal_nan=True)
    np.testing.assert_allclose(invert_matrix(torch.as_tensor(matrices)).numpy(), np.linalg.inv(matrices))


def test_inside_image_uses_the_pixel_edges():
    points = np.array([[-0.5, -0.5], [9.5, 4.5], [-0.51, 0.0], [0.0, 4.51], [np.nan, 1.0]])
    assert inside_image(points, (5, 10)).tolist() == [True, True, False, False, False]


def test_mm_and_normalised_mm():
    np.testing.assert_allclose(to_mm(np.array([[10.0, 4.0]]), (0.2, 0.5)), [[2.0, 2.0]])
    assert torch.allclose(to_mm(torch.tensor([[10.0, 4.0]]), (0.2, 0.5)), torch.tensor([[2.0, 2.0]]))
    points = np.zeros((6, 2))
    points[5] = [30.0, 40.0]  # landmarks 1 and 5 are 50 px apart: 50 mm / 50 px
    points[1] = [0.0, 0.0]
    assert normalised_mm_per_px(points) == pytest.approx(1.0)
    points[5] = np.nan
    assert np.isnan(normalised_mm_per_px(points))
