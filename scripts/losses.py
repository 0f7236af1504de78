"""Heatmap regression loss: masked sum of squared errors against Gaussian targets.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from scripts.heatmap import gaussian_heatmaps, landmark_mask

__all__ = ["masked_sse", "HeatmapLoss"]


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
            if "landmarks_mask" in target:
                mask = torch.as_tensor(target["landmarks_mask"], device=pred.device).to(dtype)
            if "heatmaps" in target:
                if self.learnable_sigma:
                    raise ValueError(
                        "HeatmapLoss: learnable_sigma needs the targets as 'landmarks', not precomputed 'heatmaps'."
                    )
                heatmaps = torch.as_tensor(target["heatmaps"], device=pred.device).to(dtype)
            elif "landmarks" in target:
                points = torch.as_tensor(target["landmarks"], device=pred.device).to(dtype)
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
