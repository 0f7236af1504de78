"""Tests of scripts.keys: the keys the pipeline writes are LandmarkKeys members, equal to the config strings."""

from __future__ import annotations

import numpy as np
from monai.transforms import Compose

from scripts.keys import LandmarkKeys
from scripts.transforms import LandmarkHeatmapd, LoadLandmarkImaged, ResizeWithLandmarksd
from tests.helpers import write_png16


def test_every_key_of_a_loaded_training_sample_is_a_landmark_key(tmp_path):
    path = write_png16(tmp_path / "a.png", np.arange(20 * 30).reshape(20, 30) * 50)
    item = {"id": "a", "image": path, "landmarks": np.array([[3.0, 4.0], [np.nan, np.nan]]), "spacing": None}
    sample = Compose([
        LoadLandmarkImaged(problems_key=LandmarkKeys.IMAGE_PROBLEMS, preview_key=LandmarkKeys.IMAGE_PREVIEW),
        ResizeWithLandmarksd(spatial_size=(16, 16)),
        LandmarkHeatmapd(spatial_size=(16, 16)),
    ])(item)
    assert set(sample) <= {key.value for key in LandmarkKeys}
    # written as plain str, not as members: torch.load(weights_only=True) refuses dicts keyed by enum members
    assert all(type(key) is str for key in sample)
    assert sample[LandmarkKeys.LANDMARKS_MASK].tolist() == [1.0, 0.0]
    # str members: dictionaries indexed with plain strings (configs) find the same entries
    assert LandmarkKeys.NET_FROM_ORIG == "net_from_orig" and "net_from_orig" in sample
