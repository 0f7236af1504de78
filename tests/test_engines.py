"""Tests of scripts.engines: batch preparation and output transforms, and the Adversarial PoseNet trainer
(the sign and reach of the adversarial gradient, its outputs and monitors)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from ignite.engine import Events

import scripts.engines as engines
from scripts.coords import resize_matrix
from scripts.engines import AdversarialLandmarkTrainer, heatmap_to_network_points, network_to_heatmap_points
from scripts.heatmap import decode_heatmaps, gaussian_heatmaps, points_to_original
from scripts.losses import HeatmapLoss, generator_adversarial_loss, normalise_heatmaps_for_discriminator
from scripts.networks import ConfidenceDiscriminator, PoseDiscriminator, SpatialConfigurationNet, StackedHourglass


def test_validation_transforms_decode_each_output_once(monkeypatch):
    points = torch.tensor([[[5.3, 7.6], [20.2, 11.9]]])
    heatmaps = gaussian_heatmaps(points[0], (32, 32), sigma=1.5, gamma=100.0)[None]
    matrix = torch.as_tensor(resize_matrix((64, 128), (32, 32)))[None]
    output = {"pred": heatmaps, "label": {"landmarks": points, "landmarks_orig": points * 2, "net_from_orig": matrix}}
    calls = []
    decode = engines.decode_batch_points
    monkeypatch.setattr(engines, "decode_batch_points", lambda h, method=None: calls.append(method) or decode(h, method))

    pred_net, true_net = engines.network_points_transform(output)
    pred_orig, _ = engines.original_points_transform(output)
    assert len(calls) == 1  # the second transform reused the first decoding
    assert torch.allclose(pred_net, points, atol=1e-3) and torch.equal(true_net, points)
    # original px: x' = (x + 0.5) * 128 / 32 - 0.5, y' = (y + 0.5) * 64 / 32 - 0.5
    expected = torch.stack([(points[..., 0] + 0.5) * 4 - 0.5, (points[..., 1] + 0.5) * 2 - 0.5], dim=-1)
    assert torch.allclose(pred_orig, expected, atol=5e-3)
    # a new output (the next iteration) is decoded again
    engines.network_points_transform({**output, "pred": heatmaps.clone()})
    assert len(calls) == 2
    # so is the same output with another decoder, and the report then reads that decoder's points
    noisy = heatmaps + torch.rand(heatmaps.shape, generator=torch.Generator().manual_seed(0))
    output["pred"] = noisy
    fit, _ = engines.network_points_transform(output, "gaussian_fit")
    fit_orig, _ = engines.original_points_transform(output, "gaussian_fit")
    parabola, _ = engines.network_points_transform(output, "parabola")
    assert calls[2:] == ["gaussian_fit", "parabola"]
    assert torch.equal(fit, decode_heatmaps(noisy, "gaussian_fit")[0])
    assert torch.equal(parabola, decode_heatmaps(noisy, "parabola")[0]) and not torch.equal(fit, parabola)
    assert torch.allclose(fit_orig, points_to_original(fit, matrix).float())


K = 3


def test_heatmap_grid_points_use_the_pixel_centre_rule():
    points = torch.tensor([[[0.0, 0.0], [-0.5, 63.5], [10.0, float("nan")]]])
    on_grid = network_to_heatmap_points(points, (64, 64), (16, 16))
    assert torch.allclose(on_grid[0, :2], torch.tensor([[-0.375, -0.375], [-0.5, 15.5]]))
    assert torch.isnan(on_grid[0, 2, 1])
    assert torch.allclose(heatmap_to_network_points(on_grid, (16, 16), (64, 64))[0, :2], points[0, :2])


def _matrix(orig_hw, net_hw, keep_aspect=False) -> torch.Tensor:
    return torch.as_tensor(resize_matrix(orig_hw, net_hw, keep_aspect=keep_aspect), dtype=torch.float32)


def _batch(hw=(32, 32), batch=2) -> dict:
    g = torch.Generator().manual_seed(0)
    landmarks = torch.tensor([[8.3, 9.1], [20.6, 14.2], [15.0, 25.7]]).expand(batch, K, 2).clone()
    landmarks[1, 2] = float("nan")
    return {
        "image": torch.randn(batch, 1, *hw, generator=g),
        "landmarks": landmarks,
        "landmarks_mask": torch.isfinite(landmarks).all(-1).float(),
        "landmarks_orig": landmarks * 4,
        "net_from_orig": _matrix((hw[0] * 4, hw[1] * 4), hw).expand(batch, 3, 3),
        "orig_hw": torch.tensor([[hw[0] * 4, hw[1] * 4]] * batch),
        "spacing": torch.tensor([[0.2, 0.2], [float("nan"), float("nan")]])[:batch],
    }


def _trainer(generator=None, *, alpha=1.0, beta=1.0, mse_weight=1.0, g_lr=1e-3, d_lr=1e-3, sigma=1.0, loader=None,
             gamma=1.0, **kwargs):
    torch.manual_seed(0)
    generator = generator or StackedHourglass(num_landmarks=K, num_stacks=2, num_channels=8, depth=2)
    pose = PoseDiscriminator(num_landmarks=K, base_channels=4, num_downsamples=2)
    conf = ConfidenceDiscriminator(num_landmarks=K, base_channels=4, num_downsamples=2)
    return AdversarialLandmarkTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader if loader is not None else [_batch()],
        network=generator,
        optimizer=torch.optim.SGD(generator.parameters(), lr=g_lr),
        loss_function=HeatmapLoss(num_landmarks=K, sigma=sigma, gamma=gamma, reduction="mean"),
        pose_discriminator=pose,
        pose_optimizer=torch.optim.SGD(pose.parameters(), lr=d_lr),
        confidence_discriminator=conf,
        confidence_optimizer=torch.optim.SGD(conf.parameters(), lr=d_lr),
        alpha=alpha,
        beta=beta,
        mse_weight=mse_weight,
        **kwargs,
    )


def _generator_gradient(trainer) -> float:
    trainer._iteration(trainer, _batch())
    return sum(float(p.grad.abs().sum()) for p in trainer.network.parameters() if p.grad is not None)


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (0.0, 1.0)])
def test_each_adversarial_term_alone_reaches_the_generator(alpha, beta):
    assert _generator_gradient(_trainer(alpha=alpha, beta=beta, mse_weight=0.0)) > 0
    # control: with every term off, nothing reaches it (so the check above can fail)
    assert _generator_gradient(_trainer(alpha=0.0, beta=0.0, mse_weight=0.0)) == 0


class _MapGenerator(torch.nn.Module):
    """A generator whose heatmaps (8 x 8, positive) are its parameters: a smooth landscape for a first-order check."""

    def __init__(self):
        super().__init__()
        self.maps = torch.nn.Parameter(torch.rand(1, K, 8, 8, generator=torch.Generator().manual_seed(1)) + 0.5)

    def forward(self, x):
        return self.maps.expand(x.shape[0], -1, -1, -1)


def test_generator_step_moves_towards_fooling_the_discriminators():
    # frozen discriminators; only the adversarial terms drive the generator
    trainer = _trainer(_MapGenerator(), alpha=1.0, beta=1.0, mse_weight=0.0, g_lr=1e-2, d_lr=0.0)
    batch = _batch()
    mask = batch["landmarks_mask"]

    def adversarial_loss():
        with torch.no_grad():
            fake = normalise_heatmaps_for_discriminator(trainer.generator_stacks(batch["image"])[-1])
            return float(
                generator_adversarial_loss(trainer.pose_discriminator(batch["image"], fake), mask)
                + generator_adversarial_loss(trainer.confidence_discriminator(fake), mask)
            )

    before = adversarial_loss()
    trainer._iteration(trainer, batch)
    assert adversarial_loss() < before


def test_discriminator_step_learns_to_separate_and_leaves_the_generator_alone():
    trainer = _trainer(g_lr=0.0, d_lr=0.05)
    weights = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    first = trainer._iteration(trainer, _batch())
    later = trainer._iteration(trainer, _batch())
    assert later["loss_d_pose"] < first["loss_d_pose"] and later["loss_d_conf"] < first["loss_d_conf"]
    assert all(torch.equal(weights[k], v) for k, v in trainer.network.state_dict().items())
    assert all(p.requires_grad for p in trainer.pose_discriminator.parameters())  # unfrozen again


def test_trainer_run_writes_named_outputs_with_pred_on_the_network_grid():
    trainer = _trainer(loader=[_batch(), _batch()])
    trainer.run()
    out = trainer.state.output
    assert trainer.state.iteration == 2
    assert out["pred"].shape == (2, K, 32, 32) and not out["pred"].requires_grad
    for key in ("loss", "loss_mse", "loss_adv_pose", "loss_adv_conf", "loss_d_pose", "loss_d_conf"):
        assert out[key].ndim == 0 and torch.isfinite(out[key]), key
    assert out["loss"] == pytest.approx(float(out["loss_mse"] + out["loss_adv_conf"] + out["loss_adv_pose"]), rel=1e-5)
    assert out["fake_labels"].shape == (2, K) and out["fake_labels"][1, 2] == 0  # missing truth
    assert out["label"]["landmarks"].shape == (2, K, 2)


def test_spatial_configuration_net_works_as_generator():
    scn = SpatialConfigurationNet(num_landmarks=K, num_filters=4, num_levels=2, sc_num_filters=4, sc_kernel_size=3)
    trainer = _trainer(scn, alpha=1.0, beta=0.0, mse_weight=0.0)
    assert _generator_gradient(trainer) > 0
    assert trainer.state.output["pred"].shape == (2, K, 32, 32)  # one stack, on the input grid


def test_distributed_generator_is_rejected():
    class FakeDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self):  # no process group needed to test the type check
            torch.nn.Module.__init__(self)
            self.weight = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(NotImplementedError, match="DistributedDataParallel"):
        _trainer(FakeDDP())


def _independent_gradient_norms(trainer, batch) -> tuple[float, float]:
    """Norms of the generator gradients of the weighted heatmap and adversarial terms, computed here with plain
    ``backward`` on copies of the networks (the trainer's discriminators must not learn: d_lr = 0)."""
    generator = copy.deepcopy(trainer.network)
    pose, conf = copy.deepcopy(trainer.pose_discriminator), copy.deepcopy(trainer.confidence_discriminator)
    image, points, mask = batch["image"], batch["landmarks"], batch["landmarks_mask"]
    stacks = generator.forward_stacks(image) if hasattr(generator, "forward_stacks") else [generator(image)]
    mse = sum(
        trainer.loss_function(s, {"landmarks": network_to_heatmap_points(points, (32, 32), s.shape[-2:]),
                                  "landmarks_mask": mask})
        for s in stacks
    )
    fake = normalise_heatmaps_for_discriminator(stacks[-1])
    adversarial = trainer.adversarial_scale * (
        trainer.alpha * generator_adversarial_loss(conf(fake), mask)
        + trainer.beta * generator_adversarial_loss(pose(image, fake), mask)
    )
    norms = []
    for term in (trainer.mse_weight * mse, adversarial):
        generator.zero_grad(set_to_none=True)
        term.backward(retain_graph=True)
        norms.append(math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in generator.parameters() if p.grad is not None)))
    return norms[0], norms[1]


def test_grad_ratio_is_the_ratio_of_real_generator_gradients():
    batch = _batch()
    trainer = _trainer(alpha=0.3, beta=0.7, d_lr=0.0)
    mse_norm, adversarial_norm = _independent_gradient_norms(trainer, batch)
    assert mse_norm > 0 and adversarial_norm > 0
    out = trainer._iteration(trainer, batch)
    assert out["grad_ratio"] == pytest.approx(adversarial_norm / mse_norm, rel=1e-4)
    # linear in the weights, zero without adversarial terms
    single = _trainer(alpha=0.3, beta=0.0, d_lr=0.0)._iteration(_trainer(alpha=0.3, beta=0.0, d_lr=0.0), batch)
    double_trainer = _trainer(alpha=0.6, beta=0.0, d_lr=0.0)
    double = double_trainer._iteration(double_trainer, batch)
    assert double["grad_ratio"] == pytest.approx(2 * single["grad_ratio"], rel=1e-4) and single["grad_ratio"] > 0
    off = _trainer(alpha=0.0, beta=0.0)
    assert off._iteration(off, batch)["grad_ratio"] == 0.0


def test_measuring_the_ratio_does_not_change_the_update():
    # the same iteration with and without the measurement gives the same generator weights
    weights = []
    for interval in (1, 7):  # iteration 0 outside run() is measured by both; 1 -> measured, 7 -> not at iteration 1
        trainer = _trainer(alpha=0.5, beta=0.5, grad_ratio_interval=interval)
        trainer.state.iteration, trainer.state.epoch_length = 1, 10
        out = trainer._iteration(trainer, _batch())
        assert math.isfinite(out["grad_ratio"]) == (interval == 1)
        weights.append([p.detach().clone() for p in trainer.network.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(*weights))


def test_balance_does_not_depend_on_the_heatmap_peak():
    # a generator "trained" to peak gamma outputs gamma times the maps of a peak-1 one: with the default
    # adversarial_scale = gamma**2 the ratio is the same; with a fixed scale it falls as 1 / gamma**2
    ratios = {}
    for gamma, scale in ((1.0, None), (10.0, None), (10.0, 1.0)):
        generator = _MapGenerator()
        with torch.no_grad():
            generator.maps.mul_(gamma)
        trainer = _trainer(generator, alpha=0.5, beta=0.5, d_lr=0.0, gamma=gamma, adversarial_scale=scale)
        ratios[gamma, scale] = trainer._iteration(trainer, _batch())["grad_ratio"]
    assert ratios[10.0, None] == pytest.approx(ratios[1.0, None], rel=1e-3)
    assert ratios[10.0, 1.0] == pytest.approx(ratios[1.0, None] / 100, rel=1e-3)


def test_monitors_are_in_state_metrics_every_epoch():
    trainer = _trainer(loader=[_batch(), _batch(), _batch()], grad_ratio_interval=0, alpha=0.0, beta=1.0)
    seen, measured = [], []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(dict(e.state.metrics)))
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: measured.append(math.isfinite(e.state.output["grad_ratio"]))
    )
    trainer.state.max_epochs = 2
    trainer.run()
    assert measured == [False, False, True] * 2  # the last iteration of each epoch
    assert len(seen) == 2
    for metrics in seen:
        assert metrics["adversarial/grad_ratio"] > 0
        assert 0.0 <= metrics["adversarial/pose_acc"] <= 1.0
        assert {"adversarial/pose_acc_real", "adversarial/pose_acc_generated"} <= set(metrics)
        assert not any(k.startswith("adversarial/conf") for k in metrics)  # alpha = 0: no confidence discriminator


def test_zero_weight_discriminators_are_neither_run_nor_trained():
    # alpha = beta = 0 is the plain hourglass of the method comparison: no discriminator work at all
    trainer = _trainer(alpha=0.0, beta=0.0, d_lr=0.05)
    pose = {k: v.clone() for k, v in trainer.pose_discriminator.state_dict().items()}
    conf = {k: v.clone() for k, v in trainer.confidence_discriminator.state_dict().items()}
    out = trainer._iteration(trainer, _batch())
    assert all(torch.equal(pose[k], v) for k, v in trainer.pose_discriminator.state_dict().items())
    assert all(torch.equal(conf[k], v) for k, v in trainer.confidence_discriminator.state_dict().items())
    assert float(out["loss_d_pose"]) == 0.0 and float(out["loss_adv_conf"]) == 0.0
    assert out["loss"] == pytest.approx(float(out["loss_mse"]))
    # only the pose term on: only the pose discriminator learns
    trainer = _trainer(alpha=0.0, beta=1.0, d_lr=0.05)
    conf = {k: v.clone() for k, v in trainer.confidence_discriminator.state_dict().items()}
    pose = {k: v.clone() for k, v in trainer.pose_discriminator.state_dict().items()}
    out = trainer._iteration(trainer, _batch())
    assert all(torch.equal(conf[k], v) for k, v in trainer.confidence_discriminator.state_dict().items())
    assert any(not torch.equal(pose[k], v) for k, v in trainer.pose_discriminator.state_dict().items())
    assert float(out["loss_d_pose"]) > 0 and float(out["loss_d_conf"]) == 0.0
