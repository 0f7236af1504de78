"""Engine helpers: the validation output transforms share one decoding of the heatmaps."""

from __future__ import annotations

import torch

import scripts.engines as engines
from scripts.coords import resize_matrix
from scripts.heatmap import gaussian_heatmaps


def test_validation_transforms_decode_each_output_once(monkeypatch):
    points = torch.tensor([[[5.3, 7.6], [20.2, 11.9]]])
    heatmaps = gaussian_heatmaps(points[0], (32, 32), sigma=1.5, gamma=100.0)[None]
    matrix = torch.as_tensor(resize_matrix((64, 128), (32, 32)))[None]
    output = {"pred": heatmaps, "label": {"landmarks": points, "landmarks_orig": points * 2, "net_from_orig": matrix}}
    calls = []
    decode = engines.decode_batch_points
    monkeypatch.setattr(engines, "decode_batch_points", lambda h: calls.append(1) or decode(h))

    pred_net, true_net = engines.network_points_transform(output)
    pred_orig, _ = engines.original_points_transform(output)
    assert len(calls) == 1  # the second transform reused the first decoding
    assert torch.allclose(pred_net, points, atol=1e-3) and torch.equal(true_net, points)
    # original px: x' = (x + 0.5) * 128 / 32 - 0.5, y' = (y + 0.5) * 64 / 32 - 0.5
    expected = torch.stack([(points[..., 0] + 0.5) * 4 - 0.5, (points[..., 1] + 0.5) * 2 - 0.5], dim=-1)
    assert torch.allclose(pred_orig, expected, atol=5e-3)
    # a new output (the next iteration) is decoded again
    engines.network_points_transform({**output, "pred": heatmaps.clone()})
    assert len(calls) == 2
