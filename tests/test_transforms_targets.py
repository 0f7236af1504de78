"""Tests of scripts.transforms.targets: Gaussian heatmaps and the landmark mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.heatmap import decode_heatmaps
from scripts.transforms.targets import LandmarkHeatmap, LandmarkHeatmapd, LandmarkMaskd


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
