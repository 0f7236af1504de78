"""Tests of scripts.evaluation: the report tables and summary, the cumulative-error plot, the evaluator handler."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from scripts.coords import apply_matrix, resize_matrix
from scripts.evaluation import EvaluationReportWriter, evaluation_report, plot_cumulative_error
from scripts.heatmap import gaussian_heatmaps


NAN = float("nan")


def test_evaluation_report_tables_and_summary():
    true = np.zeros((2, 6, 2))
    true[:, :, 0] = np.arange(6) * 20.0  # landmarks 1 and 5: 80 px apart -> 50/80 nmm/px
    true[:, :, 1] = 10.0
    pred = true.copy()
    pred[0, 0] += [3.0, 4.0]  # 5 px
    pred[0, 2] += [0.0, 30.0]  # 30 px
    pred[1, 3] += [12.0, 5.0]  # 13 px
    pred[1, 4] = NAN
    spacing = np.array([[0.5, 0.5], [NAN, NAN]])
    report = evaluation_report(
        pred,
        true,
        orig_hw=(512, 256),
        ids=["a", "b"],
        spacing_mm=spacing,
        radii_px=[5.0, 13.0],
        radii_mm=[2.5],
        outlier_radius_px256=10.0,
        outlier_radius_mm=10.0,
        normalised_mm=(1, 5, 50.0),
        landmark_names=[f"L{i}" for i in range(6)],
    )
    s = report["summary"]
    assert s["num_images"] == 2 and s["count_px"] == 11
    assert s["mean_px"] == pytest.approx(48.0 / 11)
    assert s["mean_mm"] == pytest.approx(0.5 * 35.0 / 6) and s["count_mm"] == 6
    assert s["mean_nmm"] == pytest.approx(50.0 / 80.0 * 48.0 / 11)
    # px256 of a 512 x 256 (H x W) image: dy halves, dx stays
    assert s["ipe_px256"] == pytest.approx((math.hypot(3.0, 2.0) + 15.0 + math.hypot(12.0, 2.5)) / 11)
    assert s["sdr_px_5"] == pytest.approx(9.0 / 11) and s["sdr_px_13"] == pytest.approx(10.0 / 11)
    assert s["sdr_mm_2.5"] == pytest.approx(5.0 / 6)  # 5 px * 0.5 = 2.5 mm counts, 15 mm does not
    assert s["outliers_px256_10"] == pytest.approx(1.0) and s["outlier_percent_px256_10"] == pytest.approx(200.0 / 11)
    assert s["outliers_mm_10"] == pytest.approx(1.0)  # only image a has mm; its 15 mm error

    per_image = {row["id"]: row for row in report["per_image"]}
    assert per_image["a"]["num_evaluated"] == 6 and per_image["b"]["num_evaluated"] == 5
    assert per_image["a"]["mean_px"] == pytest.approx(35.0 / 6)
    assert np.isnan(per_image["b"]["mean_mm"])
    assert per_image["b"]["outliers_px256_10"] == 1 and isinstance(per_image["b"]["outliers_px256_10"], int)

    per_landmark = report["per_landmark"]
    assert [row["name"] for row in per_landmark] == [f"L{i}" for i in range(6)]
    assert per_landmark[4]["count"] == 1 and per_landmark[0]["mean_px"] == pytest.approx(2.5)
    assert per_landmark[3]["max_px"] == pytest.approx(13.0)

    assert len(report["per_point"]) == 12
    row = report["per_point"][2]
    assert row["id"] == "a" and row["name"] == "L2" and row["error_px"] == pytest.approx(30.0)
    assert row["true_x"] == 40.0 and row["pred_y"] == 40.0
    with pytest.raises(ValueError, match="1 ids for 2 images"):
        evaluation_report(pred, true, (512, 256), ids=["a"])


def test_plot_cumulative_error_writes_png(tmp_path):
    path = plot_cumulative_error(
        {"val": np.array([[1.0, 2.0], [NAN, 3.0]]), "test": [0.5, 4.0]}, tmp_path / "sub" / "cdf.png", unit="mm"
    )
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 400)
        assert np.asarray(image.convert("L")).std() > 0
    single = plot_cumulative_error([NAN, 2.0], tmp_path / "one.png", unit="px", title="t")
    assert single.stat().st_size > 0


def test_report_writer_on_an_evaluator_writes_tables_that_read_back(tmp_path):
    """A real ignite engine whose outputs are heatmaps drawn at known points; the files on disk give the errors."""
    names = ["a", "b", "c"]
    net_hw, orig_hw = (32, 48), (64, 96)  # 2x: one network px = 2 original px
    matrix = torch.as_tensor(resize_matrix(orig_hw, net_hw))
    true_orig = torch.tensor([[[10.0, 12.0], [40.0, 30.0], [80.0, 50.0]], [[20.0, 8.0], [60.0, 40.0], [NAN, NAN]]])
    offsets = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [6.0, 8.0], [0.0, 0.0]]])  # original px
    pred_net = apply_matrix((true_orig + offsets).nan_to_num(5.0).double(), matrix)
    batches = [
        {
            "id": [f"img{b}"],
            "pred": gaussian_heatmaps(pred_net[b : b + 1], net_hw, sigma=1.5),
            "label": {
                "landmarks_orig": true_orig[b : b + 1],
                "net_from_orig": matrix[None].float(),
                "orig_hw": torch.tensor([orig_hw]),
                "spacing": torch.tensor([[0.5, 0.5]]) if b == 0 else torch.tensor([[NAN, NAN]]),
            },
        }
        for b in range(2)
    ]
    evaluator = Engine(lambda engine, batch: {"pred": batch["pred"], "label": batch["label"]})
    writer = EvaluationReportWriter(str(tmp_path / "report"), landmark_names=names, radii_px=[5.0], split="valid")
    writer.attach(evaluator)
    evaluator.run(batches)

    with open(tmp_path / "report" / "per_point.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    errors = {(row["id"], row["name"]): row["error_px"] for row in rows}
    assert float(errors[("img0", "a")]) == pytest.approx(5.0, abs=0.05)
    assert float(errors[("img1", "b")]) == pytest.approx(10.0, abs=0.05)
    assert errors[("img1", "c")] in ("", "nan")  # missing truth: no error
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["split"] == "valid" and summary["num_images"] == 2 and summary["count_px"] == 5
    assert summary["mean_px"] == pytest.approx(15.0 / 5, abs=0.02)
    assert summary["mean_mm"] == pytest.approx(2.5 / 3, abs=0.02)  # only img0 has a spacing
    assert summary["sdr_px_5"] == pytest.approx(4.0 / 5)
    assert (tmp_path / "report" / "cumulative_error_px.png").stat().st_size > 0

