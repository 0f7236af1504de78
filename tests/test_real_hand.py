"""Real hand radiographs (../shared/data/hand-ipilab) through the bundle's configured pipeline:
loading, resize, histogram matching, normalisation, augmentation and heatmaps. The annotated
landmarks must land on bright bone in the network input. Skipped only where the folder is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts.heatmap import decode_heatmaps, points_to_original
from scripts.transforms import LandmarkHeatmapd

ROOT = Path(__file__).resolve().parents[1]
HAND = ROOT.parent / "shared" / "data" / "hand-ipilab"
IDS = ("3143", "3146", "3209")

pytestmark = pytest.mark.skipif(not HAND.is_dir(), reason=f"{HAND} is absent")


@pytest.fixture(scope="module")
def parser() -> ConfigParser:
    p = ConfigParser()
    p.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "hand.json")])
    p.update({"bundle_root": str(ROOT), "dataset_dir": str(HAND)})
    return p


@pytest.fixture(scope="module")
def samples(parser):
    datalist = [d for d in parser.get_parsed_content("datasource").datalist("train") + parser.get_parsed_content(
        "datasource").datalist("valid") if d["id"] in IDS]
    assert len(datalist) == len(IDS)
    return datalist


def disc_mean(image: np.ndarray, points: np.ndarray, radius: float = 1.5) -> np.ndarray:
    """Mean of ``image`` (H, W) in a disc around each ``(x, y)`` point."""
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    return np.array([image[(cols - x) ** 2 + (rows - y) ** 2 <= radius**2].mean() for x, y in points])


def on_bone(image: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    """How bright the landmark neighbourhoods are: (fraction above the image median, mean excess over it).

    The hand covers about half of a radiograph at most, so the median lies in soft tissue or
    background; bone is brighter (intensities are normalised to about [-1, 1]).
    """
    values = disc_mean(image, points)
    median = np.median(image)
    return float((values > median).mean()), float(values.mean() - median)


def test_real_images_preprocess_with_landmarks_on_bone(parser, samples):
    transforms = parser.get_parsed_content("validate#preprocessing")
    for item in samples:
        d = transforms(dict(item))
        image = np.asarray(d["image"])[0]
        points = np.asarray(d["landmarks"], dtype=np.float64)
        assert image.shape == (256, 256) and np.isfinite(image).all()
        assert np.asarray(d["landmarks_mask"]).all()
        fraction, excess = on_bone(image, points)
        assert fraction >= 0.9 and excess >= 0.45, (item["id"], fraction, excess)
        # the same check fails for a wrong axis convention (transposed, mirrored), so it can tell
        for wrong in (points[:, ::-1], np.column_stack([255 - points[:, 0], points[:, 1]])):
            fraction, excess = on_bone(image, wrong)
            assert fraction < 0.75 and excess < 0.35, (item["id"], fraction, excess)
        # mapped back to original pixels, the points are the annotation
        back = points_to_original(points, np.asarray(d["net_from_orig"]))
        np.testing.assert_allclose(back, item["landmarks"], atol=1e-3)


def test_real_images_augment_and_make_heatmaps(parser, samples):
    transforms = parser.get_parsed_content("train#preprocessing")
    transforms.set_random_state(seed=7)
    heatmaps = LandmarkHeatmapd(points_key="landmarks", spatial_size=(256, 256), sigma=3.0)
    for item in samples:
        for _ in range(3):
            d = heatmaps(transforms(dict(item)))
            image = np.asarray(d["image"])[0]
            points = np.asarray(d["landmarks"], dtype=np.float64)
            inside = np.asarray(d["landmarks_mask"]) > 0
            assert inside.sum() >= 30, item["id"]
            fraction, excess = on_bone(image, points[inside])
            assert fraction >= 0.85 and excess >= 0.25, (item["id"], fraction, excess)  # intensity scale >= 0.75
            decoded, _ = decode_heatmaps(torch.as_tensor(np.asarray(d["heatmaps"]))[None])
            decoded = decoded[0].numpy()
            interior = inside & np.all((points >= 1) & (points <= 254), axis=1)
            np.testing.assert_allclose(decoded[interior], points[interior], atol=0.05)
            # on the border pixel the decoder cannot refine outwards: still within half a pixel
            np.testing.assert_allclose(decoded[inside], points[inside], atol=0.5)
            assert not np.asarray(d["heatmaps"])[~inside].any()


def test_real_images_letterboxed_keep_aspect_and_landmarks(parser, samples):
    """``--keep_aspect true`` with the hand overlay: one scale for both axes, the landmarks on bone, and
    the map back to original pixels exact."""
    letterbox = ConfigParser()
    letterbox.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "hand.json")])
    letterbox.update({"bundle_root": str(ROOT), "dataset_dir": str(HAND), "keep_aspect": True})
    transforms = letterbox.get_parsed_content("validate#preprocessing")
    for item in samples:
        d = transforms(dict(item))
        matrix = np.asarray(d["net_from_orig"])
        orig_h, orig_w = (int(v) for v in d["orig_hw"])
        # isotropic up to the integer content size (less than one pixel over the image)
        assert abs(matrix[0, 0] * orig_w - matrix[1, 1] * orig_w) < 1.0, (item["id"], matrix)
        assert min(matrix[0, 2], matrix[1, 2]) > -1.0 and max(matrix[0, 2], matrix[1, 2]) > 1.0  # padded on one axis
        image = np.asarray(d["image"])[0]
        points = np.asarray(d["landmarks"], dtype=np.float64)
        fraction, excess = on_bone(image, points)
        assert fraction >= 0.9 and excess >= 0.45, (item["id"], fraction, excess)
        np.testing.assert_allclose(points_to_original(points, matrix), item["landmarks"], atol=1e-3)
