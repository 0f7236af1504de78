"""Landmark localisation measures: point errors in px and mm, IPE, outliers, SDR, summaries.

All distances are Euclidean, per landmark per image, between a predicted and a true point
``(x, y)`` (see :mod:`scripts.coords`), on landmarks present in both; anywhere else the error is
NaN and every summary ignores it. Function names and dictionary keys carry the unit of what they
return: ``*_px`` (pixels of the frame of the points given, normally the original image),
``*_px256`` (pixels of the image resized to 256x256), ``*_mm`` (millimetres from the image's pixel
spacing) and ``*_nmm`` ("normalised mm" for images without spacing: the distance of two reference
landmarks is defined as a fixed length, Payer et al.'s rule for the hand atlas).

The numpy functions come first; :class:`MeanPointError` wraps the mean error for ignite / MONAI
engines, :func:`evaluation_report` and :func:`plot_cumulative_error` build the evaluation outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from scripts.coords import normalised_mm_per_px

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
    "MeanPointError",
    "evaluation_report",
    "plot_cumulative_error",
]


def _as_points(points, name: str) -> np.ndarray:
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
    p, t = _as_points(pred, "pred"), _as_points(true, "true")
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
    t = _as_points(true_points, "true_points")
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
        value = np.stack([_as_points(v, name) for v in value])  # decollated per-sample points
    p = _as_points(value, name)
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
    value without comparing); :class:`scripts.engines.BestModelCheckpoint` then saves the best network.
    Distributed runs sum the totals over processes.
    """

    # ignite turns a mapping output into the tuple of these values before ``update``
    required_output_keys = ("pred_points", "true_points")

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
                _to_numpy_points(output["pred_points"], "pred_points"),
                _to_numpy_points(output["true_points"], "true_points"),
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


def _rows(values: dict[str, np.ndarray], index: int) -> dict[str, float]:
    return {k: v[index].item() for k, v in values.items()}


def evaluation_report(
    pred_orig,
    true_orig,
    orig_hw,
    ids: Sequence[str],
    spacing_mm=None,
    radii_px: Sequence[float] = (),
    radii_mm: Sequence[float] = (2.0, 2.5, 3.0, 4.0, 10.0, 20.0),
    outlier_radius_px256: float = 10.0,
    outlier_radius_mm: float = 10.0,
    normalised_mm: Sequence[float] | None = None,
    landmark_names: Sequence[str] | None = None,
) -> dict:
    """Per-point, per-image and per-landmark tables and a summary of a test set.

    Args:
        pred_orig: ``(B, N, 2)`` predicted ``(x, y)`` original px.
        true_orig: ``(B, N, 2)`` true ``(x, y)`` original px (the annotation, never augmented).
        orig_hw: ``(B, 2)`` or ``(2,)`` original ``(H, W)``.
        ids: ``B`` image ids.
        spacing_mm: ``(B, 2)`` or ``(2,)`` ``(sx, sy)`` mm/px, NaN (or ``None``) where unknown:
            those images get NaN ``*_mm`` values and are left out of the ``*_mm`` statistics.
        radii_px: SDR radii for original-pixel errors.
        radii_mm: SDR radii for mm (and normalised mm) errors.
        outlier_radius_px256: outlier radius in px of the 256x256 image (the SCN reimplementation
            uses 10).
        outlier_radius_mm: outlier radius in mm and nmm.
        normalised_mm: ``(a, b, length_mm)`` to add normalised-mm errors (``*_nmm``; hand atlas:
            ``(1, 5, 50.0)``), or ``None``.
        landmark_names: ``N`` names (default: ``"0"``, ``"1"``, ...).

    Returns:
        ``{"per_point": [...], "per_image": [...], "per_landmark": [...], "summary": {...}}``: lists of
        flat dicts (CSV rows) and a flat dict (JSON). Keys name their unit; SDR keys read
        ``sdr_<unit>_<radius>`` (fraction with error <= radius), outlier keys
        ``outliers_<unit>_<radius>`` (per image: count; summary: mean count per image) and
        ``outlier_percent_<unit>_<radius>``. ``"errors"`` maps each unit to its ``(B, N)`` error
        array (NaN where a landmark is missing).
    """
    pred, true = _as_points(pred_orig, "pred_orig"), _as_points(true_orig, "true_orig")
    if pred.ndim != 3 or pred.shape != true.shape:
        raise ValueError(f"pred_orig and true_orig must both be (B, N, 2), got {pred.shape} and {true.shape}.")
    batch, num = pred.shape[:2]
    ids = [str(i) for i in ids]
    if len(ids) != batch:
        raise ValueError(f"evaluation_report: {len(ids)} ids for {batch} images.")
    names = [str(n) for n in landmark_names] if landmark_names is not None else [str(i) for i in range(num)]
    if len(names) != num:
        raise ValueError(f"evaluation_report: {len(names)} landmark names for {num} landmarks.")
    if spacing_mm is None:
        spacing_mm = np.full(2, np.nan)

    errors = {"px": point_errors_px(pred, true), "px256": point_errors_px256(pred, true, orig_hw)}
    errors["mm"] = point_errors_mm(pred, true, spacing_mm)
    if normalised_mm is not None:
        a, b, length = normalised_mm
        errors["nmm"] = point_errors_mm(pred, true, normalised_mm_spacing(true, int(a), int(b), float(length)))
    sdr_radii = {"px": radii_px, "px256": (), "mm": radii_mm, "nmm": radii_mm}
    outlier_radius = {"px256": outlier_radius_px256, "mm": outlier_radius_mm, "nmm": outlier_radius_mm}

    per_point = []
    for i in range(batch):
        for j in range(num):
            row = {"id": ids[i], "landmark": j, "name": names[j]}
            row.update(pred_x=pred[i, j, 0], pred_y=pred[i, j, 1], true_x=true[i, j, 0], true_y=true[i, j, 1])
            row.update({f"error_{unit}": float(e[i, j]) for unit, e in errors.items()})
            per_point.append({k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()})

    per_image_stats: dict[str, np.ndarray] = {}
    for unit, e in errors.items():
        valid = np.isfinite(e)
        per_image_stats[f"mean_{unit}"] = np.array(
            [e[i][valid[i]].mean() if valid[i].any() else np.nan for i in range(batch)]
        )
        if unit in outlier_radius:
            per_image_stats[f"outliers_{unit}_{outlier_radius[unit]:g}"] = outliers(e, outlier_radius[unit])[0]
    present = np.isfinite(errors["px"]).sum(axis=1)
    per_image = [{"id": ids[i], "num_evaluated": int(present[i]), **_rows(per_image_stats, i)} for i in range(batch)]

    per_landmark = []
    for j in range(num):
        row = {"landmark": j, "name": names[j]}
        for unit, e in errors.items():
            row.update({f"{stat}_{unit}": value for stat, value in summarize(e[:, j]).items() if stat != "count"})
        row["count"] = int(np.isfinite(errors["px"][:, j]).sum())
        per_landmark.append(row)

    summary: dict[str, float | int] = {"num_images": batch, "num_landmarks": num}
    for unit, e in errors.items():
        stats = summarize(e)
        summary.update({f"{stat}_{unit}": value for stat, value in stats.items()})
        for r, fraction in sdr(e, sdr_radii[unit]).items():
            summary[f"sdr_{unit}_{r:g}"] = fraction
        if unit in outlier_radius:
            counts, percent = outliers(e, outlier_radius[unit])
            evaluated = np.isfinite(e).any(axis=1)
            key = f"{unit}_{outlier_radius[unit]:g}"
            summary[f"outliers_{key}"] = float(counts[evaluated].mean()) if evaluated.any() else float("nan")
            summary[f"outlier_percent_{key}"] = percent
    summary["ipe_px256"] = summary["mean_px256"]
    return {"per_point": per_point, "per_image": per_image, "per_landmark": per_landmark, "summary": summary,
            "errors": errors}


def plot_cumulative_error(errors, path: str | Path, unit: str, title: str | None = None) -> Path:
    """Write a PNG of the cumulative distribution of point errors.

    Args:
        errors: errors of any shape (NaN ignored), or a mapping ``label -> errors`` for several curves.
        path: output PNG file; parent folders are created.
        unit: unit of the errors for the axis label (e.g. ``"mm"``, ``"px"``).
        title: optional figure title.

    Returns:
        ``path`` as a ``Path``.
    """
    # the object-oriented Agg canvas leaves the global matplotlib backend alone
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = errors if isinstance(errors, Mapping) else {None: errors}
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, values in curves.items():
        e = np.asarray(values, dtype=np.float64)
        e = np.sort(e[np.isfinite(e)])
        if e.size:
            ax.step(np.concatenate([[0.0], e]), np.arange(e.size + 1) / e.size * 100.0, where="post", label=label)
    ax.set_xlabel(f"point error ({unit})")
    ax.set_ylabel("landmarks with error <= x (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if any(label is not None for label in curves):
        ax.legend(loc="lower right")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
