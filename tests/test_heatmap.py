"""Tests for scripts.heatmap: sub-pixel drawing, decoding, masks, gradients and the map back to original pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scripts.coords import resize_matrix
from scripts.heatmap import (
    decode_heatmaps,
    decode_heatmaps_to_original,
    gaussian_heatmaps,
    landmark_mask,
    points_to_mm,
    points_to_original,
)


def test_values_at_float_centre_not_rounded():
    point = torch.tensor([[10.3, 5.7]])
    hm = gaussian_heatmaps(point, (12, 20), sigma=2.0, gamma=100.0)
    assert hm.shape == (1, 12, 20)
    rows, cols = np.mgrid[:12, :20]
    expected = 100.0 * np.exp(-((cols - 10.3) ** 2 + (rows - 5.7) ** 2) / (2 * 2.0**2))
    np.testing.assert_allclose(hm[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    # x is the column, y the row: the larger value lies at row 6, column 10
    assert hm[0, 6, 10] > hm[0, 5, 10] and hm[0, 6, 10] > hm[0, 6, 11]


@pytest.mark.parametrize("method", ["parabola", "gaussian_fit"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 0.01), (torch.float64, 1e-9)])
def test_decode_random_subpixel_gaussians(dtype, tol, method):
    gen = torch.Generator().manual_seed(3)
    batch, num, hw = 3, 40, (48, 72)
    sigma = (1.5 + 2.5 * torch.rand(num, generator=gen)).to(dtype)
    # keep the peak at least one pixel away from the border (refinement needs both neighbours)
    points = (torch.rand(batch, num, 2, generator=gen) * torch.tensor([hw[1] - 3.0, hw[0] - 3.0]) + 1.0).to(dtype)
    heatmaps = gaussian_heatmaps(points, hw, sigma, gamma=100.0)
    assert heatmaps.shape == (batch, num, *hw)
    decoded, peak = decode_heatmaps(heatmaps, method=method)
    assert decoded.shape == (batch, num, 2) and peak.shape == (batch, num)
    assert (decoded - points).abs().max() < tol
    integer_error = (decoded.round() - points).abs().max()
    assert integer_error > 0.3  # the refinement is what makes it exact
    np.testing.assert_allclose(peak.numpy(), heatmaps.flatten(2).max(-1).values.numpy())


def test_decode_border_and_non_positive_values():
    hm = torch.zeros(1, 3, 5, 7)
    hm[0, 0, 2, 0], hm[0, 0, 2, 1] = 10.0, 6.0  # maximum on the left border: no refinement along x
    hm[0, 0, 1, 0], hm[0, 0, 3, 0] = 4.0, 2.0  # along y it is refined towards row 1
    hm[0, 1, 2, 3], hm[0, 1, 2, 4], hm[0, 1, 2, 2] = 5.0, 5.0, -1.0  # a zero/negative neighbour: raw parabola
    hm[0, 2] = 1.0  # flat map: the first maximum, no offset
    points, _ = decode_heatmaps(hm, method="parabola")
    assert points[0, 0, 0] == 0.0
    expected_dy = 0.5 * (np.log(4.0) - np.log(2.0)) / (np.log(4.0) - 2 * np.log(10.0) + np.log(2.0))
    assert points[0, 0, 1] == pytest.approx(2.0 + expected_dy, abs=1e-5)
    assert 2.5 <= points[0, 1, 0] <= 3.5 and points[0, 1, 0] > 3.0
    assert points[0, 1, 1] == 2.0
    assert points[0, 2].tolist() == [0.0, 0.0]


def test_nan_point_gives_zero_map_and_finite_gradient():
    points = torch.tensor([[[12.5, 3.25], [float("nan"), float("nan")], [4.0, float("nan")]]], requires_grad=True)
    sigma = torch.full((3,), 2.0, requires_grad=True)
    hm = gaussian_heatmaps(points, (16, 24), sigma)
    assert torch.isfinite(hm).all()
    assert hm[0, 1].abs().max() == 0 and hm[0, 2].abs().max() == 0
    assert hm[0, 0].max() > 90
    hm.sum().backward()
    assert torch.isfinite(points.grad).all() and torch.isfinite(sigma.grad).all()
    assert points.grad[0, 1:].abs().max() == 0
    assert landmark_mask(points.detach(), (16, 24)).tolist() == [[1.0, 0.0, 0.0]]


def test_outside_points_have_tail_but_mask_zero():
    points = np.array([[-0.5, 3.0], [-0.6, 3.0], [23.5, 15.5], [23.6, 2.0], [5.0, -3.0], [np.nan, 1.0]])
    mask = landmark_mask(points, (16, 24))
    assert mask.dtype == np.float32
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    hm = gaussian_heatmaps(torch.from_numpy(points).float(), (16, 24), 2.0)
    assert hm[4, 0, 5] > 10.0  # partial Gaussian of the point 3 px above the image
    decoded, _ = decode_heatmaps(hm[None])
    assert decoded[0, 4, 1] == 0.0  # the decoder lands on the border: that is why the loss needs the mask


def test_gradient_reaches_sigma():
    points = torch.tensor([[3.3, 4.6], [7.1, 2.2]], dtype=torch.float64)
    sigma = torch.tensor([1.7, 2.4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: gaussian_heatmaps(points, (9, 11), s, gamma=5.0), (sigma,))
    scalar = torch.tensor(2.0, requires_grad=True)
    gaussian_heatmaps(points.float(), (9, 11), scalar).sum().backward()
    assert scalar.grad > 0  # wider Gaussians have more mass


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="points"):
        gaussian_heatmaps(torch.zeros(4, 3), (8, 8), 2.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_heatmaps(torch.zeros(4, 2), (8, 8), torch.ones(3))
    with pytest.raises(ValueError, match="heatmaps"):
        decode_heatmaps(torch.zeros(2, 8, 8))


def test_points_back_to_original_and_mm():
    net_from_orig = np.stack([resize_matrix((300, 700), (64, 64)), resize_matrix((900, 250), (64, 64))])
    orig = np.array([[[650.2, 20.7], [15.3, 280.9]], [[240.1, 40.6], [9.8, 870.4]]])
    net = np.einsum("bij,bnj->bni", net_from_orig[:, :2, :2], orig) + net_from_orig[:, None, :2, 2]
    back = points_to_original(net, net_from_orig)
    np.testing.assert_allclose(back, orig, atol=1e-9)
    back_t = points_to_original(torch.from_numpy(net).float(), torch.from_numpy(net_from_orig))
    assert back_t.dtype == torch.float32
    np.testing.assert_allclose(back_t.numpy(), orig, atol=1e-3)
    np.testing.assert_allclose(points_to_original(net[0], net_from_orig[0]), orig[0], atol=1e-9)

    hm = gaussian_heatmaps(torch.from_numpy(net), (64, 64), 2.0)
    decoded = decode_heatmaps_to_original(hm, torch.from_numpy(np.linalg.inv(net_from_orig)))
    np.testing.assert_allclose(decoded.numpy(), orig, atol=1e-6)

    spacing = np.array([[0.1, 0.2], [np.nan, np.nan]])
    mm = points_to_mm(orig, spacing)
    np.testing.assert_allclose(mm[0], orig[0] * [0.1, 0.2])
    assert np.isnan(mm[1]).all()
    mm_t = points_to_mm(torch.from_numpy(orig[0]), (0.5, 0.25))
    np.testing.assert_allclose(mm_t.numpy(), orig[0] * [0.5, 0.25])


def _rotated_gaussian(point, hw, sigmas, angle):
    """An anisotropic Gaussian (peak 100) with axes of std ``sigmas`` rotated by ``angle`` (radians)."""
    rows, cols = torch.meshgrid(torch.arange(hw[0], dtype=torch.float64), torch.arange(hw[1], dtype=torch.float64),
                                indexing="ij")
    dx, dy = cols - point[0], rows - point[1]
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return 100.0 * torch.exp(-0.5 * ((u / sigmas[0]) ** 2 + (v / sigmas[1]) ** 2))


def test_gaussian_fit_exact_for_rotated_anisotropic_gaussian_where_parabola_is_not():
    point = (10.37, 8.71)
    hm = _rotated_gaussian(point, (20, 24), (3.0, 1.5), 0.6)[None, None]
    fitted, _ = decode_heatmaps(hm, method="gaussian_fit")
    parabola, _ = decode_heatmaps(hm, method="parabola")
    truth = torch.tensor(point, dtype=torch.float64)
    assert (fitted[0, 0] - truth).abs().max() < 1e-9
    assert (parabola[0, 0] - truth).abs().max() > 0.05  # per-axis parabolas miss a tilted peak


def test_gaussian_fit_near_border_and_without_enough_positive_pixels():
    # a peak half a pixel from the border: the window is cut by the grid and still exact
    hm = gaussian_heatmaps(torch.tensor([[0.3, 5.6]], dtype=torch.float64), (12, 12), sigma=2.0)[None]
    points, _ = decode_heatmaps(hm, method="gaussian_fit")
    assert (points[0, 0] - torch.tensor([0.3, 5.6], dtype=torch.float64)).abs().max() < 1e-9
    # a lone positive pixel next to a weaker one (fewer than 6 positive pixels): the parabola's answer
    lone = torch.zeros(1, 1, 7, 7)
    lone[0, 0, 3, 3], lone[0, 0, 3, 4] = 10.0, 5.0
    fit, _ = decode_heatmaps(lone, method="gaussian_fit")
    par, _ = decode_heatmaps(lone, method="parabola")
    torch.testing.assert_close(fit, par)


def test_gaussian_fit_less_noise_sensitive_than_parabola():
    gen = torch.Generator().manual_seed(0)
    points = 8.0 + 48.0 * torch.rand(1, 300, 2, generator=gen, dtype=torch.float64)
    maps = gaussian_heatmaps(points, (64, 64), sigma=3.0) + 5.0 * torch.randn(1, 300, 64, 64, generator=gen,
                                                                             dtype=torch.float64)
    errors = {m: (decode_heatmaps(maps, method=m)[0] - points).norm(dim=-1).mean() for m in ("parabola", "gaussian_fit")}
    assert errors["gaussian_fit"] < 0.5 * errors["parabola"]


def test_decode_rejects_bad_method_and_window():
    hm = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="method must be one of"):
        decode_heatmaps(hm, method="centroid")
    with pytest.raises(ValueError, match="window must be an odd integer"):
        decode_heatmaps(hm, window=4)
