"""Tests of scripts.networks.scn: shapes, structure, initialisation, TorchScript, autocast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scripts.networks import SpatialConfigurationNet

SMALL = dict(num_filters=8, sc_num_filters=8, sc_num_convs=2, sc_kernel_size=5, num_levels=3, sc_downsample=4)
# outputs initialised with Kaiming instead of std 1e-4, so that values are of order 1
VISIBLE = dict(SMALL, la_output_init_std=None, sc_output_init_std=None)


def small_net(**kwargs) -> SpatialConfigurationNet:
    torch.manual_seed(0)
    return SpatialConfigurationNet(**{**SMALL, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_landmarks=6),
        dict(num_landmarks=37, convs_per_level=2),
        dict(num_landmarks=5, num_levels=4, convs_per_level=4, upsample_mode="nearest", in_channels=3),
        dict(num_landmarks=3, num_levels=1, upsample_mode="bicubic", sc_downsample=8),
    ],
)
def test_shape_non_square(kwargs):
    net = small_net(**kwargs).eval()
    x = torch.randn(2, kwargs.get("in_channels", 1), 64, 96)
    heatmaps, la, sc = net.forward_components(x)
    expected = (2, kwargs["num_landmarks"], 64, 96)
    assert tuple(net(x).shape) == tuple(heatmaps.shape) == tuple(la.shape) == tuple(sc.shape) == expected
    torch.testing.assert_close(heatmaps, la * sc)


def test_default_hand_config_256():
    net = SpatialConfigurationNet().eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 256, 256))
    assert out.shape == (1, 37, 256, 256)
    assert torch.isfinite(out).all()


def test_init_biases_zero_and_kaiming_std():
    torch.manual_seed(1)
    net = SpatialConfigurationNet(num_landmarks=37)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)
    gain = math.sqrt(2.0 / (1.0 + 0.1**2))
    inner = net.la_down[1][0]  # 64 -> 64, 5x5: 102400 weights
    expected = gain / math.sqrt(64 * 5 * 5)
    assert abs(inner.weight.std().item() / expected - 1.0) < 0.02
    sc_inner = net.sc_convs[2]  # 64 -> 64, 15x15
    assert abs(sc_inner.weight.std().item() / (gain / math.sqrt(64 * 15 * 15)) - 1.0) < 0.02
    first = net.la_down[0][0]  # 1 -> 64, fan_in 25
    assert abs(first.weight.std().item() / (gain / 5.0) - 1.0) < 0.1
    # Payer's small initialisation of both output convolutions
    assert abs(net.la_output.weight.std().item() / 1e-4 - 1.0) < 0.02
    assert abs(net.sc_output.weight.std().item() / 1e-4 - 1.0) < 0.02
    # None: Kaiming with linear gain
    kaiming_out = SpatialConfigurationNet(num_landmarks=37, la_output_init_std=None).la_output.weight
    assert abs(kaiming_out.std().item() / (1.0 / math.sqrt(64 * 25)) - 1.0) < 0.05


@pytest.mark.parametrize("num_levels,convs_per_level,sc_num_convs", [(4, 3, 3), (3, 2, 1), (2, 4, 0)])
def test_structure(num_levels, convs_per_level, sc_num_convs):
    net = SpatialConfigurationNet(
        num_levels=num_levels, convs_per_level=convs_per_level, sc_num_convs=sc_num_convs, num_filters=4,
        sc_num_filters=4,
    )
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.kernel_size == (5, 5) for c in convs) == num_levels * convs_per_level + 1
    assert sum(c.kernel_size == (15, 15) for c in convs) == sc_num_convs + 1
    assert len(convs) == num_levels * convs_per_level + sc_num_convs + 2
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == num_levels and all(d.p == 0.5 for d in dropouts)
    pools = [m for m in net.modules() if isinstance(m, nn.AvgPool2d)]
    assert sorted(p.kernel_size for p in pools) == [2, 8]
    relus = [m for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(relus) == num_levels * convs_per_level + sc_num_convs
    assert all(r.negative_slope == 0.1 for r in relus)


def test_layer_order_and_resolutions():
    """Conv call order: two convs, pool, ..., lowest level, up-add then remaining conv, per level."""
    net = small_net(num_landmarks=2, num_levels=3, convs_per_level=3, sc_num_convs=2, sc_downsample=4).eval()
    sizes = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: sizes.append(tuple(out.shape[-2:])))
    net(torch.randn(1, 1, 32, 48))
    full, half, quarter, sc = (32, 48), (16, 24), (8, 12), (8, 12)
    assert sizes == [full, full, half, half, quarter, quarter, quarter, half, full, full, sc, sc, sc]


def test_up_path_adds_upsampled_coarser_level():
    net = small_net(num_landmarks=2, num_levels=3, convs_per_level=3, upsample_mode="bilinear").eval()
    seen = {}
    net.la_down[1].register_forward_hook(lambda m, i, o: seen.__setitem__("skip1", o))
    net.la_down[2].register_forward_hook(lambda m, i, o: seen.__setitem__("lowest", o))
    net.la_up[0].register_forward_pre_hook(lambda m, i: seen.__setitem__("up1_in", i[0]))
    net(torch.randn(1, 1, 32, 48))
    expected = seen["skip1"] + F.interpolate(seen["lowest"], scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(seen["up1_in"], expected)


def test_sc_output_in_tanh_range():
    net = small_net(num_landmarks=4, la_output_init_std=None, sc_output_init_std=3.0).eval()
    with torch.no_grad():
        _, la, sc = net.forward_components(10.0 * torch.randn(2, 1, 32, 64))
    assert sc.abs().max() <= 1.0
    assert sc.abs().max() > 0.9  # saturated somewhere, so the bound is really tested
    assert la.abs().max() > 1.0  # the LA part is linear, not bounded


@pytest.mark.parametrize("hw", [(30, 32), (32, 34), (18, 18)])
def test_invalid_size_raises(hw):
    net = small_net(num_landmarks=2)  # 2**(3 - 1) = 4 and sc_downsample 4
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 1, *hw))


def test_size_must_also_fit_sc_downsample():
    net = small_net(num_landmarks=2, num_levels=2, sc_downsample=8)  # pyramid alone needs only 2
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 1, 36, 40))
    assert net(torch.zeros(1, 1, 40, 48)).shape == (1, 2, 40, 48)


def test_invalid_size_default_net_names_divisor():
    net = SpatialConfigurationNet(num_filters=2, sc_num_filters=2, num_landmarks=2)
    with pytest.raises(ValueError, match=r"divisible by 8.*got 256x252"):
        net(torch.zeros(1, 1, 256, 252))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(convs_per_level=1), "convs_per_level"),
        (dict(la_kernel_size=4), "la_kernel_size"),
        (dict(upsample_mode="area"), "upsample_mode"),
        (dict(dropout=1.0), "dropout"),
        (dict(num_levels=0), "num_levels"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpatialConfigurationNet(**{**SMALL, **kwargs})


def test_torchscript_matches_eager():
    net = small_net(num_landmarks=3, **{k: v for k, v in VISIBLE.items() if k not in SMALL}).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
    with pytest.raises(torch.jit.Error, match=r"ValueError: .*divisible by 4 \(stem_stride \* 2\*\*\(num_levels - 1\) = 4 and"):
        scripted(torch.zeros(1, 1, 30, 48))


def test_bf16_autocast_close_to_fp32():
    net = small_net(num_landmarks=3, la_output_init_std=None, sc_output_init_std=None).eval()
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, la, sc = net.forward_components(x)
    assert la.dtype == torch.bfloat16
    assert out.dtype == sc.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert ((out - ref).norm() / ref.norm()).item() < 0.05


def test_channels_last_matches_contiguous():
    net = small_net(num_landmarks=3, la_output_init_std=None, sc_output_init_std=None).eval()
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        ref = net(x)
        out = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_dropout_train_vs_eval():
    net = small_net(num_landmarks=3, la_output_init_std=None, sc_output_init_std=None)
    x = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(x), net(x))
        net.eval()
        torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)


def test_gradients_reach_every_parameter():
    net = small_net(num_landmarks=3, la_output_init_std=None, sc_output_init_std=None).train()
    net(torch.randn(2, 1, 32, 48)).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


@pytest.mark.parametrize("stem_stride", [2, 4])
def test_stem_stride_runs_on_a_coarser_grid_and_returns_input_size(stem_stride):
    net = small_net(num_landmarks=5, stem_stride=stem_stride, sc_downsample=8, **{
        k: v for k, v in VISIBLE.items() if k not in ("sc_downsample",)}).eval()
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        heatmaps, la, sc = net.forward_components(x)
    low = (2, 5, 64 // stem_stride, 96 // stem_stride)
    assert tuple(la.shape) == tuple(sc.shape) == low and tuple(heatmaps.shape) == (2, 5, 64, 96)
    # the heatmaps are the product on the coarse grid, up-sampled with the pixel-centre convention
    expected = F.interpolate(la * sc, size=[64, 96], mode="bicubic", align_corners=False)
    torch.testing.assert_close(heatmaps, expected)
    assert len([m for m in net.stem if isinstance(m, nn.Conv2d)]) == int(math.log2(stem_stride))
    # SC still at 1/8 of the input: pooled by 8 / stem_stride on the LA grid
    assert net.sc_pool.kernel_size == 8 // stem_stride


def test_variants_paper_state_dict_unchanged_and_fast_needs_fewer_operations():
    from scripts.networks.scn import SCN_VARIANTS

    paper = SpatialConfigurationNet(num_landmarks=37, **SCN_VARIANTS["paper"])
    default = SpatialConfigurationNet(num_landmarks=37)
    assert paper.state_dict().keys() == default.state_dict().keys()  # old checkpoints still load
    assert not any(k.startswith("stem") for k in default.state_dict())
    fast = SpatialConfigurationNet(num_landmarks=37, **SCN_VARIANTS["fast"])

    def conv_macs(net, hw):
        total = []
        hooks = [m.register_forward_hook(lambda m, i, o: total.append(o.numel() * m.weight[0].numel()))
                 for m in net.modules() if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            net.eval()(torch.zeros(1, 1, *hw))
        for h in hooks:
            h.remove()
        return sum(total)

    assert conv_macs(fast, (128, 128)) < conv_macs(paper, (128, 128)) / 5
    fast_gn = SpatialConfigurationNet(num_landmarks=37, **SCN_VARIANTS["fast_gn"])
    assert conv_macs(fast_gn, (128, 128)) == conv_macs(fast, (128, 128))  # GroupNorm adds no convolution
    assert sum(isinstance(m, nn.GroupNorm) for m in fast_gn.modules()) > 0
    assert not any(isinstance(m, nn.GroupNorm) for net in (paper, fast) for m in net.modules())


def test_stem_stride_arguments_checked():
    with pytest.raises(ValueError, match="stem_stride must be 1, 2 or 4"):
        SpatialConfigurationNet(stem_stride=3)
    with pytest.raises(ValueError, match="multiple of stem_stride"):
        SpatialConfigurationNet(stem_stride=4, sc_downsample=2)
    net = SpatialConfigurationNet(num_landmarks=2, stem_stride=2, num_filters=4, sc_num_filters=4)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.zeros(1, 1, 40, 40))


def test_la_norm_groups_normalise_every_local_appearance_convolution_and_not_the_sc():
    net = small_net(num_landmarks=4, stem_stride=2, sc_downsample=8, la_norm_groups=4, **{
        k: v for k, v in VISIBLE.items() if k not in ("sc_downsample",)})
    la_modules = [*net.stem, *[m for block in (*net.la_down, *net.la_up) for m in block]]
    for i, module in enumerate(la_modules):
        if isinstance(module, nn.Conv2d):  # conv -> GroupNorm(4 groups) -> LeakyReLU
            norm = la_modules[i + 1]
            assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 4 and norm.num_channels == 8
            assert isinstance(la_modules[i + 2], nn.LeakyReLU)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in la_modules)
    assert sum(isinstance(m, nn.GroupNorm) for m in net.modules()) == n_convs > 0
    assert not any(isinstance(m, nn.GroupNorm) for m in net.sc_convs)
    # the normalised activations: zero mean, unit variance per sample and group, whatever the input's scale
    captured = []
    net.stem[1].register_forward_hook(lambda m, i, o: captured.append(o))
    net.eval()(torch.randn(2, 1, 64, 96) * 1000.0 + 50.0)
    groups = captured[0].reshape(2, 4, -1)
    torch.testing.assert_close(groups.mean(-1), torch.zeros(2, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(groups.std(-1, unbiased=False), torch.ones(2, 4), atol=1e-3, rtol=0)


@pytest.mark.parametrize("groups", [-1, 3, 1.5])
def test_la_norm_groups_checked(groups):
    expected = r"la_norm_groups must be 0 \(no normalisation\) or a positive divisor of num_filters \(8\)"
    with pytest.raises(ValueError, match=expected):
        small_net(la_norm_groups=groups)
