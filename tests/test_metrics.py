"""Tests of scripts.metrics: point errors in px and mm, IPE, outliers, SDR, the ignite metric, and the
measures of adversarial training (discriminator accuracies, gradient ratio)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError

from scripts.metrics import (
    DiscriminatorAccuracy,
    MeanOfMeasured,
    MeanPointError,
    discriminator_counts,
    gradient_norm_ratio,
    ipe_256,
    normalised_mm_spacing,
    outliers,
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


def test_gradient_norm_ratio_handles_terms_without_gradient():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    assert gradient_norm_ratio((w * 2).sum(), (w**2).sum() / 2, [w]) == pytest.approx(2 * math.sqrt(2) / 5)
    assert gradient_norm_ratio(torch.zeros(()), (w**2).sum(), [w]) == 0.0
    assert w.grad is None  # nothing accumulated


def test_discriminator_counts_and_accuracies():
    real = torch.tensor([[2.0, -1.0, 3.0], [0.5, 0.5, -9.0]])
    fake = torch.tensor([[-2.0, 1.0, 3.0], [0.5, -0.5, 9.0]])
    labels = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])  # generated landmark close enough -> 1
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the last entry is dropped
    counts = discriminator_counts(real, fake, labels, mask)
    # real right: 2.0, 3.0, 0.5, 0.5 -> 4 of 5; generated right: -2 (0), 1 (1), 0.5 (1), -0.5 (0) -> 4 of 5
    assert counts.tolist() == [4.0, 5.0, 4.0, 5.0]
    accuracies = {which: DiscriminatorAccuracy("counts", which) for which in ("all", "real", "generated")}
    for metric in accuracies.values():
        metric.reset()
        metric.update(counts)
        metric.update(None)  # an iteration without this discriminator
        metric.update(discriminator_counts(-real, fake, labels, mask))  # real now 1 of 5 right
    assert accuracies["real"].compute() == pytest.approx(5 / 10)
    assert accuracies["generated"].compute() == pytest.approx(8 / 10)
    assert accuracies["all"].compute() == pytest.approx(13 / 20)
    mean = MeanOfMeasured("grad_ratio")
    mean.reset()
    assert math.isnan(mean.compute())
    for value in (0.2, float("nan"), 0.4):
        mean.update(value)
    assert mean.compute() == pytest.approx(0.3)
