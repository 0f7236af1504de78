"""Adversarial PoseNet networks: hourglass shapes, strides and the pixel-centre rule of its up-sampling,
TorchScript, and the discriminators' (B, K) logits."""

from __future__ import annotations

import pytest
import torch

from scripts.heatmap import decode_heatmaps, gaussian_heatmaps
from scripts.networks import ConfidenceDiscriminator, PoseDiscriminator, StackedHourglass


def _tiny_hourglass(**kwargs) -> StackedHourglass:
    args = {"num_landmarks": 3, "num_stacks": 2, "num_channels": 8, "depth": 2, "output_stride": 4}
    return StackedHourglass(**{**args, **kwargs}).eval()


@pytest.mark.parametrize(
    "num_stacks, depth, stride, hw",
    [(1, 1, 4, (24, 40)), (2, 2, 4, (32, 48)), (3, 2, 2, (24, 16)), (2, 3, 1, (16, 24))],
)
def test_stack_shapes_follow_stride_and_forward_returns_last_stack_on_input_grid(num_stacks, depth, stride, hw):
    net = _tiny_hourglass(num_stacks=num_stacks, depth=depth, output_stride=stride)
    x = torch.randn(2, 1, *hw)
    with torch.no_grad():
        stacks = net.forward_stacks(x)
        out = net(x)
    assert len(stacks) == num_stacks
    for s in stacks:
        assert s.shape == (2, 3, hw[0] // stride, hw[1] // stride)
    assert out.shape == (2, 3, *hw)
    assert torch.allclose(out, net.upsample_heatmaps(stacks[-1], list(hw)))
    net.upsample_output = False
    with torch.no_grad():
        assert torch.equal(net(x), stacks[-1])


def test_stacks_differ_and_every_stack_reaches_the_input():
    net = _tiny_hourglass(num_stacks=3)
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    stacks = net.forward_stacks(x)
    assert not torch.allclose(stacks[0], stacks[1])
    for s in stacks:
        (grad,) = torch.autograd.grad(s.sum(), x, retain_graph=True)
        assert grad.abs().sum() > 0


def test_upsampled_heatmap_peak_keeps_the_pixel_centre_convention():
    """A Gaussian drawn at x_h on the stride-4 grid decodes, after forward's up-sampling, at (x_h + 0.5) * 4 - 0.5."""
    net = _tiny_hourglass()
    points_net = torch.tensor([[[10.3, 20.8], [33.6, 5.2], [47.0, 40.45]]])
    points_h = (points_net + 0.5) / 4 - 0.5
    low = gaussian_heatmaps(points_h, (16, 16), sigma=1.0, gamma=1.0)
    decoded, _ = decode_heatmaps(net.upsample_heatmaps(low, [64, 64]))
    assert torch.allclose(decoded, points_net, atol=0.2)
    # bilinear up-sampling puts the maximum on a coarse node: measurably worse
    bilinear = _tiny_hourglass(upsample_mode="bilinear")
    decoded_bilinear, _ = decode_heatmaps(bilinear.upsample_heatmaps(low, [64, 64]))
    assert (decoded_bilinear - points_net).norm(dim=-1).mean() > (decoded - points_net).norm(dim=-1).mean() + 0.3


def test_torchscript_matches_eager():
    net = _tiny_hourglass()
    x = torch.randn(1, 1, 32, 48)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-6)


def test_bad_sizes_and_arguments_raise_clear_errors():
    net = _tiny_hourglass(depth=2, output_stride=4)
    with pytest.raises(ValueError, match="divisible by output_stride \\* 2\\*\\*depth = 16"):
        net(torch.zeros(1, 1, 40, 32))
    with pytest.raises(ValueError, match="output_stride must be 1, 2 or 4"):
        StackedHourglass(num_landmarks=3, output_stride=3)
    with pytest.raises(ValueError, match="num_stacks must be an integer >= 1"):
        StackedHourglass(num_landmarks=3, num_stacks=0)
    with pytest.raises(ValueError, match="upsample_mode"):
        StackedHourglass(num_landmarks=3, upsample_mode="nearest")


@pytest.mark.parametrize("image_hw, heatmap_hw", [((64, 48), (16, 12)), ((16, 12), (16, 12)), ((8, 6), (16, 12))])
def test_discriminators_give_one_logit_per_landmark(image_hw, heatmap_hw):
    pose = PoseDiscriminator(in_channels=1, num_landmarks=5, base_channels=4, num_downsamples=2)
    conf = ConfidenceDiscriminator(num_landmarks=5, base_channels=4, num_downsamples=2)
    heatmaps = torch.rand(3, 5, *heatmap_hw, requires_grad=True)
    pose_logits = pose(torch.randn(3, 1, *image_hw), heatmaps)
    conf_logits = conf(heatmaps)
    assert pose_logits.shape == (3, 5) and conf_logits.shape == (3, 5)
    # the logits depend on the heatmaps (the generator's adversarial gradient goes through here)
    (grad,) = torch.autograd.grad(pose_logits.sum() + conf_logits.sum(), heatmaps)
    assert grad.abs().sum() > 0


def test_pose_discriminator_sees_the_image():
    pose = PoseDiscriminator(num_landmarks=2, base_channels=4, num_downsamples=1)
    heatmaps = torch.rand(1, 2, 8, 8)
    a = pose(torch.zeros(1, 1, 32, 32), heatmaps)
    b = pose(torch.randn(1, 1, 32, 32) * 3, heatmaps)
    assert not torch.allclose(a, b)


def test_discriminators_reject_wrong_shapes():
    pose = PoseDiscriminator(num_landmarks=5, base_channels=4, num_downsamples=1)
    conf = ConfidenceDiscriminator(num_landmarks=5, base_channels=4, num_downsamples=1)
    with pytest.raises(ValueError, match="heatmaps must be \\(B, 5, h, w\\)"):
        conf(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="image must be \\(B, 1, H, W\\) with B = 2"):
        pose(torch.zeros(1, 1, 8, 8), torch.zeros(2, 5, 8, 8))
