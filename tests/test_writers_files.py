"""Tests of scripts.writers.files: tables and text written atomically and read back, stale temporaries, symlinks.

(``atomic_write`` and ``output_path`` themselves are exercised by tests/test_inference.py.)
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from scripts.writers.files import (
    SymlinkInOutputError,
    atomic_write,
    output_path,
    remove_stale_temporaries,
    temporary_name_pattern,
    write_csv,
    write_json,
    write_text,
)


def test_csv_columns_in_first_seen_order_and_read_back(tmp_path):
    rows = [{"id": "a", "error_px": 1.5}, {"id": "b", "name": "tip", "error_px": math.nan}]
    write_csv(tmp_path / "sub" / "t.csv", rows)
    with open(tmp_path / "sub" / "t.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == ["id", "error_px", "name"]
    assert back[0] == {"id": "a", "error_px": "1.5", "name": ""}
    assert back[1]["name"] == "tip" and back[1]["error_px"] == "nan"


def test_json_turns_nan_into_null_and_numpy_into_plain_values(tmp_path):
    write_json(tmp_path / "s.json", {"mean": np.float32(2.5), "n": np.int64(3), "bad": [math.nan, np.inf], 7: (1, 2)})
    assert json.loads((tmp_path / "s.json").read_text()) == {"mean": 2.5, "n": 3, "bad": [None, None], "7": [1, 2]}


def test_text_is_utf8_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "notes.md", "µm — ok\n")
    assert path.read_bytes() == "µm — ok\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]


def test_stale_temporaries_of_a_killed_write_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "a").mkdir()
    stale = tmp_path / "a" / ".model.pt.x1y2.tmp"
    stale.write_bytes(b"half")
    keep = [tmp_path / "model.pt", tmp_path / "a" / ".hidden", tmp_path / "a" / "x.tmp"]
    for path in keep:
        path.write_bytes(b"data")
    assert stale.match(temporary_name_pattern("model.pt"))
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert all(path.exists() for path in keep) and not stale.exists()


def test_writes_through_a_symlink_inside_the_output_folder_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    os.symlink(outside, out / "overlays" / "a")
    with pytest.raises(SymlinkInOutputError, match="symbolic link"):
        output_path(out, "overlays", "a/img.png", ".png")
    assert output_path(out, "overlays", "b/img.png", ".png") == out / "overlays" / "b" / "img.png.png"
    atomic_write(out / "overlays" / "b" / "x.txt", lambda tmp: open(tmp, "w").write("x"))
    assert list(outside.iterdir()) == []


def test_output_path_is_injective_and_stays_inside(tmp_path):
    names = ["x.png", "x.jpg", "a/x.png", "a__x.png", "a/b/img.dcm", "img"]
    paths = [output_path(tmp_path, "overlays", n, ".png") for n in names]
    assert len(set(paths)) == len(names)
    assert paths[4] == tmp_path / "overlays" / "a" / "b" / "img.dcm.png"
    for bad in ("../x.png", "/etc/passwd", "a/../../x.png", ""):
        with pytest.raises(ValueError):
            output_path(tmp_path, "overlays", bad, ".png")
    with pytest.raises(ValueError):
        output_path(tmp_path, "../elsewhere", "x.png", ".png")


def test_atomic_write_leaves_old_file_or_nothing(tmp_path):
    target = tmp_path / "result.json"

    def failing(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert list(tmp_path.iterdir()) == []
    atomic_write(target, lambda tmp: Path(tmp).write_text("complete"))
    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_text() == "complete" and list(tmp_path.iterdir()) == [target]
