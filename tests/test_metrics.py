"""Tests of scripts.metrics against hand-computed cases, and of MeanPointError in ignite / MONAI engines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from PIL import Image

from scripts.metrics import (
    MeanPointError,
    evaluation_report,
    ipe_256,
    normalised_mm_spacing,
    outliers,
    plot_cumulative_error,
    point_errors_mm,
    point_errors_px,
    point_errors_px256,
    sdr,
    summarize,
    summarize_per_landmark,
)

NAN = float("nan")


def triangle_case():
    """(2, 3, 2) points: errors [[5, 0, NaN], [10, NaN, 13]] px (3-4-5 and 5-12-13 triangles)."""
    true = np.array([[[0.0, 0.0], [7.0, 1.0], [2.0, 2.0]], [[10.0, 20.0], [NAN, NAN], [1.0, 1.0]]])
    pred = np.array([[[3.0, 4.0], [7.0, 1.0], [NAN, NAN]], [[16.0, 28.0], [5.0, 5.0], [6.0, 13.0]]])
    return pred, true


def test_point_errors_px_triangles_and_nan():
    pred, true = triangle_case()
    errors = point_errors_px(pred, true)
    np.testing.assert_allclose(errors, [[5.0, 0.0, NAN], [10.0, NAN, 13.0]])
    # unbatched and torch input
    np.testing.assert_allclose(point_errors_px(torch.tensor(pred[0]), torch.tensor(true[0])), [5.0, 0.0, NAN])
    with pytest.raises(ValueError, match="same shape"):
        point_errors_px(pred, true[:, :2])
    with pytest.raises(ValueError, match=r"\(N, 2\) or \(B, N, 2\)"):
        point_errors_px(np.zeros((3, 3)), np.zeros((3, 3)))


def test_point_errors_mm_anisotropic_spacing():
    pred, true = triangle_case()
    # image 0: dx 3, dy 4 with (sx, sy) = (2, 0.5) -> sqrt(36 + 4); image 1: unknown spacing
    errors = point_errors_mm(pred, true, np.array([[2.0, 0.5], [NAN, NAN]]))
    assert errors[0, 0] == pytest.approx(math.sqrt(40.0))
    assert errors[0, 1] == 0.0 and np.isnan(errors[0, 2])
    assert np.isnan(errors[1]).all()
    # one (sx, sy) for all images: x and y are not swapped
    errors = point_errors_mm(pred, true, (0.5, 2.0))
    np.testing.assert_allclose(errors[:, 0], [math.sqrt(1.5**2 + 8.0**2), math.sqrt(3.0**2 + 16.0**2)])
    # scalar and (B, 1) isotropic
    np.testing.assert_allclose(point_errors_mm(pred, true, 0.1), 0.1 * point_errors_px(pred, true))
    np.testing.assert_allclose(
        point_errors_mm(pred, true, [[0.1], [0.2]]), np.array([[0.1], [0.2]]) * point_errors_px(pred, true)
    )
    with pytest.raises(ValueError, match="spacing"):
        point_errors_mm(pred, true, np.ones((3, 2)))


def test_normalised_mm_spacing_rule():
    true = np.full((2, 6, 2), 50.0)
    true[0, 1] = [10.0, 20.0]
    true[0, 5] = [70.0, 100.0]  # 60-80-100 triangle: landmarks 1 and 5 are 100 px apart
    true[1, 5] = NAN
    spacing = normalised_mm_spacing(true)
    np.testing.assert_allclose(spacing[0], [0.5, 0.5])
    assert np.isnan(spacing[1]).all()
    np.testing.assert_allclose(normalised_mm_spacing(true[0]), [0.5, 0.5])
    np.testing.assert_allclose(normalised_mm_spacing(true[0], a=0, b=1, length_mm=10.0), [10.0 / 50.0] * 2)
    # feeds point_errors_mm directly: a 3-4-5 error of 10 px is 5 nmm
    pred = true.copy()
    pred[0, 2] += [6.0, 8.0]
    assert point_errors_mm(pred, true, spacing)[0, 2] == pytest.approx(5.0)


def test_ipe_256_non_square_image():
    true = np.array([[[100.0, 200.0], [300.0, 50.0]]])
    pred = true + np.array([[[8.0, 6.0], [0.0, 4.0]]])
    orig_hw = (512, 1024)  # H, W: x shrinks by 4, y by 2
    errors = point_errors_px256(pred, true, orig_hw)
    np.testing.assert_allclose(errors, [[math.sqrt(2.0**2 + 3.0**2), 2.0]])
    assert ipe_256(pred, true, np.array([[512, 1024]])) == pytest.approx((math.sqrt(13.0) + 2.0) / 2)
    # per-image sizes
    two = np.concatenate([pred, pred]), np.concatenate([true, true])
    errors = point_errors_px256(*two, np.array([[512, 1024], [256, 256]]))
    np.testing.assert_allclose(errors[1], [10.0, 4.0])


def test_outliers_counts_and_percentage():
    errors = np.array([[1.0, 11.0, NAN], [12.0, 13.0, 10.0]])
    counts, percent = outliers(errors, 10.0)  # 10.0 itself is not an outlier
    np.testing.assert_array_equal(counts, [1, 2])
    assert percent == pytest.approx(100.0 * 3 / 5)
    counts, percent = outliers(np.array([NAN, NAN]), 1.0)
    np.testing.assert_array_equal(counts, [0])
    assert np.isnan(percent)


def test_sdr_fractions():
    errors = np.array([[1.0, 2.0, 3.0], [4.0, NAN, 2.5]])
    np.testing.assert_equal(sdr(errors, [2.0, 2.5, 3.5, 0.5]), {2.0: 0.4, 2.5: 0.6, 3.5: 0.8, 0.5: 0.0})
    assert np.isnan(sdr([NAN], [1.0])[1.0])


def test_summarize_and_per_landmark():
    stats = summarize([[1.0, 2.0], [NAN, 6.0]])
    assert stats == pytest.approx({"mean": 3.0, "median": 2.0, "std": math.sqrt(14.0 / 3.0), "max": 6.0, "count": 3})
    empty = summarize([NAN])
    assert empty["count"] == 0 and np.isnan(empty["mean"])
    per = summarize_per_landmark(np.array([[1.0, 2.0], [3.0, NAN]]))
    assert [p["landmark"] for p in per] == [0, 1]
    assert per[0]["mean"] == 2.0 and per[0]["count"] == 2
    assert per[1]["mean"] == 2.0 and per[1]["count"] == 1


def batches():
    rng = np.random.default_rng(0)
    out = []
    for b in (2, 3, 1):
        true = rng.uniform(0, 100, size=(b, 4, 2))
        pred = true + rng.normal(0, 3, size=true.shape)
        true[0, 1] = NAN
        pred[-1, 3] = NAN
        out.append((torch.tensor(pred), torch.tensor(true)))
    return out


def test_mean_point_error_in_ignite_engine_equals_numpy():
    data = batches()
    expected = np.nanmean(np.concatenate([point_errors_px(p, t).ravel() for p, t in data]))

    engine = Engine(lambda e, batch: batch)
    MeanPointError().attach(engine, "mpe")
    state = engine.run(data, max_epochs=1)
    assert state.metrics["mpe"] == pytest.approx(expected)

    as_dicts = [{"pred_points": p, "true_points": t} for p, t in data]
    engine = Engine(lambda e, batch: batch)
    MeanPointError().attach(engine, "mpe")
    assert engine.run(as_dicts, max_epochs=2).metrics["mpe"] == pytest.approx(expected)  # reset per epoch


def test_mean_point_error_update_forms_and_errors():
    pred, true = batches()[1]
    metric = MeanPointError()
    metric.update([{"pred_points": pred[i], "true_points": true[i]} for i in range(3)])  # decollated
    metric.update(([pred[i] for i in range(3)], [true[i] for i in range(3)]))  # from_engine lists
    assert metric.compute() == pytest.approx(float(np.nanmean(point_errors_px(pred, true))))
    metric.reset()
    with pytest.raises(NotComputableError):
        metric.compute()
    with pytest.raises(TypeError, match="MeanPointError expects"):
        metric.update(pred)


def test_mean_point_error_as_monai_key_metric():
    from monai.engines import SupervisedEvaluator
    from monai.handlers import from_engine

    class ShiftPoints(torch.nn.Module):
        def forward(self, x):  # image (B, 1, N, 2) holding points -> points shifted by (3, 4)
            return x[:, 0] + torch.tensor([3.0, 4.0])

    true = torch.tensor(np.random.default_rng(1).uniform(0, 50, size=(5, 4, 2)), dtype=torch.float32)
    true[2, 1] = NAN
    data = [{"image": true[i][None], "label": true[i]} for i in range(5)]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=ShiftPoints(),
        key_val_metric={"val_mpe": MeanPointError(output_transform=from_engine(["pred", "label"]))},
        metric_cmp_fn=lambda current, prev: current < prev,
    )
    evaluator.run()
    assert evaluator.state.metrics["val_mpe"] == pytest.approx(5.0, rel=1e-6)
    assert evaluator.state.best_metric == pytest.approx(5.0, rel=1e-6)


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
