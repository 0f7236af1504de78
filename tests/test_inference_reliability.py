"""Folder inference as a careful user breaks it: symlinks in OUT, umask, exit codes, kill and rerun,
trust flags, named errors, one decoding per image (scripts.inference.FolderInference, configs/inference.json)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.encaps import encapsulate

import scripts.inference
import scripts.writers.results
import scripts.transforms.io
from scripts.inference import FolderInferenceError
from scripts.writers import output_path
from tests.helpers import tiny_checkpoint, write_dicom
from tests.test_inference import FixedPeakNet, radiograph, read_csv, workflow

ROOT = Path(__file__).resolve().parents[1]
NUM_LANDMARKS = 37


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _cli(inp: Path, out: Path, ckpt: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--bundle_root", ".",
        "--dataset_dir", str(inp), "--output_dir", str(out), "--ckpt_path", str(ckpt), "--num_filters", "4",
        "--network_def#sc_num_filters", "4", "--spatial_size", "[32, 32]", "--amp", "false", *extra,
    ]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _child_pids(pid: int) -> list[int]:
    """The children of process ``pid`` (Linux ``/proc``), started by any of its threads."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def _alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still run (not gone, not a zombie waiting to be reaped)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def _pngs(folder: Path, count: int, hw=(48, 40)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(count):
        Image.fromarray(radiograph(hw, np.uint8, seed=k)).save(folder / f"img{k:02d}.png")
        names.append(f"img{k:02d}.png")
    return names


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_symlinks_inside_the_output_folder_are_refused(tmp_path, checkpoint):
    inp, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    _pngs(inp, 2)
    elsewhere.mkdir()
    (elsewhere / "precious.json").write_text("keep me\n")
    out.mkdir()
    (out / "overlays").symlink_to(elsewhere, target_is_directory=True)  # a folder link
    (out / "landmarks").mkdir()
    (out / "landmarks" / "img00.png.json").symlink_to(elsewhere / "precious.json")  # a file link
    with pytest.raises(FolderInferenceError, match="no image"):
        workflow(inp, out, ckpt_path=str(checkpoint)).evaluator.run()
    assert _files(elsewhere) == {"precious.json": hashlib.sha256(b"keep me\n").hexdigest()}
    errors = read_csv(out / "errors.csv")
    assert [r["image"] for r in errors] == ["img00.png", "img01.png"]
    assert all("symbolic link" in r["reason"] and "refusing to write through it" in r["reason"] for r in errors)
    assert read_csv(out / "landmarks.csv") == []


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o027, 0o640, 0o750), (0o002, 0o664, 0o775)])
def test_outputs_honour_the_umask(tmp_path, checkpoint, umask, file_mode, dir_mode):
    inp, out = tmp_path / "in", tmp_path / "out"
    _pngs(inp, 1)
    old = os.umask(umask)
    try:
        workflow(inp, out, ckpt_path=str(checkpoint)).evaluator.run()
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 6  # landmarks.csv, errors.csv, JSON, overlay, label, Slicer markups
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(file_mode)}
    assert {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_dir()} == {oct(dir_mode)}


def test_exit_code_when_no_file_succeeds_and_with_strict(tmp_path, checkpoint):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "notes.png").write_text("not an image\n")
    proc = subprocess.run(_cli(bad, tmp_path / "out_bad", checkpoint), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "0 succeeded, 2 failed" in proc.stdout and "FolderInferenceError" in proc.stderr
    assert "no image of" in proc.stderr and len(read_csv(tmp_path / "out_bad" / "errors.csv")) == 2

    mixed = tmp_path / "mixed"
    _pngs(mixed, 1)
    (mixed / "empty.dcm").write_bytes(b"")
    proc = subprocess.run(_cli(mixed, tmp_path / "out_mixed", checkpoint, "--strict", "true"), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "1 of 2 images failed (strict)" in proc.stderr, proc.stderr[-2000:]
    assert [r["image"] for r in read_csv(tmp_path / "out_mixed" / "landmarks.csv")] == ["img00.png"]


def _fresh_json(folder: Path, since_ns: int) -> list[Path]:
    """The finished JSON files in ``folder`` written after ``since_ns`` (hidden temporary files, which
    a running writer may rename at any moment, are not results)."""
    fresh = []
    for p in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if not p.name.startswith(".") and p.stat().st_mtime_ns > since_ns:
                fresh.append(p)
    return fresh


def test_kill_during_a_run_then_rerun_gives_consistent_outputs(tmp_path, checkpoint):
    """A run into an OUT of an earlier run with other weights is killed (SIGKILL) half-way: none of its worker or
    writer processes lives on, no stale landmarks.csv is left beside the new JSON files; the rerun's outputs equal
    those of a clean run."""
    inp = tmp_path / "in"
    names = _pngs(inp, 30, hw=(96, 80))
    other = tmp_path / "other.pt"
    state = torch.load(checkpoint, weights_only=True)
    torch.manual_seed(1)
    torch.save({k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}, other)
    out, clean = tmp_path / "out", tmp_path / "clean"
    workflow(inp, out, ckpt_path=str(other)).evaluator.run()
    assert len(read_csv(out / "landmarks.csv")) == 30

    start = time.time_ns()
    proc = subprocess.Popen(_cli(inp, out, checkpoint), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            fresh = _fresh_json(out / "landmarks", start)
            if len(fresh) >= 3:
                break
            time.sleep(0.005)
        children = _child_pids(proc.pid)  # its DataLoader workers and writer processes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert children, "the run had started no worker or writer process"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(children):
        time.sleep(0.1)
    assert not _alive(children), f"processes of the killed run live on: {_alive(children)}"
    fresh = _fresh_json(out / "landmarks", start)
    assert 3 <= len(fresh) < 30, "the kill did not come half-way through the run"
    assert not (out / "landmarks.csv").exists()  # the earlier run's table is not left beside new JSON

    workflow(inp, out, ckpt_path=str(checkpoint)).evaluator.run()  # the rerun
    workflow(inp, clean, ckpt_path=str(checkpoint)).evaluator.run()
    assert _files(out) == _files(clean)  # nothing of the killed run or the older one is left
    rows = {r["image"]: r for r in read_csv(out / "landmarks.csv")}
    assert sorted(rows) == names
    for name in names:  # the table is the JSON files'
        document = json.loads(output_path(out, "landmarks", name, ".json").read_text())
        for k, mark in enumerate(document["landmarks"]):
            assert float(rows[name][f"landmark_{k:02d}_x"]) == mark["x"] and rows[name]["status"] == document["status"]


def test_trust_flags_and_named_errors_in_a_folder(tmp_path, monkeypatch):
    """A DX radiograph is ok; a constant image, a CT slice and an absurd spacing are flagged in JSON and
    CSV; a JPEG-LS file with a broken stream, a truncated PNG and a broken link get named errors."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    write_dicom(inp / "dx.dcm", radiograph((64, 48)), PixelSpacing=[0.15, 0.15])
    write_dicom(inp / "ct.dcm", radiograph((64, 64)), Modality="CT", RescaleIntercept=-1024, PixelSpacing=[0.7, 0.7])
    write_dicom(inp / "absurd.dcm", radiograph((64, 48)), PixelSpacing=[1e30, 1e30])
    Image.fromarray(np.full((60, 50), 128, np.uint8)).save(inp / "constant.png")
    Image.fromarray(radiograph((60, 50), np.uint8)).save(inp / "cut.png")
    (inp / "cut.png").write_bytes((inp / "cut.png").read_bytes()[:300])
    import pydicom

    write_dicom(inp / "jpegls.dcm", radiograph((64, 48)))
    ds = pydicom.dcmread(inp / "jpegls.dcm")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 broken JPEG-LS stream \xff\xd9"])
    ds.save_as(inp / "jpegls.dcm")
    (inp / "gone.dcm").symlink_to(tmp_path / "deleted.dcm")

    decodes = []
    read = scripts.transforms.io.read_image
    monkeypatch.setattr(scripts.transforms.io, "read_image", lambda path: decodes.append(path) or read(path))
    monkeypatch.setattr(scripts.writers.results, "read_image", lambda path: decodes.append(path) or read(path))

    points_net = np.array([[8.0 + (k % 6) * 3, 6.0 + (k // 6) * 3] for k in range(NUM_LANDMARKS)])
    # read in this process (num_workers 0), so that the decodes are counted
    wf = workflow(inp, out, allow_random_weights=True, num_workers=0)
    wf.evaluator.network = FixedPeakNet(points_net)  # peaks of height 100 at integer points: confidence 1
    summary = wf.evaluator.run()
    assert sorted(summary["succeeded"]) == ["absurd.dcm", "constant.png", "ct.dcm", "dx.dcm"]
    assert len(decodes) == 7  # each file decoded once (the overlays come from the copy kept at load time)

    documents = {name: json.loads(output_path(out, "landmarks", name, ".json").read_text()) for name in summary["succeeded"]}
    rows = {r["image"]: r for r in read_csv(out / "landmarks.csv")}
    expected = {"dx.dcm": "ok", "ct.dcm": "out_of_distribution", "absurd.dcm": "out_of_distribution",
                "constant.png": "out_of_distribution"}
    for name, status in expected.items():
        assert documents[name]["status"] == rows[name]["status"] == status
        assert rows[name]["status_reason"] == "; ".join(documents[name]["status_reasons"])
    assert documents["dx.dcm"]["status_reasons"] == [] and documents["dx.dcm"]["landmarks"][0]["x_mm"] is not None
    assert "modality CT" in rows["ct.dcm"]["status_reason"]
    assert rows["constant.png"]["status_reason"] == "constant image (every pixel is 128)"
    assert "outside the plausible 0.01-5 mm/px" in rows["absurd.dcm"]["status_reason"]
    assert documents["absurd.dcm"]["spacing_mm_per_px"] is None and rows["absurd.dcm"]["landmark_00_x_mm"] == ""
    assert all(m["x_mm"] is None for m in documents["absurd.dcm"]["landmarks"])

    errors = {r["image"]: r for r in read_csv(out / "errors.csv")}
    assert set(errors) == {"cut.png", "jpegls.dcm", "gone.dcm"}
    assert {r["stage"] for r in errors.values()} == {"reading"}
    assert "ImageReadError" in errors["jpegls.dcm"]["reason"] and "JPEG-LS" in errors["jpegls.dcm"]["reason"]
    assert "pylibjpeg" in errors["jpegls.dcm"]["reason"]  # the bundle's hint, not only the library's words
    assert "PNG file is truncated" in errors["cut.png"]["reason"]
    assert "broken symbolic link" in errors["gone.dcm"]["reason"]
    overlay = Image.open(output_path(out, "overlays", "dx.dcm", ".jpg"))
    assert overlay.size == (48, 64) and overlay.mode == "RGB"
