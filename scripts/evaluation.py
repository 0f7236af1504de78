"""Evaluation report of a landmark model on a data split: per-point, per-image and per-landmark tables,
a summary and cumulative-error plots, and the evaluator handler that writes them.

Predictions are decoded from the evaluator's heatmaps and mapped to original-image pixels; the ground
truth is the annotation in original pixels (``landmarks_orig``), never an augmented or re-quantised
copy. Units are in every column name (see :func:`evaluation_report`); the measures themselves are
those of :mod:`scripts.metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events

from scripts.engines import original_points_transform
from scripts.heatmap import resolve_decode_method
from scripts.keys import LandmarkKeys
from scripts.metrics import (
    as_points,
    normalised_mm_spacing,
    outliers,
    point_errors_mm,
    point_errors_px,
    point_errors_px256,
    sdr,
    summarize,
)
from scripts.writers.files import write_csv, write_json

__all__ = ["evaluation_report", "plot_cumulative_error", "EvaluationReportWriter"]


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
    pred, true = as_points(pred_orig, "pred_orig"), as_points(true_orig, "true_orig")
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


class EvaluationReportWriter:
    """Collects predictions of an evaluator and writes the evaluation report when it completes.

    Files in ``output_dir``: ``per_point.csv``, ``per_image.csv``, ``per_landmark.csv``,
    ``summary.json`` and ``cumulative_error_<unit>.png`` for px, px256 and mm (or normalised mm).

    Args:
        output_dir: folder for the report.
        landmark_names: names of the ``N`` landmarks.
        radii_px: SDR radii in original px.
        radii_mm: SDR/PCK radii in mm (and normalised mm).
        outlier_radius_px256: outlier radius in px of the 256x256 resized image.
        outlier_radius_mm: outlier radius in mm.
        normalised_mm: ``(a, b, length_mm)`` normalisation rule for images without spacing
            (hand: ``(1, 5, 50)``), or None.
        split: name of the evaluated split, stored in the summary.
        decode_method: decoder of the heatmaps (:func:`scripts.heatmap.decode_heatmaps`; the configs'
            ``decode_method``), stored in the summary; ``None``: its default, the parabola.
    """

    def __init__(
        self,
        output_dir: str,
        landmark_names: Sequence[str] | None = None,
        radii_px: Sequence[float] = (),
        radii_mm: Sequence[float] = (2.0, 2.5, 3.0, 4.0, 10.0, 20.0),
        outlier_radius_px256: float = 10.0,
        outlier_radius_mm: float = 10.0,
        normalised_mm: Sequence[float] | None = None,
        split: str = "",
        decode_method: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.landmark_names = landmark_names
        self.radii_px, self.radii_mm = tuple(radii_px), tuple(radii_mm)
        self.outlier_radius_px256, self.outlier_radius_mm = outlier_radius_px256, outlier_radius_mm
        self.normalised_mm = tuple(normalised_mm) if normalised_mm else None
        self.split = split
        self.decode_method = resolve_decode_method(decode_method)
        self.summary: dict | None = None
        self.logger = logging.getLogger(self.__class__.__name__)
        self._reset(None)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine) -> None:
        self._pred, self._true, self._hw, self._spacing, self._ids = [], [], [], [], []

    def _collect(self, engine: Engine) -> None:
        pred, true = original_points_transform(engine.state.output, self.decode_method)
        label = engine.state.output[LandmarkKeys.LABEL]
        self._pred.append(pred.cpu().numpy())
        self._true.append(true.cpu().numpy())
        self._hw.append(label[LandmarkKeys.ORIG_HW].cpu().numpy())
        self._spacing.append(label[LandmarkKeys.SPACING].cpu().numpy())
        self._ids += [str(i) for i in engine.state.batch[LandmarkKeys.ID]]

    def _write(self, engine: Engine) -> None:
        if not self._ids:
            raise RuntimeError("evaluation ran on no image: is the split empty?")
        report = evaluation_report(
            np.concatenate(self._pred),
            np.concatenate(self._true),
            np.concatenate(self._hw),
            self._ids,
            spacing_mm=np.concatenate(self._spacing),
            radii_px=self.radii_px,
            radii_mm=self.radii_mm,
            outlier_radius_px256=self.outlier_radius_px256,
            outlier_radius_mm=self.outlier_radius_mm,
            normalised_mm=self.normalised_mm,
            landmark_names=self.landmark_names,
        )
        out = self.output_dir
        for table in ("per_point", "per_image", "per_landmark"):
            write_csv(out / f"{table}.csv", report[table])
        self.summary = {"split": self.split, "decode_method": self.decode_method,
                        **report["summary"]}
        write_json(out / "summary.json", self.summary)
        for unit, errors in report["errors"].items():
            if np.isfinite(errors).any():
                plot_cumulative_error(errors, out / f"cumulative_error_{unit}.png", unit=unit, title=f"split {self.split}")
        s = self.summary
        line = f"split '{self.split}': {s['num_images']} images, mean error {s['mean_px']:.2f} px (original), IPE {s['ipe_px256']:.3f} px@256"
        for unit in ("mm", "nmm"):
            if np.isfinite(s.get(f"mean_{unit}", np.nan)):
                line += f", {s[f'mean_{unit}']:.2f} {unit}"
        self.logger.info(f"{line}; report in {out}")
        print(line, flush=True)
