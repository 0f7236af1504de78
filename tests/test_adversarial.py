"""Adversarial PoseNet training: discriminator inputs and labels, the sign and reach of the adversarial
gradient, the trainer's outputs, and the training workflow through ``python -m monai.bundle``."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from scripts.adversarial import (
    AdversarialLandmarkTrainer,
    DiscriminatorAccuracy,
    MeanOfMeasured,
    discriminator_counts,
    discriminator_loss,
    fake_labels,
    generator_adversarial_loss,
    gradient_norm_ratio,
    heatmap_to_network_points,
    masked_bce_with_logits,
    network_to_heatmap_points,
    normalise_heatmaps_for_discriminator,
    with_checkpoint_entries,
)
from scripts.coords import resize_matrix
from scripts.demo_data import generate_demo_dataset
from scripts.engines import LastCheckpoint
from scripts.heatmap import gaussian_heatmaps
from scripts.losses import HeatmapLoss
from scripts.networks import ConfidenceDiscriminator, PoseDiscriminator, SpatialConfigurationNet, StackedHourglass
from tests.helpers import run_bundle

ROOT = Path(__file__).resolve().parents[1]
K = 3


# ----------------------------------------------------------------------------------------------- inputs, labels


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


def test_heatmap_grid_points_use_the_pixel_centre_rule():
    points = torch.tensor([[[0.0, 0.0], [-0.5, 63.5], [10.0, float("nan")]]])
    on_grid = network_to_heatmap_points(points, (64, 64), (16, 16))
    assert torch.allclose(on_grid[0, :2], torch.tensor([[-0.375, -0.375], [-0.5, 15.5]]))
    assert torch.isnan(on_grid[0, 2, 1])
    assert torch.allclose(heatmap_to_network_points(on_grid, (16, 16), (64, 64))[0, :2], points[0, :2])


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


def test_with_checkpoint_entries_extends_the_last_checkpoint_only(tmp_path):
    net, other = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    last = LastCheckpoint(str(tmp_path / "last.ckpt"), {"network": net}, resume=True, interval=2)
    handlers = with_checkpoint_entries(["stats", last], {"pose_discriminator": other})
    assert handlers[0] == "stats" and handlers[1] is not last
    assert handlers[1].save_dict == {"network": net, "pose_discriminator": other}
    assert (handlers[1].path, handlers[1].resume, handlers[1].interval) == (last.path, True, 2)
    assert last.save_dict == {"network": net}  # the original is untouched
    with pytest.raises(ValueError, match="no scripts.engines.LastCheckpoint"):
        with_checkpoint_entries(["stats"], {"x": other})
    with pytest.raises(ValueError, match="already saves \\['network'\\]"):
        with_checkpoint_entries([last], {"network": other})


# ------------------------------------------------------------------------------------------------- the trainer


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


# ------------------------------------------------------------------------------- loss balance and monitors


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


# ------------------------------------------------------------------------------------------------ the workflow

TRAIN = "configs/train.json"
ADVERSARIAL = "configs/adversarial.json"  # the overlay merged after train.json


def test_adversarial_training_workflow_saves_generator_and_discriminators_and_resumes(tmp_path):
    dataset = tmp_path / "demo_hand"
    generate_demo_dataset(dataset, kind="hand", num_train=4, num_valid=2, seed=3)
    values = {
        "dataset_dir": str(dataset),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "runs"),
        "max_epochs": 1,
        "val_interval": 1,
        "train#trainer#epoch_length": 2,
        "spatial_size": [64, 64],
        "sigma": 1.5,
        "network_def#num_channels": 8,
        "network_def#depth": 2,
        "discriminator_channels": 8,
        "discriminator_downsamples": 2,
    }
    log = run_bundle("training", [TRAIN, ADVERSARIAL], values)
    assert "Best validation mean point error (network px)" in log
    # the balance monitors reach the console and TensorBoard every epoch
    assert "adversarial/grad_ratio" in log and "adversarial/pose_acc" in log and "adversarial/conf_acc" in log
    events = EventAccumulator(str(tmp_path / "runs")).Reload()
    for tag in ("adversarial/grad_ratio", "adversarial/pose_acc", "adversarial/conf_acc"):
        assert tag in events.Tags()["scalars"], tag
    ratio = events.Scalars("adversarial/grad_ratio")
    assert [e.step for e in ratio] == [1] and 0 < ratio[0].value < math.inf
    generator = StackedHourglass(num_landmarks=37, num_channels=8, depth=2)
    generator.load_state_dict(torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True))
    assert generator.eval()(torch.zeros(1, 1, 64, 64)).shape == (1, 37, 64, 64)
    state = torch.load(tmp_path / "models" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 2
    PoseDiscriminator(num_landmarks=37, base_channels=8, num_downsamples=2).load_state_dict(state["pose_discriminator"])
    ConfidenceDiscriminator(num_landmarks=37, base_channels=8, num_downsamples=2).load_state_dict(
        state["confidence_discriminator"]
    )
    assert {"network", "optimizer", "pose_optimizer", "confidence_optimizer"} <= set(state)

    # resuming: discriminators continue from last.ckpt
    log = run_bundle("training", [TRAIN, ADVERSARIAL], {**values, "max_epochs": 2, "resume": True})
    assert "resumed from" in log
    resumed = torch.load(tmp_path / "models" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["trainer"]["iteration"] == 4
    # Adam's step count continues from the saved state: 2 steps before, 2 after resuming
    for name in ("pose_optimizer", "confidence_optimizer"):
        assert {float(s["step"]) for s in resumed[name]["state"].values()} == {4.0}, name

    # the trained generator is evaluated with the overlay between train.json and evaluate.json
    eval_dir = tmp_path / "eval"
    eval_values = {k: values[k] for k in ("dataset_dir", "ckpt_dir", "output_dir", "spatial_size",
                                          "network_def#num_channels", "network_def#depth")}
    run_bundle("run", [TRAIN, ADVERSARIAL, "configs/evaluate.json"],
               {**eval_values, "split": "valid", "eval_dir": str(eval_dir)})
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["num_images"] == 2 and summary["num_landmarks"] == 37 and math.isfinite(summary["mean_px"])


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
