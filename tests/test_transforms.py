"""Tests for scripts.transforms: loading, resize round trips, intensity, augmentation consistency, targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from PIL import Image

from scripts.coords import apply_matrix, inside_image
from scripts.heatmap import decode_heatmaps, gaussian_heatmaps, points_to_original
from scripts.io import ImageReadError
from scripts.transforms import (
    HistogramMatch,
    HistogramMatchd,
    LandmarkHeatmap,
    LandmarkHeatmapd,
    LandmarkMaskd,
    LoadLandmarkImaged,
    RandIntensityScaleShift,
    RandIntensityScaleShiftd,
    RandLandmarkAffineElastic,
    RandLandmarkAffineElasticd,
    ResizeWithLandmarks,
    ResizeWithLandmarksd,
    RobustNormalizeIntensity,
    RobustNormalizeIntensityd,
)
from tests.helpers import write_dicom


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


def blob_image(hw, points, sigma):
    rows, cols = np.mgrid[: hw[0], : hw[1]]
    img = np.zeros(hw, np.float32)
    for x, y in points:
        img += np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2)).astype(np.float32)
    return img


def centroid(img, x, y, radius):
    """Intensity centroid ``(x, y)`` of ``img`` (H, W) in a window of ``radius`` px around ``(x, y)``."""
    xi, yi = int(round(x)), int(round(y))
    win = img[yi - radius : yi + radius + 1, xi - radius : xi + radius + 1]
    rows, cols = np.mgrid[yi - radius : yi + radius + 1, xi - radius : xi + radius + 1]
    return np.array([(win * cols).sum() / win.sum(), (win * rows).sum() / win.sum()])


# ------------------------------------------------------------------------------------------ resize


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


# ------------------------------------------------------------------------------------------ loading


def write_png16(path, array):
    Image.fromarray(array.astype(np.uint16)).save(path)
    return str(path)


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


# ------------------------------------------------------------------------------------------ intensity


def test_histogram_match_inside_mask_only(tmp_path):
    rng = np.random.default_rng(0)
    hw = (80, 100)
    image = rng.uniform(4.0, 6.0, hw).astype(np.float32)  # background, well below the object
    image[20:60, 30:80] = rng.uniform(70.0, 130.0, (40, 50))
    inside = np.zeros(hw, bool)
    inside[20:60, 30:80] = True
    reference = np.full(hw, 2.0, np.float32)
    reference[15:65, 25:75] = (rng.gamma(4.0, 20.0, (50, 50)) + 150).round()
    ref_object = reference[15:65, 25:75]
    ref_path = write_png16(tmp_path / "ref.png", reference)
    out = HistogramMatch(ref_path)(image[None])
    assert out.shape == (1, *hw) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0][~inside], image[~inside])  # background untouched
    for q in (10, 50, 90):
        assert abs(np.percentile(out[0][inside], q) - np.percentile(ref_object, q)) < 2.0
    assert abs(np.percentile(image[inside], 50) - np.percentile(ref_object, 50)) > 50  # it did move
    # in-memory reference, dictionary version, torch input
    d = HistogramMatchd("image", reference=reference)({"image": torch.from_numpy(image[None])})
    assert isinstance(d["image"], torch.Tensor)
    np.testing.assert_allclose(d["image"].numpy(), out, atol=1e-4)
    np.testing.assert_array_equal(HistogramMatch(None)(image[None]), image[None])


def test_histogram_match_resizes_reference():
    hw = (60, 90)
    image = np.zeros(hw, np.float32)
    image[10:50, 20:70] = np.linspace(10.0, 20.0, 50)[None, :]
    # twice the size; its object is a smooth ramp 300..500, whose histogram survives resizing
    reference = np.zeros((120, 180), np.float32)
    reference[20:100, 40:140] = np.linspace(300.0, 500.0, 100)[None, :]
    matcher = HistogramMatch(reference)
    out = matcher(image[None])[0]
    np.testing.assert_array_equal(out[image == 0], 0.0)
    object_values = out[10:50, 20:70]
    assert np.all(np.diff(object_values[0]) >= 0)  # monotone remapping
    # uniform 300..500 (the resized reference's blurred rim adds a few lower values)
    assert np.percentile(object_values, [10, 50, 90]) == pytest.approx([320.0, 400.0, 480.0], abs=10.0)
    assert list(matcher._masked_reference) == [hw]  # cached at the input's size


def test_robust_normalize_bit_depth_invariant():
    rng = np.random.default_rng(1)
    img8 = rng.integers(0, 256, (1, 40, 50)).astype(np.uint8)
    img16 = img8.astype(np.uint16) * 257
    norm = RobustNormalizeIntensity(lower=1.0, upper=99.0, b_min=-1.0, b_max=1.0)
    out8, out16 = norm(img8), norm(img16)
    assert out8.dtype == np.float32
    np.testing.assert_allclose(out8, out16, atol=1e-5)
    p1, p99 = np.percentile(img8, [1, 99])
    assert out8[img8 == round(p1)].mean() == pytest.approx(-1.0, abs=0.02)
    assert out8.max() > 1.0  # no clipping by default
    clipped = RobustNormalizeIntensity(clip=True)(img16)
    assert clipped.min() == -1.0 and clipped.max() == 1.0
    out_t = norm(torch.from_numpy(img16.astype(np.int32)))
    np.testing.assert_allclose(out_t.numpy(), out16, atol=1e-5)
    const = RobustNormalizeIntensityd("image")({"image": np.full((1, 6, 7), 123, np.uint16)})["image"]
    assert np.isfinite(const).all() and (const == 0).all()


def test_rand_intensity_scale_shift_one_draw_for_all_keys():
    t = RandIntensityScaleShiftd(("a", "b"), prob=1.0, scale_range=(0.5, 2.0), shift_range=(-1.0, 1.0))
    t.set_random_state(7)
    x = np.linspace(0, 1, 20, dtype=np.float32).reshape(1, 4, 5)
    d = t({"a": x, "b": x.copy()})
    np.testing.assert_array_equal(d["a"], d["b"])
    scale, shift = t.intensity.scale, t.intensity.shift
    assert scale != 1.0 and shift != 0.0
    np.testing.assert_allclose(d["a"], x * scale + shift, rtol=1e-6)
    np.testing.assert_array_equal(RandIntensityScaleShift(prob=0.0)(x), x)


# ------------------------------------------------------------------------------------------ augmentation


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


# ------------------------------------------------------------------------------------------ targets


def test_landmark_heatmap_and_mask():
    points = np.array([[10.25, 40.5], [np.nan, np.nan], [70.0, 3.0], [-2.0, 5.0]], np.float32)
    heatmaps, mask = LandmarkHeatmap((48, 64), sigma=2.0, gamma=50.0)(points)
    assert heatmaps.shape == (4, 48, 64) and heatmaps.dtype == np.float32
    assert mask.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert heatmaps[1:].max() == 0.0  # masked landmarks have empty heatmaps
    decoded, peak = decode_heatmaps(torch.from_numpy(heatmaps)[None])
    np.testing.assert_allclose(decoded[0, 0].numpy(), points[0], atol=0.01)
    assert peak[0, 0] == pytest.approx(50.0 * np.exp(-(0.25**2 + 0.5**2) / 8), rel=1e-4)

    # 256 px input grid, 64 px heatmaps
    small = LandmarkHeatmapd(spatial_size=(64, 64), points_spatial_size=(256, 256), sigma=1.5)({"landmarks": points})
    decoded, _ = decode_heatmaps(torch.from_numpy(small["heatmaps"])[None])
    assert decoded[0, 0].numpy() == pytest.approx((points[0] + 0.5) / 4 - 0.5, abs=0.01)
    assert small["landmarks_mask"].tolist() == [1.0, 0.0, 1.0, 0.0]

    only_mask = LandmarkMaskd(spatial_size=(48, 64))({"landmarks": torch.from_numpy(points)})
    assert isinstance(only_mask["landmarks_mask"], torch.Tensor)
    assert only_mask["landmarks_mask"].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_histogram_match_map_mode_is_monotone_and_continuous():
    rng = np.random.default_rng(5)
    rows, cols = np.mgrid[:64, :80]
    obj = ((rows - 32) ** 2 / 20**2 + (cols - 40) ** 2 / 25**2) < 1
    image = np.where(obj, 0.6, 0.1) + 0.3 * cols / 80 + rng.normal(0, 0.02, (64, 80))
    reference = np.where(obj, 3.0, 1.0) + rng.normal(0, 0.2, (64, 80))
    out = HistogramMatch(reference.astype(np.float32), outside_mask="map")(image[None].astype(np.float32))[0]
    # one monotone grey-value map for all pixels: the order of values is kept everywhere
    order = np.argsort(image.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= -1e-5)
    # the object moved to the reference's object range, the background moved with it (no step at the mask)
    assert abs(np.median(out[obj]) - 3.0) < 0.2
    assert not np.allclose(out[~obj], image[~obj])
    with pytest.raises(ValueError, match="outside_mask"):
        HistogramMatch(reference, outside_mask="nope")


# ------------------------------------------------------------------------------- landmarks from label images


def test_label_image_to_landmarks_inverts_the_disc_writer(tmp_path):
    from scripts.transforms import LabelImageToLandmarks, LandmarksFromLabelImaged, LoadLandmarkImaged
    from scripts.writers import landmark_label_image, write_label_image

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
    from scripts.transforms import LabelImageToLandmarks, LandmarksFromLabelImaged, LoadLandmarkImaged
    from scripts.writers import write_label_image

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
