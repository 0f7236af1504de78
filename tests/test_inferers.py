"""Tests of scripts.inferers.AutocastInferer: float32 heatmaps out, autocast inside, plain fp32 when disabled."""

from __future__ import annotations

import torch

from scripts.inferers import AutocastInferer
from scripts.networks.scn import SpatialConfigurationNet


class _DtypeProbe(torch.nn.Module):
    """A convolution that records the dtype it computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.seen: list[torch.dtype] = []

    def forward(self, x):
        out = self.conv(x)
        self.seen.append(out.dtype)
        return out


def test_autocast_runs_in_bf16_and_returns_float32():
    probe = _DtypeProbe()
    x = torch.randn(2, 1, 8, 8)
    out = AutocastInferer("cpu", "bfloat16", enabled=True)(x, probe)
    assert probe.seen == [torch.bfloat16] and out.dtype == torch.float32
    torch.testing.assert_close(out, probe.conv(x), atol=0.05, rtol=0.05)


def test_disabled_inferer_equals_the_plain_network():
    torch.manual_seed(0)
    net = SpatialConfigurationNet(in_channels=1, num_landmarks=3, num_filters=4).eval()
    x = torch.randn(1, 1, 32, 32)
    inferer = AutocastInferer(device_type="cpu:0", enabled=False)
    assert inferer.device_type == "cpu"
    with torch.no_grad():
        torch.testing.assert_close(inferer(x, net), net(x), atol=0, rtol=0)
