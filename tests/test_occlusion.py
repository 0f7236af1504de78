"""The occlusion benchmark's parts: occluders placed from the annotation, occluded dataset folders written
next to (never over) the inputs, and the wrong-finger/side measure."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest

from benchmarks.occlusion import HAND_GROUPS, LIMB_GROUPS, occlude, wrong_group, write_occluded_dataset
from scripts.data.datasets import LandmarkDataset
from scripts.data.image_reader import read_image
from scripts.data.phantoms import render_hand, render_lower_limb
from scripts.data.synthetic import generate_demo_dataset


def test_wrong_group_counts_points_nearer_another_finger_or_side():
    true = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 100.0], [10.0, 100.0]])
    groups = {"right": (0, 1), "left": (2, 3)}
    pred = true.copy()
    pred[0] = [0.0, 60.0]  # 60 from its own truth, 40 from landmark 2 (other side): wrong
    pred[1] = [10.0, 45.0]  # 45 from its own, 55 from landmark 3: still right, however far
    pred[3] = [np.nan, np.nan]  # no prediction: not counted
    assert np.array_equal(wrong_group(pred, true, groups), np.array([1.0, 0.0, 0.0, np.nan]), equal_nan=True)
    # a landmark of no group is not counted, and only other groups' landmarks can make it wrong
    pred[1] = [0.0, 1.0]  # nearest to landmark 0, same group: not wrong
    assert np.isnan(wrong_group(pred, true, {"right": (0, 1)})[2])
    assert wrong_group(pred, true, groups)[1] == 0.0
    # the groups of the benchmark cover the fingers (with their metacarpal bases) and the two legs
    assert sorted(i for g in HAND_GROUPS.values() for i in g) == list(range(13, 37))
    assert sorted(i for g in LIMB_GROUPS.values() for i in g) == list(range(6))


@pytest.mark.parametrize("condition, hidden", [("implant", {25}), ("missing_finger", {29, 30, 31, 32})])
def test_hand_occluders_cover_their_landmarks(condition, hidden):
    image, points = render_hand(np.random.default_rng(0))
    before = image.astype(np.float64)
    source = before.copy()
    occluded, mask = occlude(source, points, condition, "hand", metal=65535.0)
    assert np.array_equal(source, before)  # the input is not modified
    assert np.array_equal(occluded != before, mask & (occluded != before)) and mask.any()
    rows, cols = np.round(points[:, 1]).astype(int), np.round(points[:, 0]).astype(int)
    covered = {k for k in range(len(points)) if mask[rows[k], cols[k]]}
    assert hidden <= covered and len(covered) <= len(hidden) + 2
    if condition == "implant":
        assert occluded[rows[25], cols[25]] == 65535.0


def test_collimation_blanks_beyond_the_blade():
    image, points = render_lower_limb(np.random.default_rng(0), (384, 150))
    occluded, mask = occlude(image.astype(np.float64), points, "collimation", "lower_limb", metal=65535.0)
    rows = np.round(points[:, 1]).astype(int)
    cols = np.round(points[:, 0]).astype(int)
    assert mask[rows[[2, 5]], cols[[2, 5]]].all() and not mask[rows[[0, 1, 3, 4]], cols[[0, 1, 3, 4]]].any()
    assert len(np.unique(occluded[mask])) == 1 and occluded[mask][0] <= np.percentile(image, 1.0) + 1


def test_occluded_dataset_is_a_copy_of_one_split(tmp_path):
    source = generate_demo_dataset(tmp_path / "hand", kind="hand", num_train=1, num_valid=2, seed=1)
    files = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    occluded = write_occluded_dataset(source, "valid", "implant", "hand", tmp_path / "out" / "implant")
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == files  # inputs untouched
    copy = LandmarkDataset(str(tmp_path / "out" / "implant"))
    items, originals = copy.datalist("valid"), LandmarkDataset(str(source)).datalist("valid")
    assert [i["id"] for i in items] == [i["id"] for i in originals] == sorted(occluded)
    assert copy.split_names() == ["valid"]
    for item, original in zip(items, originals):
        assert np.array_equal(item["landmarks"], original["landmarks"])
        a, b = read_image(item["image"]).array, read_image(original["image"]).array
        assert a.shape == b.shape and 0 < (a != b).mean() < 0.1
    assert json.loads((tmp_path / "out" / "implant" / "occluded_landmarks.json").read_text()) == occluded
    assert all(25 in hidden for hidden in occluded.values())
    assert not filecmp.cmp(source / "splits.csv", tmp_path / "out" / "implant" / "splits.csv", shallow=False)
