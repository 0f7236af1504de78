"""Adversarial PoseNet networks: a stacked hourglass generator and two landmark discriminators.

Chen, Shen, Wei, Liu, Yang, "Adversarial PoseNet: A Structure-aware Convolutional Network for Human
Pose Estimation", ICCV 2017; the generator is the stacked hourglass of Newell, Yang, Deng, "Stacked
Hourglass Networks for Human Pose Estimation", ECCV 2016.

* :class:`StackedHourglass` (generator G): a stem that down-samples the input by ``output_stride``,
  ``num_stacks`` hourglasses, a heatmap head after every stack (intermediate supervision) whose
  heatmaps and features are re-injected into the next stack. Heatmaps live on a grid of
  ``input_size / output_stride`` pixels; for ``output_stride`` 4 a 256x256 input gives 64x64 maps.
* :class:`PoseDiscriminator` (P): image (resized to the heatmap grid) concatenated with the heatmaps
  -> one logit per landmark, "this landmark is plausibly placed".
* :class:`ConfidenceDiscriminator` (C): heatmaps only -> one logit per landmark, "this heatmap is
  confident (a clean single peak)".

The discriminators return *logits* ``(B, K)``, not probabilities: the losses use
``binary_cross_entropy_with_logits``, which is numerically stable; ``torch.sigmoid`` gives the
probabilities. Feed them heatmaps normalised by
:func:`scripts.losses.normalise_heatmaps_for_discriminator`.

Heatmap grid and coordinates (pixel centres at integers, :mod:`scripts.coords`): a heatmap pixel
``k`` of stride ``s`` covers input pixels ``[k s - 0.5, (k + 1) s - 0.5]``, so a point ``x`` of the
input grid is ``x_h = (x + 0.5) / s - 0.5`` on the heatmap grid and back ``x = (x_h + 0.5) s - 0.5``
(the resize rule of ``scripts.coords`` with ``W' = W / s``). ``forward`` up-samples the last stack's
heatmaps to the input size with ``interpolate(..., align_corners=False)``, which follows the same
convention, so the network's output can be decoded on the input grid exactly like the SCN's.
"""

from __future__ import annotations

from typing import List, Tuple, Union

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = ["StackedHourglass", "PoseDiscriminator", "ConfidenceDiscriminator"]

NormAct = Union[str, Tuple[str, dict]]


def _check_int(owner: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


class _Residual(nn.Module):
    """Pre-activation bottleneck residual block of Newell et al.: norm-act-conv1x1 (C/2), norm-act-conv3x3
    (C/2), norm-act-conv1x1 (C), plus the input (through a 1x1 convolution when the channels change)."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormAct, act: NormAct) -> None:
        super().__init__()
        mid = max(1, out_channels // 2)
        self.body = nn.Sequential(
            get_norm_layer(norm, spatial_dims=2, channels=in_channels),
            get_act_layer(act),
            nn.Conv2d(in_channels, mid, 1),
            get_norm_layer(norm, spatial_dims=2, channels=mid),
            get_act_layer(act),
            nn.Conv2d(mid, mid, 3, padding=1),
            get_norm_layer(norm, spatial_dims=2, channels=mid),
            get_act_layer(act),
            nn.Conv2d(mid, out_channels, 1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class _Hourglass(nn.Module):
    """One hourglass of ``depth`` levels: at every level a residual branch at the current resolution plus a
    max-pooled branch that recurses one level deeper, is up-sampled x2 (nearest) and added."""

    def __init__(self, depth: int, channels: int, norm: NormAct, act: NormAct) -> None:
        super().__init__()
        self.skip = _Residual(channels, channels, norm, act)
        self.down = _Residual(channels, channels, norm, act)
        self.inner = _Hourglass(depth - 1, channels, norm, act) if depth > 1 else _Residual(channels, channels, norm, act)
        self.up = _Residual(channels, channels, norm, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2))))
        return self.skip(x) + F.interpolate(low, size=[x.shape[-2], x.shape[-1]], mode="nearest")


class _Reinjection(nn.Module):
    """Input of the next stack: ``x + conv1x1(features) + conv1x1(heatmaps)`` (Newell et al.)."""

    def __init__(self, channels: int, num_landmarks: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(channels, channels, 1)
        self.heatmaps = nn.Conv2d(num_landmarks, channels, 1)

    def forward(self, x: torch.Tensor, features: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        return x + self.features(features) + self.heatmaps(heatmaps)


class _LastStack(nn.Module):
    """The last stack feeds nothing on."""

    def forward(self, x: torch.Tensor, features: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        return x


class _Stack(nn.Module):
    """Hourglass, feature block, 1x1 heatmap head and the re-injection into the next stack."""

    def __init__(self, depth: int, channels: int, num_landmarks: int, norm: NormAct, act: NormAct, reinject: bool) -> None:
        super().__init__()
        self.hourglass = _Hourglass(depth, channels, norm, act)
        self.features = nn.Sequential(
            _Residual(channels, channels, norm, act),
            nn.Conv2d(channels, channels, 1),
            get_norm_layer(norm, spatial_dims=2, channels=channels),
            get_act_layer(act),
        )
        self.head = nn.Conv2d(channels, num_landmarks, 1)
        self.next_input = _Reinjection(channels, num_landmarks) if reinject else _LastStack()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.features(self.hourglass(x))
        heatmaps = self.head(features)
        return heatmaps, self.next_input(x, features, heatmaps)


class StackedHourglass(nn.Module):
    """Stacked hourglass landmark heatmap regressor (the generator of Adversarial PoseNet).

    Args:
        in_channels: channels of the input image.
        num_landmarks: ``K``, heatmap channels, one per landmark in landmark order.
        num_stacks: hourglasses in sequence; every stack has a heatmap head.
        num_channels: feature channels of the hourglasses (Newell: 256, Chen: 512).
        depth: levels (max-poolings) per hourglass.
        output_stride: 1, 2 or 4: the heatmaps of :meth:`forward_stacks` are ``input_size / output_stride``.
            4 (Newell): 7x7 convolution with stride 2, then a 2x2 max-pooling in the stem.
        upsample_output: if True, :meth:`forward` up-samples the last stack's heatmaps to the input size
            (the network's output then has the input grid, like the SCN, and inference, evaluation and export
            decode it unchanged); if False it returns them on the heatmap grid.
        upsample_mode: ``interpolate`` mode of that up-sampling, ``"bicubic"`` (default) or ``"bilinear"``.
            The maximum of a bilinear up-sampling sits on a coarse grid node (about 0.9 input px of error at
            stride 4), the bicubic one keeps the sub-pixel peak (about 0.1 px for a Gaussian of std 1
            heatmap px, 0.3 px for std 0.75).
        norm: normalisation layer, a name or ``(name, kwargs)`` of ``monai.networks.layers.utils.get_norm_layer``.
            Instance normalisation is the default because it behaves the same in training and evaluation at
            batch size 1; ``"batch"`` is Newell's choice.
        act: activation, a name or ``(name, kwargs)`` of ``get_act_layer``.

    Shapes: input ``(B, in_channels, H, W)`` with ``H`` and ``W`` divisible by ``output_stride * 2**depth``;
    :meth:`forward_stacks` returns ``num_stacks`` tensors ``(B, K, H / s, W / s)``; :meth:`forward` returns the
    last of them, up-sampled to ``(B, K, H, W)`` when ``upsample_output``.

    Examples::

        net = StackedHourglass(num_landmarks=6, num_stacks=2, num_channels=128)
        heatmaps = net(torch.zeros(1, 1, 256, 256))                 # (1, 6, 256, 256)
        stacks = net.forward_stacks(torch.zeros(1, 1, 256, 256))    # 2 x (1, 6, 64, 64)
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_landmarks: int = 37,
        num_stacks: int = 2,
        num_channels: int = 128,
        depth: int = 4,
        output_stride: int = 4,
        upsample_output: bool = True,
        upsample_mode: str = "bicubic",
        norm: NormAct = ("instance", {"affine": True}),
        act: NormAct = "relu",
    ) -> None:
        super().__init__()
        owner = "StackedHourglass"
        in_channels = _check_int(owner, "in_channels", in_channels, 1)
        self.num_landmarks = _check_int(owner, "num_landmarks", num_landmarks, 1)
        self.num_stacks = _check_int(owner, "num_stacks", num_stacks, 1)
        num_channels = _check_int(owner, "num_channels", num_channels, 2)
        self.depth = _check_int(owner, "depth", depth, 1)
        if output_stride not in (1, 2, 4):
            raise ValueError(f"{owner}: output_stride must be 1, 2 or 4, got {output_stride!r}.")
        if upsample_mode not in ("bicubic", "bilinear"):
            raise ValueError(f"{owner}: upsample_mode must be 'bicubic' or 'bilinear', got {upsample_mode!r}.")
        self.output_stride = int(output_stride)
        self.upsample_output = bool(upsample_output)
        self.upsample_mode = upsample_mode

        stem_channels = max(1, num_channels // 2)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 7, stride=min(2, self.output_stride), padding=3),
            get_norm_layer(norm, spatial_dims=2, channels=stem_channels),
            get_act_layer(act),
            _Residual(stem_channels, num_channels, norm, act),
            nn.MaxPool2d(2) if self.output_stride == 4 else nn.Identity(),
            _Residual(num_channels, num_channels, norm, act),
            _Residual(num_channels, num_channels, norm, act),
        )
        self.stacks = nn.ModuleList(
            [
                _Stack(self.depth, num_channels, self.num_landmarks, norm, act, reinject=i < self.num_stacks - 1)
                for i in range(self.num_stacks)
            ]
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _check_size(self, x: torch.Tensor) -> None:
        multiple = self.output_stride * 2**self.depth
        if x.ndim != 4 or x.shape[-2] % multiple != 0 or x.shape[-1] % multiple != 0:
            raise ValueError(
                f"StackedHourglass: input must be (B, C, H, W) with H and W divisible by output_stride * 2**depth "
                f"= {multiple}, got {list(x.shape)}."
            )

    def forward_stacks(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Heatmaps of every stack, ``num_stacks`` tensors ``(B, K, H / s, W / s)``, first stack first."""
        self._check_size(x)
        x = self.stem(x)
        outputs: List[torch.Tensor] = []
        for stack in self.stacks:
            heatmaps, x = stack(x)
            outputs.append(heatmaps)
        return outputs

    def upsample_heatmaps(self, heatmaps: torch.Tensor, spatial_hw: List[int]) -> torch.Tensor:
        """Heatmaps ``(B, K, h, w)`` up-sampled to ``spatial_hw`` (``align_corners=False``, pixel centres kept)."""
        if heatmaps.shape[-2] == spatial_hw[0] and heatmaps.shape[-1] == spatial_hw[1]:
            return heatmaps
        return F.interpolate(heatmaps, size=spatial_hw, mode=self.upsample_mode, align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.forward_stacks(x)[-1]
        if self.upsample_output:
            return self.upsample_heatmaps(last, [x.shape[-2], x.shape[-1]])
        return last


def _encoder(
    in_channels: int, base_channels: int, num_downsamples: int, norm: NormAct, act: NormAct
) -> Tuple[nn.Module, int]:
    """Convolutional encoder: a 3x3 convolution (no normalisation), then ``num_downsamples`` blocks of a 4x4
    stride-2 convolution (channels doubled, at most 8x ``base_channels``), normalisation and activation."""
    layers: List[nn.Module] = [nn.Conv2d(in_channels, base_channels, 3, padding=1), get_act_layer(act)]
    channels = base_channels
    for _ in range(num_downsamples):
        out = min(channels * 2, base_channels * 8)
        layers += [
            nn.Conv2d(channels, out, 4, stride=2, padding=1),
            get_norm_layer(norm, spatial_dims=2, channels=out),
            get_act_layer(act),
        ]
        channels = out
    return nn.Sequential(*layers), channels


class _LandmarkDiscriminator(nn.Module):
    """Encoder, global average pooling and a linear layer to one logit per landmark."""

    def __init__(
        self, owner: str, in_channels: int, num_landmarks: int, base_channels: int, num_downsamples: int,
        norm: NormAct, act: NormAct,
    ) -> None:
        super().__init__()
        self.num_landmarks = _check_int(owner, "num_landmarks", num_landmarks, 1)
        base_channels = _check_int(owner, "base_channels", base_channels, 1)
        num_downsamples = _check_int(owner, "num_downsamples", num_downsamples, 0)
        self.encoder, channels = _encoder(in_channels, base_channels, num_downsamples, norm, act)
        self.classifier = nn.Linear(channels, self.num_landmarks)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x).mean(dim=(-2, -1)))


class PoseDiscriminator(_LandmarkDiscriminator):
    """Pose discriminator P: is each landmark plausibly placed, given the image?

    Args:
        in_channels: image channels.
        num_landmarks: ``K``.
        base_channels: channels of the first convolution; doubled by every down-sampling (at most 8x).
        num_downsamples: stride-2 convolutions of the encoder.
        norm, act: as in :class:`StackedHourglass` (activation default LeakyReLU 0.2, as in DCGAN discriminators).

    ``forward(image, heatmaps)``: ``image`` ``(B, in_channels, H, W)`` is resized to the heatmaps' grid
    ``(h, w)`` (area averaging when it shrinks, bilinear otherwise, ``align_corners=False``) and
    concatenated with ``heatmaps`` ``(B, K, h, w)``; returns logits ``(B, K)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_landmarks: int = 37,
        base_channels: int = 64,
        num_downsamples: int = 3,
        norm: NormAct = ("instance", {"affine": True}),
        act: NormAct = ("leakyrelu", {"negative_slope": 0.2}),
    ) -> None:
        owner = "PoseDiscriminator"
        in_channels = _check_int(owner, "in_channels", in_channels, 1)
        num_landmarks = _check_int(owner, "num_landmarks", num_landmarks, 1)
        super().__init__(owner, in_channels + num_landmarks, num_landmarks, base_channels, num_downsamples, norm, act)
        self.image_channels = in_channels

    def forward(self, image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        if heatmaps.ndim != 4 or heatmaps.shape[1] != self.num_landmarks:
            raise ValueError(
                f"PoseDiscriminator: heatmaps must be (B, {self.num_landmarks}, h, w), got {list(heatmaps.shape)}."
            )
        if image.ndim != 4 or image.shape[1] != self.image_channels or image.shape[0] != heatmaps.shape[0]:
            raise ValueError(
                f"PoseDiscriminator: image must be (B, {self.image_channels}, H, W) with B = {heatmaps.shape[0]}, "
                f"got {list(image.shape)}."
            )
        hw = [heatmaps.shape[-2], heatmaps.shape[-1]]
        if image.shape[-2] != hw[0] or image.shape[-1] != hw[1]:
            shrinks = image.shape[-2] >= hw[0] and image.shape[-1] >= hw[1]
            if shrinks:
                image = F.interpolate(image, size=hw, mode="area")
            else:
                image = F.interpolate(image, size=hw, mode="bilinear", align_corners=False)
        return self.logits(torch.cat([image.to(heatmaps.dtype), heatmaps], dim=1))


class ConfidenceDiscriminator(_LandmarkDiscriminator):
    """Confidence discriminator C: does each heatmap look like a confident ground-truth heatmap?

    Args: as :class:`PoseDiscriminator`, without an image. ``forward(heatmaps)``: ``(B, K, h, w)`` -> logits ``(B, K)``.
    """

    def __init__(
        self,
        num_landmarks: int = 37,
        base_channels: int = 64,
        num_downsamples: int = 3,
        norm: NormAct = ("instance", {"affine": True}),
        act: NormAct = ("leakyrelu", {"negative_slope": 0.2}),
    ) -> None:
        num_landmarks = _check_int("ConfidenceDiscriminator", "num_landmarks", num_landmarks, 1)
        super().__init__("ConfidenceDiscriminator", num_landmarks, num_landmarks, base_channels, num_downsamples, norm, act)

    def forward(self, heatmaps: torch.Tensor) -> torch.Tensor:
        if heatmaps.ndim != 4 or heatmaps.shape[1] != self.num_landmarks:
            raise ValueError(
                f"ConfidenceDiscriminator: heatmaps must be (B, {self.num_landmarks}, h, w), got {list(heatmaps.shape)}."
            )
        return self.logits(heatmaps)
