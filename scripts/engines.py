"""The training engine of Adversarial PoseNet and the glue between landmark batches and MONAI's engines.

A collated landmark batch (see docs/DESIGN.md) carries ``image`` (B, 1, H, W), ``landmarks`` (B, N, 2)
network px, ``landmarks_mask`` (B, N), ``landmarks_orig`` (B, N, 2) original px, ``net_from_orig``
(B, 3, 3), ``orig_hw`` (B, 2) and ``spacing`` (B, 2) mm/px (NaN when unknown). Points are (x, y),
pixel centres at integers (``scripts.coords``). :func:`prepare_landmark_batch` splits it for any MONAI
engine; the output transforms decode the predicted heatmaps once per iteration for the metrics.

:class:`AdversarialLandmarkTrainer` trains Adversarial PoseNet (Chen et al., ICCV 2017; docs/METHODS.md
section 2). Per iteration:

1. the generator G (any heatmap network; a :class:`scripts.networks.posenet.StackedHourglass` gives
   all its stacks through ``forward_stacks``) predicts heatmaps on its heatmap grid;
2. the pose discriminator P (image + heatmaps) and the confidence discriminator C (heatmaps) learn,
   per landmark, real heatmaps -> 1 and the *detached* generated heatmaps -> :func:`scripts.losses.fake_labels`
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
iteration, :func:`scripts.metrics.gradient_norm_ratio`), and the discriminators' accuracies on real and generated heatmaps
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

The discriminator labels and losses are in :mod:`scripts.losses`, the discriminator accuracies and the
gradient ratio in :mod:`scripts.metrics`.

What the overlay ``configs/adversarial.json`` (merged after train.json) uses: the heatmap term takes train.json's
``gamma`` = 100 with the per-pixel mean squared error (``HeatmapLoss(reduction="mean")``) on heatmaps of
``heatmap_sigma`` = the contract's sigma divided by the output stride (at least 1 heatmap px);
``adversarial_alpha`` = 1e-4 and ``adversarial_beta`` = 1.25e-4 (about the paper's 1/220 : 1/180 proportion),
multiplied by ``adversarial_scale`` = gamma**2 = 1e4, i.e. effective weights 1 and 1.25 on ``L_C`` and ``L_P``.
They were chosen by measuring ``adversarial/grad_ratio`` on the demo data (docs/README.md, "Adversarial loss
balance"): 0.05-0.22 over the first 144 iterations, where the paper's weights times gamma**2 give 7.2 and the
paper's weights alone 4e-4. With ``configs/hand.json`` (256 x 256, 64 x 64 heatmaps) the ratio measured 2.07
at those weights after the first epoch and 0.185 at a tenth of them, so ``adversarial_weight_factor`` is 0.1
when ``dataset_name`` is ``hand`` (1 otherwise; ``configs/lower_limb.json`` measured 0.23 after the first
epoch on 32 synthetic long-leg images). The trained generator is evaluated by
``['configs/train.json','configs/adversarial.json','configs/evaluate.json']``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn

from scripts.coords import apply_matrix, resize_matrix
from scripts.heatmap import decode_heatmaps, landmark_mask, points_to_original
from scripts.keys import LandmarkKeys
from scripts.losses import (
    discriminator_loss,
    fake_labels,
    generator_adversarial_loss,
    normalise_heatmaps_for_discriminator,
)
from scripts.metrics import adversarial_monitors, discriminator_counts, gradient_norm_ratio

__all__ = [
    "TARGET_KEYS",
    "prepare_landmark_batch",
    "decode_batch_points",
    "decoded_points",
    "network_points_transform",
    "original_points_transform",
    "lower_is_better",
    "network_to_heatmap_points",
    "heatmap_to_network_points",
    "AdversarialLandmarkTrainer",
]


TARGET_KEYS = tuple(
    str(key)  # plain str: dicts keyed by LandmarkKeys members do not load with torch.load(weights_only=True)
    for key in (LandmarkKeys.LANDMARKS, LandmarkKeys.LANDMARKS_MASK, LandmarkKeys.LANDMARKS_ORIG, LandmarkKeys.NET_FROM_ORIG,
                LandmarkKeys.ORIG_HW, LandmarkKeys.SPACING)
)
"""Batch keys passed on to the loss and the metrics as the engine's label."""


def _as_tensor(value, device, non_blocking):
    if isinstance(value, torch.Tensor):
        return value.to(device=device, non_blocking=non_blocking)
    return torch.as_tensor(value, device=device)


def prepare_landmark_batch(batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
    """Split a collated landmark batch into the network input and a dict of targets.

    Args:
        batchdata: collated batch dict with ``image`` (B, 1, H, W) and the keys of ``TARGET_KEYS``
            that are present.
        device: target device.
        kwargs: extra arguments of ``Tensor.to`` for the image only (e.g. ``memory_format``).

    Returns:
        ``(image, targets)`` where ``targets`` maps each present key of ``TARGET_KEYS`` to a tensor.
    """
    image = torch.as_tensor(batchdata[LandmarkKeys.IMAGE]).to(device=device, non_blocking=non_blocking, **kwargs)
    targets = {k: _as_tensor(batchdata[k], device, non_blocking) for k in TARGET_KEYS if k in batchdata}
    return image, targets


def decode_batch_points(heatmaps: torch.Tensor, method: str | None = None) -> torch.Tensor:
    """Sub-pixel maxima of predicted heatmaps (B, N, H, W) -> points (B, N, 2), network px (x, y).

    ``method``: decoder of :func:`scripts.heatmap.decode_heatmaps` (the config's ``decode_method``)."""
    points, _ = decode_heatmaps(heatmaps.detach().float(), method)
    return points


DECODED_KEY = str(LandmarkKeys.PRED_POINTS)


def decoded_points(output: Mapping, method: str | None = None) -> torch.Tensor:
    """The decoded ``pred`` of an engine output, (B, N, 2) network px, decoded once per iteration and method.

    The first call stores ``(pred, method, points)`` in ``output[DECODED_KEY]`` (the engine's output dict), so
    the validation metrics and the evaluation report, which all read the same output, share one
    decoding; the stored points are used only while ``output["pred"]`` is the same tensor and the method the same.
    """
    pred = output[Keys.PRED]
    cached = output.get(DECODED_KEY)
    if cached is not None and cached[0] is pred and cached[1] == method:
        return cached[2]
    points = decode_batch_points(pred, method)
    if isinstance(output, dict):
        output[DECODED_KEY] = (pred, method, points)
    return points


def network_points_transform(output: Mapping, method: str | None = None):
    """Engine output -> ``(pred_points, true_points)`` in network px, for point-error metrics.

    True points of landmarks that are missing are NaN and so ignored by the metrics. ``method``: the decoder
    (configs: ``functools.partial(scripts.engines.network_points_transform, method=@decode_method)``).
    """
    return decoded_points(output, method), output[Keys.LABEL][LandmarkKeys.LANDMARKS].float()


def original_points_transform(output: Mapping, method: str | None = None):
    """Engine output -> ``(pred_points, true_points)`` in original-image px (ground truth from the annotation),
    decoded with ``method`` as :func:`network_points_transform`."""
    label = output[Keys.LABEL]
    pred_net = decoded_points(output, method)
    return points_to_original(pred_net, label[LandmarkKeys.NET_FROM_ORIG]).float(), label[LandmarkKeys.LANDMARKS_ORIG].float()


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` for errors: MONAI starts ``best`` at -1, so any first value is an improvement."""
    return best < 0 or current < best


def network_to_heatmap_points(points: torch.Tensor, network_hw: Sequence[int], heatmap_hw: Sequence[int]) -> torch.Tensor:
    """Points ``(..., 2)`` in network-input px -> px of a heatmap grid covering the same extent.

    ``x_h = (x + 0.5) * w / W - 0.5`` per axis (:func:`scripts.coords.resize_matrix`); NaN stays NaN.
    """
    return apply_matrix(points, resize_matrix(network_hw, heatmap_hw))


def heatmap_to_network_points(points: torch.Tensor, heatmap_hw: Sequence[int], network_hw: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`network_to_heatmap_points`: heatmap px -> network-input px."""
    return apply_matrix(points, resize_matrix(heatmap_hw, network_hw))


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
        threshold_mm, threshold_px: tolerances of :func:`scripts.losses.fake_labels`.
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
        if LandmarkKeys.LANDMARKS not in targets:
            raise KeyError(f"AdversarialLandmarkTrainer: the batch has no 'landmarks' (keys: {sorted(batchdata)}).")
        network_hw = [int(image.shape[-2]), int(image.shape[-1])]
        points = targets[LandmarkKeys.LANDMARKS].float()  # (B, K, 2) network px
        present = torch.isfinite(points).all(dim=-1).float()
        mask = targets[LandmarkKeys.LANDMARKS_MASK].float() if LandmarkKeys.LANDMARKS_MASK in targets else landmark_mask(points, network_hw)
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
            pred_net, points, targets.get(LandmarkKeys.NET_FROM_ORIG), targets.get(LandmarkKeys.SPACING), engine.threshold_mm, engine.threshold_px
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
                        LandmarkKeys.LANDMARKS: network_to_heatmap_points(points, network_hw, stack.shape[-2:]),
                        LandmarkKeys.LANDMARKS_MASK: mask,
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
