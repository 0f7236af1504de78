"""Losses: the heatmap regression loss and the adversarial losses of Adversarial PoseNet.

Heatmap regression loss, masked sum of squared errors against Gaussian targets.

Payer et al. (2019), Eq. 2: ``L = sum_i sum_x (h_i(x) - g_i(x))^2 + alpha * sum_i sigma_i^2 + lambda ||w||^2``
with ``g_i`` a Gaussian of peak ``gamma`` and width ``sigma_i`` at the sub-pixel landmark position
(:func:`scripts.heatmap.gaussian_heatmaps`). Landmarks that are missing (NaN) or masked out
contribute nothing, neither value nor NaN. The sum runs over the landmarks and pixels of one image;
the batch is averaged. The weight decay term ``lambda ||w||^2`` is *not* part of this module: set it
as the optimiser's ``weight_decay``.

Learnable sigma needs Payer's *normalised* targets, ``gamma' / (2 pi sigma^2) * exp(-d^2 / 2 sigma^2)``
(``normalize_target=True``): with a fixed peak the target's energy grows with sigma, so the squared
error alone pushes sigma towards 0 (it collapsed from 3 to 0.2 px in simulation); with the
normalised form the energy falls with sigma and the ``alpha * sum sigma^2`` term holds it. Here
``gamma' = 2 pi sigma_0^2 gamma`` (``sigma_0`` the initial sigma), so that the targets start with the
same peak ``gamma`` as the fixed form.

Adversarial losses (Adversarial PoseNet, :class:`scripts.engines.AdversarialLandmarkTrainer`): the
discriminators' labels of generated heatmaps (:func:`fake_labels`, by distance to the truth), their
input normalisation, and masked binary cross-entropies on their logits, per landmark ``(B, K)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scripts.heatmap import gaussian_heatmaps, landmark_mask
from scripts.keys import LandmarkKeys

__all__ = [
    "masked_sse",
    "HeatmapLoss",
    "normalise_heatmaps_for_discriminator",
    "fake_labels",
    "masked_bce_with_logits",
    "discriminator_loss",
    "generator_adversarial_loss",
]


def masked_sse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of squared errors per image over the landmarks that the mask keeps.

    Args:
        pred: ``(B, N, H, W)`` predicted heatmaps.
        target: ``(B, N, H, W)`` target heatmaps; values of masked landmarks are ignored (may be NaN).
        mask: ``(B, N)`` weights, 1 to keep a landmark, 0 to drop it (fractional values weight it);
            ``None`` keeps all.

    Returns:
        ``(B,)`` per-image sums, computed in at least float32. Masked landmarks add exactly 0 and
        no NaN reaches the value or the gradients of ``pred`` and ``target``.
    """
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(
            f"masked_sse: pred and target must both be (B, N, H, W), got {tuple(pred.shape)} and {tuple(target.shape)}."
        )
    dtype = torch.promote_types(pred.dtype, torch.float32)
    if mask is None:
        mask = torch.ones(pred.shape[:2], dtype=dtype, device=pred.device)
    if tuple(mask.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"masked_sse: mask must be (B, N) = {tuple(pred.shape[:2])}, got {tuple(mask.shape)}.")
    weight = mask.to(device=pred.device, dtype=dtype)[..., None, None]
    keep = weight != 0
    zero = torch.zeros((), dtype=dtype, device=pred.device)
    # torch.where on the difference (not on the product) keeps NaN out of the backward pass too
    diff = torch.where(keep, pred.to(dtype) - torch.where(keep, target.to(dtype), zero), zero)
    return (weight * diff * diff).sum(dim=(1, 2, 3))


class HeatmapLoss(nn.Module):
    """Masked heatmap sum of squared errors against Gaussian targets, optionally with learnable sigma.

    Args:
        num_landmarks: ``N``, heatmap channels.
        sigma: initial Gaussian std in heatmap pixels, a scalar or ``N`` values (one per landmark).
        gamma: peak value of the target Gaussians.
        learnable_sigma: if True, sigma is an ``nn.Parameter`` per landmark (stored as its log, so it
            stays positive); pass this module's parameters to the optimiser, and give the targets as
            points (precomputed heatmaps cannot depend on sigma).
        sigma_regularization: ``alpha`` of the term ``alpha * sum_i sigma_i^2`` added to the loss
            (Payer's Eq. 2; keeps learnable sigmas from growing). Added once per batch.
        normalize_target: scale each target by ``(sigma_0 / sigma)^2`` (Payer's normalised Gaussian,
            equal to the fixed form at the initial sigma); ``None``: True exactly when
            ``learnable_sigma``.
        reduction: ``"sum_per_image"`` (Payer: sum over landmarks and pixels, mean over the batch),
            ``"sum"`` (sum over the batch as well) or ``"mean"`` (mean squared error per pixel of
            the kept landmark maps).

    ``forward(pred, target)``:
        * ``pred``: ``(B, N, H, W)`` heatmaps of the network.
        * ``target``: a mapping with ``"landmarks"`` ``(B, N, 2)`` float ``(x, y)`` in heatmap pixels
          (see :mod:`scripts.coords`; NaN for missing) and optionally ``"landmarks_mask"`` ``(B, N)``
          (1 keep, 0 drop; default: present and inside the grid, :func:`scripts.heatmap.landmark_mask`);
          or a mapping with ``"heatmaps"`` ``(B, N, H, W)`` and optionally ``"landmarks_mask"``;
          or a tensor of target heatmaps ``(B, N, H, W)`` (all landmarks kept).
          A landmark with NaN coordinates is dropped even if its mask says 1.

    Weight decay (``lambda ||w||^2``) belongs to the optimiser (``weight_decay``), not to this loss.

    Examples::

        loss = HeatmapLoss(num_landmarks=37, sigma=2.0, gamma=100.0)
        value = loss(net(images), {"landmarks": points, "landmarks_mask": mask})
    """

    def __init__(
        self,
        num_landmarks: int,
        sigma: float | Sequence[float] = 2.0,
        gamma: float = 100.0,
        learnable_sigma: bool = False,
        sigma_regularization: float = 0.0,
        reduction: str = "sum_per_image",
        normalize_target: bool | None = None,
    ) -> None:
        super().__init__()
        if reduction not in ("sum_per_image", "sum", "mean"):
            raise ValueError(f"HeatmapLoss: reduction must be 'sum_per_image', 'sum' or 'mean', got {reduction!r}.")
        init = torch.as_tensor(sigma, dtype=torch.float32).flatten()
        if init.numel() == 1:
            init = init.expand(num_landmarks).clone()
        if init.numel() != num_landmarks:
            raise ValueError(f"HeatmapLoss: sigma has {init.numel()} values for {num_landmarks} landmarks.")
        if not bool(torch.all(init > 0)) or not math.isfinite(float(init.sum())):
            raise ValueError(f"HeatmapLoss: sigma must be positive and finite, got {init.tolist()}.")
        self.num_landmarks = int(num_landmarks)
        self.gamma = float(gamma)
        self.learnable_sigma = bool(learnable_sigma)
        self.sigma_regularization = float(sigma_regularization)
        self.reduction = reduction
        self.normalize_target = self.learnable_sigma if normalize_target is None else bool(normalize_target)
        self.register_buffer("initial_sigma", init.clone(), persistent=False)
        if self.learnable_sigma:
            self.log_sigma = nn.Parameter(init.log())
        else:
            self.register_buffer("fixed_sigma", init, persistent=False)

    @property
    def sigma(self) -> torch.Tensor:
        """Current sigma per landmark, ``(N,)`` heatmap pixels."""
        return self.log_sigma.exp() if self.learnable_sigma else self.fixed_sigma

    def targets(self, points: torch.Tensor, spatial_hw: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """Gaussian target heatmaps ``(B, N, H, W)`` for points ``(B, N, 2)`` with the current sigma
        (peak ``gamma``, or ``gamma (sigma_0 / sigma)^2`` with ``normalize_target``)."""
        sigma = self.sigma.to(dtype)
        maps = gaussian_heatmaps(points.to(dtype), spatial_hw, sigma=sigma, gamma=self.gamma)
        if self.normalize_target:
            maps = maps * ((self.initial_sigma.to(dtype) / sigma) ** 2)[:, None, None]
        return maps

    def forward(self, pred: torch.Tensor, target: Mapping | torch.Tensor) -> torch.Tensor:
        if pred.ndim != 4 or pred.shape[1] != self.num_landmarks:
            raise ValueError(
                f"HeatmapLoss: pred must be (B, {self.num_landmarks}, H, W), got {tuple(pred.shape)}."
            )
        dtype = torch.promote_types(pred.dtype, torch.float32)
        spatial_hw = (pred.shape[-2], pred.shape[-1])
        mask = None
        if isinstance(target, torch.Tensor):
            heatmaps = target.to(device=pred.device, dtype=dtype)
        elif isinstance(target, Mapping):
            if LandmarkKeys.LANDMARKS_MASK in target:
                mask = torch.as_tensor(target[LandmarkKeys.LANDMARKS_MASK], device=pred.device).to(dtype)
            if LandmarkKeys.HEATMAPS in target:
                if self.learnable_sigma:
                    raise ValueError(
                        "HeatmapLoss: learnable_sigma needs the targets as 'landmarks', not precomputed 'heatmaps'."
                    )
                heatmaps = torch.as_tensor(target[LandmarkKeys.HEATMAPS], device=pred.device).to(dtype)
            elif LandmarkKeys.LANDMARKS in target:
                points = torch.as_tensor(target[LandmarkKeys.LANDMARKS], device=pred.device).to(dtype)
                if points.ndim != 3 or tuple(points.shape[:2]) != tuple(pred.shape[:2]) or points.shape[2] != 2:
                    raise ValueError(
                        f"HeatmapLoss: 'landmarks' must be (B, N, 2) = {tuple(pred.shape[:2]) + (2,)}, "
                        f"got {tuple(points.shape)}."
                    )
                present = torch.isfinite(points).all(dim=-1).to(dtype)
                mask = landmark_mask(points, spatial_hw) if mask is None else mask * present
                heatmaps = self.targets(points, spatial_hw, dtype)
            else:
                raise KeyError(f"HeatmapLoss: target needs a 'landmarks' or 'heatmaps' key, got {sorted(target)}.")
        else:
            raise TypeError(f"HeatmapLoss: target must be a tensor or a mapping, got {type(target).__name__}.")

        per_image = masked_sse(pred, heatmaps, mask)
        if self.reduction == "sum_per_image":
            loss = per_image.mean()
        elif self.reduction == "sum":
            loss = per_image.sum()
        else:
            kept = pred.shape[0] * pred.shape[1] if mask is None else (mask != 0).sum()
            loss = per_image.sum() / (torch.as_tensor(kept, dtype=dtype).clamp_min(1) * spatial_hw[0] * spatial_hw[1])
        if self.sigma_regularization != 0.0:
            loss = loss + self.sigma_regularization * (self.sigma.to(dtype) ** 2).sum()
        return loss


def normalise_heatmaps_for_discriminator(heatmaps: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Heatmaps as the discriminators see them: clamped at 0, then divided by their own maximum.

    Real heatmaps are Gaussians of peak ``gamma`` and never negative; raw generator outputs have any
    scale and sign. After this normalisation every map of either kind lies in ``[0, 1]`` with its
    maximum at 1 (an all-zero or all-negative map becomes all zeros), so a discriminator can only
    judge the *shape* and *position* of the maps, not their value range. Differentiable (the gradient
    reaches the generator through the clamp and the division).

    Args:
        heatmaps: ``(B, K, h, w)``.
        eps: added to each map's maximum before dividing.

    Returns:
        ``(B, K, h, w)`` in ``[0, 1]``, float32 or wider.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (B, K, h, w), got {tuple(heatmaps.shape)}.")
    positive = heatmaps.to(torch.promote_types(heatmaps.dtype, torch.float32)).clamp_min(0.0)
    peak = positive.amax(dim=(-2, -1), keepdim=True)
    return positive / (peak + eps)


def fake_labels(
    pred_points: torch.Tensor,
    true_points: torch.Tensor,
    net_from_orig: torch.Tensor | None = None,
    spacing: torch.Tensor | None = None,
    threshold_mm: float = 10.0,
    threshold_px: float = 10.0,
) -> torch.Tensor:
    """Discriminator labels of generated heatmaps: 1 where the predicted landmark is close enough to the truth.

    The distance is measured in the units of the *original* image: the difference ``pred - true``
    (network px) is mapped through the inverse of the linear part of ``net_from_orig`` (the resize of
    the preprocessing; a translation does not change a difference) to original px, then, where the
    sample's spacing is known, scaled to mm and compared with ``threshold_mm``; where the spacing is
    unknown (NaN), the original-px distance is compared with ``threshold_px``.

    Both point sets must be in the frame of the same network input: during training that is the
    augmented image, so the truth is the batch's ``landmarks`` (augmented together with the image),
    not ``landmarks_orig``. The augmentation's own rotation and scaling (a few percent) are not
    undone; the threshold is a tolerance, not a measurement.

    Args:
        pred_points: ``(B, K, 2)`` decoded predictions ``(x, y)``, network px.
        true_points: ``(B, K, 2)`` truth ``(x, y)``, network px, NaN for missing landmarks.
        net_from_orig: ``(B, 3, 3)`` (or ``(3, 3)``) preprocessing matrices; None: network px are original px.
        spacing: ``(B, 2)`` (or ``(2,)``) ``(sx, sy)`` mm per original px, NaN when unknown; None: unknown.
        threshold_mm: tolerance in mm for samples with spacing (10 mm in the seed material).
        threshold_px: tolerance in original px for samples without spacing.

    Returns:
        ``(B, K)`` float32 labels: 1.0 within the tolerance, 0.0 beyond it and for landmarks whose truth
        or prediction is missing (NaN). Such landmarks should also be masked out of the loss.
    """
    pred = torch.as_tensor(pred_points).double()
    true = torch.as_tensor(true_points, device=pred.device).double()
    if pred.ndim != 3 or pred.shape[-1] != 2 or pred.shape != true.shape:
        raise ValueError(
            "fake_labels: pred_points and true_points must both be (B, K, 2), "
            f"got {tuple(pred.shape)} and {tuple(true.shape)}."
        )
    batch = pred.shape[0]
    diff = pred - true  # (B, K, 2) network px
    if net_from_orig is not None:
        matrix = torch.as_tensor(net_from_orig, device=pred.device).double()
        if matrix.shape == (3, 3):
            matrix = matrix.expand(batch, 3, 3)
        if tuple(matrix.shape) != (batch, 3, 3):
            raise ValueError(f"fake_labels: net_from_orig must be (B, 3, 3) = ({batch}, 3, 3), got {tuple(matrix.shape)}.")
        orig_from_net_linear = torch.linalg.inv(matrix[:, :2, :2])
        diff = torch.einsum("bij,bkj->bki", orig_from_net_linear, diff)  # original px
    if spacing is None:
        spacing_xy = torch.full((batch, 2), float("nan"), dtype=torch.float64, device=pred.device)
    else:
        spacing_xy = torch.as_tensor(spacing, device=pred.device).double()
        if spacing_xy.shape == (2,):
            spacing_xy = spacing_xy.expand(batch, 2)
        if tuple(spacing_xy.shape) != (batch, 2):
            raise ValueError(f"fake_labels: spacing must be (B, 2) = ({batch}, 2), got {tuple(spacing_xy.shape)}.")
    has_spacing = torch.isfinite(spacing_xy).all(dim=-1)  # (B,)
    dist_px = diff.norm(dim=-1)
    dist_mm = (diff * torch.where(has_spacing[:, None], spacing_xy, torch.ones_like(spacing_xy))[:, None, :]).norm(dim=-1)
    close = torch.where(has_spacing[:, None], dist_mm <= threshold_mm, dist_px <= threshold_px)
    valid = torch.isfinite(dist_px)
    return (close & valid).float()


def masked_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor | float, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of logits ``(B, K)`` against targets in ``[0, 1]``, averaged over the kept entries.

    Args:
        logits: ``(B, K)`` discriminator outputs.
        targets: ``(B, K)`` labels, or a number for all entries.
        mask: ``(B, K)``, nonzero keeps an entry. With nothing kept the result is a zero that still
            depends on ``logits`` (backward works and gives zero gradients).

    Returns:
        scalar float32 tensor.
    """
    logits = logits.float()
    if logits.ndim != 2 or tuple(mask.shape) != tuple(logits.shape):
        raise ValueError(
            f"masked_bce_with_logits: logits and mask must be (B, K), got {tuple(logits.shape)} and {tuple(mask.shape)}."
        )
    target = torch.as_tensor(targets, dtype=logits.dtype, device=logits.device).expand_as(logits)
    weight = (mask != 0).to(logits.dtype)
    per_entry = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_entry * weight).sum() / weight.sum().clamp_min(1.0)


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, fake_targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Discriminator objective: real heatmaps -> 1 and generated heatmaps -> ``fake_targets``, per landmark.

    Args:
        real_logits, fake_logits: ``(B, K)`` logits for the real and the (detached) generated heatmaps.
        fake_targets: ``(B, K)`` labels of the generated heatmaps (:func:`fake_labels`).
        mask: ``(B, K)`` landmarks to use.
    """
    return masked_bce_with_logits(real_logits, 1.0, mask) + masked_bce_with_logits(fake_logits, fake_targets, mask)


def generator_adversarial_loss(fake_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Generator's adversarial term: make the discriminator judge every kept landmark of the generated maps real (1)."""
    return masked_bce_with_logits(fake_logits, 1.0, mask)
