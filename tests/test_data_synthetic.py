"""Tests of scripts.data.synthetic: demo datasets written as real dataset folders and read back."""

from __future__ import annotations

import csv
import filecmp
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.coords import inside_image
from scripts.data import synthetic
from scripts.data.canvas import MAX_VALUE
from scripts.data.phantoms import HAND_LANDMARKS, LOWER_LIMB_LANDMARKS, lower_limb_spacing, render_lower_limb
from scripts.data.synthetic import ensure_demo_dataset, generate_demo_dataset
from tests.helpers import disc_mean


SMALL_LIMB_HW = (384, 150)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_generation_is_deterministic(tmp_path):
    kwargs = {"kind": "hand", "num_train": 2, "num_valid": 1, "num_test": 1, "seed": 3}
    a = generate_demo_dataset(tmp_path / "a", **kwargs)
    b = generate_demo_dataset(tmp_path / "b", **kwargs)
    files = all_files(a)
    assert files == all_files(b)
    assert len([f for f in files if f.startswith("images/")]) == 4
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert mismatch == [] and errors == []
    other = generate_demo_dataset(tmp_path / "c", **{**kwargs, "seed": 4})
    assert not filecmp.cmp(a / "landmarks.csv", other / "landmarks.csv", shallow=False)
    assert not filecmp.cmp(a / "images" / "hand_0000.png", other / "images" / "hand_0000.png", shallow=False)


@pytest.mark.parametrize(
    "kind, image_hw, names, spacing_columns",
    [
        ("hand", None, HAND_LANDMARKS, []),
        ("lower_limb", SMALL_LIMB_HW, LOWER_LIMB_LANDMARKS, ["spacing_x", "spacing_y"]),
    ],
)
def test_folder_format(tmp_path, kind, image_hw, names, spacing_columns):
    folder = generate_demo_dataset(
        tmp_path / kind, kind=kind, num_train=3, num_valid=2, num_test=1, image_hw=image_hw
    )
    header, rows = read_csv(folder / "landmarks.csv")
    assert header == ["id"] + [f"{axis}{i}" for i in range(len(names)) for axis in "xy"]
    assert all(len(row) == 1 + 2 * len(names) for row in rows)
    split_header, split_rows = read_csv(folder / "splits.csv")
    assert split_header == ["id", "split", "width", "height"] + spacing_columns
    assert [r[1] for r in split_rows] == ["train"] * 3 + ["valid"] * 2 + ["test"]
    assert [r[0] for r in split_rows] == [r[0] for r in rows]
    sizes = set()
    for row, split_row in zip(rows, split_rows):
        with Image.open(folder / "images" / f"{row[0]}.png") as im:
            assert im.format == "PNG" and im.mode == "I;16"
            pixels = np.array(im)
        assert pixels.dtype == np.uint16 and pixels.max() > 255 and pixels.max() <= MAX_VALUE
        h, w = pixels.shape
        assert (w, h) == (int(split_row[2]), int(split_row[3]))
        sizes.add((h, w))
        points = np.array(row[1:], dtype=np.float64).reshape(-1, 2)
        assert np.isfinite(points).all() and inside_image(points, (h, w)).all()
        if spacing_columns:
            assert float(split_row[4]) == float(split_row[5]) == pytest.approx(lower_limb_spacing((h, w)))
    if kind == "hand":  # default sizes vary by up to 10 % around 400 x 320
        assert len(sizes) > 1
        assert all(360 <= h <= 440 and 288 <= w <= 352 for h, w in sizes)
    else:
        assert sizes == {SMALL_LIMB_HW}


def test_existing_folders(tmp_path):
    folder = generate_demo_dataset(tmp_path / "demo", num_train=1, num_valid=1)
    stamp = (folder / "landmarks.csv").stat().st_mtime_ns
    assert generate_demo_dataset(tmp_path / "demo", num_train=1, num_valid=1) == folder
    assert (folder / "landmarks.csv").stat().st_mtime_ns == stamp  # complete and same parameters: kept
    generate_demo_dataset(tmp_path / "demo", num_train=2, num_valid=1)  # other parameters: replaced
    assert len(read_csv(folder / "landmarks.csv")[1]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary folders left

    (tmp_path / "empty").mkdir()
    generate_demo_dataset(tmp_path / "empty", num_train=1, num_valid=0)
    assert (tmp_path / "empty" / "images" / "hand_0000.png").is_file()

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "landmarks.csv").write_text("id,x0,y0\n")
    with pytest.raises(FileExistsError, match="precious"):
        generate_demo_dataset(precious)
    assert (precious / "landmarks.csv").read_text() == "id,x0,y0\n"

    with pytest.raises(ValueError, match="kind"):
        generate_demo_dataset(tmp_path / "x", kind="skull")
    with pytest.raises(ValueError, match="image_hw"):
        generate_demo_dataset(tmp_path / "x", image_hw=(8, 300))
    with pytest.raises(ValueError, match="counts"):
        generate_demo_dataset(tmp_path / "x", num_train=0, num_valid=0)
    assert not (tmp_path / "x").exists()


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(synthetic, "render_hand", broken)
    with pytest.raises(RuntimeError, match="crashed"):
        generate_demo_dataset(tmp_path / "demo", num_train=1, num_valid=1)
    assert list(tmp_path.iterdir()) == []


def test_ensure_and_cli(tmp_path, capsys):
    path = ensure_demo_dataset(
        tmp_path / "limb", kind="lower_limb", num_train=1, num_valid=1, image_hw=SMALL_LIMB_HW
    )
    assert isinstance(path, str) and (Path(path) / ".complete").is_file()
    synthetic.main([str(tmp_path / "cli"), "--kind", "lower_limb", "--num-train", "1", "--num-valid", "1",
                    "--image-hw", *map(str, SMALL_LIMB_HW)])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    _, mismatch, errors = filecmp.cmpfiles(path, tmp_path / "cli", all_files(Path(path)), shallow=False)
    assert mismatch == [] and errors == []


def test_folder_validates_through_dataset_loader(tmp_path):
    data = pytest.importorskip("scripts.data")
    io = pytest.importorskip("scripts.data.image_reader")
    hand = data.LandmarkDataset(generate_demo_dataset(tmp_path / "hand", num_train=2, num_valid=1))
    assert hand.num_landmarks == 37 and hand.split_names() == ["train", "valid"]
    item = hand.datalist("train")[0]
    assert item["spacing"] is None and item["landmarks"].shape == (37, 2)
    record = io.read_image(item["image"])
    with Image.open(item["image"]) as im:
        np.testing.assert_array_equal(record.array, np.array(im).astype(np.float32))

    folder = generate_demo_dataset(
        tmp_path / "limb", kind="lower_limb", num_train=1, num_valid=1, image_hw=SMALL_LIMB_HW
    )
    limb = data.LandmarkDataset(folder)
    (item,) = limb.datalist("valid")
    assert item["spacing"] == pytest.approx([lower_limb_spacing(SMALL_LIMB_HW)] * 2)
    _, rows = read_csv(folder / "landmarks.csv")
    np.testing.assert_allclose(item["landmarks"], np.array(rows[1][1:], dtype=np.float32).reshape(6, 2))


def test_lower_limb_implants_cover_their_joints_and_change_nothing_else(tmp_path):
    hw = SMALL_LIMB_HW
    plain, points = render_lower_limb(np.random.default_rng(5), hw)
    metal, same_points = render_lower_limb(np.random.default_rng(5), hw, implants=("hip_right", "knee_left"))
    assert np.array_equal(points, same_points)
    changed = metal != plain
    assert 0 < changed.mean() < 0.05  # only around the two implants
    # metal: brighter than any bone of the plain image, over the right femoral head and the left knee
    right_head, left_knee = LOWER_LIMB_LANDMARKS.index("femoral_head_right"), LOWER_LIMB_LANDMARKS.index("knee_left")
    for k in (right_head, left_knee):
        on_metal, on_bone = (disc_mean(im.astype(np.float64), points[k], 2.0) for im in (metal, plain))
        assert on_metal > 0.8 * MAX_VALUE and on_metal > 1.15 * on_bone
    for k in set(range(6)) - {right_head, left_knee}:  # the other joints are untouched
        x, y = np.round(points[k]).astype(int)
        assert np.array_equal(metal[y - 5:y + 6, x - 5:x + 6], plain[y - 5:y + 6, x - 5:x + 6])
    with pytest.raises(ValueError, match="unknown implant"):
        render_lower_limb(np.random.default_rng(5), hw, implants=("shoulder_left",))

    # folders: same landmarks as the plain folder, the implants recorded in the marker
    kwargs = {"kind": "lower_limb", "num_train": 1, "num_valid": 1, "image_hw": hw, "seed": 2}
    a = generate_demo_dataset(tmp_path / "plain", **kwargs)
    b = generate_demo_dataset(tmp_path / "implants", implants=["knee_right"], **kwargs)
    assert filecmp.cmp(a / "landmarks.csv", b / "landmarks.csv", shallow=False)
    assert not filecmp.cmp(a / "images" / "limb_0001.png", b / "images" / "limb_0001.png", shallow=False)
    assert "knee_right" in (b / ".complete").read_text() and "implants" not in (a / ".complete").read_text()
    with pytest.raises(ValueError, match="lower_limb"):
        generate_demo_dataset(tmp_path / "hand", kind="hand", num_train=1, num_valid=0, implants=["knee_right"])
    synthetic.main([str(tmp_path / "cli"), "--kind", "lower_limb", "--num-train", "1", "--num-valid", "0",
                    "--image-hw", *map(str, hw), "--implants", "hip_left"])
    assert "hip_left" in (tmp_path / "cli" / ".complete").read_text()
