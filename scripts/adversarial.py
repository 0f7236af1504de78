"""Adversarial PoseNet training: discriminator labels, adversarial losses and the training engine.

Chen et al., "Adversarial PoseNet", ICCV 2017 (see docs/METHODS.md section 2). Per iteration:

1. the generator G (any heatmap network; a :class:`scripts.networks.posenet.StackedHourglass` gives
   all its stacks through ``forward_stacks``) predicts heatmaps on its heatmap grid;
2. the pose discriminator P (image + heatmaps) and the confidence discriminator C (heatmaps) learn,
   per landmark, real heatmaps -> 1 and the *detached* generated heatmaps -> :func:`fake_labels`
   (1 where the decoded landmark lies within a distance threshold of the truth, else 0);
3. G minimises ``mse_weight * L_MSE + adversarial_scale * (alpha * L_C + beta * L_P)``: ``L_MSE`` is the
   heatmap loss summed over all stacks (intermediate supervision), ``L_C`` and ``L_P`` are the binary
   cross-entropies of C and P on the generated heatmaps against the label 1 ("real"). The generated
   heatmaps are *not* detached here, so the adversarial gradient reaches G with the sign that makes it
   fool P and C; the discriminators' parameters are frozen during this step.

Loss balance. The discriminators see every heatmap divided by its own peak, so the adversarial gradient on
the generator's raw heatmaps scales as ``1 / gamma`` while the heatmap loss's scales as ``gamma`` (the peak
of the targets): with fixed weights their ratio would scale as ``1 / gamma**2`` (measured: 4e-4 at
gamma 100 with the paper's 1/220 and 1/180, about 4 at gamma 1). ``adversarial_scale`` defaults to the
heatmap loss's ``gamma**2``, so ``alpha`` and ``beta`` are weights *relative to the heatmap loss of peak-1
targets* and the balance does not depend on gamma. The heatmap loss itself keeps its scale, so the
optimizer's (coupled) weight decay and a generator trained without discriminators are unchanged.
The balance still depends on the loss reduction, the heatmap grid and the stage of training, so it is
measured: every epoch the trainer logs ``adversarial/grad_ratio``, the ratio of the L2 norms over all
generator parameters of ``d(adversarial_scale * (alpha L_C + beta L_P)) / d theta`` and
``d(mse_weight L_MSE) / d theta`` (two ``torch.autograd.grad`` calls on the real batch of the measured
iteration, :func:`gradient_norm_ratio`), and the discriminators' accuracies on real and generated heatmaps
(``adversarial/pose_acc``, ``adversarial/conf_acc``, with ``_real`` and ``_generated`` parts), to the
console (``StatsHandler``) and TensorBoard (``TensorBoardStatsHandler``) through ``engine.state.metrics``.

Every loss term is masked per landmark: a landmark that is missing or outside the grid
(``landmarks_mask`` of the batch, see docs/DESIGN.md) counts in none of them.

Coordinates follow :mod:`scripts.coords` (points ``(x, y)``, pixel centres at integers, NaN for
missing). A generator with output stride ``s`` has heatmaps of ``(H / s, W / s)`` pixels for an input of
``(H, W)``: network points map to it by the resize rule ``x_h = (x + 0.5) * w / W - 0.5`` (i.e.
``(x + 0.5) / s - 0.5``) and back by its inverse; the targets are drawn at the mapped sub-pixel
positions on that grid with the loss function's sigma, in heatmap pixels.

The discriminators output logits; the losses use ``binary_cross_entropy_with_logits`` in float32.

Workflow: ``configs/train_adversarial.json`` takes every other key of ``configs/train.json`` through
``%configs/train.json::<key>`` macros (data, presets, augmentation, validation, checkpoints, logs,
progress, resume) and replaces ``network_def`` (the hourglass), ``loss``, ``gamma`` and ``train#trainer``
(this engine; ``train#handlers`` are train.json's with the discriminators and their optimizers added to
``last.ckpt``). MONAI reads such macro paths from the working directory, so run it from the bundle root::

    python -m monai.bundle run training --config_file configs/train_adversarial.json
    python -m monai.bundle run training --config_file configs/train_adversarial.json --preset lower_limb
    python -m monai.bundle run training --config_file "['configs/train.json','configs/train_adversarial.json']"

Overrides work on top-level keys (``--spatial_size``, ``--sigma``, ``--max_epochs``, ``--preset``, ...)
and inside the sections this file defines (``--network_def#num_stacks 4``, ``--train#trainer#...``),
not inside sections taken over whole from train.json (``presets#...``, ``validate#...``).
The SCN becomes the generator with ``--network_def %configs/train.json::network_def``.
What the config uses: the heatmap term takes train.json's ``gamma`` = 100 with the per-pixel mean squared
error (``HeatmapLoss(reduction="mean")``) on heatmaps of ``heatmap_sigma`` = the preset's sigma divided by
the output stride (at least 1 heatmap px); ``adversarial_alpha`` = 1e-4 and ``adversarial_beta`` = 1.25e-4
(about the paper's 1/220 : 1/180 proportion), multiplied by ``adversarial_scale`` = gamma**2 = 1e4, i.e.
effective weights 1 and 1.25 on ``L_C`` and ``L_P``. They were chosen by measuring ``adversarial/grad_ratio``
on the demo data (docs/README.md, "Adversarial loss balance"): 0.05-0.22 over the first 144 iterations,
where the paper's weights times gamma**2 give 7.2 and the paper's weights alone 4e-4. The ``hand`` preset
(256 x 256, 64 x 64 heatmaps) measured 2.07 at those weights after its first epoch and 0.185 at a tenth
of them, so ``adversarial_preset_factor`` is 0.1 there (1 for the other presets; ``lower_limb`` measured
0.23 after the first epoch on 32 synthetic long-leg images).
An adversarially trained generator is evaluated by ``['configs/train.json','configs/evaluate.json']``
with the generator's ``network_def`` passed as an override.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from ignite.metrics import Metric
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn

from scripts.coords import apply_matrix, resize_matrix
from scripts.engines import LastCheckpoint, prepare_landmark_batch
from scripts.heatmap import decode_heatmaps, landmark_mask

__all__ = [
    "normalise_heatmaps_for_discriminator",
    "network_to_heatmap_points",
    "heatmap_to_network_points",
    "fake_labels",
    "masked_bce_with_logits",
    "discriminator_loss",
    "generator_adversarial_loss",
    "discriminator_counts",
    "gradient_norm_ratio",
    "MeanOfMeasured",
    "DiscriminatorAccuracy",
    "adversarial_monitors",
    "with_checkpoint_entries",
    "AdversarialLandmarkTrainer",
]


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


def network_to_heatmap_points(points: torch.Tensor, network_hw: Sequence[int], heatmap_hw: Sequence[int]) -> torch.Tensor:
    """Points ``(..., 2)`` in network-input px -> px of a heatmap grid covering the same extent.

    ``x_h = (x + 0.5) * w / W - 0.5`` per axis (:func:`scripts.coords.resize_matrix`); NaN stays NaN.
    """
    return apply_matrix(points, resize_matrix(network_hw, heatmap_hw))


def heatmap_to_network_points(points: torch.Tensor, heatmap_hw: Sequence[int], network_hw: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`network_to_heatmap_points`: heatmap px -> network-input px."""
    return apply_matrix(points, resize_matrix(heatmap_hw, network_hw))


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


def discriminator_counts(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, fake_targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """How often a discriminator judges right, per kind of heatmap: ``(4,)`` float64 tensor
    ``[real correct, real kept, generated correct, generated kept]``.

    A real heatmap is judged right when its logit is > 0 ("real"); a generated one when ``logit > 0`` agrees
    with its label (``fake_targets > 0.5``: close enough to the truth to count as real). Only entries kept by
    ``mask`` ``(B, K)`` count. Shapes as :func:`discriminator_loss`.
    """
    keep = mask != 0
    real_right = (real_logits > 0) & keep
    fake_right = ((fake_logits > 0) == (fake_targets > 0.5)) & keep
    kept = keep.sum()
    return torch.stack([real_right.sum(), kept, fake_right.sum(), kept]).double().cpu()


def gradient_norm_ratio(numerator: torch.Tensor, denominator: torch.Tensor, parameters: Sequence[torch.Tensor]) -> float:
    """``||d numerator / d theta|| / ||d denominator / d theta||`` over ``parameters`` (global L2 norms).

    Both gradients come from ``torch.autograd.grad`` with ``retain_graph=True``, so the caller can still call
    ``backward`` on a loss built from the same graph; nothing is accumulated into ``.grad``. A term that does
    not depend on the parameters has a zero gradient: the ratio is 0 for such a numerator, ``inf`` for such a
    denominator (0 if both are).

    Args:
        numerator, denominator: scalar losses, e.g. the weighted adversarial and heatmap terms of the generator.
        parameters: the generator's parameters; those without ``requires_grad`` are skipped.
    """
    params = [p for p in parameters if p.requires_grad]

    def norm(term: torch.Tensor) -> float:
        if not params or not term.requires_grad:
            return 0.0
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))

    top, bottom = norm(numerator), norm(denominator)
    return top / bottom if bottom > 0 else (0.0 if top == 0 else float("inf"))


class MeanOfMeasured(Metric):
    """Epoch mean of a number that the trainer measures on some iterations only (NaN on the others).

    Args:
        key: entry of ``engine.state.output`` (a float, NaN when not measured this iteration).

    ``compute()``: mean of the finite values of the epoch, NaN if none was measured.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(output_transform=lambda output: output[key])

    def reset(self) -> None:
        self._total, self._count = 0.0, 0

    def update(self, value) -> None:
        value = float(value)
        if math.isfinite(value):
            self._total, self._count = self._total + value, self._count + 1

    def compute(self) -> float:
        return self._total / self._count if self._count else float("nan")


class DiscriminatorAccuracy(Metric):
    """Epoch accuracy of a discriminator from the :func:`discriminator_counts` of every iteration.

    Args:
        key: entry of ``engine.state.output`` holding the counts (``"pose_counts"``, ``"conf_counts"``;
            None on iterations where that discriminator did not run).
        which: ``"all"`` (real and generated heatmaps together), ``"real"`` or ``"generated"``.

    ``compute()``: fraction in ``[0, 1]``, NaN if nothing was judged. Measured on the discriminator's
    logits of each iteration *before* its update on that batch.
    """

    def __init__(self, key: str, which: str = "all") -> None:
        if which not in ("all", "real", "generated"):
            raise ValueError(f"DiscriminatorAccuracy: which must be 'all', 'real' or 'generated', got {which!r}.")
        self.key, self.which = key, which
        super().__init__(output_transform=lambda output: output[key])

    def reset(self) -> None:
        self._counts = torch.zeros(4, dtype=torch.float64)

    def update(self, counts) -> None:
        if counts is not None:
            self._counts += torch.as_tensor(counts, dtype=torch.float64)

    def compute(self) -> float:
        real_right, real_kept, fake_right, fake_kept = self._counts.tolist()
        right, kept = {
            "all": (real_right + fake_right, real_kept + fake_kept),
            "real": (real_right, real_kept),
            "generated": (fake_right, fake_kept),
        }[self.which]
        return right / kept if kept else float("nan")


def adversarial_monitors(use_pose: bool = True, use_confidence: bool = True) -> dict[str, Metric]:
    """The per-epoch monitors of :class:`AdversarialLandmarkTrainer`, by ``engine.state.metrics`` name.

    ``adversarial/grad_ratio`` (always) and, for each discriminator in use, ``adversarial/<pose|conf>_acc``,
    ``..._acc_real`` and ``..._acc_generated``.
    """
    monitors: dict[str, Metric] = {"adversarial/grad_ratio": MeanOfMeasured("grad_ratio")}
    for used, short in ((use_pose, "pose"), (use_confidence, "conf")):
        if used:
            monitors[f"adversarial/{short}_acc"] = DiscriminatorAccuracy(f"{short}_counts", "all")
            monitors[f"adversarial/{short}_acc_real"] = DiscriminatorAccuracy(f"{short}_counts", "real")
            monitors[f"adversarial/{short}_acc_generated"] = DiscriminatorAccuracy(f"{short}_counts", "generated")
    return monitors


def with_checkpoint_entries(handlers: Iterable, entries: Mapping[str, Any]) -> list:
    """Copy of a handler list in which every :class:`scripts.engines.LastCheckpoint` also saves ``entries``.

    Used by configs/train_adversarial.json to add the discriminators and their optimizers to train.json's
    ``last.ckpt`` without repeating its handler list.

    Raises:
        ValueError: if the list has no LastCheckpoint, or an entry name is already saved.
    """
    result, found = [], False
    for handler in handlers:
        if isinstance(handler, LastCheckpoint):
            try:
                handler = handler.with_entries(entries)
            except ValueError as err:
                raise ValueError(f"with_checkpoint_entries: {err}") from None
            found = True
        result.append(handler)
    if not found:
        raise ValueError("with_checkpoint_entries: the handler list has no scripts.engines.LastCheckpoint.")
    return result


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class AdversarialLandmarkTrainer(Trainer):
    """Trains a heatmap generator against a pose and a confidence discriminator (Adversarial PoseNet).

    Args:
        device: device of the networks.
        max_epochs: epochs to train.
        train_data_loader: landmark batches (docs/DESIGN.md): ``image`` (B, 1, H, W), ``landmarks`` (B, K, 2)
            network px, ``landmarks_mask`` (B, K), ``net_from_orig`` (B, 3, 3), ``spacing`` (B, 2).
        network: generator. If it (or its ``module``) has ``forward_stacks``, all returned stacks are
            supervised; otherwise its forward output is the single stack. Its heatmaps may be on a coarser
            grid than the input (an output stride); the targets are drawn on that grid.
        optimizer: the generator's optimizer.
        loss_function: heatmap loss on one stack, e.g. :class:`scripts.losses.HeatmapLoss`; called as
            ``loss_function(stack, {"landmarks": points on the stack's grid, "landmarks_mask": mask})`` and
            also used to draw the real heatmaps through ``loss_function.targets(points, hw, dtype)``.
        pose_discriminator: P, ``(image, heatmaps) -> (B, K)`` logits.
        pose_optimizer: P's optimizer.
        confidence_discriminator: C, ``heatmaps -> (B, K)`` logits.
        confidence_optimizer: C's optimizer.
        alpha: weight of the confidence term ``L_C``, relative to the heatmap loss of peak-1 targets (times
            ``adversarial_scale``). The paper's 1/220 was for its own heatmap scale; see the module docstring.
        beta: weight of the pose term ``L_P``, likewise (paper: 1/180).
        mse_weight: weight of the heatmap term ``L_MSE`` (1; 0 trains with the adversarial terms alone).
        adversarial_scale: factor on both adversarial terms; None: ``loss_function.gamma ** 2`` (1 if the loss
            has no ``gamma``), which makes ``alpha`` and ``beta`` independent of the heatmap peak.
        grad_ratio_interval: measure ``grad_ratio`` every this many iterations (the epoch logs their mean);
            0: on the last iteration of every epoch. A measuring iteration costs two extra backward passes
            and updates the networks exactly as any other iteration.
        threshold_mm, threshold_px: tolerances of :func:`fake_labels`.
        discriminator_steps: discriminator updates per iteration (on the same batch) before the generator update.
        autocast_dtype: ``"bfloat16"`` or ``"float16"`` to run the networks under ``torch.autocast`` on the
            device's type (losses stay float32), None for float32.
        epoch_length, non_blocking, prepare_batch, iteration_update, postprocessing, key_train_metric,
        additional_metrics, metric_cmp_fn, train_handlers, event_names, event_to_attr, decollate, to_kwargs:
            as ``monai.engines.SupervisedTrainer``.
        optim_set_to_none: ``zero_grad(set_to_none=...)`` of all three optimizers.

    ``engine.state.output`` per iteration: ``image``, ``label`` (the target dict of
    :func:`scripts.engines.prepare_landmark_batch`), ``pred`` (last-stack heatmaps on the *network input*
    grid, detached: up-sampled by the generator's ``upsample_heatmaps`` when it has one, else bicubically,
    so the metric transforms of ``scripts.engines`` decode them like the SCN's), ``loss`` (generator
    total), ``loss_mse``, ``loss_adv_pose`` (``L_P``), ``loss_adv_conf`` (``L_C``), ``loss_d_pose``,
    ``loss_d_conf`` (discriminator objectives), ``fake_labels`` (B, K), ``grad_ratio`` (float, NaN on
    iterations that do not measure it), ``pose_counts`` and ``conf_counts`` (:func:`discriminator_counts`
    before the discriminators' update, None for a discriminator not in use).

    ``engine.state.metrics`` per epoch (:func:`adversarial_monitors`, attached before ``train_handlers`` so
    that their ``StatsHandler`` and ``TensorBoardStatsHandler`` log them): ``adversarial/grad_ratio`` and,
    for each discriminator in use, ``adversarial/pose_acc`` / ``adversarial/conf_acc`` (real and generated
    heatmaps together) with ``_real`` and ``_generated`` parts.

    Not for DistributedDataParallel: the generator's stacks are taken from ``module.forward_stacks``, which
    bypasses DDP's gradient synchronisation, so a DDP-wrapped network is rejected.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        pose_discriminator: nn.Module,
        pose_optimizer: torch.optim.Optimizer,
        confidence_discriminator: nn.Module,
        confidence_optimizer: torch.optim.Optimizer,
        alpha: float = 1e-4,
        beta: float = 1.25e-4,
        mse_weight: float = 1.0,
        adversarial_scale: float | None = None,
        grad_ratio_interval: int = 0,
        threshold_mm: float = 10.0,
        threshold_px: float = 10.0,
        discriminator_steps: int = 1,
        autocast_dtype: str | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = prepare_landmark_batch,
        iteration_update: Callable | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable | None = None,
        train_handlers: Sequence | None = None,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
    ) -> None:
        if isinstance(network, nn.parallel.DistributedDataParallel):
            raise NotImplementedError(
                "AdversarialLandmarkTrainer: a DistributedDataParallel generator is not supported "
                "(forward_stacks would bypass its gradient synchronisation); train on one process."
            )
        if int(discriminator_steps) < 1:
            raise ValueError(f"AdversarialLandmarkTrainer: discriminator_steps must be >= 1, got {discriminator_steps!r}.")
        if autocast_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(
                f"AdversarialLandmarkTrainer: autocast_dtype must be None, 'bfloat16' or 'float16', got {autocast_dtype!r}."
            )
        if int(grad_ratio_interval) < 0:
            raise ValueError(f"AdversarialLandmarkTrainer: grad_ratio_interval must be >= 0, got {grad_ratio_interval!r}.")
        extra = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        # attached by _register_handlers, i.e. before the train handlers that read state.metrics at EPOCH_COMPLETED
        self._monitors = adversarial_monitors(use_pose=float(beta) != 0.0, use_confidence=float(alpha) != 0.0)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=list(train_handlers or []),
            amp=False,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            **extra,
        )
        self.network = network
        self.optimizer = optimizer
        self.loss_function = loss_function
        self.pose_discriminator = pose_discriminator
        self.pose_optimizer = pose_optimizer
        self.confidence_discriminator = confidence_discriminator
        self.confidence_optimizer = confidence_optimizer
        self.alpha, self.beta, self.mse_weight = float(alpha), float(beta), float(mse_weight)
        if adversarial_scale is None:
            adversarial_scale = float(getattr(loss_function, "gamma", 1.0)) ** 2
        self.adversarial_scale = float(adversarial_scale)
        self.grad_ratio_interval = int(grad_ratio_interval)
        self.threshold_mm, self.threshold_px = float(threshold_mm), float(threshold_px)
        self.discriminator_steps = int(discriminator_steps)
        self.autocast_dtype = None if autocast_dtype is None else getattr(torch, autocast_dtype)
        self.optim_set_to_none = optim_set_to_none

    def _register_handlers(self, handlers: Sequence) -> None:
        for name, monitor in self._monitors.items():
            monitor.attach(self, name)
        super()._register_handlers(handlers)

    def _measures_grad_ratio(self) -> bool:
        """Whether this iteration measures ``grad_ratio``: every ``grad_ratio_interval``-th iteration, or with
        interval 0 the last iteration of every epoch (every iteration outside ``run``, where no epoch is set)."""
        iteration, length = int(self.state.iteration), self.state.epoch_length
        if self.grad_ratio_interval > 0:
            return iteration % self.grad_ratio_interval == 0
        return not length or iteration % int(length) == 0

    def _autocast(self):
        device_type = self.state.device.type if self.state.device is not None else "cpu"
        enabled = self.autocast_dtype is not None
        return torch.autocast(device_type, dtype=self.autocast_dtype or torch.float32, enabled=enabled)

    def generator_stacks(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The generator's heatmaps, ``[(B, K, h, w), ...]`` first stack first, float32."""
        module = getattr(self.network, "module", self.network)
        with self._autocast():
            stacks = module.forward_stacks(image) if hasattr(module, "forward_stacks") else [self.network(image)]
        return [s.float() for s in stacks]

    def to_network_grid(self, heatmaps: torch.Tensor, network_hw: Sequence[int]) -> torch.Tensor:
        """Heatmaps ``(B, K, h, w)`` on the network input grid ``network_hw`` (what ``network(image)`` returns)."""
        hw = [int(network_hw[0]), int(network_hw[1])]
        if list(heatmaps.shape[-2:]) == hw:
            return heatmaps
        module = getattr(self.network, "module", self.network)
        if hasattr(module, "upsample_heatmaps"):
            return module.upsample_heatmaps(heatmaps, hw)
        return F.interpolate(heatmaps, size=hw, mode="bicubic", align_corners=False)

    def _iteration(self, engine: AdversarialLandmarkTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if "landmarks" not in targets:
            raise KeyError(f"AdversarialLandmarkTrainer: the batch has no 'landmarks' (keys: {sorted(batchdata)}).")
        network_hw = [int(image.shape[-2]), int(image.shape[-1])]
        points = targets["landmarks"].float()  # (B, K, 2) network px
        present = torch.isfinite(points).all(dim=-1).float()
        mask = targets["landmarks_mask"].float() if "landmarks_mask" in targets else landmark_mask(points, network_hw)
        mask = mask * present
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: targets}

        engine.network.train()
        engine.pose_discriminator.train()
        engine.confidence_discriminator.train()
        stacks = engine.generator_stacks(image)
        fake = stacks[-1]
        heatmap_hw = [int(fake.shape[-2]), int(fake.shape[-1])]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        points_h = network_to_heatmap_points(points, network_hw, heatmap_hw)
        real = engine.loss_function.targets(points_h, heatmap_hw, torch.float32).detach()
        pred_net = heatmap_to_network_points(decode_heatmaps(fake.detach())[0], heatmap_hw, network_hw)
        labels = fake_labels(
            pred_net, points, targets.get("net_from_orig"), targets.get("spacing"), engine.threshold_mm, engine.threshold_px
        )

        # a term with weight 0 is neither computed nor trained: alpha = beta = 0 is the plain generator
        use_pose, use_conf = engine.beta != 0.0, engine.alpha != 0.0
        zero = torch.zeros((), device=image.device)
        loss_d_pose = loss_d_conf = loss_adv_pose = loss_adv_conf = zero
        counts_pose = counts_conf = None

        # 1) discriminators: real -> 1, generated (detached) -> fake labels
        if use_pose or use_conf:
            real_n = normalise_heatmaps_for_discriminator(real)
            fake_n = normalise_heatmaps_for_discriminator(fake.detach())
            for _ in range(engine.discriminator_steps):
                loss_d = zero
                with engine._autocast():
                    if use_pose:
                        engine.pose_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
                        pose_real, pose_fake = engine.pose_discriminator(image, real_n), engine.pose_discriminator(image, fake_n)
                    if use_conf:
                        engine.confidence_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
                        conf_real, conf_fake = engine.confidence_discriminator(real_n), engine.confidence_discriminator(fake_n)
                if use_pose:
                    loss_d_pose = discriminator_loss(pose_real, pose_fake, labels, mask)
                    loss_d = loss_d + loss_d_pose
                    if counts_pose is None:  # judged before this iteration's first update
                        counts_pose = discriminator_counts(pose_real.detach(), pose_fake.detach(), labels, mask)
                if use_conf:
                    loss_d_conf = discriminator_loss(conf_real, conf_fake, labels, mask)
                    loss_d = loss_d + loss_d_conf
                    if counts_conf is None:
                        counts_conf = discriminator_counts(conf_real.detach(), conf_fake.detach(), labels, mask)
                loss_d.backward()
                if use_pose:
                    engine.pose_optimizer.step()
                if use_conf:
                    engine.confidence_optimizer.step()

        # 2) generator: heatmap loss on every stack + adversarial terms through the (frozen) discriminators
        _set_requires_grad(engine.pose_discriminator, False)
        _set_requires_grad(engine.confidence_discriminator, False)
        try:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            loss_mse = sum(
                engine.loss_function(
                    stack,
                    {
                        "landmarks": network_to_heatmap_points(points, network_hw, stack.shape[-2:]),
                        "landmarks_mask": mask,
                    },
                )
                for stack in stacks
            )
            fake_n = normalise_heatmaps_for_discriminator(fake)
            with engine._autocast():
                pose_logits = engine.pose_discriminator(image, fake_n) if use_pose else None
                conf_logits = engine.confidence_discriminator(fake_n) if use_conf else None
            if use_pose:
                loss_adv_pose = generator_adversarial_loss(pose_logits, mask)
            if use_conf:
                loss_adv_conf = generator_adversarial_loss(conf_logits, mask)
            mse_term = engine.mse_weight * loss_mse
            adversarial_term = engine.adversarial_scale * (engine.alpha * loss_adv_conf + engine.beta * loss_adv_pose)
            loss = mse_term + adversarial_term
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            grad_ratio = float("nan")
            if engine._measures_grad_ratio():
                grad_ratio = gradient_norm_ratio(adversarial_term, mse_term, list(engine.network.parameters()))
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        finally:
            _set_requires_grad(engine.pose_discriminator, True)
            _set_requires_grad(engine.confidence_discriminator, True)

        engine.state.output.update(
            {
                Keys.PRED: engine.to_network_grid(fake.detach(), network_hw),
                Keys.LOSS: loss.detach(),
                "loss_mse": torch.as_tensor(loss_mse).detach(),
                "loss_adv_pose": loss_adv_pose.detach(),
                "loss_adv_conf": loss_adv_conf.detach(),
                "loss_d_pose": loss_d_pose.detach(),
                "loss_d_conf": loss_d_conf.detach(),
                "fake_labels": labels,
                "grad_ratio": grad_ratio,
                "pose_counts": counts_pose,
                "conf_counts": counts_conf,
            }
        )
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
