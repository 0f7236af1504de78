"""The Adversarial PoseNet training workflow (configs/train.json + configs/adversarial.json) through ``python -m monai.bundle``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from scripts.data.synthetic import generate_demo_dataset
from scripts.networks import ConfidenceDiscriminator, PoseDiscriminator, StackedHourglass
from tests.helpers import run_bundle


ROOT = Path(__file__).resolve().parents[1]


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
