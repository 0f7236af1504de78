"""The bundle's workflows run for real through ``python -m monai.bundle`` on a tiny demo data set:
training, resume from the last checkpoint, evaluation, and DDP training on CPU (gloo, 2 processes)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.data.synthetic import generate_demo_dataset
from tests.helpers import config_network, run_bundle, training_values

ROOT = Path(__file__).resolve().parents[1]
TRAIN = "configs/train.json"
EVALUATE = "configs/evaluate.json"
MULTI_GPU = "configs/multi_gpu_train.json"
LOWER_LIMB = "configs/lower_limb.json"

# Small network and grid so that a few iterations take seconds on two cores.
TINY = {"num_filters": 8, "spatial_size": [64, 64], "sigma": 1.5}


def _train_values(dataset: Path, work: Path, **extra) -> dict:
    return training_values(dataset, work, **{**TINY, "max_epochs": 1, **extra})


def _load_network(path: Path) -> torch.nn.Module:
    net = config_network(num_filters=TINY["num_filters"])
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def test_training_two_iterations_resume_and_evaluate(tiny_dataset, tmp_path):
    values = _train_values(tiny_dataset, tmp_path)
    log = run_bundle("training", [TRAIN], values)
    assert "Best validation mean point error (network px)" in log
    best, last = tmp_path / "models" / "model.pt", tmp_path / "models" / "last.ckpt"
    assert best.is_file() and last.is_file()
    out = _load_network(best)(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 37, 64, 64) and torch.isfinite(out).all()
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["epoch_length"] == 2
    assert list(tmp_path.joinpath("runs").glob("events.out.tfevents.*")), "no TensorBoard log"

    # resume: the second run continues from iteration 2 to 4 instead of starting over
    weights_before = state["network"]
    log = run_bundle("training", [TRAIN], {**values, "max_epochs": 2, "resume": True})
    assert "resumed from" in log
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 4 and state["trainer"]["max_epochs"] == 2
    assert any(not torch.equal(weights_before[k], state["network"][k]) for k in weights_before)

    # evaluation of the valid split with the best checkpoint
    eval_dir = tmp_path / "eval"
    log = run_bundle("run", [TRAIN, EVALUATE], {**values, "split": "valid", "eval_dir": str(eval_dir)})
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["split"] == "valid" and summary["num_images"] == 2 and summary["num_landmarks"] == 37
    with open(eval_dir / "per_point.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 37
    errors = np.array([float(r["error_px"]) for r in rows])
    assert summary["mean_px"] == pytest.approx(errors.mean(), rel=1e-6)
    # ground truth in the report is the annotation in original pixels
    with open(tiny_dataset / "landmarks.csv") as f:
        truth = {r["id"]: r for r in csv.DictReader(f)}
    first = rows[0]
    assert float(first["true_x"]) == pytest.approx(float(truth[first["id"]]["x0"]), abs=1e-3)
    for name in ("per_image.csv", "per_landmark.csv", "cumulative_error_px.png", "cumulative_error_nmm.png"):
        assert (eval_dir / name).stat().st_size > 0
    assert summary["mean_nmm"] > 0 and 0 <= summary["sdr_nmm_2"] <= 1
    assert f"split 'valid': 2 images" in log


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_ddp_training_on_cpu_with_gloo(tiny_dataset, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    values = _train_values(tiny_dataset, tmp_path)
    log = run_bundle(
        "training",
        [TRAIN, MULTI_GPU],
        values,
        launcher=[torchrun, "--standalone", "--nproc_per_node", "2"],
    )
    assert "Best validation mean point error" in log
    net = _load_network(tmp_path / "models" / "model.pt")  # a plain state dict, not DDP "module." keys
    out = net(torch.zeros(1, 1, 64, 64))
    assert torch.isfinite(out).all()


def test_lower_limb_overlay_trains_and_evaluates_in_mm(tmp_path):
    dataset = tmp_path / "limb"
    generate_demo_dataset(dataset, kind="lower_limb", num_train=2, num_valid=2, seed=1, image_hw=(700, 280))
    values = {**_train_values(dataset, tmp_path), "spatial_size": [128, 48]}
    run_bundle("training", [TRAIN, LOWER_LIMB], values)
    net = config_network((TRAIN, LOWER_LIMB), num_filters=8)
    net.load_state_dict(torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True))
    eval_dir = tmp_path / "eval"
    run_bundle("run", [TRAIN, LOWER_LIMB, EVALUATE], {**values, "eval_dir": str(eval_dir), "radii_mm": [10.0, 20.0]})
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["num_landmarks"] == 6 and summary["count_mm"] == 2 * 6
    assert "mean_nmm" not in summary  # real spacing, no normalised-mm rule in this overlay
    # mm errors are px errors times the 700x280 image's spacing from splits.csv
    with open(dataset / "splits.csv") as f:
        spacing = float(next(csv.DictReader(f))["spacing_x"])
    assert summary["mean_mm"] == pytest.approx(summary["mean_px"] * spacing, rel=1e-4)
    assert {"sdr_mm_10", "sdr_mm_20"} <= set(summary)


def test_training_on_label_images_as_monai_label_gives_them(tiny_dataset, tmp_path):
    """MONAI Label's train task overrides the datalists with ``{"image", "label"}`` items whose label is
    a landmark label image, and runs fewer epochs than ``val_interval``: the landmarks come from the
    label discs and the last epoch is still validated, so ``models/model.pt`` is written."""
    from scripts.data import LandmarkDataset
    from scripts.writers import landmark_label_image, write_label_image
    from scripts.data.image_reader import read_image_size

    source = LandmarkDataset(tiny_dataset)

    def items(split):
        out = []
        for item in source.datalist(split):
            label = tmp_path / "labels" / (Path(item["image"]).stem + ".png")
            label.parent.mkdir(exist_ok=True)
            write_label_image(label, landmark_label_image(item["landmarks"], read_image_size(item["image"]), 3.0))
            out.append({"image": item["image"], "label": str(label)})
        return out

    values = _train_values(tiny_dataset, tmp_path, val_interval=4)
    values.update({"train#dataset#data": items("train"), "validate#dataset#data": items("valid")})
    log = run_bundle("run", [TRAIN], values)
    assert "Best validation mean point error (network px)" in log and "at epoch 1" in log
    assert (tmp_path / "models" / "model.pt").is_file()
