"""Tests of scripts.writers.images: the shrunk preview and the overlay (JPEG or PNG) written and read back.

(The overlay drawing itself is also exercised by tests/test_inference.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from scripts.coords import apply_matrix, resize_matrix
from scripts.writers.images import downscale_image, render_overlay, write_overlay


def test_downscale_keeps_small_images_and_shrinks_large_ones_with_the_mean_kept():
    small = np.arange(12, dtype=np.uint16).reshape(3, 4)
    kept = downscale_image(small, 10)
    assert kept.dtype == np.float32 and np.array_equal(kept, small)
    large = np.random.default_rng(0).uniform(0, 100, size=(900, 300)).astype(np.float32)
    shrunk = downscale_image(large, 300)
    assert shrunk.shape == (300, 100)
    assert abs(float(shrunk.mean()) - float(large.mean())) < 0.5


@pytest.mark.parametrize("name, pillow_format", [("x.png", "PNG"), ("x.jpg", "JPEG"), ("x.JPEG", "JPEG")])
def test_overlay_from_a_preview_marks_original_pixel_points(tmp_path, name, pillow_format):
    original_hw = (2000, 1000)
    image = np.zeros(original_hw, np.float32)
    preview = downscale_image(image, 400)
    points = np.array([[500.0, 1000.0]])
    path = write_overlay(tmp_path / "o" / name, preview, points, labels=["knee"], max_size=400, image_hw=original_hw)
    with Image.open(path) as written:
        assert written.format == pillow_format and written.mode == "RGB" and written.size == (200, 400)
        pixels = np.asarray(written).astype(int)
    x, y = apply_matrix(points, resize_matrix(original_hw, (400, 200)))[0]
    assert pixels[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5].max() > 100  # the marker on a black image
    assert pixels[:20, :20].max() == 0
    assert [p.name for p in (tmp_path / "o").iterdir()] == [name]


def test_overlay_with_an_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match="overlay suffix"):
        write_overlay(tmp_path / "x.gif", np.zeros((10, 10), np.float32), np.zeros((1, 2)))
    assert list(tmp_path.iterdir()) == []


def test_overlay_is_shrunk_and_marks_the_points():
    image = np.zeros((3000, 1000), np.float32)
    image[:, 500:] = 1000.0
    points = np.array([[250.0, 1500.0], [750.0, 600.0]])
    overlay = render_overlay(image, points, max_size=600)
    assert overlay.mode == "RGB" and overlay.size == (200, 600)
    pixels = np.asarray(overlay).astype(int)
    x, y = apply_matrix(points, resize_matrix((3000, 1000), (600, 200)))[0]
    ring = pixels[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5]
    assert (ring.max(axis=-1) - ring.min(axis=-1)).max() > 100  # a coloured marker on grey
    assert (pixels[590:, 10:40] == 0).all() and (pixels[590:, 160:190] == 255).all()  # windowed grey image
