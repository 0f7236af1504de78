"""Helpers shared by the tests: writing small real image files, running bundle workflows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = [
    "write_dicom",
    "write_compressed_dicom",
    "DX_FOR_PRESENTATION",
    "BUNDLE_ROOT",
    "run_bundle",
    "SMALL",
    "tiny_checkpoint",
    "config_network",
    "blob_image",
    "centroid",
    "write_png16",
    "disc_mean",
]

BUNDLE_ROOT = Path(__file__).resolve().parents[1]

#: SOP class "Digital X-Ray Image Storage - For Presentation".
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def write_dicom(path, array, *, preamble: bool = True, transfer_syntax=ExplicitVRLittleEndian, **tags) -> str:
    """Write a single-frame greyscale DICOM file and return its path.

    Args:
        path: file to write (any name; no ``.dcm`` suffix needed).
        array: ``(H, W)`` integer pixels ``[row, column]``; uint8/uint16 are stored unsigned,
            int8/int16 signed, always with BitsAllocated 16.
        preamble: write the 128-byte preamble and ``DICM`` magic (False: a bare dataset).
        transfer_syntax: transfer syntax UID; compressed ones are encoded with pydicom's own
            encoders (e.g. ``RLELossless``).
        tags: DICOM keywords set on the dataset after the defaults, e.g.
            ``PixelSpacing=[0.2, 0.1]``, ``PhotometricInterpretation="MONOCHROME1"``,
            ``BitsStored=12``, ``RescaleSlope=2``; a value of ``None`` removes the element
            (``PixelData=None`` writes a file without pixel data).
    """
    pixels = np.asarray(array)
    if pixels.ndim != 2 or pixels.dtype.kind not in "iu":
        raise ValueError(f"write_dicom expects a 2D integer array, got {pixels.dtype} {pixels.shape}")
    signed = pixels.dtype.kind == "i"
    stored = pixels.astype(np.int16 if signed else np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = FileDataset(os.fspath(path), {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.PixelData = stored.tobytes()
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if "BitsStored" in tags and "HighBit" not in tags:
        ds.HighBit = int(ds.BitsStored) - 1
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, stored)
    ds.save_as(os.fspath(path), enforce_file_format=preamble)
    return os.fspath(path)


def write_compressed_dicom(path, array, transfer_syntax, **tags) -> str:
    """Write ``array`` (``(H, W)`` uint8 or uint16) as a DICOM file whose pixel data are encoded in
    ``transfer_syntax`` by a real codec, independent of the decoders the bundle uses: libjpeg-turbo
    (JPEG baseline, 12-bit extended, lossless process 14 SV1), CharLS (JPEG-LS) and OpenJPEG
    (JPEG 2000, reversible), all through imagecodecs; RLE by pydicom's own encoder. Lossless syntaxes
    (and reversible JPEG 2000 under either UID) keep the pixels exactly. ``tags`` as in :func:`write_dicom`.
    """
    import imagecodecs
    import pydicom
    from pydicom import uid
    from pydicom.encaps import encapsulate

    pixels = np.asarray(array)
    bits = 8 if pixels.dtype == np.uint8 else int(tags.get("BitsStored", 16))
    if transfer_syntax == uid.RLELossless:
        return write_dicom(path, pixels, transfer_syntax=uid.RLELossless, **tags)
    encoders = {
        uid.JPEGBaseline8Bit: lambda a: imagecodecs.jpeg8_encode(a, level=95),
        uid.JPEGExtended12Bit: lambda a: imagecodecs.jpeg8_encode(a, level=95, bitspersample=12),
        uid.JPEGLosslessSV1: lambda a: imagecodecs.jpeg8_encode(a, lossless=True, predictor=1, bitspersample=bits),
        uid.JPEGLSLossless: lambda a: imagecodecs.jpegls_encode(a, level=0),
        uid.JPEG2000Lossless: lambda a: imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True, bitspersample=bits),
        uid.JPEG2000: lambda a: imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True, bitspersample=bits),
    }
    frame = encoders[transfer_syntax](pixels)
    write_dicom(path, pixels, **tags)
    ds = pydicom.dcmread(path)
    if pixels.dtype == np.uint8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(os.fspath(path), enforce_file_format=True)
    return os.fspath(path)


def run_bundle(run_id: str, config_files, values: dict, launcher: list[str] | None = None, timeout: int = 300) -> str:
    """Run ``python -m monai.bundle run RUN_ID`` from the bundle root in a subprocess; return its log.

    Args:
        config_files: one config path, or a list merged left to right.
        values: overrides, passed as ``--key value`` (non-strings as JSON).
        launcher: command that starts Python, e.g. ``[torchrun, "--nproc_per_node", "2"]``.
    """
    config = config_files if isinstance(config_files, str) else (
        config_files[0] if len(config_files) == 1 else str(list(config_files)))
    cmd = (launcher or [sys.executable]) + ["-m", "monai.bundle", "run", run_id, "--config_file", config]
    cmd += ["--bundle_root", str(BUNDLE_ROOT)]
    for key, value in values.items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(BUNDLE_ROOT))
    proc = subprocess.run(cmd, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


#: overrides giving a tiny SCN on a 32x32 grid, for fast tests of the configs
SMALL = {"num_filters": 4, "network_def#sc_num_filters": 4, "spatial_size": [32, 32], "amp": False}


def config_network(config_files=("configs/train.json",), **overrides) -> torch.nn.Module:
    """The ``network_def`` that the bundle builds from ``config_files`` (merged left to right) and ``overrides``
    (e.g. the variant and filters a test trained with), so a test loads a checkpoint into the same network."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / f) for f in config_files])
    parser.update({"bundle_root": str(BUNDLE_ROOT), **overrides})
    return parser.get_parsed_content("network_def")


def tiny_checkpoint(path: Path) -> Path:
    """Save random weights of the config's ``network_def`` (with ``SMALL``) with non-trivial outputs."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = config_network(("configs/inference.json",), **SMALL)
        torch.nn.init.normal_(net.la_output.weight, std=0.05)
        torch.nn.init.normal_(net.sc_output.weight, std=0.05)
    torch.save(net.state_dict(), path)
    return path


def blob_image(hw, points, sigma):
    """Sum of unit-peak Gaussian blobs ``(H, W)`` float32 at sub-pixel points ``(N, 2)`` ``(x, y)``."""
    rows, cols = np.mgrid[: hw[0], : hw[1]]
    img = np.zeros(hw, np.float32)
    for x, y in points:
        img += np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2)).astype(np.float32)
    return img


def centroid(img, x, y, radius):
    """Intensity centroid ``(x, y)`` of ``img`` (H, W) in a window of ``radius`` px around ``(x, y)``."""
    xi, yi = int(round(x)), int(round(y))
    win = img[yi - radius : yi + radius + 1, xi - radius : xi + radius + 1]
    rows, cols = np.mgrid[yi - radius : yi + radius + 1, xi - radius : xi + radius + 1]
    return np.array([(win * cols).sum() / win.sum(), (win * rows).sum() / win.sum()])


def write_png16(path, array):
    """Save ``array`` ``(H, W)`` as a 16-bit grey PNG and return the path as str."""
    Image.fromarray(array.astype(np.uint16)).save(path)
    return str(path)


def disc_mean(image: np.ndarray, point, radius: float) -> float:
    """Mean of ``image`` (H, W) over pixels whose centres lie within ``radius`` of ``point`` (x, y)."""
    x0, y0 = max(int(point[0] - radius), 0), max(int(point[1] - radius), 0)
    x1 = min(int(point[0] + radius) + 2, image.shape[1])
    y1 = min(int(point[1] + radius) + 2, image.shape[0])
    rows, cols = np.mgrid[y0:y1, x0:x1]
    inside = (cols - point[0]) ** 2 + (rows - point[1]) ** 2 <= radius**2
    return float(image[y0:y1, x0:x1][inside].mean())


def training_values(dataset: Path, work: Path, **extra) -> dict:
    """Overrides for a few-iteration training run: ``dataset``, outputs under ``work``, validation every epoch, 2 iterations per epoch."""
    return {
        "dataset_dir": str(dataset),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "runs"),
        "val_interval": 1,
        "train#trainer#epoch_length": 2,
        **extra,
    }
