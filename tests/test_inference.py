"""Tests of folder inference (configs/inference.json, scripts.inference) and of scripts.writers.

The network is never trained here: a tiny SCN (``SMALL`` overrides) with random weights is saved to
tmp and run through the real config, or a fixed network draws heatmaps at known points so that the
coordinates written can be checked exactly.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from scripts.coords import apply_matrix, resize_matrix
from scripts.data.image_reader import read_image
from scripts.heatmap import gaussian_heatmaps
from scripts.checkpoints import load_weights
from scripts.writers import output_path
from tests.helpers import SMALL, tiny_checkpoint, write_dicom

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "inference.json"
TRAIN_CONFIG = ROOT / "configs" / "train.json"
META = ROOT / "configs" / "metadata.json"
NUM_LANDMARKS = 37


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def workflow(dataset_dir, output_dir, config_overlays=(), **overrides) -> ConfigWorkflow:
    """The inference workflow on ``SMALL`` (``config_overlays``: e.g. ``["configs/lower_limb.json"]``, merged
    after inference.json); never the repository's own models/model.pt."""
    settings = {"bundle_root": str(ROOT), "dataset_dir": str(dataset_dir), "output_dir": str(output_dir)}
    overrides.setdefault("ckpt_path", str(Path(output_dir).parent / "no_such_checkpoint.pt"))
    wf = ConfigWorkflow(
        config_file=[str(CONFIG)] + [str(ROOT / o) for o in config_overlays], meta_file=str(META), workflow_type="infer",
        **settings, **SMALL, **overrides,
    )
    wf.initialize()
    return wf


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def tree_digest(folder: Path, skip: Path | None = None) -> dict[str, str]:
    """relative path -> sha256 of every file below ``folder`` (except below ``skip``)."""
    digest = {}
    for path in sorted(folder.rglob("*")):
        if skip is not None and path.is_relative_to(skip):
            continue
        if path.is_file():
            digest[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def radiograph(hw, dtype=np.uint16, seed=0) -> np.ndarray:
    """A smooth non-constant test image (H, W)."""
    rows, cols = np.mgrid[: hw[0], : hw[1]]
    rng = np.random.default_rng(seed)
    image = 0.4 + 0.3 * np.sin(cols / (hw[1] / 5.0)) * np.cos(rows / (hw[0] / 3.0))
    for _ in range(4):
        cx, cy = rng.uniform(0, hw[1]), rng.uniform(0, hw[0])
        image += 0.3 * np.exp(-((cols - cx) ** 2 + (rows - cy) ** 2) / (2 * (0.08 * max(hw)) ** 2))
    top = 255 if dtype == np.uint8 else 4095
    return np.clip(image / image.max() * top, 0, top).astype(dtype)


# DICOM with PixelSpacing [row, column] = [0.2, 0.1] -> (sx, sy) = (0.1, 0.2) mm/px
DICOM_HW, DICOM_SPACING = (40, 64), (0.1, 0.2)


def make_mixed_folder(root: Path) -> tuple[set[str], set[str], set[str]]:
    """Good, bad and non-image files; returns their relative paths (good, failed, skipped)."""
    (root / "dicom").mkdir(parents=True)
    (root / "a").mkdir()
    (root / "bad").mkdir()
    write_dicom(root / "dicom" / "spaced.dcm", radiograph(DICOM_HW), PixelSpacing=[0.2, 0.1])
    write_dicom(root / "dicom" / "no_suffix", radiograph((48, 30), seed=1), ImagerPixelSpacing=[0.15, 0.15])
    Image.fromarray(radiograph((50, 70), seed=2)).save(root / "grey16.png")
    rgb = np.stack([radiograph((33, 45), np.uint8, seed=s) for s in (3, 4, 5)], axis=-1)
    Image.fromarray(rgb, mode="RGB").save(root / "rgb.png")
    Image.fromarray(radiograph((36, 52), np.uint8, seed=6)).save(root / "photo.jpg", quality=90)
    mha = sitk.GetImageFromArray(radiograph((44, 28), seed=7))
    mha.SetSpacing((0.3, 0.25))
    sitk.WriteImage(mha, str(root / "volume.mha"))
    # names that collide when flattened or when the suffix is dropped
    Image.fromarray(radiograph((30, 40), np.uint8, seed=8)).save(root / "dup.png")
    Image.fromarray(radiograph((31, 41), np.uint8, seed=9)).save(root / "dup.jpg", quality=90)
    Image.fromarray(radiograph((32, 42), np.uint8, seed=10)).save(root / "a" / "x.png")
    Image.fromarray(radiograph((34, 43), np.uint8, seed=11)).save(root / "a__x.png")
    Image.fromarray(radiograph((35, 44), np.uint8, seed=12)).save(root / "with space ü.png")
    good = {
        "dicom/spaced.dcm", "dicom/no_suffix", "grey16.png", "rgb.png", "photo.jpg", "volume.mha",
        "dup.png", "dup.jpg", "a/x.png", "a__x.png", "with space ü.png",
    }
    # bad files
    png = (root / "grey16.png").read_bytes()
    (root / "bad" / "corrupt.png").write_bytes(png[: len(png) // 2])
    (root / "bad" / "empty.dcm").write_bytes(b"")
    (root / "bad" / "notes.png").write_text("not an image\n")
    write_dicom(root / "bad" / "no_pixels.dcm", radiograph((8, 8)), PixelData=None)
    failed = {"bad/corrupt.png", "bad/empty.dcm", "bad/notes.png", "bad/no_pixels.dcm"}
    (root / "readme.txt").write_text("some notes\n")
    (root / ".hidden.png").write_bytes(png)
    return good, failed, {"readme.txt"}


# ----------------------------------------------------------------------------------------------
# the config


#: ids that inference.json defines differently on purpose: the histogram reference comes from the
#: model folder (the training data is not there at inference), the data folder is the input folder
DIFFERS_ON_PURPOSE = {"reference_image", "dataset_dir", "output_dir"}


def _references(value) -> set[str]:
    """Ids referenced as ``@id`` anywhere in a raw config value."""
    if isinstance(value, dict):
        return set().union(*(_references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value)) if value else set()
    if isinstance(value, str):
        return set(re.findall(r"@([A-Za-z_][A-Za-z0-9_#:]*)", value))
    return set()


def test_inference_config_repeats_train_config():
    """inference.json stands alone; what it repeats of train.json must not drift: the preprocessing
    (but for the landmarks it has not), the network, the inferer and every id they refer to."""
    infer = json.loads(CONFIG.read_text())
    train = json.loads(TRAIN_CONFIG.read_text())
    assert infer["preprocessing"]["_target_"] == "Compose"
    # the landmarks of label images (MONAI Label training) have no place at inference
    train_steps = [dict(t) for t in train["preprocessing"] if not t["_target_"].endswith("LandmarksFromLabelImaged")]
    infer_steps = [dict(t) for t in infer["preprocessing"]["transforms"]]
    assert [t["_target_"] for t in infer_steps] == [t["_target_"] for t in train_steps]
    for t_train, t_infer in zip(train_steps, infer_steps):
        if t_infer["_target_"].endswith("ResizeWithLandmarksd"):  # no landmarks at inference
            assert t_infer.pop("points_keys") == []
            t_train.pop("points_keys", None)
        if t_infer["_target_"].endswith("LoadLandmarkImaged"):  # inference-only outputs: trust checks, overlay copy
            for key in ("problems_key", "preview_key", "preview_max_size"):
                t_infer.pop(key)
        assert t_infer == t_train
    todo = _references(infer_steps) | {"network_def", "network", "inferer", "gamma", "preset", "reference_image_file"}
    compared = set()
    while todo:
        key = todo.pop()
        compared.add(key)
        if key in DIFFERS_ON_PURPOSE:
            continue
        assert key in train and infer.get(key) == train[key], f"'{key}' differs from train.json"
        todo |= _references(train[key]) - compared
    assert {"reference_image_file", "spatial_size", "num_landmarks", "num_filters", "histogram_outside_mask"} <= compared


def test_inference_config_properties(tmp_path):
    wf = workflow(tmp_path, tmp_path / "out")
    assert wf.check_properties() == []
    for key in ("bundle_root", "device", "network_def", "inferer", "preprocessing", "postprocessing", "output_dir",
                "dataset_dir", "run"):
        assert key in wf.parser, key


# ----------------------------------------------------------------------------------------------
# whole folders


def test_mixed_folder_through_the_cli(tmp_path, checkpoint):
    """Every good file gives outputs, every bad one an error row, inputs stay as they were."""
    inp, out = tmp_path / "in", tmp_path / "out"
    good, failed, skipped = make_mixed_folder(inp)
    before = tree_digest(tmp_path)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
        "--bundle_root", ".", "--dataset_dir", str(inp), "--output_dir", str(out), "--ckpt_path", str(checkpoint),
        "--num_filters", "4", "--network_def#sc_num_filters", "4", "--spatial_size", "[32, 32]",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(good)} succeeded, {len(failed)} failed, 1 non-image file(s) skipped" in proc.stdout

    assert tree_digest(tmp_path, skip=out) == before  # inputs untouched, nothing written beside OUT
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]

    rows = read_csv(out / "landmarks.csv")
    assert sorted(r["image"] for r in rows) == sorted(good)
    assert list(rows[0])[:4] == ["image", "landmark_00_x", "landmark_00_y", "landmark_00_confidence"]
    errors = read_csv(out / "errors.csv")
    assert {r["image"] for r in errors if r["status"] == "failed"} == failed
    assert {r["image"] for r in errors if r["status"] == "skipped"} == skipped
    reasons = {r["image"]: r["reason"] for r in errors}
    assert "empty" in reasons["bad/empty.dcm"] and "no pixel data" in reasons["bad/no_pixels.dcm"]
    assert all(r["reason"] for r in errors)

    for rel in good:
        document = json.loads(output_path(out, "landmarks", rel, ".json").read_text())
        assert document["image"] == rel and len(document["landmarks"]) == NUM_LANDMARKS
        hw = (document["image_size"]["height"], document["image_size"]["width"])
        assert hw == read_image(inp / rel).array.shape
        label = np.asarray(Image.open(output_path(out, "labels", rel, ".png")))
        assert label.shape == hw and label.dtype == np.uint8 and label.max() <= NUM_LANDMARKS
        overlay = Image.open(output_path(out, "overlays", rel, ".jpg"))
        assert overlay.mode == "RGB" and overlay.size == (hw[1], hw[0])
    for rel in failed:
        assert not output_path(out, "landmarks", rel, ".json").exists()

    # mm on the DICOM with known PixelSpacing: x_mm = x * sx, y_mm = y * sy
    document = json.loads(output_path(out, "landmarks", "dicom/spaced.dcm", ".json").read_text())
    assert document["spacing_mm_per_px"] == {"x": DICOM_SPACING[0], "y": DICOM_SPACING[1]}
    assert document["spacing_source"] == "PixelSpacing"
    row = next(r for r in rows if r["image"] == "dicom/spaced.dcm")
    for k, lm in enumerate(document["landmarks"]):
        assert lm["x_mm"] == pytest.approx(lm["x"] * DICOM_SPACING[0], abs=1e-3)
        assert lm["y_mm"] == pytest.approx(lm["y"] * DICOM_SPACING[1], abs=1e-3)
        assert float(row[f"landmark_{k:02d}_x_mm"]) == pytest.approx(lm["x_mm"], abs=1e-4)
        assert float(row[f"landmark_{k:02d}_y"]) == pytest.approx(lm["y"], abs=1e-4)
        assert 0.0 <= lm["confidence"] <= 1.0
    assert row["spacing_source"] == "PixelSpacing" and float(row["spacing_y_mm"]) == DICOM_SPACING[1]
    sources = {r["image"]: r["spacing_source"] for r in rows}
    assert sources["dicom/no_suffix"] == "ImagerPixelSpacing" and sources["volume.mha"] == "header"
    # no spacing in a PNG: mm unknown, never 0
    png_row = next(r for r in rows if r["image"] == "grey16.png")
    assert png_row["landmark_00_x_mm"] == "" and png_row["spacing_source"] == "unknown"
    assert json.loads(output_path(out, "landmarks", "grey16.png", ".json").read_text())["landmarks"][0]["x_mm"] is None


class FixedPeakNet(torch.nn.Module):
    """Draws Gaussian heatmaps (height 100) at fixed network-pixel points, whatever the input."""

    def __init__(self, points_net: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("points", torch.as_tensor(points_net, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = gaussian_heatmaps(self.points, x.shape[-2:], sigma=1.5, gamma=100.0)
        return maps[None].expand(x.shape[0], -1, -1, -1) + 0.0 * x.mean()


def test_known_points_in_original_pixels_and_mm(tmp_path):
    """A DICOM (40 x 64, PixelSpacing [0.2, 0.1]) on a 32 x 32 grid: positions, mm, label discs."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    write_dicom(inp / "knee", radiograph(DICOM_HW), PixelSpacing=[0.2, 0.1])
    points_net = np.array([[3.3, 26.6], [27.25, 4.4], [15.6, 15.1]] + [[29.0, 29.0]] * (NUM_LANDMARKS - 3))
    wf = workflow(inp, out, allow_random_weights=True, label_radius=2.0)
    runner = wf.evaluator
    runner.network = FixedPeakNet(points_net)
    assert runner.run()["succeeded"] == ["knee"]

    expected_px = apply_matrix(points_net, np.linalg.inv(resize_matrix(DICOM_HW, (32, 32))))
    document = json.loads((out / "landmarks" / "knee.json").read_text())
    found_px = np.array([[lm["x"], lm["y"]] for lm in document["landmarks"]])
    found_mm = np.array([[lm["x_mm"], lm["y_mm"]] for lm in document["landmarks"]])
    np.testing.assert_allclose(found_px, expected_px, atol=0.02)
    np.testing.assert_allclose(found_mm, expected_px * np.array(DICOM_SPACING), atol=0.005)
    # confidence = heatmap value at the integer maximum / gamma
    offsets = points_net[:3] - np.rint(points_net[:3])
    expected_confidence = np.exp(-(offsets**2).sum(axis=1) / (2 * 1.5**2))
    assert [lm["confidence"] for lm in document["landmarks"][:3]] == pytest.approx(expected_confidence, abs=1e-3)
    label = np.asarray(Image.open(out / "labels" / "knee.png"))
    for k in range(3):
        x, y = np.rint(expected_px[k]).astype(int)
        assert label[y, x] == k + 1
        assert (label == k + 1).sum() in range(9, 14)  # a disc of radius 2 px (13 pixel centres)

    # the config's postprocessing ends with the MONAI Label output: "pred" = the same label image,
    # indexed [x, y] (W, H) like MONAI's LoadImage arrays, and "result" = the JSON document
    sample = wf.dataset[0]
    heatmaps = runner.predict([sample], runner.network)[0]
    post = wf.parser.get_parsed_content("postprocessing")({**sample, "pred": heatmaps})
    assert post["pred"].shape == (DICOM_HW[1], DICOM_HW[0]) and post["pred"].dtype == np.uint8
    np.testing.assert_array_equal(post["pred"].T, label)
    assert post["result"]["landmarks"] == document["landmarks"]
    assert post["result"]["image"] == "knee"
    json.dumps(post["result"], allow_nan=False)  # serialisable as MONAI Label sends it


def test_large_16bit_png(tmp_path, checkpoint):
    """A 7300 x 2800 16-bit radiograph runs with bounded memory; outputs have the original size."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    hw = (7300, 2800)
    Image.fromarray(radiograph(hw)).save(inp / "long_leg.png", compress_level=1)
    wf = workflow(inp, out, ckpt_path=str(checkpoint), overlay_max_size=512)
    tracemalloc.start()
    try:
        summary = wf.evaluator.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["succeeded"] == ["long_leg.png"] and summary["failed"] == []
    assert peak < 500e6, f"numpy peak memory {peak / 1e6:.0f} MB"  # the float32 image alone is 82 MB
    assert Image.open(out / "labels" / "long_leg.png.png").size == (hw[1], hw[0])
    assert max(Image.open(out / "overlays" / "long_leg.png.jpg").size) == 512


def test_missing_checkpoint_is_an_error_unless_allowed(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(radiograph((20, 30), np.uint8)).save(inp / "a.png")
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(FileNotFoundError, match="checkpoint .*nowhere.*not found"):
        workflow(inp, tmp_path / "out", ckpt_path=str(missing)).evaluator.run()
    assert not (tmp_path / "out").exists()
    summary = workflow(inp, tmp_path / "out", ckpt_path=str(missing), allow_random_weights=True).evaluator.run()
    assert summary["succeeded"] == ["a.png"]


def test_checkpoint_of_another_network_is_a_clear_error(tmp_path, checkpoint):
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser["num_filters"] = 8
    with pytest.raises(ValueError, match="tiny.pt does not fit network_def"):
        load_weights(parser.get_parsed_content("network_def"), checkpoint)


def test_inference_from_torchscript_alone(tmp_path, checkpoint):
    """models/model.ts alone (no .pt) gives the landmarks of the eager network."""
    from monai.bundle import ckpt_export

    inp = tmp_path / "in"
    inp.mkdir()
    write_dicom(inp / "a.dcm", radiograph((40, 56)), PixelSpacing=[0.2, 0.2])
    ts_path = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(ts_path), ckpt_file=str(checkpoint), meta_file=str(META),
        config_file=str(CONFIG), bundle_root=str(ROOT), **SMALL,
    )
    eager = workflow(inp, tmp_path / "eager", ckpt_path=str(checkpoint)).evaluator.run()
    scripted = workflow(
        inp, tmp_path / "ts", use_torchscript=True, ts_path=str(ts_path), ckpt_path=str(tmp_path / "none.pt")
    ).evaluator.run()
    assert eager["succeeded"] == scripted["succeeded"] == ["a.dcm"]
    row_eager = read_csv(tmp_path / "eager" / "landmarks.csv")[0]
    row_ts = read_csv(tmp_path / "ts" / "landmarks.csv")[0]
    for key in row_eager:
        if key.endswith(("_x", "_y", "_mm")):
            assert float(row_ts[key]) == pytest.approx(float(row_eager[key]), abs=1e-2), key


def test_output_folder_rules(tmp_path, checkpoint):
    """OUT inside IN is left out of the scan; OUT equal to IN or containing it is refused."""
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(radiograph((20, 30), np.uint8)).save(inp / "a.png")
    for _ in range(2):  # the second run must not pick up the first run's PNGs
        summary = workflow(inp, inp / "results", ckpt_path=str(checkpoint)).evaluator.run()
        assert summary == {"succeeded": ["a.png"], "failed": [], "skipped": []}
    for out in (inp, tmp_path):
        with pytest.raises(ValueError, match="contains it"):
            workflow(inp, out, ckpt_path=str(checkpoint)).evaluator.run()
