"""Tests of scripts.writers.landmarks: per-image JSON written and read back, the table of failed files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from scripts.writers.landmarks import (
    COORDINATE_CONVENTION,
    LandmarkCsvWriter,
    LandmarkResult,
    landmark_csv_header,
    landmark_result_from_document,
    write_error_csv,
    write_landmarks_json,
)


def _result(**changes) -> LandmarkResult:
    values = dict(
        image="sub/leg.dcm", image_hw=(40, 30), points_px=[[1.23456, 2.5], [math.nan, math.nan]], confidence=[0.875, 0.0],
        spacing=(0.2, 0.4), spacing_source="PixelSpacing", points_mm=[[0.246912, 1.0], [math.nan, math.nan]],
        status="low_confidence", status_reasons=("landmark 1 not found",),
    )
    return LandmarkResult(**{**values, **changes})


def test_json_round_trip_keeps_values_to_four_decimals_and_nan_as_null(tmp_path):
    path = write_landmarks_json(tmp_path / "a" / "leg.json", _result(), ["hip", "knee"], extra={"provenance": {"x": 1}})
    document = json.loads(path.read_text())
    assert document["coordinate_convention"] == COORDINATE_CONVENTION and document["provenance"] == {"x": 1}
    assert document["image_size"] == {"width": 30, "height": 40}
    first, missing = document["landmarks"]
    assert first == {"index": 0, "name": "hip", "x": 1.2346, "y": 2.5, "x_mm": 0.2469, "y_mm": 1.0, "confidence": 0.875}
    assert missing["x"] is None and missing["x_mm"] is None
    back = landmark_result_from_document(document)
    np.testing.assert_allclose(back.points_px, [[1.2346, 2.5], [np.nan, np.nan]])
    assert back.spacing == (0.2, 0.4) and back.status == "low_confidence" and back.status_reasons == ("landmark 1 not found",)


def test_results_without_spacing_and_bad_results(tmp_path):
    path = write_landmarks_json(tmp_path / "b.json", _result(spacing=None, spacing_source="unknown"))
    document = json.loads(path.read_text())
    assert document["spacing_mm_per_px"] is None
    assert [m["name"] for m in document["landmarks"]] == ["landmark_00", "landmark_01"]
    with pytest.raises(ValueError, match="status 'maybe'"):
        _result(status="maybe")
    with pytest.raises(ValueError, match="2 points but 1 confidences"):
        _result(confidence=[0.5])
    with pytest.raises(ValueError, match="not unique"):
        write_landmarks_json(tmp_path / "c.json", _result(), ["hip", "hip"])
    assert not (tmp_path / "c.json").exists()


def test_error_table_has_its_header_even_when_empty(tmp_path):
    write_error_csv(tmp_path / "errors.csv", [])
    write_error_csv(tmp_path / "errors2.csv", [{"image": "x.png", "status": "failed", "stage": "read", "reason": "truncated"}])
    with open(tmp_path / "errors.csv", newline="") as f:
        assert list(csv.reader(f)) == [["image", "status", "stage", "reason"]]
    with open(tmp_path / "errors2.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{"image": "x.png", "status": "failed", "stage": "read", "reason": "truncated"}]


def test_landmark_csv_writer_rows_and_interruption(tmp_path):
    names = ["tip", "base"]
    result = LandmarkResult(
        image="a/b.dcm", image_hw=(10, 20), points_px=[[1.25, 2.5], [np.nan, np.nan]], confidence=[0.9, 0.0],
        spacing=(0.5, 0.25), spacing_source="PixelSpacing", points_mm=[[0.625, 0.625], [np.nan, np.nan]],
    )
    path = tmp_path / "landmarks.csv"
    with pytest.raises(KeyboardInterrupt):
        with LandmarkCsvWriter(path, names) as writer:
            writer.write(result)
            assert not path.exists()  # rows go to a temporary file until the table is closed
            raise KeyboardInterrupt
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == landmark_csv_header(names)
    assert rows[0]["tip_x"] == "1.25" and rows[0]["tip_y_mm"] == "0.625" and rows[0]["base_x"] == ""
    assert rows[0]["width"] == "20" and rows[0]["height"] == "10" and rows[0]["spacing_x_mm"] == "0.5"
    assert [p.name for p in tmp_path.iterdir()] == ["landmarks.csv"]
