"""Tests of scripts.losses: masked heatmap SSE, Gaussian targets from points, learnable sigma, and the
adversarial losses (discriminator inputs and labels, masked binary cross-entropy)."""

from __future__ import annotations

import math

import pytest
import torch

from scripts.coords import resize_matrix
from scripts.data.synthetic import generate_demo_dataset
from scripts.heatmap import gaussian_heatmaps
from scripts.losses import (
    HeatmapLoss,
    discriminator_loss,
    fake_labels,
    generator_adversarial_loss,
    masked_bce_with_logits,
    masked_sse,
    normalise_heatmaps_for_discriminator,
)
from tests.helpers import run_bundle

H, W = 12, 16  # non-square
K = 3


def points_batch() -> torch.Tensor:
    """(2, 3, 2) sub-pixel (x, y) points; landmark 2 of image 1 is missing (NaN)."""
    return torch.tensor(
        [
            [[3.3, 2.6], [12.7, 9.1], [7.5, 5.0]],
            [[10.2, 3.4], [2.1, 8.8], [float("nan"), float("nan")]],
        ]
    )


def test_masked_sse_hand_computed():
    pred = torch.zeros(2, 2, 1, 2)
    pred[0, 0, 0] = torch.tensor([1.0, 2.0])
    pred[0, 1, 0] = torch.tensor([3.0, 0.0])
    pred[1, 0, 0] = torch.tensor([0.5, 0.5])
    target = torch.ones(2, 2, 1, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # image 0: (0 + 1) + (4 + 1) = 6; image 1: 0.25 + 0.25, landmark 1 dropped
    torch.testing.assert_close(masked_sse(pred, target, mask), torch.tensor([6.0, 0.5]))
    # no mask keeps all: image 1 adds (1 + 1)
    torch.testing.assert_close(masked_sse(pred, target), torch.tensor([6.0, 2.5]))


def test_masked_sse_nan_target_masked_gives_finite_value_and_gradient():
    pred = torch.randn(1, 2, 3, 4, requires_grad=True)
    target = torch.randn(1, 2, 3, 4)
    target[0, 1] = float("nan")
    value = masked_sse(pred, target, torch.tensor([[1.0, 0.0]]))
    value.sum().backward()
    torch.testing.assert_close(value, ((pred[0, 0] - target[0, 0]) ** 2).sum()[None].detach())
    assert torch.isfinite(pred.grad).all()
    assert torch.count_nonzero(pred.grad[0, 1]) == 0


def test_masked_sse_shape_errors():
    with pytest.raises(ValueError, match="pred and target"):
        masked_sse(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 5))
    with pytest.raises(ValueError, match="mask must be"):
        masked_sse(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), torch.ones(2))


def test_loss_equals_hand_computed_gaussian_sse():
    """One landmark at pixel centre (1, 0) on a 2x3 grid, sigma 1, gamma 2, prediction all zeros."""
    loss = HeatmapLoss(num_landmarks=1, sigma=1.0, gamma=2.0)
    points = torch.tensor([[[1.0, 0.0]]])
    # target values 2 * exp(-d^2 / 2): d^2 = 0 (once), 1 (three times), 2 (twice)
    expected = 4.0 * (1.0 + 3.0 * math.exp(-1.0) + 2.0 * math.exp(-2.0))
    value = loss(torch.zeros(1, 1, 2, 3), {"landmarks": points, "landmarks_mask": torch.ones(1, 1)})
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # a prediction equal to the target gives 0
    target = gaussian_heatmaps(points, (2, 3), sigma=1.0, gamma=2.0)
    assert loss(target, {"landmarks": points}).item() == pytest.approx(0.0, abs=1e-10)


def test_reductions():
    points = points_batch()
    pred = torch.rand(2, 3, H, W)
    target = gaussian_heatmaps(points, (H, W), sigma=2.0, gamma=100.0)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    per_image = masked_sse(pred, target, mask)
    batch = {"landmarks": points, "landmarks_mask": mask}
    torch.testing.assert_close(HeatmapLoss(3)(pred, batch), per_image.mean())
    torch.testing.assert_close(HeatmapLoss(3, reduction="sum")(pred, batch), per_image.sum())
    torch.testing.assert_close(HeatmapLoss(3, reduction="mean")(pred, batch), per_image.sum() / (5 * H * W))
    with pytest.raises(ValueError, match="reduction"):
        HeatmapLoss(3, reduction="max")


def test_masked_landmark_prediction_does_not_change_loss():
    points = points_batch()
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    loss = HeatmapLoss(3)
    pred = torch.rand(2, 3, H, W)
    base = loss(pred, {"landmarks": points, "landmarks_mask": mask})
    changed = pred.clone()
    changed[0, 1] += 50.0  # masked out
    changed[1, 2] = 1e6  # masked out and NaN point
    torch.testing.assert_close(loss(changed, {"landmarks": points, "landmarks_mask": mask}), base)
    changed[0, 0] = 0.0  # kept: the loss must move
    assert not torch.isclose(loss(changed, {"landmarks": points, "landmarks_mask": mask}), base)


def test_nan_point_gives_finite_loss_and_gradients_even_if_mask_says_one():
    points = points_batch()
    pred = torch.rand(2, 3, H, W, requires_grad=True)
    loss = HeatmapLoss(3, learnable_sigma=True)
    value = loss(pred, {"landmarks": points, "landmarks_mask": torch.ones(2, 3)})
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(pred.grad).all() and torch.isfinite(loss.log_sigma.grad).all()
    assert torch.count_nonzero(pred.grad[1, 2]) == 0
    expected = masked_sse(pred, gaussian_heatmaps(points, (H, W), 2.0, 100.0), torch.tensor([[1.0] * 3, [1, 1, 0]]))
    torch.testing.assert_close(value, expected.mean())


def test_default_mask_drops_points_outside_grid():
    points = torch.tensor([[[3.0, 4.0], [W + 5.0, 2.0]]])
    pred = torch.rand(1, 2, H, W)
    loss = HeatmapLoss(2)
    target = gaussian_heatmaps(points, (H, W), 2.0, 100.0)
    expected = masked_sse(pred, target, torch.tensor([[1.0, 0.0]])).mean()
    torch.testing.assert_close(loss(pred, {"landmarks": points}), expected)


def test_precomputed_heatmaps_as_tensor_or_dict():
    points = points_batch()
    target = gaussian_heatmaps(points, (H, W), sigma=2.0, gamma=100.0)
    pred = torch.rand(2, 3, H, W)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss = HeatmapLoss(3)
    from_points = loss(pred, {"landmarks": points, "landmarks_mask": mask})
    torch.testing.assert_close(loss(pred, {"heatmaps": target, "landmarks_mask": mask}), from_points)
    torch.testing.assert_close(loss(pred, target), masked_sse(pred, target).mean())
    with pytest.raises(ValueError, match="learnable_sigma"):
        HeatmapLoss(3, learnable_sigma=True)(pred, {"heatmaps": target})
    with pytest.raises(KeyError, match="'landmarks' or 'heatmaps'"):
        loss(pred, {"landmarks_mask": mask})
    with pytest.raises(ValueError, match=r"pred must be \(B, 3, H, W\)"):
        loss(pred[:, :2], target)


def test_learnable_sigma_gets_gradient_and_regularisation():
    points = points_batch()
    sigma0 = [1.5, 2.0, 3.0]
    # fixed-peak targets (the normalised ones are tested below)
    loss = HeatmapLoss(3, sigma=sigma0, learnable_sigma=True, sigma_regularization=0.5, normalize_target=False)
    assert [n for n, _ in loss.named_parameters()] == ["log_sigma"]
    torch.testing.assert_close(loss.sigma, torch.tensor(sigma0))
    pred = torch.zeros(2, 3, H, W)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    value = loss(pred, {"landmarks": points, "landmarks_mask": mask})
    value.backward()
    grad = loss.log_sigma.grad
    # with zero prediction the data term grows with sigma, and so does the regulariser
    assert grad[0] > 0 and grad[1] > 0
    # landmark 2 is masked everywhere: only the regulariser d(0.5 s^2)/d(log s) = s^2 = 9
    assert grad[2].item() == pytest.approx(9.0, rel=1e-5)
    no_reg = HeatmapLoss(3, sigma=sigma0, learnable_sigma=True, normalize_target=False)(pred, {"landmarks": points, "landmarks_mask": mask})
    assert (value - no_reg).item() == pytest.approx(0.5 * sum(s * s for s in sigma0), rel=1e-5)


def test_learnable_sigma_moves_towards_target_width():
    """A few Adam steps on a prediction drawn with sigma 3 pull a sigma started at 1.5 up."""
    points = points_batch()[:1, :2]
    pred = gaussian_heatmaps(points, (H, W), sigma=3.0, gamma=100.0)
    loss = HeatmapLoss(2, sigma=1.5, learnable_sigma=True, normalize_target=False)
    optimiser = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(20):
        optimiser.zero_grad()
        loss(pred, {"landmarks": points}).backward()
        optimiser.step()
    assert torch.all(loss.sigma > 2.0)


def test_invalid_sigma():
    with pytest.raises(ValueError, match="2 values for 3 landmarks"):
        HeatmapLoss(3, sigma=[1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        HeatmapLoss(2, sigma=[1.0, 0.0])


def test_normalised_target_peak_scales_with_sigma():
    points = points_batch()[:1, :1]
    loss = HeatmapLoss(1, sigma=2.0, gamma=100.0, learnable_sigma=True)
    assert loss.normalize_target
    assert loss.targets(points, (H, W), torch.float32).max().item() == pytest.approx(100.0, rel=0.05)
    with torch.no_grad():
        loss.log_sigma.fill_(math.log(4.0))
    # gamma' / (2 pi sigma^2) with gamma' = 2 pi 2^2 100: a quarter of the peak at twice the sigma
    assert loss.targets(points, (H, W), torch.float32).max().item() == pytest.approx(25.0, rel=0.05)
    assert not HeatmapLoss(1, sigma=2.0).normalize_target


@pytest.fixture(scope="module")
def tiny_hand(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "demo_hand"
    generate_demo_dataset(out, kind="hand", num_train=6, num_valid=2, seed=3)
    return out


def _sigma_after_short_run(dataset, work, normalize: bool) -> torch.Tensor:
    values = {
        "num_filters": 8, "spatial_size": [64, 64], "sigma": 2.0,
        "dataset_dir": str(dataset), "ckpt_dir": str(work / "models"), "output_dir": str(work / "runs"),
        "max_epochs": 10, "val_interval": 10, "learnable_sigma": True, "lr_schedule": "none",
        # a high learning rate, so that 60 iterations move sigma as far as a long run at 1e-4 would
        "learning_rate": 0.01,
        "loss": "$scripts.losses.HeatmapLoss(num_landmarks=@num_landmarks, sigma=@sigma, gamma=@gamma, "
                "learnable_sigma=True, sigma_regularization=@sigma_regularization, "
                f"normalize_target={normalize}).to(@device)",
    }
    run_bundle("training", ["configs/train.json"], values)
    state = torch.load(work / "models" / "last.ckpt", map_location="cpu", weights_only=True)
    return state["loss"]["log_sigma"].exp()


def test_learnable_sigma_stays_sane_in_a_real_run_and_collapses_without_normalisation(tiny_hand, tmp_path):
    """Real bundle training (60 iterations on demo radiographs): with the config's normalised targets and
    sigma penalty every sigma stays within [0.75, 2] x its start (2 px); the fixed-peak targets of the
    same run shrink sigma below that range, which is the collapse the normalisation prevents."""
    sigma = _sigma_after_short_run(tiny_hand, tmp_path / "normalised", normalize=True)
    assert sigma.shape == (37,) and torch.isfinite(sigma).all()
    assert sigma.min() >= 1.5 and sigma.max() <= 4.0, sigma
    fixed_peak = _sigma_after_short_run(tiny_hand, tmp_path / "fixed", normalize=False)
    assert fixed_peak.median() < 1.5, fixed_peak


def test_normalisation_gives_real_and_generated_maps_the_same_value_range():
    points = torch.tensor([[[5.2, 7.7], [10.0, 3.0], [float("nan")] * 2]])
    real = gaussian_heatmaps(points, (16, 16), sigma=1.0, gamma=100.0)
    generated = 0.3 * torch.randn(1, K, 16, 16, generator=torch.Generator().manual_seed(0)) - 0.1  # any scale and sign
    generated[0, 1, 4, 9] = 0.2
    generated[0, 2] = -1.0  # all negative
    real_n, gen_n = normalise_heatmaps_for_discriminator(real), normalise_heatmaps_for_discriminator(generated)
    assert real.amax() == pytest.approx(100.0, rel=1e-3) and generated.amin() < 0
    for maps in (real_n[0, :2], gen_n[0, :2]):
        assert maps.amin() == 0.0 and maps.amax(dim=(-2, -1)) == pytest.approx(torch.ones(2), abs=1e-5)
    assert torch.equal(gen_n[0, 2], torch.zeros(16, 16))  # nothing positive: an empty map
    assert torch.equal(real_n[0, 2], torch.zeros(16, 16))  # a missing landmark stays empty
    # differentiable, so the generator is reached through it
    x = generated.clone().requires_grad_(True)
    normalise_heatmaps_for_discriminator(x).sum().backward()
    assert x.grad.abs().sum() > 0


def _matrix(orig_hw, net_hw, keep_aspect=False) -> torch.Tensor:
    return torch.as_tensor(resize_matrix(orig_hw, net_hw, keep_aspect=keep_aspect), dtype=torch.float32)


def test_fake_labels_measure_mm_in_the_original_image_when_spacing_is_known():
    # original 200 x 400 px (H, W) resized to 100 x 100: 1 network px = 4 original px along x, 2 along y
    net_from_orig = _matrix((200, 400), (100, 100))[None]
    spacing = torch.tensor([[0.1, 0.2]])  # mm per original px
    true = torch.tensor([[[50.0, 50.0]] * 4])
    pred = true + torch.tensor([[[24.0, 0.0], [26.0, 0.0], [0.0, 24.0], [0.0, 26.0]]])
    # x: 24 net px = 96 px = 9.6 mm (in), 26 -> 10.4 mm (out); y: 24 net px = 48 px = 9.6 mm (in), 26 -> 10.4 mm
    labels = fake_labels(pred, true, net_from_orig, spacing, threshold_mm=10.0, threshold_px=1.0)
    assert labels.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_fake_labels_measure_original_px_without_spacing_and_ignore_translation():
    # letterboxed 100 x 300 -> 64 x 64: one scale 64/300 for both axes plus an offset along y
    net_from_orig = _matrix((100, 300), (64, 64), keep_aspect=True)[None]
    scale = 64 / 300
    true = torch.tensor([[[20.0, 30.0], [20.0, 30.0], [20.0, 30.0], [float("nan"), float("nan")]]])
    # 9.5 and 10.5 original px apart; both are far below 10 *network* px
    pred = true + torch.tensor([[[9.5 * scale, 0.0], [0.0, 10.5 * scale], [6.0 * scale, 7.9 * scale], [0.0, 0.0]]])
    pred[0, 3] = torch.tensor([20.0, 30.0])
    labels = fake_labels(pred, true, net_from_orig, torch.tensor([[float("nan")] * 2]), threshold_mm=1e9, threshold_px=10.0)
    assert labels.tolist() == [[1.0, 0.0, 1.0, 0.0]]  # (6, 7.9) is 9.92 px; missing truth -> 0


def test_fake_labels_decide_per_sample_between_mm_and_px():
    true = torch.zeros(2, 1, 2)
    pred = torch.tensor([[[8.0, 0.0]], [[8.0, 0.0]]])  # 8 px apart in both samples (identity preprocessing)
    spacing = torch.tensor([[2.0, 2.0], [float("nan"), float("nan")]])  # sample 0: 16 mm; sample 1: px only
    labels = fake_labels(pred, true, None, spacing, threshold_mm=10.0, threshold_px=10.0)
    assert labels.tolist() == [[0.0], [1.0]]
    assert fake_labels(pred, true).tolist() == [[1.0], [1.0]]  # no matrix, no spacing: px
    with pytest.raises(ValueError, match="spacing must be \\(B, 2\\)"):
        fake_labels(pred, true, None, torch.ones(3, 2))


def test_masked_bce_drops_masked_entries():
    logits = torch.tensor([[2.0, -1.0, 50.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2
    assert masked_bce_with_logits(logits, 1.0, mask).item() == pytest.approx(expected, rel=1e-5)
    loss = masked_bce_with_logits(logits, 1.0, torch.zeros(1, 3))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(1, 3))
    # the discriminator objective: real -> 1, generated -> its label
    real, fake = torch.tensor([[3.0]]), torch.tensor([[-3.0]])
    one = torch.ones(1, 1)
    assert discriminator_loss(real, fake, torch.zeros(1, 1), one) < discriminator_loss(real, fake, one, one)
    assert generator_adversarial_loss(fake, torch.ones(1, 1)) > generator_adversarial_loss(real, torch.ones(1, 1))
