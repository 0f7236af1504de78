"""Tests of scripts.data.phantoms (and its canvas): synthetic radiographs whose landmarks sit on the drawn anatomy."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from scripts.coords import inside_image
from scripts.data.phantoms import (
    HAND_LANDMARKS,
    LOWER_LIMB_DEFAULT_HW,
    LOWER_LIMB_FULL_HW,
    LOWER_LIMB_FULL_SPACING,
    LOWER_LIMB_LANDMARKS,
    lower_limb_spacing,
    render_hand,
    render_lower_limb,
)
from tests.helpers import disc_mean


SMALL_LIMB_HW = (384, 150)


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
    spacing = lower_limb_spacing(LOWER_LIMB_DEFAULT_HW)
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
