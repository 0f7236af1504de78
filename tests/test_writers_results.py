"""Tests of scripts.writers.results: every output of one image written and read back, the folder tables rebuilt."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from scripts.writers.landmarks import LandmarkResult
from scripts.writers.results import LandmarkResultWriter


def _result(image_id: str) -> LandmarkResult:
    return LandmarkResult(
        image=image_id, image_hw=(40, 30), points_px=np.array([[3.0, 4.5], [np.nan, np.nan]]),
        confidence=np.array([0.9, 0.0]), spacing=(0.5, 0.25), spacing_source="PixelSpacing",
        points_mm=np.array([[1.5, 1.125], [np.nan, np.nan]]),
    )


def test_one_image_then_the_tables(tmp_path):
    source = tmp_path / "in" / "a" / "img.png"
    writer = LandmarkResultWriter(tmp_path / "out", ["tip", "base"], provenance={"model": "test"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "landmarks.csv").write_text("stale")
    writer.start()
    assert not (tmp_path / "out" / "landmarks.csv").exists()
    label_xy = np.zeros((30, 40), np.uint8)  # LandmarkLabelOutputd's [x, y] label image
    label_xy[3, 4] = 1
    sample = {"image_preview": np.arange(1200, dtype=np.float32).reshape(40, 30), "pred": label_xy}
    writer.write(_result("a/img.png"), sample, str(source))
    paths = writer.paths("a/img.png", str(source))
    assert set(paths) == {"json", "overlay", "label", "markups"}  # no SR for a PNG
    assert all(p.is_file() for p in paths.values())
    assert paths["overlay"].name == "img.png.jpg" and Image.open(paths["overlay"]).format == "JPEG"
    document = json.loads(paths["json"].read_text())
    assert document["provenance"]["model"] == "test" and document["landmarks"][0]["name"] == "tip"
    assert Image.open(paths["label"]).size == (30, 40) and np.asarray(Image.open(paths["label"]))[4, 3] == 1
    writer.finish(["a/img.png"], [{"image": "b.png", "status": "failed", "stage": "reading", "reason": "broken"}])
    with open(tmp_path / "out" / "landmarks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["tip_x"]) == 3.0 and rows[0]["base_x"] == ""
    assert "broken" in (tmp_path / "out" / "errors.csv").read_text()
    writer.remove("a/img.png", str(source))
    assert not any(p.exists() for p in paths.values())


def test_png_overlays_and_a_failed_image_loses_the_overlay_of_either_format(tmp_path):
    source = str(tmp_path / "img.png")
    sample = {"image_preview": np.arange(1200, dtype=np.float32).reshape(40, 30), "pred": np.zeros((30, 40), np.uint8)}
    LandmarkResultWriter(tmp_path / "out", write_labels=False).write(_result("img.png"), sample, source)
    writer = LandmarkResultWriter(tmp_path / "out", overlay_format="png", write_labels=False)
    writer.write(_result("img.png"), sample, source)
    overlays = tmp_path / "out" / "overlays"
    assert sorted(p.name for p in overlays.iterdir()) == ["img.png.jpg", "img.png.png"]
    assert Image.open(overlays / "img.png.png").format == "PNG"
    writer.remove("img.png", source)
    assert list(overlays.iterdir()) == []
    with pytest.raises(ValueError, match="overlay_format"):
        LandmarkResultWriter(tmp_path, overlay_format="gif")


def test_switched_off_outputs_and_bad_label_format(tmp_path):
    writer = LandmarkResultWriter(tmp_path, write_overlays=False, write_labels=False, write_markups=False)
    assert set(writer.paths("x.dcm", str(tmp_path / "x.png"))) == {"json"}
    with pytest.raises(ValueError, match="label_format"):
        LandmarkResultWriter(tmp_path, label_format="jpg")
