"""Provenance of a result: which model, bundle version and preprocessing made it, and where its mm come from.

Every output of folder inference (JSON, CSV, 3D Slicer markups, DICOM SR) and the MLflow runs carry
the same record, :func:`provenance_record`:

* ``model_file``: the weights that ran (checkpoint, or TorchScript file), its ``model_sha256``
  (hex SHA-256 of the file's bytes; ``null`` for random weights);
* ``bundle_version``: ``version`` of ``configs/metadata.json``;
* ``preprocessing_grid``: the network input grid ``[H', W']`` pixels and whether the aspect ratio
  was kept (letterboxing, :func:`scripts.coords.resize_matrix`);
* per image, ``spacing_source``: where ``(sx, sy)`` came from: ``PixelSpacing``,
  ``ImagerPixelSpacing``, ``NominalScannedPixelSpacing`` (DICOM), ``header`` (NIfTI/MHA/NRRD),
  ``csv`` (``splits.csv``) or ``unknown`` (no spacing: pixel units only).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["file_sha256", "bundle_version", "provenance_record", "PROVENANCE_COLUMNS", "provenance_cells"]

PathLike = str | os.PathLike

_CHUNK = 1 << 20


def file_sha256(path: PathLike | None) -> str | None:
    """Hex SHA-256 of the bytes of ``path``, read in 1 MiB chunks; ``None`` if ``path`` is ``None`` or no file."""
    if path is None or not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_version(metadata_file: PathLike) -> str:
    """``version`` of the bundle's ``configs/metadata.json``.

    Raises:
        FileNotFoundError, ValueError: no such file, or no ``version`` in it (message names the file).
    """
    path = Path(metadata_file)
    if not path.is_file():
        raise FileNotFoundError(f"bundle metadata {path} not found.")
    version = json.loads(path.read_text(encoding="utf-8")).get("version")
    if not isinstance(version, str) or not version:
        raise ValueError(f"bundle metadata {path} has no 'version' string.")
    return version


def provenance_record(
    model_file: PathLike | None,
    metadata_file: PathLike,
    spatial_size: Sequence[int],
    keep_aspect: bool,
    model_sha256: str | None = None,
) -> dict:
    """The run-wide part of the provenance of every output (JSON-serialisable).

    Args:
        model_file: the weights that ran; ``None`` (or a path with no file) for untrained weights
            (smoke tests): ``model_file`` and ``model_sha256`` are then ``null``.
        metadata_file: the bundle's ``configs/metadata.json``.
        spatial_size: network input grid ``(H', W')`` pixels.
        keep_aspect: whether the preprocessing kept the aspect ratio (letterboxing).
        model_sha256: the file's hash if already known (else computed from ``model_file``).

    Returns:
        ``{"model_file", "model_sha256", "bundle_version", "preprocessing_grid": {"height", "width",
        "keep_aspect"}}``; the per-image ``spacing_source`` is added by the writers.
    """
    height, width = (int(v) for v in spatial_size)
    if model_file is not None and not os.path.isfile(model_file):
        model_file = None
    return {
        "model_file": None if model_file is None else os.path.basename(os.fspath(model_file)),
        "model_sha256": model_sha256 if model_sha256 is not None else file_sha256(model_file),
        "bundle_version": bundle_version(metadata_file),
        "preprocessing_grid": {"height": height, "width": width, "keep_aspect": bool(keep_aspect)},
    }


#: CSV columns of :func:`provenance_cells` (``spacing_source`` is a column of its own already).
PROVENANCE_COLUMNS = ["model_file", "model_sha256", "bundle_version", "preprocessing_grid"]


def provenance_cells(record: dict) -> dict[str, str | None]:
    """The :data:`PROVENANCE_COLUMNS` cells of a :func:`provenance_record`; the grid as ``"HxW"``
    (``"HxW letterboxed"`` when the aspect ratio was kept)."""
    grid = record.get("preprocessing_grid") or {}
    text = None
    if grid:
        text = f"{grid['height']}x{grid['width']}" + (" letterboxed" if grid.get("keep_aspect") else "")
    return {
        "model_file": record.get("model_file"),
        "model_sha256": record.get("model_sha256"),
        "bundle_version": record.get("bundle_version"),
        "preprocessing_grid": text,
    }
