"""Tests of scripts.transforms.post: heatmaps to points in network pixels, original pixels and mm."""

from __future__ import annotations

import numpy as np
import torch

from scripts.coords import apply_matrix
from scripts.heatmap import gaussian_heatmaps
from scripts.transforms import ResizeWithLandmarks
from scripts.transforms.post import DecodeLandmarksd, LandmarksToOriginald


def test_decode_and_map_back_with_letterbox():
    """Heatmaps at known network points -> original pixels through a letterboxed resize -> mm."""
    orig_hw, grid = (300, 120), (64, 48)
    resize = ResizeWithLandmarks(grid, keep_aspect=True)
    net_from_orig = resize.matrix(orig_hw)[0]
    truth = np.array([[10.3, 250.7], [100.6, 20.2], [60.0, 150.45]])
    points_net = apply_matrix(truth, net_from_orig)
    heatmaps = gaussian_heatmaps(torch.as_tensor(points_net), grid, sigma=2.0, gamma=50.0)
    sample = {"pred": heatmaps, "net_from_orig": net_from_orig, "spacing": np.array([0.5, 0.25], np.float32)}
    out = LandmarksToOriginald()(DecodeLandmarksd(gamma=50.0)(sample))
    np.testing.assert_allclose(out["pred_landmarks"], points_net, atol=2e-3)
    np.testing.assert_allclose(out["pred_landmarks_orig"], truth, atol=0.02)
    np.testing.assert_allclose(out["pred_landmarks_mm"], truth * [0.5, 0.25], atol=0.01)
    offsets = points_net - np.rint(points_net)  # the confidence is the value at the integer maximum / gamma
    np.testing.assert_allclose(out["pred_confidence"], np.exp(-(offsets**2).sum(1) / (2 * 2.0**2)), atol=1e-4)
    unknown = LandmarksToOriginald()({**out, "spacing": np.full(2, np.nan, np.float32)})
    assert np.isnan(unknown["pred_landmarks_mm"]).all() and np.isfinite(unknown["pred_landmarks_orig"]).all()
