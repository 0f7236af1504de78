"""Lower-limb measurements (scripts.measurements) on geometry whose angles and lengths are known by
construction, on the synthetic long-leg data's exact landmarks, and the propagated uncertainty
against a Monte Carlo simulation."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from scripts.coords import apply_matrix
from scripts.data.phantoms import LOWER_LIMB_LANDMARKS
from scripts.data.synthetic import generate_demo_dataset
from scripts.measurements import LowerLimbMeasurements, hka_angle_deg
from tests.helpers import write_dicom
from tests.test_inference import FixedPeakNet, workflow


def leg(hip, femur_mm, femur_deg, tibia_mm, tibia_deg):
    """Knee and ankle (mm) from the hip, segment lengths and angles from the vertical (positive: +x)."""
    hip = np.asarray(hip, dtype=np.float64)
    knee = hip + femur_mm * np.array([math.sin(math.radians(femur_deg)), math.cos(math.radians(femur_deg))])
    ankle = knee + tibia_mm * np.array([math.sin(math.radians(tibia_deg)), math.cos(math.radians(tibia_deg))])
    return hip, knee, ankle


@pytest.mark.parametrize("spacing", [(0.143, 0.143), (0.1, 0.25)])
def test_known_angles_and_lengths(spacing):
    """A right leg with a varus bend of 4 degrees and a straighter, 10 mm shorter left leg, drawn in
    mm and converted to pixels of (possibly anisotropic) spacing."""
    # image x to the right; the right leg is on the image's left, so lateral of it is -x
    r_hip, r_knee, r_ankle = leg((100.0, 80.0), 450.0, -1.5, 380.0, 2.5)  # knee bent towards -x: varus
    l_hip, l_knee, l_ankle = leg((300.0, 80.0), 445.0, -3.0, 375.0, 0.0)  # knee towards -x = medial: valgus
    points_mm = np.array([r_hip, r_knee, r_ankle, l_hip, l_knee, l_ankle])
    points_px = points_mm / np.array(spacing)
    result = LowerLimbMeasurements()(points_px, spacing)

    right, left = result["right"], result["left"]
    assert right["hka_angle_deg"]["value"] == pytest.approx(180.0 - 4.0, abs=1e-3)  # well within 0.5 degrees
    assert right["mechanical_axis_deviation_deg"]["value"] == pytest.approx(4.0, abs=1e-3)  # varus positive
    assert left["hka_angle_deg"]["value"] == pytest.approx(177.0, abs=1e-3)
    assert left["mechanical_axis_deviation_deg"]["value"] == pytest.approx(-3.0, abs=1e-3)  # valgus negative
    true_right = float(np.linalg.norm(r_ankle - r_hip))
    true_left = float(np.linalg.norm(l_ankle - l_hip))
    assert right["leg_length_mm"]["value"] == pytest.approx(true_right, abs=1e-3)  # well within 1 mm
    assert left["leg_length_mm"]["value"] == pytest.approx(true_left, abs=1e-3)
    assert result["leg_length_difference_mm"]["value"] == pytest.approx(true_right - true_left, abs=2e-3)
    assert right["hka_angle_deg"]["sd"] is None  # no landmark uncertainty given, none claimed

    # a mirrored image (patient's right on the image's right) keeps the varus/valgus signs
    mirrored = points_px.copy()
    mirrored[:, 0] = 1000.0 - mirrored[:, 0]
    again = LowerLimbMeasurements()(mirrored, spacing)
    assert again["right"]["mechanical_axis_deviation_deg"]["value"] == pytest.approx(4.0, abs=1e-3)
    assert again["left"]["mechanical_axis_deviation_deg"]["value"] == pytest.approx(-3.0, abs=1e-3)


def test_without_spacing_and_with_missing_landmarks():
    points = np.array([[10, 0], [12, 50], [10, 100], [60, 0], [58, 50], [np.nan, np.nan]], dtype=np.float64)
    measure = LowerLimbMeasurements()
    result = measure(points, None)
    assert result["right"]["leg_length_mm"]["value"] is None and result["leg_length_difference_mm"]["value"] is None
    assert result["right"]["leg_length_px"]["value"] == pytest.approx(100.0)
    assert result["right"]["hka_angle_deg"]["value"] == pytest.approx(180 - 2 * math.degrees(math.atan(2 / 50)), abs=1e-4)
    assert result["left"]["hka_angle_deg"]["value"] is None  # the left ankle is missing
    row = measure.row(result)
    assert list(row) == measure.columns() and row["left_leg_length_px"] is None


def test_uncertainty_agrees_with_monte_carlo():
    spacing = (0.2, 0.2)
    r = leg((100.0, 80.0), 450.0, -1.5, 380.0, 2.5)
    l_ = leg((300.0, 80.0), 445.0, -3.0, 375.0, 0.0)
    points = np.array([*r, *l_]) / np.array(spacing)
    sd_px = 3.0
    result = LowerLimbMeasurements(landmark_sd_px=sd_px)(points, spacing)
    rng = np.random.default_rng(0)
    angles, lengths, differences = [], [], []
    for _ in range(4000):
        noisy = points + rng.normal(0.0, sd_px, points.shape)
        angles.append(hka_angle_deg(*(noisy[:3] * spacing)))
        lengths.append(np.linalg.norm((noisy[0] - noisy[2]) * spacing))
        differences.append(lengths[-1] - np.linalg.norm((noisy[3] - noisy[5]) * spacing))
    assert result["right"]["hka_angle_deg"]["sd"] == pytest.approx(np.std(angles), rel=0.06)
    assert result["right"]["leg_length_mm"]["sd"] == pytest.approx(np.std(lengths), rel=0.06)
    assert result["leg_length_difference_mm"]["sd"] == pytest.approx(np.std(differences), rel=0.06)
    assert result["right"]["leg_length_mm"]["sd"] == pytest.approx(sd_px * 0.2 * math.sqrt(2), rel=1e-3)


def test_synthetic_long_leg_landmarks(tmp_path):
    """On the synthetic radiographs' exact landmarks (the CSV), the measurements equal the geometry
    of those points computed independently by the law of cosines, within 0.5 degrees and 1 mm."""
    root = generate_demo_dataset(tmp_path / "limb", kind="lower_limb", num_train=3, num_valid=1, seed=11)
    with open(root / "landmarks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(root / "splits.csv", newline="") as f:
        spacing = {r["id"]: (float(r["spacing_x"]), float(r["spacing_y"])) for r in csv.DictReader(f)}
    assert len(LOWER_LIMB_LANDMARKS) == 6
    measure = LowerLimbMeasurements()
    for row in rows:
        points = np.array([[float(row[f"x{k}"]), float(row[f"y{k}"])] for k in range(6)])
        sx, sy = spacing[row["id"]]
        result = measure(points, (sx, sy))
        for side, (h, k, a) in (("right", (0, 1, 2)), ("left", (3, 4, 5))):
            hip, knee, ankle = (points[i] * (sx, sy) for i in (h, k, a))
            hk, ka, ha = np.linalg.norm(hip - knee), np.linalg.norm(knee - ankle), np.linalg.norm(hip - ankle)
            law_of_cosines = math.degrees(math.acos((hk**2 + ka**2 - ha**2) / (2 * hk * ka)))
            assert abs(result[side]["hka_angle_deg"]["value"] - law_of_cosines) <= 0.5
            assert abs(result[side]["leg_length_mm"]["value"] - ha) <= 1.0
            assert 150.0 < law_of_cosines <= 180.0 and 300.0 < ha < 1200.0  # a plausible adult leg


def test_folder_inference_on_synthetic_long_legs(tmp_path):
    """End to end on synthetic long-leg radiographs (as DICOM with their PixelSpacing): a network that
    puts its heatmap peaks at the true landmarks gives, through decoding and mapping back to the
    original pixels, measurements within 0.5 degrees and 1 mm of those of the true landmarks, with
    the propagated standard deviation of the given landmark error."""
    root = generate_demo_dataset(tmp_path / "limb", kind="lower_limb", num_train=1, num_valid=1, seed=2)
    with open(root / "landmarks.csv", newline="") as f:
        truth_rows = list(csv.DictReader(f))
    with open(root / "splits.csv", newline="") as f:
        spacing = {r["id"]: (float(r["spacing_x"]), float(r["spacing_y"])) for r in csv.DictReader(f)}
    for row in truth_rows:
        image_id = row["id"]
        sx, sy = spacing[image_id]
        inp, out = tmp_path / f"in_{image_id}", tmp_path / f"out_{image_id}"
        inp.mkdir()
        pixels = np.asarray(Image.open(next((root / "images").glob(f"{image_id}.*"))), dtype=np.uint16)
        write_dicom(inp / f"{image_id}.dcm", pixels, PixelSpacing=[sy, sx])
        truth = np.array([[float(row[f"x{k}"]), float(row[f"y{k}"])] for k in range(6)])
        wf = workflow(inp, out, ["configs/lower_limb.json"], allow_random_weights=True, landmark_sd_px=2.0)
        net_from_orig = np.asarray(wf.dataset[0]["net_from_orig"], dtype=np.float64)
        wf.evaluator.network = FixedPeakNet(apply_matrix(truth, net_from_orig))
        assert wf.evaluator.run()["succeeded"] == [f"{image_id}.dcm"]
        found = json.loads((out / "landmarks" / f"{image_id}.dcm.json").read_text())["measurements"]
        expected = LowerLimbMeasurements()(truth, (sx, sy))
        for side in ("right", "left"):
            assert abs(found[side]["hka_angle_deg"]["value"] - expected[side]["hka_angle_deg"]["value"]) <= 0.5
            assert abs(found[side]["leg_length_mm"]["value"] - expected[side]["leg_length_mm"]["value"]) <= 1.0
            assert found[side]["hka_angle_deg"]["sd"] > 0 and found[side]["leg_length_mm"]["sd"] > 0
        difference = found["leg_length_difference_mm"]
        assert abs(difference["value"] - expected["leg_length_difference_mm"]["value"]) <= 1.0
        # 2 px per axis at each of the four landmarks involved: sd = sqrt(4 * (2 px * s)^2) = 4 s mm
        assert difference["sd"] == pytest.approx(4.0 * sx, rel=0.05)
