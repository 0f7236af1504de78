"""Landmark localisation measures: point errors in px and mm, IPE, outliers, SDR, summaries.

All distances are Euclidean, per landmark per image, between a predicted and a true point
``(x, y)`` (see :mod:`scripts.coords`), on landmarks present in both; anywhere else the error is
NaN and every summary ignores it. Function names and dictionary keys carry the unit of what they
return: ``*_px`` (pixels of the frame of the points given, normally the original image),
``*_px256`` (pixels of the image resized to 256x256), ``*_mm`` (millimetres from the image's pixel
spacing) and ``*_nmm`` ("normalised mm" for images without spacing: the distance of two reference
landmarks is defined as a fixed length, Payer et al.'s rule for the hand atlas).

The numpy functions come first; :class:`MeanPointError` wraps the mean error for ignite / MONAI
engines. The last part measures Adversarial PoseNet's training (:class:`scripts.engines.AdversarialLandmarkTrainer`):
discriminator accuracies and the ratio of the adversarial to the heatmap gradient. The evaluation
report built from these measures is :mod:`scripts.evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from scripts.coords import normalised_mm_per_px
from scripts.keys import LandmarkKeys

__all__ = [
    "point_errors_px",
    "point_errors_mm",
    "normalised_mm_spacing",
    "point_errors_px256",
    "ipe_256",
    "outliers",
    "sdr",
    "summarize",
    "summarize_per_landmark",
    "as_points",
    "MeanPointError",
    "discriminator_counts",
    "gradient_norm_ratio",
    "MeanOfMeasured",
    "DiscriminatorAccuracy",
    "adversarial_monitors",
]


def as_points(points, name: str) -> np.ndarray:
    p = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else points
    p = np.asarray(p, dtype=np.float64)
    if p.ndim not in (2, 3) or p.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) or (B, N, 2) of (x, y), got {p.shape}.")
    return p


def _per_image_xy(values, batch_shape: tuple, name: str) -> np.ndarray:
    """Broadcast per-axis factors to ``batch_shape + (1, 2)`` (points ``batch_shape + (N, 2)``).

    Accepted: scalar (isotropic, all images), ``(2,)`` ``(x, y)`` for all images, ``(B, 1)``
    isotropic per image, ``(B, 2)`` per image.
    """
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 0 or v.shape == (2,):
        return np.broadcast_to(v, batch_shape + (1, 2))
    if batch_shape and v.ndim == 2 and v.shape[0] == batch_shape[0] and v.shape[1] in (1, 2):
        return np.broadcast_to(v[:, None, :], batch_shape + (1, 2))
    raise ValueError(
        f"{name} must be a scalar, (2,) = (x, y) or (B, 1) / (B, 2) per image with B = "
        f"{batch_shape[0] if batch_shape else 'no batch'}, got shape {v.shape}."
    )


def _scaled_errors(pred, true, scale_xy) -> np.ndarray:
    p, t = as_points(pred, "pred"), as_points(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have the same shape, got {p.shape} and {t.shape}.")
    d = (p - t) * _per_image_xy(scale_xy, p.shape[:-2], "spacing")
    # NaN in either point (or in the spacing) gives NaN
    return np.sqrt(np.sum(d * d, axis=-1))


def point_errors_px(pred, true) -> np.ndarray:
    """Euclidean distances in pixels of the frame of the points.

    Args:
        pred: ``(B, N, 2)`` or ``(N, 2)`` predicted ``(x, y)`` px (array or tensor).
        true: same shape, true ``(x, y)`` px; NaN rows for missing landmarks.

    Returns:
        ``(B, N)`` or ``(N,)`` float64 errors, NaN where either point is missing.
    """
    return _scaled_errors(pred, true, 1.0)


def point_errors_mm(pred, true, spacing) -> np.ndarray:
    """Euclidean distances in mm; ``dx`` and ``dy`` are scaled by their own spacing before the norm.

    Args:
        pred: ``(B, N, 2)`` or ``(N, 2)`` predicted ``(x, y)`` px.
        true: same shape, true ``(x, y)`` px.
        spacing: mm per pixel: ``(sx, sy)`` for all images, ``(B, 2)`` per image, ``(B, 1)`` or a
            scalar for isotropic spacing. NaN spacing (unknown) gives NaN errors for that image.

    Returns:
        ``(B, N)`` or ``(N,)`` float64 errors in mm, NaN where either point or the spacing is missing.
    """
    return _scaled_errors(pred, true, spacing)


def normalised_mm_spacing(true_points, a: int = 1, b: int = 5, length_mm: float = 50.0) -> np.ndarray:
    """Isotropic "normalised mm" per pixel, per image: landmarks ``a`` and ``b`` are ``length_mm`` apart.

    Uses :func:`scripts.coords.normalised_mm_per_px` (0-based landmark indices; the hand atlas
    rule is landmarks 1 and 5 = 50 mm).

    Args:
        true_points: ``(B, N, 2)`` or ``(N, 2)`` true ``(x, y)`` in original pixels.

    Returns:
        ``(B, 2)`` (or ``(2,)``) ``(s, s)`` normalised mm per pixel, NaN where a reference landmark
        is missing; pass it as ``spacing`` to :func:`point_errors_mm` (the result is then in nmm).
    """
    t = as_points(true_points, "true_points")
    batch = t if t.ndim == 3 else t[None]
    per_image = np.array([normalised_mm_per_px(p, a, b, length_mm) for p in batch], dtype=np.float64)
    out = np.repeat(per_image[:, None], 2, axis=1)
    return out if t.ndim == 3 else out[0]


def point_errors_px256(pred_orig, true_orig, orig_hw, size: int = 256) -> np.ndarray:
    """Errors in pixels of the image resized to ``size x size``: ``dx * size / W``, ``dy * size / H``.

    Args:
        pred_orig: ``(B, N, 2)`` or ``(N, 2)`` predicted ``(x, y)`` original px.
        true_orig: same shape, true ``(x, y)`` original px.
        orig_hw: ``(H, W)`` of the original image(s), ``(2,)`` or ``(B, 2)``.
        size: side of the resized square image.

    Returns:
        ``(B, N)`` or ``(N,)`` float64 errors in px of the resized image.
    """
    hw = np.asarray(orig_hw.detach().cpu() if isinstance(orig_hw, torch.Tensor) else orig_hw, dtype=np.float64)
    if hw.shape[-1] != 2:
        raise ValueError(f"orig_hw must be (H, W) or (B, 2) of (H, W), got shape {hw.shape}.")
    scale_xy = float(size) / hw[..., ::-1]  # (W, H) -> (size / W, size / H)
    return _scaled_errors(pred_orig, true_orig, scale_xy)


def ipe_256(pred_orig, true_orig, orig_hw) -> float:
    """IPE: mean point error in px of the 256x256 resized image over all present landmarks and images."""
    errors = point_errors_px256(pred_orig, true_orig, orig_hw)
    return float(np.nanmean(errors)) if np.isfinite(errors).any() else float("nan")


def outliers(errors, radius: float) -> tuple[np.ndarray, float]:
    """Landmarks with error ``> radius`` (same unit as ``errors``).

    Args:
        errors: ``(B, N)`` (or ``(N,)`` for one image) errors, NaN = not evaluated.
        radius: outlier radius.

    Returns:
        ``(counts, percent)``: ``(B,)`` int outlier counts per image and the percentage of outliers
        among all evaluated landmarks (NaN if there are none).
    """
    e = np.atleast_2d(np.asarray(errors, dtype=np.float64))
    valid = np.isfinite(e)
    is_outlier = valid & (np.where(valid, e, 0.0) > radius)
    counts = is_outlier.sum(axis=1).astype(np.int64)
    n = int(valid.sum())
    percent = 100.0 * float(counts.sum()) / n if n else float("nan")
    return counts, percent


def sdr(errors, radii: Sequence[float]) -> dict[float, float]:
    """Successful detection rate (PCK): fraction in ``[0, 1]`` of evaluated landmarks with error ``<= r``.

    Args:
        errors: errors of any shape, NaN = not evaluated.
        radii: radii in the unit of ``errors``.

    Returns:
        ``{radius: fraction}``, NaN fractions if no landmark was evaluated.
    """
    e = np.asarray(errors, dtype=np.float64)
    e = e[np.isfinite(e)]
    return {float(r): (float(np.mean(e <= r)) if e.size else float("nan")) for r in radii}


def summarize(errors) -> dict[str, float]:
    """``{"mean", "median", "std", "max", "count"}`` of the finite errors (population std, ddof 0).

    Statistics are NaN when no error is finite; the unit is that of ``errors``.
    """
    e = np.asarray(errors, dtype=np.float64)
    e = e[np.isfinite(e)]
    if not e.size:
        return {"mean": float("nan"), "median": float("nan"), "std": float("nan"), "max": float("nan"), "count": 0}
    return {
        "mean": float(e.mean()),
        "median": float(np.median(e)),
        "std": float(e.std()),
        "max": float(e.max()),
        "count": int(e.size),
    }


def summarize_per_landmark(errors) -> list[dict[str, float]]:
    """:func:`summarize` of each column of ``(B, N)`` errors; list of ``N`` dicts with ``"landmark"`` index."""
    e = np.atleast_2d(np.asarray(errors, dtype=np.float64))
    return [{"landmark": i, **summarize(e[:, i])} for i in range(e.shape[1])]


def _to_numpy_points(value, name: str) -> np.ndarray:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (torch.Tensor, np.ndarray)):
        value = np.stack([as_points(v, name) for v in value])  # decollated per-sample points
    p = as_points(value, name)
    return p if p.ndim == 3 else p[None]


class MeanPointError(Metric):
    """Mean Euclidean point error over all present landmarks of all images seen (lower is better).

    The result is in the unit of the points given (network px or original px): give both in the
    same frame. ``engine.state.output`` (after ``output_transform``) may be:

    * a pair ``(pred_points, true_points)``, each ``(B, N, 2)`` ``(x, y)`` (tensor or array), or a
      list of per-sample ``(N, 2)`` points (MONAI ``from_engine`` on decollated output);
    * a mapping with keys ``"pred_points"`` and ``"true_points"``;
    * a list of such mappings, one per sample (a decollated MONAI engine output).

    Landmarks that are NaN in either are skipped. In a MONAI ``SupervisedEvaluator`` use it as the
    key metric with ``metric_cmp_fn=lambda current, prev: current < prev`` (MONAI accepts the first
    value without comparing); :class:`scripts.handlers.BestModelCheckpoint` then saves the best network.
    Distributed runs sum the totals over processes.
    """

    # ignite turns a mapping output into the tuple of these values before ``update``
    required_output_keys = (LandmarkKeys.PRED_POINTS, LandmarkKeys.TRUE_POINTS)

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        self._sum = 0.0
        self._count = 0
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = 0.0
        self._count = 0

    @staticmethod
    def _pred_true(output) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(output, Mapping):
            return (
                _to_numpy_points(output[LandmarkKeys.PRED_POINTS], "pred_points"),
                _to_numpy_points(output[LandmarkKeys.TRUE_POINTS], "true_points"),
            )
        if isinstance(output, (list, tuple)) and output and all(isinstance(o, Mapping) for o in output):
            pairs = [MeanPointError._pred_true(o) for o in output]
            return np.concatenate([p for p, _ in pairs]), np.concatenate([t for _, t in pairs])
        if isinstance(output, (list, tuple)) and len(output) == 2:
            return _to_numpy_points(output[0], "pred_points"), _to_numpy_points(output[1], "true_points")
        raise TypeError(
            "MeanPointError expects (pred_points, true_points), a mapping with 'pred_points' and "
            f"'true_points', or a list of such mappings; got {type(output).__name__}."
        )

    @reinit__is_reduced
    def update(self, output) -> None:
        pred, true = self._pred_true(output)
        errors = point_errors_px(pred, true)
        valid = np.isfinite(errors)
        self._sum += float(errors[valid].sum())
        self._count += int(valid.sum())

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if self._count == 0:
            raise NotComputableError("MeanPointError needs at least one landmark present in prediction and truth.")
        return float(self._sum) / float(self._count)


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
