"""Tests of scripts.transforms.intensity: histogram matching, percentile normalisation, random scale and shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.transforms.intensity import (
    HistogramMatch,
    HistogramMatchd,
    RandIntensityScaleShift,
    RandIntensityScaleShiftd,
    RobustNormalizeIntensity,
    RobustNormalizeIntensityd,
)
from tests.helpers import write_png16


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
