"""Tests of scripts.demo_data: synthetic radiographs written as real dataset folders and read back."""

from __future__ import annotations

import csv
import filecmp
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts import demo_data
from scripts.coords import inside_image
from scripts.demo_data import (
    HAND_LANDMARKS,
    LOWER_LIMB_FULL_HW,
    LOWER_LIMB_FULL_SPACING,
    LOWER_LIMB_LANDMARKS,
    MAX_VALUE,
    ensure_demo_dataset,
    generate_demo_dataset,
    lower_limb_spacing,
    render_hand,
    render_lower_limb,
)

SMALL_LIMB_HW = (384, 150)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def disc_mean(image: np.ndarray, point, radius: float) -> float:
    """Mean of ``image`` (H, W) over pixels whose centres lie within ``radius`` of ``point`` (x, y)."""
    x0, y0 = max(int(point[0] - radius), 0), max(int(point[1] - radius), 0)
    x1 = min(int(point[0] + radius) + 2, image.shape[1])
    y1 = min(int(point[1] + radius) + 2, image.shape[0])
    rows, cols = np.mgrid[y0:y1, x0:x1]
    inside = (cols - point[0]) ** 2 + (rows - point[1]) ** 2 <= radius**2
    return float(image[y0:y1, x0:x1][inside].mean())


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


@pytest.mark.parametrize("kind", ["hand", "lower_limb"])
def test_landmarks_sit_on_bright_structures(kind):
    for seed in range(6):
        rng = np.random.default_rng(seed)
        if kind == "hand":
            image, points = render_hand(rng)
            radius, factor = 3.0, 1.5
        else:  # soft tissue covers most of the image, and the knee and ankle landmarks lie in
            image, points = render_lower_limb(rng)  # 5 mm (~5 px) joint spaces: a wider disc
            radius, factor = 8.0, 1.3
        image = image.astype(np.float64)
        assert image.shape[0] > image.shape[1]
        median = np.median(image)
        means = np.array([disc_mean(image, p, radius) for p in points])
        assert means.min() > factor * median, (seed, means.argmin())
        # control: discs at random places are darker on average
        anywhere = rng.uniform(radius, np.array(image.shape[::-1]) - radius, size=(40, 2))
        assert np.mean([disc_mean(image, p, radius) for p in anywhere]) < 0.8 * means.mean()


def test_hand_joints_look_alike():
    """Only the configuration tells the finger joints apart: their neighbourhoods have similar brightness."""
    joints = [22, 23, 26, 27, 30, 31, 34, 35]  # PIP and DIP joints of the four fingers
    for seed in range(5):
        image, points = render_hand(np.random.default_rng(seed))
        image = image.astype(np.float64)
        means = np.array([disc_mean(image, points[j], 4.0) for j in joints])
        assert means.max() / means.min() < 1.35, (seed, means)
        background = np.percentile(image, 10)
        assert means.min() - background > 3 * (means.max() - means.min())


def test_finger_joint_landmarks_sit_in_joint_spaces():
    """Along its finger, each inner joint landmark is darker than the bone ends on both sides of it."""
    chains = (
        (17, 18, 19, 20), (16, 21, 22, 23, 24), (15, 25, 26, 27, 28), (14, 29, 30, 31, 32), (13, 33, 34, 35, 36)
    )
    for seed in range(4):
        image, p = render_hand(np.random.default_rng(seed))
        image = image.astype(np.float64)
        for chain in chains:
            for before, joint, after in zip(chain[:-2], chain[1:-1], chain[2:]):
                axis = (p[after] - p[before]) / np.linalg.norm(p[after] - p[before])
                samples = [p[joint] + k * axis for k in range(-7, 8)]
                profile = np.array([image[int(round(q[1])), int(round(q[0]))] for q in samples])
                centre, proximal, distal = profile[7], profile[:6].max(), profile[9:].max()
                assert min(proximal, distal) > 1.5 * centre, (seed, joint, profile)


def test_hand_layout_follows_the_atlas_numbering():
    for seed in range(5):
        _, p = render_hand(np.random.default_rng(seed))
        tips = p[[20, 24, 28, 32, 36]]
        assert p[20, 0] > p[36, 0]  # thumb on the image's right (left hand, palm down)
        assert (tips[1:, 1] < p[:5, 1].min()).all()  # fingertips above the wrist
        assert p[28, 1] == tips[:, 1].min() or p[24, 1] == tips[:, 1].min()  # middle or index longest
        for chain in ((16, 21, 22, 23, 24), (15, 25, 26, 27, 28), (14, 29, 30, 31, 32), (13, 33, 34, 35, 36)):
            assert (np.diff(p[list(chain), 1]) < 0).all()  # each finger runs upwards from its base
    assert len(HAND_LANDMARKS) == 37 and len(set(HAND_LANDMARKS)) == 37


def test_lower_limb_layout():
    assert LOWER_LIMB_LANDMARKS == [
        "femoral_head_right", "knee_right", "ankle_right", "femoral_head_left", "knee_left", "ankle_left",
    ]
    spacing = lower_limb_spacing(demo_data.LOWER_LIMB_DEFAULT_HW)
    assert spacing == pytest.approx(1.019, abs=1e-3)
    assert lower_limb_spacing(LOWER_LIMB_FULL_HW) == pytest.approx(LOWER_LIMB_FULL_SPACING)
    for seed in range(4):
        _, p = render_lower_limb(np.random.default_rng(seed))
        right, left = p[:3], p[3:]
        assert (right[:, 0] < left[:, 0]).all()  # the patient's right leg is on the image's left
        for leg in (right, left):
            assert (np.diff(leg[:, 1]) > 0).all()  # hip above knee above ankle
            femur_mm, tibia_mm = np.linalg.norm(np.diff(leg, axis=0), axis=1) * spacing
            assert 330 < femur_mm < 520 and 260 < tibia_mm < 450
        hips_mm = np.linalg.norm(right[0] - left[0]) * spacing
        assert 140 < hips_mm < 220


def test_knee_and_ankle_landmarks_sit_in_joint_spaces():
    """Down a column through a knee or ankle landmark, bone lies 4-12 mm above and below it."""
    for seed in range(4):
        image, p = render_lower_limb(np.random.default_rng(seed))  # about 1 mm/px
        for j in (1, 2, 4, 5):
            x, y = int(round(p[j, 0])), int(round(p[j, 1]))
            column = image[:, x - 1 : x + 2].astype(np.float64).mean(axis=1)
            above, below = column[y - 12 : y - 3].max(), column[y + 4 : y + 13].max()
            assert min(above, below) > 1.5 * column[y], (seed, j)


def test_full_size_lower_limb_memory_and_consistency():
    tracemalloc.start()
    try:
        big, big_points = render_lower_limb(
            np.random.default_rng(7), LOWER_LIMB_FULL_HW, LOWER_LIMB_FULL_SPACING
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert big.shape == LOWER_LIMB_FULL_HW and big.dtype == np.uint16
    assert peak < 1.5e9, f"peak {peak / 1e9:.2f} GB"
    assert inside_image(big_points, big.shape).all()

    # the same draws at the default size give the same anatomy, in mm about the image centre
    small, small_points = render_lower_limb(np.random.default_rng(7))
    small_spacing = lower_limb_spacing(small.shape)

    def centred_mm(points, shape, spacing):
        return (points + 0.5 - np.array([shape[1], shape[0]]) / 2.0) * spacing

    np.testing.assert_allclose(
        centred_mm(big_points, big.shape, LOWER_LIMB_FULL_SPACING),
        centred_mm(small_points, small.shape, small_spacing),
        atol=1.0,
    )
    radius = 8.0 / LOWER_LIMB_FULL_SPACING  # femoral heads, knees and ankles on bone at full resolution
    assert min(disc_mean(big, p, radius) for p in big_points) > 1.3 * np.median(big[::8, ::8])


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

    monkeypatch.setattr(demo_data, "render_hand", broken)
    with pytest.raises(RuntimeError, match="crashed"):
        generate_demo_dataset(tmp_path / "demo", num_train=1, num_valid=1)
    assert list(tmp_path.iterdir()) == []


def test_ensure_and_cli(tmp_path, capsys):
    path = ensure_demo_dataset(
        tmp_path / "limb", kind="lower_limb", num_train=1, num_valid=1, image_hw=SMALL_LIMB_HW
    )
    assert isinstance(path, str) and (Path(path) / ".complete").is_file()
    demo_data.main([str(tmp_path / "cli"), "--kind", "lower_limb", "--num-train", "1", "--num-valid", "1",
                    "--image-hw", *map(str, SMALL_LIMB_HW)])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    _, mismatch, errors = filecmp.cmpfiles(path, tmp_path / "cli", all_files(Path(path)), shallow=False)
    assert mismatch == [] and errors == []


def test_folder_validates_through_dataset_loader(tmp_path):
    data = pytest.importorskip("scripts.data")
    io = pytest.importorskip("scripts.io")
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
    demo_data.main([str(tmp_path / "cli"), "--kind", "lower_limb", "--num-train", "1", "--num-valid", "0",
                    "--image-hw", *map(str, hw), "--implants", "hip_left"])
    assert "hip_left" in (tmp_path / "cli" / ".complete").read_text()
