"""Tests of scripts.transforms.spatial: resize round trips and letterbox, augmentation that keeps image and points together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.coords import apply_matrix, inside_image
from scripts.heatmap import decode_heatmaps, gaussian_heatmaps, points_to_original
from scripts.transforms.spatial import (
    RandLandmarkAffineElastic,
    RandLandmarkAffineElasticd,
    ResizeWithLandmarks,
    ResizeWithLandmarksd,
)
from tests.helpers import blob_image, centroid


def corner_points(hw, margin):
    """Sub-pixel points near the four corners and far from the diagonal, ``margin`` px from the edges."""
    h, w = hw
    return np.array(
        [
            [margin + 0.37, margin + 0.81],
            [w - 1 - margin - 0.29, margin + 0.13],
            [margin + 0.61, h - 1 - margin - 0.44],
            [w - 1 - margin - 0.07, h - 1 - margin - 0.52],
            [0.83 * w + 0.21, 0.11 * h + 0.47],
            [0.09 * w + 0.66, 0.77 * h + 0.31],
        ]
    )


@pytest.mark.parametrize("in_hw", [(300, 700), (900, 250)])
@pytest.mark.parametrize("out_hw, keep_aspect", [((256, 256), False), ((192, 320), False), ((256, 256), True)])
def test_resize_heatmap_decode_round_trip(in_hw, out_hw, keep_aspect):
    # margin so that every mapped point is >= 1 network px from the border (decoder needs neighbours)
    points = corner_points(in_hw, margin=6)
    image = np.zeros((1, *in_hw), np.float32)
    resized, net_points, net_from_orig = ResizeWithLandmarks(out_hw, keep_aspect)(image, points)
    assert resized.shape == (1, *out_hw) and resized.dtype == np.float32
    assert net_points.dtype == np.float32 and net_from_orig.shape == (3, 3)
    if keep_aspect:  # isotropic (up to the integer content size) and centred
        sx, sy = net_from_orig[0, 0], net_from_orig[1, 1]
        assert abs(sx - sy) / sx < 0.01
    heatmaps = gaussian_heatmaps(torch.from_numpy(net_points)[None], out_hw, sigma=2.0)
    decoded, _ = decode_heatmaps(heatmaps)
    back = points_to_original(decoded[0].double().numpy(), net_from_orig)
    assert np.abs(back - points).max() < 0.25


@pytest.mark.parametrize("in_hw", [(300, 700), (900, 250)])
@pytest.mark.parametrize("out_hw, keep_aspect", [((256, 256), False), ((96, 160), False), ((256, 256), True)])
def test_resized_image_follows_points(in_hw, out_hw, keep_aspect):
    h, w = in_hw
    point = np.array([[0.8 * w + 0.37, 0.25 * h + 0.61]])  # far from the diagonal, sub-pixel
    sigma = 0.5 * max(h / out_hw[0], w / out_hw[1]) * 3  # about 1.5 px after resizing
    image = blob_image(in_hw, point, sigma)[None]
    resized, net_point, _ = ResizeWithLandmarks(out_hw, keep_aspect)(image, point)
    c = centroid(resized[0], *net_point[0], radius=8)
    assert np.abs(c - net_point[0]).max() < 0.1


def test_resize_16bit_big_image_and_torch_input():
    big = np.full((1, 7300, 2800), 40000, dtype=np.uint16)
    big[0, :, 1400:] = 20000
    resized, _, matrix = ResizeWithLandmarks((256, 256))(big)
    assert resized.dtype == np.float32 and resized.shape == (1, 256, 256)
    assert resized[0, :, :120].min() == pytest.approx(40000, rel=1e-5)
    assert resized[0, :, 136:].max() == pytest.approx(20000, rel=1e-5)
    tensor_out, points, _ = ResizeWithLandmarks((32, 48))(torch.rand(2, 50, 70, dtype=torch.float64), torch.zeros(3, 2))
    assert isinstance(tensor_out, torch.Tensor) and tensor_out.dtype == torch.float32
    assert tensor_out.shape == (2, 32, 48)
    assert isinstance(points, torch.Tensor)
    with pytest.raises(ValueError, match="channel-first"):
        ResizeWithLandmarks((32, 32))(np.zeros((50, 70)))


def test_letterbox_pads_with_minimum():
    image = np.full((1, 100, 400), 7.0, np.float32)
    image[0, 0, 0] = 3.0
    resized, _, _ = ResizeWithLandmarks((64, 64), keep_aspect=True)(image)
    assert resized[0, 0, 0] == 3.0 and resized[0, 0, 32] == 3.0  # padding rows above the content
    assert resized[0, 32, 32] == pytest.approx(7.0)


def test_resized_composes_matrix_and_keeps_original_landmarks():
    points = corner_points((300, 700), margin=10).astype(np.float32)
    sample = {
        "image": np.zeros((1, 300, 700), np.float32),
        "mask_image": np.zeros((1, 300, 700), np.float32),
        "landmarks": points,
        "landmarks_orig": points.copy(),
        "net_from_orig": np.eye(3),
    }
    first = ResizeWithLandmarksd(("image", "mask_image"), spatial_size=(120, 200))(sample)
    second = ResizeWithLandmarksd(spatial_size=(64, 64), keep_aspect=True)(first)
    assert second["mask_image"].shape == (1, 120, 200) and second["image"].shape == (1, 64, 64)
    mapped = apply_matrix(second["landmarks_orig"], second["net_from_orig"])
    np.testing.assert_allclose(mapped, second["landmarks"], atol=1e-4)
    np.testing.assert_array_equal(second["landmarks_orig"], points)
    with pytest.raises(KeyError, match="landmarks"):
        ResizeWithLandmarksd(spatial_size=(64, 64))({"image": np.zeros((1, 8, 8), np.float32)})
    no_points = ResizeWithLandmarksd(spatial_size=(4, 4), points_keys=())({"image": np.zeros((1, 8, 8), np.float32)})
    assert no_points["net_from_orig"][0, 0] == 0.5


AUGMENT = dict(
    rotate_range=np.deg2rad(20.0),
    scale_range=(0.8, 1.2),
    translate_range=20.0,
    elastic_magnitude=6.0,
    elastic_grid=6,
)


def dotted_image(hw, seed=0):
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.linspace(40, hw[1] - 40, 5), np.linspace(45, hw[0] - 45, 2))
    points = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-0.5, 0.5, (10, 2))
    return blob_image(hw, points, sigma=1.2)[None], points.astype(np.float32)


def test_augmented_dots_stay_under_landmarks():
    hw = (192, 256)  # non-square
    image, points = dotted_image(hw)
    aug = RandLandmarkAffineElastic(**AUGMENT)
    aug.set_random_state(0)
    errors, checked = [], 0
    for _ in range(100):
        out, moved = aug(image, points)
        assert out.shape == (1, *hw) and moved.shape == points.shape
        for x, y in moved:
            if not (6 <= x <= hw[1] - 7 and 6 <= y <= hw[0] - 7):
                continue
            checked += 1
            errors.append(np.abs(centroid(out[0], x, y, radius=5) - [x, y]).max())
            peak = np.unravel_index(np.argmax(out[0, int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3]), (5, 5))
            assert abs(peak[0] + int(y) - 2 - y) <= 1.0 and abs(peak[1] + int(x) - 2 - x) <= 1.0
    assert checked > 500
    assert max(errors) < 1.0
    assert np.mean(errors) < 0.2


def test_points_solve_the_forward_map_exactly():
    """Warp an image of its own coordinates: at each moved point it must read back the original point."""
    hw = (150, 210)
    rows, cols = np.mgrid[: hw[0], : hw[1]].astype(np.float32)
    coords_image = np.stack([cols, rows])
    points = np.array([[30.2, 20.7], [180.9, 35.3], [100.5, 75.5], [20.1, 130.4], [190.6, 120.8]], np.float32)
    aug = RandLandmarkAffineElastic(**{**AUGMENT, "elastic_magnitude": 10.0, "elastic_grid": 5})
    aug.set_random_state(5)
    worst = 0.0
    for _ in range(20):
        warped, moved = aug(coords_image, points)
        for p, (x, y) in zip(points, moved):
            if not (1 <= x <= hw[1] - 2 and 1 <= y <= hw[0] - 2):
                continue
            x0, y0 = int(x), int(y)
            fx, fy = x - x0, y - y0
            patch = warped[:, y0 : y0 + 2, x0 : x0 + 2]
            read = (patch[:, 0, 0] * (1 - fx) * (1 - fy) + patch[:, 0, 1] * fx * (1 - fy)
                    + patch[:, 1, 0] * (1 - fx) * fy + patch[:, 1, 1] * fx * fy)
            worst = max(worst, float(np.abs(read - p).max()))
    assert worst < 0.05


def test_nan_and_leaving_points():
    hw = (64, 80)
    aug = RandLandmarkAffineElastic(translate_range=(200.0, 0.0), elastic_magnitude=3.0)
    aug.set_random_state(2)
    points = np.array([[40.0, 30.0], [np.nan, np.nan], [10.0, 10.0]], np.float32)
    shift = 0.0
    while abs(shift) <= 100:  # a draw that pushes the points out of the image
        _, moved = aug(np.zeros((1, *hw), np.float32), points)
        shift = aug.affine[0, 2]
    assert np.isnan(moved[1]).all()
    assert np.isfinite(moved[[0, 2]]).all()
    assert not inside_image(moved[0], hw) and np.abs(moved[0, 0] - (40.0 + shift)) < 3.0 + 1e-3


def test_dictionary_version_one_draw_for_all_keys():
    hw = (96, 128)
    image, points = dotted_image(hw, seed=3)
    rows, cols = np.mgrid[: hw[0], : hw[1]].astype(np.float32)
    sample = {"image": image, "image2": image.copy(), "coords": np.stack([cols, rows]), "landmarks": points,
              "landmarks2": points.copy()}
    aug = RandLandmarkAffineElasticd(("image", "image2", "coords"), ("landmarks", "landmarks2"), **AUGMENT)
    aug.set_random_state(11)
    out = aug(sample)
    np.testing.assert_array_equal(out["image"], out["image2"])
    np.testing.assert_array_equal(out["landmarks"], out["landmarks2"])
    assert not np.allclose(out["landmarks"], points)
    x, y = out["landmarks"][4]
    assert np.abs(out["coords"][:, int(round(y)), int(round(x))] - points[4]).max() < 1.5
    again = RandLandmarkAffineElasticd(("image", "image2", "coords"), ("landmarks", "landmarks2"), **AUGMENT)
    again.set_random_state(11)
    np.testing.assert_array_equal(again(sample)["landmarks"], out["landmarks"])
    torch_out = again.spatial(torch.from_numpy(image), torch.from_numpy(points))
    assert isinstance(torch_out[0], torch.Tensor) and isinstance(torch_out[1], torch.Tensor)
    skipped = RandLandmarkAffineElasticd(("image",), ("landmarks",), prob=0.0, **AUGMENT)(sample)
    assert skipped["image"] is image and skipped["landmarks"] is points
