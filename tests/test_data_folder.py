"""Tests of scripts.data.folder: the folder scan, failure records instead of exceptions, the worker count."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.data.folder import FailureIsolatingDataset, failure_reason, resolve_num_workers, scan_image_folder
from tests.test_inference import make_mixed_folder


def test_scan_image_folder(tmp_path):
    make_mixed_folder(tmp_path / "in")
    scan = scan_image_folder(tmp_path / "in", exclude=[tmp_path / "in" / "a"])
    ids = [item["id"] for item in scan.items]
    assert ids == sorted(ids) and "a/x.png" not in ids and ".hidden.png" not in ids
    assert "dicom/no_suffix" in ids and "bad/empty.dcm" in ids and scan.skipped == ["readme.txt"]
    assert all(Path(item["image"]).is_absolute() for item in scan.items)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(tmp_path / "missing")


def test_resolve_num_workers():
    assert resolve_num_workers(3, 100) == 3 and resolve_num_workers("0", 100) == 0
    assert resolve_num_workers("auto", 1) == 0  # one image: nothing to overlap
    assert 1 <= resolve_num_workers("auto", 100) <= 4
    with pytest.raises(ValueError, match="num_workers must be >= 0 or 'auto', got -1"):
        resolve_num_workers(-1, 10)


def test_a_file_that_fails_becomes_a_failure_record_naming_it(tmp_path):
    from monai.data import Dataset

    from scripts.transforms import LoadLandmarkImaged

    bad = tmp_path / "cut.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    items = [{"id": "cut.png", "image": str(bad)}, {"id": "gone.png", "image": str(tmp_path / "gone.png")}]
    dataset = FailureIsolatingDataset(Dataset(items, transform=LoadLandmarkImaged(keys="image")))
    entries = [dataset[i] for i in range(len(dataset))]
    assert [e["index"] for e in entries] == [0, 1] and all("sample" not in e for e in entries)
    assert [e["failure"][0] for e in entries] == ["reading", "reading"]
    assert str(bad) in entries[0]["failure"][1] and "gone.png" in entries[1]["failure"][1]
    assert failure_reason(RuntimeError("outer")) == "RuntimeError: outer"
