"""SpatialConfiguration-Net (SCN) for 2D landmark heatmap regression.

Payer, Stern, Bischof, Urschler, "Integrating spatial configuration into heatmap regression based
CNNs for landmark localization", Medical Image Analysis 54 (2019). The network multiplies two
components element-wise::

    heatmaps = LA(x) * SC(LA(x))

* local appearance (LA): a U-Net-like pyramid of ``num_levels`` levels; each level has
  ``convs_per_level`` ``la_kernel_size`` convolutions with ``num_filters`` outputs, dropout after
  the first convolution, 2x2 average pooling after the second convolution to feed the level below,
  and on the way back up the coarser level's output is up-sampled x2 and *added* to the level's
  features after its second convolution, followed by the level's remaining convolutions.
  A final linear convolution gives one heatmap per landmark.
* spatial configuration (SC): the LA heatmaps are average-pooled by ``sc_downsample``, passed
  through ``sc_num_convs`` large-kernel convolutions, one more convolution to one channel per
  landmark with ``tanh`` (values in ``[-1, 1]``), and up-sampled back with bicubic interpolation.

LeakyReLU follows every intermediate convolution; all convolutions use 'same' padding, so the
output has the input's spatial size. Shapes: input ``(B, in_channels, H, W)``, output
``(B, num_landmarks, H, W)``, one channel per landmark in landmark order.

The defaults are the paper's network (5x5 convolutions, 64 filters, LA at full resolution, SC at
1/8). ``stem_stride`` 2 or 4 puts the whole network on a coarser grid: a stem of strided 3x3
convolutions (one per factor 2) feeds the LA pyramid at ``input / stem_stride``, the SC still works
at ``input / sc_downsample``, and the product is up-sampled to the input size with bicubic
interpolation (``align_corners=False``, the pixel-centre convention of :mod:`scripts.coords`), so
the heatmaps keep a smooth sub-pixel peak for the decoder. ``la_norm_groups`` > 0 adds a GroupNorm
after every local-appearance convolution (stem included; not in the SC, whose input is the heatmaps).
:data:`SCN_VARIANTS` names the settings used by the configs (``"paper"``, ``"fast"``, ``"fast_gn"``).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpatialConfigurationNet", "SCN_VARIANTS"]

#: Constructor arguments of the named SCN variants (the configs' ``scn_variant``). ``"paper"`` is
#: Payer et al.'s network; ``"fast"`` runs the local appearance at 1/2 resolution with 3x3
#: convolutions and a lighter SC (11x11, 32 filters, still at 1/8): about 4-6x the training steps/s
#: on a CPU at 128-256 px (``benchmarks/speed.py`` prints the ratio side by side); ``"fast_gn"`` is
#: ``"fast"`` with GroupNorm (8 groups) in the local appearance, which learns more per step.
SCN_VARIANTS = {
    "paper": {"stem_stride": 1, "la_kernel_size": 5, "sc_kernel_size": 15, "sc_num_filters": 64, "la_norm_groups": 0},
    "fast": {"stem_stride": 2, "la_kernel_size": 3, "sc_kernel_size": 11, "sc_num_filters": 32, "la_norm_groups": 0},
    "fast_gn": {"stem_stride": 2, "la_kernel_size": 3, "sc_kernel_size": 11, "sc_num_filters": 32, "la_norm_groups": 8},
}


class SpatialConfigurationNet(nn.Module):
    """SpatialConfiguration-Net: heatmaps = local appearance x spatial configuration.

    Args:
        in_channels: channels of the input image.
        num_landmarks: heatmap channels, one per landmark (37 hand, 6 lower limb).
        num_filters: channels of every local-appearance convolution.
        num_levels: resolution levels of the local-appearance pyramid (level 0 = input size,
            level ``l`` = input size / ``2**l``).
        convs_per_level: convolutions per level, at least 2: the first two precede the pooling /
            the addition of the up-sampled coarser level, the remaining ones follow the addition.
            The lowest level applies all of them in sequence.
        la_kernel_size: kernel size of the local-appearance convolutions (odd).
        dropout: dropout probability applied after the first convolution of every level.
        upsample_mode: ``torch.nn.functional.interpolate`` mode used to up-sample a coarser
            level x2 (``"bilinear"``, ``"bicubic"`` or ``"nearest"``).
        sc_downsample: factor of the average pooling in front of the spatial configuration.
        sc_num_convs: intermediate spatial-configuration convolutions.
        sc_kernel_size: kernel size of the spatial-configuration convolutions (odd).
        sc_num_filters: channels of the intermediate spatial-configuration convolutions.
        negative_slope: slope of the LeakyReLU after every intermediate convolution.
        stem_stride: 1 (paper), 2 or 4: input pixels per pixel of the local-appearance grid; a stem
            of ``log2(stem_stride)`` strided 3x3 convolutions with ``num_filters`` outputs feeds the
            pyramid, and the heatmaps are up-sampled (bicubic) back to the input size.
        la_norm_groups: 0 (the paper: no normalisation) or the number of groups of a
            ``torch.nn.GroupNorm`` after every local-appearance convolution, stem included
            (a divisor of ``num_filters``; batch-size independent, so it works at batch 1).
        la_output_init_std: std of the normal initialisation of the final local-appearance
            convolution, or ``None`` for Kaiming (linear gain).
        sc_output_init_std: same for the final spatial-configuration convolution.

    The two output convolutions default to std 1e-4, as in Payer's implementation: the product
    of two components starts near zero instead of a random product of two large maps, and the
    scale-invariant Adam updates used for training make the small start harmless.
    All other convolution weights use Kaiming normal initialisation for LeakyReLU
    (``std = sqrt(2 / (1 + negative_slope**2) / fan_in)``); all biases start at 0.

    ``sc_downsample`` is counted in input pixels and must be a multiple of ``stem_stride``. Input
    height and width must be divisible by ``stem_stride * 2**(num_levels - 1)`` and by ``sc_downsample``.

    Examples::

        net = SpatialConfigurationNet(num_landmarks=37)
        heatmaps = net(torch.zeros(1, 1, 256, 256))  # (1, 37, 256, 256)
        heatmaps, la, sc = net.forward_components(torch.zeros(1, 1, 256, 256))
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_landmarks: int = 37,
        num_filters: int = 64,
        num_levels: int = 4,
        convs_per_level: int = 3,
        la_kernel_size: int = 5,
        dropout: float = 0.5,
        upsample_mode: str = "bilinear",
        sc_downsample: int = 8,
        sc_num_convs: int = 3,
        sc_kernel_size: int = 15,
        sc_num_filters: int = 64,
        negative_slope: float = 0.1,
        la_output_init_std: Optional[float] = 1e-4,
        sc_output_init_std: Optional[float] = 1e-4,
        stem_stride: int = 1,
        la_norm_groups: int = 0,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("in_channels", in_channels, 1),
            ("num_landmarks", num_landmarks, 1),
            ("num_filters", num_filters, 1),
            ("num_levels", num_levels, 1),
            ("convs_per_level", convs_per_level, 2),
            ("sc_downsample", sc_downsample, 1),
            ("sc_num_convs", sc_num_convs, 0),
            ("sc_num_filters", sc_num_filters, 1),
        ):
            if int(value) != value or value < minimum:
                raise ValueError(f"SpatialConfigurationNet: {name} must be an integer >= {minimum}, got {value!r}.")
        for name, size in (("la_kernel_size", la_kernel_size), ("sc_kernel_size", sc_kernel_size)):
            if int(size) != size or size < 1 or size % 2 == 0:
                raise ValueError(f"SpatialConfigurationNet: {name} must be an odd positive integer, got {size!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SpatialConfigurationNet: dropout must be in [0, 1), got {dropout!r}.")
        if upsample_mode not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(
                "SpatialConfigurationNet: upsample_mode must be 'bilinear', 'bicubic' or 'nearest', "
                f"got {upsample_mode!r}."
            )
        if int(la_norm_groups) != la_norm_groups or la_norm_groups < 0 or (
            la_norm_groups and num_filters % la_norm_groups != 0
        ):
            raise ValueError(
                "SpatialConfigurationNet: la_norm_groups must be 0 (no normalisation) or a positive divisor of "
                f"num_filters ({num_filters}), got {la_norm_groups!r}."
            )
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"SpatialConfigurationNet: stem_stride must be 1, 2 or 4, got {stem_stride!r}.")
        if sc_downsample % stem_stride != 0:
            raise ValueError(
                f"SpatialConfigurationNet: sc_downsample ({sc_downsample}) must be a multiple of stem_stride ({stem_stride})."
            )

        self.num_levels = int(num_levels)
        self.num_landmarks = int(num_landmarks)
        self.sc_downsample = int(sc_downsample)
        self.upsample_mode = upsample_mode
        self.stem_stride = int(stem_stride)
        self.pyramid_divisor = self.stem_stride * 2 ** (self.num_levels - 1)
        self.size_divisor = math.lcm(self.pyramid_divisor, self.sc_downsample)
        self.negative_slope = float(negative_slope)
        self.la_norm_groups = int(la_norm_groups)

        def conv_act(cin: int, cout: int, kernel: int, stride: int = 1, norm_groups: int = 0) -> List[nn.Module]:
            layers: List[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)]
            if norm_groups:
                layers.append(nn.GroupNorm(norm_groups, cout))
            return layers + [nn.LeakyReLU(negative_slope)]

        def la_conv(cin: int, stride: int = 1, kernel: int = la_kernel_size) -> List[nn.Module]:
            return conv_act(cin, num_filters, kernel, stride, self.la_norm_groups)

        # stem: one strided 3x3 convolution per factor 2 of stem_stride (empty for the paper's SCN)
        stem: List[nn.Module] = []
        for i in range(int(math.log2(self.stem_stride))):
            stem += la_conv(in_channels if i == 0 else num_filters, stride=2, kernel=3)
        self.stem = nn.Sequential(*stem)
        # Level l, on the way down: conv, dropout, conv (all convs at the lowest level).
        # Stored finest first.
        down: List[nn.Module] = []
        for level in range(self.num_levels):
            cin = in_channels if level == 0 and self.stem_stride == 1 else num_filters
            n_convs = convs_per_level if level == self.num_levels - 1 else 2
            layers = la_conv(cin) + [nn.Dropout(dropout)]
            for _ in range(n_convs - 1):
                layers += la_conv(num_filters)
            down.append(nn.Sequential(*layers))
        self.la_down = nn.ModuleList(down)
        # Level l, on the way up (after adding the up-sampled level l + 1): the remaining convs.
        # Stored coarsest first (level num_levels - 2 first), the order in which forward uses them;
        # an empty Sequential is the identity (convs_per_level == 2).
        up: List[nn.Module] = []
        for _ in range(self.num_levels - 1):
            layers = []
            for _ in range(convs_per_level - 2):
                layers += la_conv(num_filters)
            up.append(nn.Sequential(*layers))
        self.la_up = nn.ModuleList(up)
        self.la_output = nn.Conv2d(num_filters, num_landmarks, la_kernel_size, padding=la_kernel_size // 2)
        self.la_pool = nn.AvgPool2d(kernel_size=2, stride=2)

        sc_layers: List[nn.Module] = []
        cin = num_landmarks
        for _ in range(sc_num_convs):
            sc_layers += conv_act(cin, sc_num_filters, sc_kernel_size)
            cin = sc_num_filters
        sc_pool = self.sc_downsample // self.stem_stride  # on the local-appearance grid
        self.sc_pool = nn.AvgPool2d(kernel_size=sc_pool, stride=sc_pool)
        self.sc_convs = nn.Sequential(*sc_layers)
        self.sc_output = nn.Conv2d(cin, num_landmarks, sc_kernel_size, padding=sc_kernel_size // 2)

        self._init_weights(la_output_init_std, sc_output_init_std)

    def _init_weights(self, la_output_init_std: Optional[float], sc_output_init_std: Optional[float]) -> None:
        outputs = {self.la_output: la_output_init_std, self.sc_output: sc_output_init_std}
        for module in self.modules():
            if not isinstance(module, nn.Conv2d):
                continue
            if module in outputs:
                std = outputs[module]
                if std is None:
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")
                else:
                    nn.init.normal_(module.weight, mean=0.0, std=float(std))
            else:
                nn.init.kaiming_normal_(
                    module.weight, a=self.negative_slope, mode="fan_in", nonlinearity="leaky_relu"
                )
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def _check_size(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"SpatialConfigurationNet expects input (B, C, H, W), got shape {list(x.shape)}.")
        h, w = x.shape[-2], x.shape[-1]
        if h % self.size_divisor != 0 or w % self.size_divisor != 0:
            raise ValueError(
                f"SpatialConfigurationNet: input height and width must be divisible by {self.size_divisor} "
                f"(stem_stride * 2**(num_levels - 1) = {self.pyramid_divisor} and sc_downsample = {self.sc_downsample}), "
                f"got {h}x{w}."
            )

    def _upsample(self, x: torch.Tensor, size: List[int]) -> torch.Tensor:
        if self.upsample_mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.upsample_mode, align_corners=False)

    def local_appearance(self, x: torch.Tensor) -> torch.Tensor:
        """LA heatmaps ``(B, num_landmarks, H / stem_stride, W / stem_stride)`` (linear output) of an input ``(B, C, H, W)``."""
        skips: List[torch.Tensor] = []
        h = self.stem(x)
        for level, block in enumerate(self.la_down):
            h = block(h)
            if level < self.num_levels - 1:
                skips.append(h)
                h = self.la_pool(h)
        for i, block in enumerate(self.la_up):
            skip = skips[len(skips) - 1 - i]
            h = block(skip + self._upsample(h, [skip.shape[-2], skip.shape[-1]]))
        return self.la_output(h)

    def spatial_configuration(self, la: torch.Tensor) -> torch.Tensor:
        """SC maps ``(B, num_landmarks, H, W)`` in ``[-1, 1]`` from LA heatmaps of the same shape."""
        s = torch.tanh(self.sc_output(self.sc_convs(self.sc_pool(la))))
        # bicubic up-sampling in at least float32 (also under bf16/fp16 autocast); the overshoot of
        # the cubic kernel can leave [-1, 1] slightly, so clamp back to the tanh range.
        s = s.to(torch.promote_types(s.dtype, torch.float32))
        s = F.interpolate(s, size=[la.shape[-2], la.shape[-1]], mode="bicubic", align_corners=False)
        return s.clamp(-1.0, 1.0)

    def forward_components(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(heatmaps, la, sc)``; ``heatmaps`` is ``(B, num_landmarks, H, W)``, ``la`` and ``sc`` are
        on the local-appearance grid ``(H / stem_stride, W / stem_stride)``; ``heatmaps = la * sc``
        (up-sampled bicubically to ``(H, W)`` when ``stem_stride > 1``).

        ``heatmaps`` and ``sc`` are at least float32 (also under autocast, where ``la`` is the
        autocast dtype), so that sub-pixel decoding is not limited by half precision.
        """
        self._check_size(x)
        la = self.local_appearance(x)
        sc = self.spatial_configuration(la)
        heatmaps = la.to(sc.dtype) * sc
        if self.stem_stride > 1:
            heatmaps = F.interpolate(heatmaps, size=[x.shape[-2], x.shape[-1]], mode="bicubic", align_corners=False)
        return heatmaps, la, sc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Heatmaps ``(B, num_landmarks, H, W)`` of an input ``(B, in_channels, H, W)``."""
        return self.forward_components(x)[0]
