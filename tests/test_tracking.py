"""MLflow tracking (``--tracking configs/mlflow.json``): a real two-iteration training and an evaluation
through ``python -m monai.bundle`` write runs with metrics, params and the executed config to a local
SQLite store in the output folder; no server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.data.synthetic import generate_demo_dataset
from scripts.provenance import bundle_version, file_sha256
from tests.helpers import run_bundle

mlflow = pytest.importorskip("mlflow")

ROOT = Path(__file__).resolve().parents[1]
TINY = {"num_filters": 8, "spatial_size": [64, 64], "sigma": 1.5}


def test_training_and_evaluation_write_mlflow_runs(tmp_path):
    data = tmp_path / "data"
    generate_demo_dataset(data, kind="hand", num_train=3, num_valid=2, seed=5)
    runs_dir = tmp_path / "runs"
    values = {
        **TINY,
        "dataset_dir": str(data),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(runs_dir),
        "max_epochs": 1,
        "val_interval": 1,
        "train#trainer#epoch_length": 2,
        "tracking": "configs/mlflow.json",
    }
    run_bundle("training", ["configs/train.json"], values)
    eval_dir = tmp_path / "eval"
    run_bundle("run", ["configs/train.json", "configs/evaluate.json"], {**values, "eval_dir": str(eval_dir)})

    assert (runs_dir / "mlruns.db").is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("xray_landmarks")
    assert experiment.artifact_location == (runs_dir / "mlruns").as_uri()
    runs = {r.data.params["run_kind"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"train", "evaluate"}

    train = runs["train"]
    assert train.info.status == "FINISHED" and train.info.run_name.startswith("train_")
    params = train.data.params
    assert params["dataset_name"] == "demo_hand" and params["network"] == "SpatialConfigurationNet"
    assert params["spatial_size"] == "[64, 64]" and params["num_filters"] == "8"
    assert params["bundle_version"] == bundle_version(ROOT / "configs" / "metadata.json")
    assert params["max_epochs"] == "1" and params["epoch_length"] == "2"
    losses = client.get_metric_history(train.info.run_id, "train_loss")
    assert [m.step for m in losses] == [1, 2] and all(m.value > 0 for m in losses)  # one per iteration
    validation = client.get_metric_history(train.info.run_id, "val_mean_error_px")
    assert [m.step for m in validation] == [1] and validation[0].value > 0
    assert [a.path for a in client.list_artifacts(train.info.run_id)][0].startswith("config_")

    evaluation = runs["evaluate"]
    assert evaluation.info.status == "FINISHED"
    model = tmp_path / "models" / "model.pt"
    assert evaluation.data.params["checkpoint_sha256"] == file_sha256(model)
    assert evaluation.data.params["split"] == "valid"
    assert evaluation.data.params["decode_method"] == "parabola" and evaluation.data.params["tta"] == "False"
    evaluated = evaluation.data.metrics["val_mean_error_px"]
    assert evaluated == pytest.approx(validation[0].value, rel=1e-5)  # same weights, same images

    # nothing outside the output folders: the artifacts sit below runs/mlruns
    artifacts = Path(evaluation.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(runs_dir / "mlruns") and any(artifacts.iterdir())
    assert not (ROOT / "mlruns").exists() and not (ROOT / "mlruns.db").exists()
    assert os.listdir(tmp_path) and sorted(os.listdir(tmp_path)) == ["data", "eval", "models", "runs"]
