"""Tests of scripts.data.datasets: dataset folders read into validated datalists, splits and the tuning subset."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from monai.bundle import ConfigParser
from PIL import Image

from scripts.data.datasets import DatasetError, LandmarkDataset, default_split, load_datalist, split_off_tuning
from tests.helpers import BUNDLE_ROOT, write_dicom


HAND_DIR = Path("/work/shared/data/hand-ipilab")


# id -> (H, W); a1 is a PNG, b2 an MHA, c3 a DICOM without suffix
SIZES = {"a1": (30, 40), "b2": (20, 50), "c3": (30, 30)}


LANDMARKS = """id,x0,y0,x1,y1
a1,-0.5,2,39.5,29.5
b2,,,10,5
c3,3,4,5.25,6
"""


SPLITS = """id,split,width,height,spacing_x,spacing_y
a1,train,40,30,0.1,0.2
b2,valid,50,20,,
c3,train,,,,
"""


def make_dataset(root: Path, landmarks: str = LANDMARKS, splits: str | None = SPLITS) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros(SIZES["a1"], dtype=np.uint8)).save(images / "a1.png")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(SIZES["b2"], np.uint16)), str(images / "b2.mha"))
    write_dicom(images / "c3", np.zeros(SIZES["c3"], dtype=np.uint16))
    (root / "landmarks.csv").write_text(landmarks)
    if splits is not None:
        (root / "splits.csv").write_text(splits)
    return root


def test_valid_dataset_datalists(tmp_path):
    root = make_dataset(tmp_path / "ds")
    dataset = LandmarkDataset(root)
    assert dataset.num_landmarks == 2 and dataset.landmark_names == ["0", "1"]
    assert dataset.ids == ["a1", "b2", "c3"]
    assert dataset.split_names() == ["train", "valid"]
    assert dataset.splits == {"train": ["a1", "c3"], "valid": ["b2"]}

    train = dataset.datalist("train")
    assert [item["id"] for item in train] == ["a1", "c3"]
    a1, c3 = train
    assert set(a1) == {"id", "image", "landmarks", "spacing"}
    assert a1["image"] == str(root.resolve() / "images" / "a1.png") and os.path.isabs(a1["image"])
    assert c3["image"] == str(root.resolve() / "images" / "c3")
    assert a1["landmarks"].dtype == np.float32 and a1["landmarks"].shape == (2, 2)
    np.testing.assert_array_equal(a1["landmarks"], [[-0.5, 2.0], [39.5, 29.5]])
    np.testing.assert_array_equal(c3["landmarks"], [[3.0, 4.0], [5.25, 6.0]])
    assert a1["spacing"] == [0.1, 0.2] and c3["spacing"] is None

    (b2,) = dataset.datalist("valid")
    assert np.isnan(b2["landmarks"][0]).all() and not np.isnan(b2["landmarks"][1]).any()
    assert b2["image"].endswith("b2.mha") and b2["spacing"] is None


def test_datalist_items_are_fresh_copies(tmp_path):
    dataset = LandmarkDataset(make_dataset(tmp_path / "ds"))
    dataset.datalist("train")[0]["landmarks"][:] = 0
    assert dataset.datalist("train")[0]["landmarks"][0, 0] == -0.5


def test_unknown_split_lists_available_ones(tmp_path):
    dataset = LandmarkDataset(make_dataset(tmp_path / "ds"))
    with pytest.raises(DatasetError, match=r"no split 'test'; available splits: train, valid"):
        dataset.datalist("test")


def test_named_landmark_columns(tmp_path):
    landmarks = "id,tip_x,tip_y,base_x,base_y\na1,1,2,3,4\nb2,5,6,,\nc3,7,8,9,10\n"
    dataset = LandmarkDataset(make_dataset(tmp_path / "ds", landmarks=landmarks))
    assert dataset.landmark_names == ["tip", "base"]
    assert np.isnan(dataset.datalist("valid")[0]["landmarks"][1]).all()


def test_load_datalist_caches_and_notices_changes(tmp_path):
    root = make_dataset(tmp_path / "ds")
    first = load_datalist(root, "train")
    assert [item["id"] for item in first] == ["a1", "c3"]
    assert [item["id"] for item in load_datalist(str(root), "valid")] == ["b2"]
    (root / "splits.csv").write_text(SPLITS.replace("c3,train", "c3,valid"))
    stat = (root / "splits.csv").stat()
    os.utime(root / "splits.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert [item["id"] for item in load_datalist(root, "valid")] == ["b2", "c3"]


def test_without_splits_csv_the_split_is_a_deterministic_hash(tmp_path, caplog):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    ids = [f"img{i:03d}" for i in range(30)]
    for image_id in ids:
        Image.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(root / "images" / f"{image_id}.png")
    (root / "landmarks.csv").write_text("id,x0,y0\n" + "".join(f"{i},1,2\n" for i in ids))
    with caplog.at_level(logging.WARNING, logger="scripts.data"):
        dataset = LandmarkDataset(root)
    assert "splits.csv not found" in caplog.text
    # SHA-1 of the id: the same on every run, machine and Python hash seed
    valid = ["img002", "img010", "img011", "img021", "img022", "img024", "img025", "img026", "img028"]
    assert dataset.splits == {"train": [i for i in ids if i not in valid], "valid": valid}
    assert all(default_split(i) == ("valid" if i in valid else "train") for i in ids)
    assert LandmarkDataset(root).splits == dataset.splits


def test_check_bounds_false_skips_image_reading(tmp_path):
    landmarks = LANDMARKS.replace("a1,-0.5,2", "a1,400,2")
    root = make_dataset(tmp_path / "ds", landmarks=landmarks)
    (root / "images" / "c3").write_bytes(b"not an image but has no suffix")  # no longer a candidate
    (root / "images" / "c3.png").write_bytes(b"corrupt")
    with pytest.raises(DatasetError):
        LandmarkDataset(root)
    dataset = LandmarkDataset(root, check_bounds=False)
    assert dataset.datalist("train")[0]["landmarks"][0, 0] == 400


def _replace(name, old, new):
    def edit(root):
        text = (root / name).read_text()
        assert old in text, old
        (root / name).write_text(text.replace(old, new))

    return edit


def _delete(relative):
    return lambda root: (root / relative).unlink()


BAD_CASES = {
    "missing_image": (_delete("images/b2.mha"), "landmarks.csv", "row 2 ", "b2", "missing image file"),
    "unknown_id_in_splits": (
        _replace("splits.csv", "c3,train,,,,\n", "c3,train,,,,\nz9,train,,,,\n"),
        "splits.csv", "row 4 ", "z9", "unknown id",
    ),
    "id_missing_from_splits": (
        _replace("splits.csv", "c3,train,,,,\n", ""), "landmarks.csv", "row 3 ", "c3", "has no row in",
    ),
    "wrong_column_count": (
        _replace("landmarks.csv", "c3,3,4,5.25,6", "c3,3,4,5.25"),
        "landmarks.csv", "row 3 ", "c3", "wrong number of columns",
    ),
    "wrong_column_count_splits": (
        _replace("splits.csv", "b2,valid,50,20,,", "b2,valid,50,20"),
        "splits.csv", "row 2 ", "b2", "wrong number of columns",
    ),
    "odd_header": (
        _replace("landmarks.csv", "id,x0,y0,x1,y1", "id,x0,y0,x1"),
        "landmarks.csv", "header", "", "x/y column pairs",
    ),
    "header_not_pairs": (
        _replace("landmarks.csv", "id,x0,y0,x1,y1", "id,x0,y1,x1,y0"),
        "landmarks.csv", "header", "", "not an x/y pair",
    ),
    "header_without_id": (
        _replace("landmarks.csv", "id,x0,y0,x1,y1", "name,x0,y0,x1,y1"),
        "landmarks.csv", "header", "", "'id'",
    ),
    "non_numeric": (
        _replace("landmarks.csv", "c3,3,4,", "c3,3,four,"), "landmarks.csv", "row 3 ", "c3",
        "column 'y0': 'four' is not a number",
    ),
    "half_missing": (
        _replace("landmarks.csv", "c3,3,4,5.25,6", "c3,3,4,5.25,"), "landmarks.csv", "row 3 ", "c3",
        "landmark 1 is half missing",
    ),
    "outside_right": (
        _replace("landmarks.csv", "a1,-0.5,2,39.5,", "a1,-0.5,2,39.6,"), "landmarks.csv", "row 1 ", "a1",
        "landmark 1 at (x, y) = (39.6, 29.5) lies outside the image a1.png",
    ),
    "outside_top": (
        _replace("landmarks.csv", "c3,3,4,", "c3,3,-0.51,"), "landmarks.csv", "row 3 ", "c3",
        "landmark 0 at (x, y) = (3, -0.51) lies outside",
    ),
    "duplicate_id_landmarks": (
        _replace("landmarks.csv", "c3,3,4,5.25,6\n", "c3,3,4,5.25,6\na1,1,1,1,1\n"),
        "landmarks.csv", "row 4 ", "a1", "duplicate id (first in row 1)",
    ),
    "duplicate_id_splits": (
        _replace("splits.csv", "c3,train,,,,\n", "c3,train,,,,\na1,train,,,,\n"),
        "splits.csv", "row 4 ", "a1", "duplicate id (first in row 1)",
    ),
    "overlapping_splits": (
        _replace("splits.csv", "c3,train,,,,\n", "c3,train,,,,\na1,valid,,,,\n"),
        "splits.csv", "row 4 ", "a1", "overlapping splits",
    ),
    "width_mismatch": (
        _replace("splits.csv", "a1,train,40,30", "a1,train,41,30"), "splits.csv", "row 1 ", "a1",
        "width x height = 41 x 30 does not match the image a1.png (W x H = 40 x 30)",
    ),
    "height_mismatch_transposed": (
        _replace("splits.csv", "b2,valid,50,20", "b2,valid,20,50"), "splits.csv", "row 2 ", "b2",
        "does not match the image b2.mha (W x H = 50 x 20)",
    ),
    "bad_width": (
        _replace("splits.csv", "a1,train,40,30", "a1,train,40.5,30"), "splits.csv", "row 1 ", "a1",
        "column 'width': '40.5' is not a positive integer",
    ),
    "bad_spacing": (
        _replace("splits.csv", "0.1,0.2", "0,0.2"), "splits.csv", "row 1 ", "a1",
        "column 'spacing_x': '0' is not a positive number",
    ),
    "half_spacing": (
        _replace("splits.csv", "0.1,0.2", "0.1,"), "splits.csv", "row 1 ", "a1", "spacing_x and spacing_y",
    ),
    "misspelt_splits_column": (
        _replace("splits.csv", "width,height", "width,heigth"), "splits.csv", "header", "", "'id,split'",
    ),
    "corrupt_image": (
        lambda root: (root / "images" / "a1.png").write_bytes(b"\x89PNG garbage"),
        "landmarks.csv", "row 1 ", "a1", "unreadable image",
    ),
    "two_images_one_id": (
        lambda root: Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / "images" / "a1.jpg"),
        "images", "", "", "both have id 'a1'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_dataset_raises_dataset_error_naming_file_row_and_problem(tmp_path, case):
    edit, file_name, row, row_id, problem = BAD_CASES[case]
    root = make_dataset(tmp_path / "ds")
    edit(root)
    with pytest.raises(DatasetError) as info:
        LandmarkDataset(root)
    message = str(info.value)
    assert str(root.resolve() / file_name) in message
    assert row in message and problem in message
    if row_id:
        assert f"id {row_id!r}" in message
    assert isinstance(info.value, ValueError)


def test_missing_landmarks_csv_and_images_folder(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "landmarks.csv").unlink()
    with pytest.raises(DatasetError, match=r"landmarks\.csv: file not found"):
        LandmarkDataset(root)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        LandmarkDataset(tmp_path / "nowhere")


def test_real_hand_dataset_loads():
    if not HAND_DIR.is_dir():
        pytest.skip(f"{HAND_DIR} is absent")
    dataset = LandmarkDataset(HAND_DIR)
    train, valid = dataset.datalist("train"), dataset.datalist("valid")
    assert (len(train), len(valid), dataset.num_landmarks) == (91, 21, 37)
    assert not {item["id"] for item in train} & {item["id"] for item in valid}
    for item in train + valid:
        assert item["landmarks"].shape == (37, 2) and not np.isnan(item["landmarks"]).any()
        assert item["image"].endswith(f"{item['id']}.jpg") and os.path.isfile(item["image"])
        assert item["spacing"] is None


def test_split_off_tuning_is_deterministic_disjoint_and_order_free():
    items = [{"id": str(i)} for i in range(91)]
    rest, tune = split_off_tuning(items, 0.11)
    assert len(tune) == 10 and len(rest) == 81
    assert {d["id"] for d in rest}.isdisjoint({d["id"] for d in tune})
    rest2, tune2 = split_off_tuning(list(reversed(items)), 0.11)
    assert {d["id"] for d in tune2} == {d["id"] for d in tune}
    assert split_off_tuning(items, 0.0) == (items, [])
    assert len(split_off_tuning(items[:3], 0.01)[1]) == 1
    with pytest.raises(ValueError, match="tune_fraction"):
        split_off_tuning(items, 1.0)


def test_config_selects_on_tuning_subset_of_train_and_never_on_valid(tiny_dataset):
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE_ROOT), "dataset_dir": str(tiny_dataset), "tune_fraction": 0.34})
    train_ids = {d["id"] for d in parser.get_parsed_content("train#dataset#data")}
    val_ids = {d["id"] for d in parser.get_parsed_content("validate#dataset#data")}
    source = LandmarkDataset(str(tiny_dataset))
    all_train = {d["id"] for d in source.datalist("train")}
    valid = {d["id"] for d in source.datalist("valid")}
    assert len(val_ids) == 2 and val_ids <= all_train and val_ids.isdisjoint(valid)
    assert train_ids == all_train - val_ids
