"""Every config and overlay combination users run, in process with ``monai.bundle.ConfigWorkflow`` as the
model zoo's ``ci/unit_tests`` do: ``initialize()``, ``check_properties()`` and, for training, evaluation and
inference, a real run on tiny demo data written under ``tmp_path``. Also: the demo data is an explicit
``initialize`` step that never writes into a user's folder, the removed ``--preset`` and
``configs/train_adversarial.json`` give the new commands, and the MONAI Label merge command writes flat
configs that serve the overlay's model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata

from scripts.data.synthetic import generate_demo_dataset
from tests.helpers import SMALL, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
META = CONFIGS / "metadata.json"
SCHEMA = CONFIGS / "metadata_schema.json"

#: a tiny generator and discriminators for the adversarial overlay (its hourglass needs a 64 x 64 grid)
TINY_ADVERSARIAL = {"spatial_size": [64, 64], "network_def#num_channels": 8, "network_def#depth": 2,
                    "discriminator_channels": 8, "discriminator_downsamples": 2, "amp": False}
#: training combinations: overlays after train.json, tiny overrides, expected (network class, landmarks)
TRAINING = {
    "train": ([], SMALL, ("SpatialConfigurationNet", 37)),
    "train+hand": (["hand.json"], SMALL, ("SpatialConfigurationNet", 37)),
    "train+lower_limb": (["lower_limb.json"], {**SMALL, "spatial_size": [64, 32]}, ("SpatialConfigurationNet", 6)),
    "train+adversarial": (["adversarial.json"], TINY_ADVERSARIAL, ("StackedHourglass", 37)),
}


def configs(*names: str) -> list[str]:
    return [str(CONFIGS / name) for name in names]


@pytest.fixture(scope="module")
def hand_data(tmp_path_factory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("data") / "hand", kind="hand", num_train=2, num_valid=1, seed=5)


@pytest.fixture(scope="module")
def limb_data(tmp_path_factory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("data") / "limb", kind="lower_limb", num_train=2, num_valid=1,
                                 seed=1, image_hw=(560, 224))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def workflow(files: list[str], workflow_type: str, **overrides) -> ConfigWorkflow:
    overrides.setdefault("bundle_root", str(ROOT))
    return ConfigWorkflow(config_file=files, meta_file=str(META), workflow_type=workflow_type, **overrides)


def files_of(tmp_path: Path) -> set[str]:
    return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_training_combination_initializes_checks_and_trains_two_iterations(name, tmp_path, hand_data, limb_data):
    overlays, tiny, (network_class, num_landmarks) = TRAINING[name]
    data = limb_data if "lower_limb" in name else hand_data
    overrides = {**tiny, "dataset_dir": str(data), "ckpt_dir": str(tmp_path / "models"),
                 "output_dir": str(tmp_path / "runs"), "max_epochs": 1, "val_interval": 1,
                 "train#trainer#epoch_length": 2}
    if name == "train+hand":  # the real data's reference (images/3209.jpg) is a demo image here
        overrides["reference_image_file"] = "images/hand_0000.png"
    wf = workflow(configs("train.json", *overlays), "train", **overrides)
    wf.initialize()
    try:
        assert wf.check_properties() == []
        parser = wf.parser
        network = parser.get_parsed_content("network_def")
        assert type(network).__name__ == network_class
        assert parser.get_parsed_content("num_landmarks") == num_landmarks
        # sigma is not overridden here: train.json's, or the data overlay's
        assert parser.get_parsed_content("sigma") == (3.0 if overlays in (["hand.json"], ["lower_limb.json"]) else 2.0)
        if name == "train+hand":  # histogram matching to the overlay's reference, kept beside the model
            assert parser.get_parsed_content("reference_image") == os.path.join(str(data), "images/hand_0000.png")
            assert (tmp_path / "models" / "hand_0000.png").is_file()
        if name == "train+lower_limb":
            assert parser.get_parsed_content("keep_aspect") is True
            assert parser.get_parsed_content("normalised_mm") is None
        wf.run()
    finally:
        wf.finalize()
    state = torch.load(tmp_path / "models" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 2
    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(weights)  # the saved model is the combination's network
    with torch.no_grad():
        grid = overrides["spatial_size"]
        assert network.eval()(torch.zeros(1, 1, *grid)).shape[:2] == (1, num_landmarks)
    if name == "train+adversarial":  # the overlay's +checkpoint_dict extends train.json's resume state
        assert {"pose_discriminator", "pose_optimizer", "confidence_discriminator",
                "confidence_optimizer", "network", "optimizer", "loss"} <= set(state)


def test_adversarial_overlay_extends_train_json_and_takes_validate_overrides(tmp_path, hand_data):
    """The overlay keeps train.json's handlers as a list of dicts (what ``check_properties`` reads), adds
    its imports to train.json's, and a ``validate#...`` override reaches the evaluator."""
    text = (CONFIGS / "adversarial.json").read_text()
    assert len(text.splitlines()) <= 95 and "%configs/" not in text
    base = json.loads((CONFIGS / "train.json").read_text())
    merged = ConfigParser.load_config_files(configs("train.json", "adversarial.json"))
    assert merged["imports"][: len(base["imports"])] == base["imports"]
    assert "$import scripts.networks.posenet" in merged["imports"]
    assert merged["train"]["handlers"] == base["train"]["handlers"]
    assert set(base["checkpoint_dict"]) < set(merged["checkpoint_dict"])
    hand = ConfigParser(ConfigParser.load_config_files(configs("train.json", "hand.json", "adversarial.json")))
    assert hand.get_parsed_content("adversarial_weight_factor") == 0.1  # measured on the real hand data
    wf = workflow(configs("train.json", "adversarial.json"), "train", **TINY_ADVERSARIAL, dataset_dir=str(hand_data),
                  ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"),
                  **{"validate#dataloader#batch_size": 2, "validate#handlers#0#iteration_log": True})
    wf.initialize()
    try:
        assert wf.check_properties() == []
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        assert evaluator.data_loader.batch_size == 2
        assert wf.parser.get_parsed_content("validate#handlers")[0].iteration_log is True
    finally:
        wf.finalize()


# ------------------------------------------------------------------------------------------------ evaluation, inference


def test_evaluate_combination_writes_the_report(tmp_path, hand_data, checkpoint):
    eval_dir = tmp_path / "eval"
    wf = workflow(configs("train.json", "evaluate.json"), "train", **SMALL, dataset_dir=str(hand_data),
                  ckpt_path=str(checkpoint), output_dir=str(tmp_path / "runs"), eval_dir=str(eval_dir), split="valid")
    wf.initialize()
    try:
        assert wf.check_properties() == []
        assert "$import scripts.evaluation" in wf.parser["imports"] and "$import scripts.data" in wf.parser["imports"]
        wf.run()
    finally:
        wf.finalize()
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["split"] == "valid" and summary["num_images"] == 1 and summary["num_landmarks"] == 37


def test_decode_method_decodes_validation_the_report_and_inference(tmp_path, hand_data, checkpoint):
    """``decode_method`` is one key for every decoding of a config set: hand.json's Gaussian fit reaches the
    validation metrics, the evaluation report and inference; the report of one checkpoint changes with it."""
    for names, key in ((("train.json", "hand.json"), "validate#key_metric#val_mean_error_px#output_transform"),
                       (("train.json", "hand.json"), "validate#additional_metrics#val_mean_error_orig_px#output_transform"),
                       (("train.json", "hand.json", "adversarial.json"), "validate#key_metric#val_mean_error_px#output_transform")):
        parser = ConfigParser()
        parser.read_config(configs(*names))
        expected = "parabola" if "adversarial.json" in names else "gaussian_fit"
        assert parser.get_parsed_content(key).keywords == {"method": expected}, (names, key)
    parser = ConfigParser()
    parser.read_config(configs("inference.json", "hand.json"))
    decode = parser.get_parsed_content("postprocessing").transforms[0]
    assert type(decode).__name__ == "DecodeLandmarksd" and decode.decoder.method == "gaussian_fit"

    reports = {}
    for method in ("parabola", "gaussian_fit"):
        eval_dir = tmp_path / method
        wf = workflow(configs("train.json", "evaluate.json"), "train", **SMALL, dataset_dir=str(hand_data),
                      ckpt_path=str(checkpoint), output_dir=str(tmp_path / "runs"), eval_dir=str(eval_dir),
                      split="valid", decode_method=method)
        wf.initialize()
        try:
            assert wf.parser.get_parsed_content("validate#handlers")[-1].decode_method == method
            wf.run()
        finally:
            wf.finalize()
        reports[method] = json.loads((eval_dir / "summary.json").read_text())
        assert reports[method]["decode_method"] == method
    assert reports["parabola"]["mean_px"] != reports["gaussian_fit"]["mean_px"]
    assert (tmp_path / "parabola" / "per_point.csv").read_text() != (tmp_path / "gaussian_fit" / "per_point.csv").read_text()


@pytest.mark.parametrize("overlay", [None, "lower_limb.json"])
def test_inference_combination_runs_on_a_folder(tmp_path, hand_data, limb_data, checkpoint, overlay):
    data = limb_data if overlay else hand_data
    overrides = {**SMALL, "dataset_dir": str(data / "images"), "output_dir": str(tmp_path / "out")}
    if overlay:
        overrides.update(allow_random_weights=True, ckpt_path=str(tmp_path / "none.pt"), spatial_size=[64, 32])
    else:
        overrides["ckpt_path"] = str(checkpoint)
    wf = workflow(configs("inference.json", *([overlay] if overlay else [])), "infer", **overrides)
    wf.initialize()
    try:
        assert wf.check_properties() == []
        wf.run()
    finally:
        wf.finalize()
    rows = (tmp_path / "out" / "landmarks.csv").read_text().splitlines()
    assert len(rows) == 1 + len(list((data / "images").iterdir()))
    header = rows[0].split(",")
    num_landmarks = 6 if overlay else 37
    assert f"landmark_{num_landmarks - 1:02d}_x" in header and f"landmark_{num_landmarks:02d}_x" not in header
    assert ("right_hka_angle_deg" in header) == bool(overlay)  # lower-limb measurements with that overlay only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_gpu_combination_initializes_and_has_the_properties(tmp_path, monkeypatch, hand_data):
    """Parse and initialize only: ``initialize`` starts a process group, here one gloo process."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    wf = workflow(configs("train.json", "multi_gpu_train.json"), "train", **SMALL, dataset_dir=str(hand_data),
                  ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"))
    wf.initialize()
    try:
        assert wf.check_properties() == []
        assert type(wf.parser.get_parsed_content("network")).__name__ == "DistributedDataParallel"
    finally:
        wf.finalize()


# ------------------------------------------------------------------------------------------------ demo data, old commands


def test_demo_data_is_an_explicit_initialize_step_and_never_written_into_a_users_folder(tmp_path, hand_data):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    before = files_of(hand_data)
    wf = workflow(configs("train.json"), "train", **SMALL, bundle_root=str(bundle), dataset_dir=str(hand_data),
                  ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"))
    wf.initialize()
    wf.parser.get_parsed_content("train#dataset")
    assert files_of(hand_data) == before and not (bundle / "demo_data").exists()

    wf = workflow(configs("train.json"), "train", **SMALL, bundle_root=str(bundle),
                  ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"))
    wf.parser.parse()
    assert wf.parser.get_parsed_content("dataset_dir") == str(bundle) + "/demo_data/hand"
    assert not (bundle / "demo_data").exists()  # reading dataset_dir writes nothing
    wf.initialize()  # the initialize step writes the demo data into the bundle's own demo_data/hand
    assert (bundle / "demo_data" / "hand" / "landmarks.csv").is_file()
    assert len(wf.parser.get_parsed_content("train_datalist")) == 48


@pytest.mark.parametrize("preset, base", [("hand", "train"), ("lower_limb", "train"), ("demo_hand", "train"),
                                          ("lower_limb", "inference")])
def test_removed_preset_names_the_overlay(preset, base, tmp_path, hand_data):
    wf = workflow(configs(f"{base}.json"), "train" if base == "train" else "infer", dataset_dir=str(hand_data),
                  ckpt_dir=str(tmp_path), output_dir=str(tmp_path / "out"), preset=preset)
    with pytest.raises(RuntimeError) as raised:
        wf.initialize()
    message = str(raised.value.__cause__)
    assert isinstance(raised.value.__cause__, ValueError) and "--preset was removed" in message
    overlay = "" if preset == "demo_hand" else f",'configs/{preset}.json'"
    assert f"--config_file \"['configs/{base}.json'{overlay}]\"" in message
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []  # stopped before anything ran


def test_linear_decay_beside_the_default_cosine_schedule_is_refused(tmp_path, hand_data):
    overrides = dict(dataset_dir=str(hand_data), ckpt_dir=str(tmp_path), output_dir=str(tmp_path / "out"), lr_decay="true")
    wf = workflow(configs("train.json"), "train", **overrides)
    with pytest.raises(RuntimeError) as raised:
        wf.initialize()
    assert "--lr_schedule none with --lr_decay true" in str(raised.value.__cause__)
    assert list(tmp_path.iterdir()) == []  # stopped before anything ran
    workflow(configs("train.json"), "train", **overrides, lr_schedule="none").initialize()  # the way out works


def test_unknown_decode_method_is_refused_before_training(tmp_path, hand_data):
    # validation is the first user of the decoder (after a whole epoch): the name is checked at start instead
    overrides = dict(dataset_dir=str(hand_data), ckpt_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    wf = workflow(configs("train.json"), "train", **overrides, decode_method="gausian_fit")
    with pytest.raises(RuntimeError) as raised:
        wf.initialize()
    assert "got 'gausian_fit'" in str(raised.value.__cause__) and "gaussian_fit" in str(raised.value.__cause__)
    assert list(tmp_path.iterdir()) == []  # stopped before anything ran
    workflow(configs("train.json"), "train", **overrides, decode_method="gaussian_fit").initialize()


def test_old_adversarial_config_prints_the_overlay_command(tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train_adversarial.json",
               "--ckpt_dir", str(tmp_path)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1
    assert "--config_file \"['configs/train.json','configs/adversarial.json']\"" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_configs_have_no_presets_and_no_cross_file_macros():
    for path in sorted(CONFIGS.glob("*.json")):
        text = path.read_text()
        assert "%configs/" not in text and "@presets" not in text, path.name
        assert "presets" not in json.loads(text), path.name


# ------------------------------------------------------------------------------------------------ MONAI Label


@pytest.mark.parametrize("overlay, num_landmarks, grid", [("lower_limb.json", 6, [512, 192]), ("hand.json", 37, [256, 256])])
def test_monai_label_merge_writes_flat_configs_of_the_overlay(tmp_path, hand_data, overlay, num_landmarks, grid):
    """``tools/monailabel/merge_bundle.py`` on a bundle copy: the merged train.json and inference.json parse
    alone (as MONAI Label reads them), build the overlay's network, and metadata.json has its channels."""
    bundle = tmp_path / "app" / "model" / "xray_landmarks"
    (bundle / "models").mkdir(parents=True)
    for name in ("train.json", "inference.json", "metadata.json", "metadata_schema.json", "logging.conf"):
        (bundle / "configs").mkdir(exist_ok=True)
        (bundle / "configs" / name).write_bytes((CONFIGS / name).read_bytes())
    (bundle / "metadata.json").write_bytes(META.read_bytes())  # the copy roundtrip.py makes
    proc = subprocess.run([sys.executable, "tools/monailabel/merge_bundle.py", "--bundle", str(bundle),
                           "--overlay", f"configs/{overlay}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{num_landmarks} landmarks" in proc.stdout

    for name in ("configs/metadata.json", "metadata.json"):
        verify_metadata(meta_file=str(bundle / name), filepath=str(SCHEMA))
        meta = json.loads((bundle / name).read_text())
        pred = meta["network_data_format"]["outputs"]["pred"]
        assert pred["num_channels"] == num_landmarks and len(pred["channel_def"]) == num_landmarks + 1
    if overlay == "hand.json":  # a served hand model folder holds the training's reference beside model.pt
        (bundle / "models" / "3209.jpg").write_bytes((hand_data / "images" / "hand_0000.png").read_bytes())
    for name, workflow_type in (("inference.json", "infer"), ("train.json", "train")):
        merged = json.loads((bundle / "configs" / name).read_text())
        assert "presets" not in merged and not any(k.startswith("+") or "#" in k for k in merged)
        wf = ConfigWorkflow(config_file=str(bundle / "configs" / name), meta_file=str(bundle / "configs" / "metadata.json"),
                            workflow_type=workflow_type, bundle_root=str(bundle), dataset_dir=str(hand_data),
                            output_dir=str(tmp_path / "out"), ckpt_dir=str(bundle / "models"), num_filters=4)
        wf.initialize()
        try:
            assert wf.check_properties() == []
            parser = wf.parser
            assert parser.get_parsed_content("spatial_size") == grid
            assert parser.get_parsed_content("network_def").num_landmarks == num_landmarks
            reference = parser.get_parsed_content("reference_image")
            assert reference == (str(bundle / "models" / "3209.jpg") if overlay == "hand.json" else None)
            if workflow_type == "infer":  # lower-limb measurements come with that overlay, as on the command line
                assert (parser.get_parsed_content("measurements") is not None) == (overlay == "lower_limb.json")
        finally:
            wf.finalize()


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_every_scn_variant_builds_its_network_through_the_config(config):
    """Each ``scn_variant`` name gives the network of its :data:`SCN_VARIANTS` entry, every setting of it included,
    so that a checkpoint trained with a variant loads into inference with the same name."""
    from scripts.networks.scn import SCN_VARIANTS, SpatialConfigurationNet

    for variant, settings in SCN_VARIANTS.items():
        parser = ConfigParser()
        parser.read_config(configs(config, "hand.json"))
        parser["scn_variant"] = variant
        network = parser.get_parsed_content("network_def")
        expected = SpatialConfigurationNet(num_landmarks=37, **settings)
        assert [type(m) for m in network.modules()] == [type(m) for m in expected.modules()], variant
        assert {k: v.shape for k, v in network.state_dict().items()} == \
            {k: v.shape for k, v in expected.state_dict().items()}, variant
        norms = [m for m in network.modules() if isinstance(m, torch.nn.GroupNorm)]
        groups = settings["la_norm_groups"]
        assert all(m.num_groups == groups for m in norms) and bool(norms) == bool(groups), variant
