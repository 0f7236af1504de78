"""Evaluation report of a landmark model on a data split: per-point, per-image and per-landmark CSVs,
a summary JSON and cumulative-error plots.

Predictions are decoded from the evaluator's heatmaps and mapped to original-image pixels; the ground
truth is the annotation in original pixels (``landmarks_orig``), never an augmented or re-quantised
copy. Units are in every column name (see ``scripts.metrics.evaluation_report``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events

from scripts.engines import original_points_transform
from scripts.metrics import evaluation_report, plot_cumulative_error
from scripts.writers import write_text

__all__ = ["EvaluationReportWriter", "write_csv", "write_json"]


def write_csv(path: str | Path, rows: Sequence[dict]) -> None:
    """Write a list of flat dicts as CSV (columns in first-seen order), atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically; NaN becomes ``null``."""
    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (float, np.floating)):
            return float(value) if np.isfinite(value) else None
        if isinstance(value, np.integer):
            return int(value)
        return value

    write_text(path, json.dumps(clean(obj), indent=2))


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
    ) -> None:
        self.output_dir = Path(output_dir)
        self.landmark_names = landmark_names
        self.radii_px, self.radii_mm = tuple(radii_px), tuple(radii_mm)
        self.outlier_radius_px256, self.outlier_radius_mm = outlier_radius_px256, outlier_radius_mm
        self.normalised_mm = tuple(normalised_mm) if normalised_mm else None
        self.split = split
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
        pred, true = original_points_transform(engine.state.output)
        label = engine.state.output["label"]
        self._pred.append(pred.cpu().numpy())
        self._true.append(true.cpu().numpy())
        self._hw.append(label["orig_hw"].cpu().numpy())
        self._spacing.append(label["spacing"].cpu().numpy())
        self._ids += [str(i) for i in engine.state.batch["id"]]

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
        self.summary = {"split": self.split, **report["summary"]}
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
