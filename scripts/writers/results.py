"""Every output of folder inference for one image, and the folder-level tables, under one output folder.

For an input ``a/b/img.dcm`` below the input folder, :class:`LandmarkResultWriter` writes below ``OUT``:
``landmarks/a/b/img.dcm.json``, ``overlays/a/b/img.dcm.jpg`` (or ``.png``), ``labels/a/b/img.dcm.png`` (or ``.nii.gz``),
``markups/a/b/img.dcm.mrk.json`` (3D Slicer) and, for DICOM inputs, ``sr/a/b/img.dcm.sr.dcm``; at the end
of a run ``landmarks.csv`` (rebuilt from this run's JSON files) and ``errors.csv``. Every file is written
atomically (:func:`scripts.writers.files.atomic_write`); nothing is written through a symbolic link
inside ``OUT``. Points follow :mod:`scripts.coords` (original pixels, ``(x, y)``, NaN = missing).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from scripts.data.image_reader import read_image
from scripts.keys import LandmarkKeys
from scripts.provenance import PROVENANCE_COLUMNS, provenance_cells
from scripts.utils import as_bool
from scripts.writers.dicom_sr import is_dicom, require_highdicom, write_landmark_sr
from scripts.writers.files import output_path, remove_stale_temporaries
from scripts.writers.images import OVERLAY_FORMATS, write_overlay
from scripts.writers.label_image import write_label_image
from scripts.writers.landmarks import (
    LandmarkCsvWriter,
    LandmarkResult,
    landmark_result_from_document,
    write_error_csv,
    write_landmarks_json,
)
from scripts.writers.slicer_markups import image_frame, write_markups_json

__all__ = ["LandmarkResultWriter"]

PathLike = str | os.PathLike


class LandmarkResultWriter:
    """Writes the outputs of one image (:meth:`write`) and, at the end of a run, the folder tables (:meth:`finish`).

    Args:
        output_dir: the output folder ``OUT``.
        landmark_names: the ``N`` names used in the CSV and JSON (default ``landmark_00`` ...).
        label_format: ``"png"`` or ``"nii.gz"`` (or ``"nii"``).
        overlay_max_size: longest side of the overlay, pixels.
        overlay_format: ``"jpg"`` (JPEG quality 90) or ``"png"`` (lossless, about 10 times slower to write).
        write_overlays, write_labels, write_markups, write_sr: switch these outputs on or off (the SR is
            written for DICOM inputs only and needs ``highdicom``).
        measurements: callable ``(points_px (N, 2), spacing or None) -> dict`` with ``columns()`` and
            ``row(dict)`` (e.g. :class:`scripts.measurements.LowerLimbMeasurements`), or ``None``.
        provenance: the run's :func:`scripts.provenance.provenance_record`, added to every output.
        preview_key: sample key of the shrunk image the overlay is drawn from, so each file is decoded
            once; without it the file is read again for the overlay.
    """

    def __init__(
        self,
        output_dir: PathLike,
        landmark_names: Sequence[str] | None = None,
        label_format: str = "png",
        overlay_max_size: int = 1024,
        overlay_format: str = "jpg",
        write_overlays: bool = True,
        write_labels: bool = True,
        write_markups: bool = True,
        write_sr: bool = True,
        measurements: Callable | None = None,
        provenance: Mapping | None = None,
        preview_key: str | None = LandmarkKeys.IMAGE_PREVIEW.value,
    ) -> None:
        if label_format not in ("png", "nii", "nii.gz"):
            raise ValueError(f"label_format must be 'png', 'nii' or 'nii.gz', got {label_format!r}.")
        self.output_dir = Path(output_dir).expanduser().absolute()
        self.landmark_names = None if landmark_names is None else [str(n) for n in landmark_names]
        self.label_suffix = "." + label_format
        if overlay_format not in OVERLAY_FORMATS:
            raise ValueError(f"overlay_format must be one of {sorted(OVERLAY_FORMATS)}, got {overlay_format!r}.")
        self.overlay_max_size = int(overlay_max_size)
        self.overlay_suffix = "." + overlay_format
        # a command line gives the strings 'true'/'false'
        self.write_overlays, self.write_labels = as_bool(write_overlays), as_bool(write_labels)
        self.write_markups, self.write_sr = as_bool(write_markups), as_bool(write_sr)
        self.measurements = measurements
        self.provenance = dict(provenance or {})
        self.preview_key = preview_key

    def check(self, sources: Sequence[str]) -> None:
        """Raise before anything is written when an output cannot be produced (the SR without ``highdicom``)."""
        if self.write_sr and any(is_dicom(source) for source in sources):
            require_highdicom()

    def paths(self, image_id: str, source: str) -> dict[str, Path]:
        """The output files of one image: ``{"json", "overlay", "label", "markups", "sr"}`` (those switched on)."""
        paths = {"json": output_path(self.output_dir, "landmarks", image_id, ".json")}
        if self.write_overlays:
            paths["overlay"] = output_path(self.output_dir, "overlays", image_id, self.overlay_suffix)
        if self.write_labels:
            paths["label"] = output_path(self.output_dir, "labels", image_id, self.label_suffix)
        if self.write_markups:
            paths["markups"] = output_path(self.output_dir, "markups", image_id, ".mrk.json")
        if self.write_sr and is_dicom(source):
            paths["sr"] = output_path(self.output_dir, "sr", image_id, ".sr.dcm")
        return paths

    def remove(self, image_id: str, source: str) -> None:
        """Remove the outputs of one image (a failed image keeps no result of an earlier run)."""
        with contextlib.suppress(Exception):
            # the overlay in every format: an earlier run may have written the other one
            paths = [path for key, path in self.paths(image_id, source).items() if key != "overlay"]
            paths += [output_path(self.output_dir, "overlays", image_id, "." + fmt) for fmt in OVERLAY_FORMATS]
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _extra(self, result: LandmarkResult) -> dict:
        """Provenance (with the image's spacing source) and measurements of one image, for every output."""
        extra = {"provenance": {**self.provenance, "spacing_source": result.spacing_source}}
        if self.measurements is not None:
            extra["measurements"] = self.measurements(result.points_px, result.spacing)
        return extra

    def write(self, result: LandmarkResult, sample: Mapping, source: str) -> None:
        """Write every output of one image.

        Args:
            result: the image's landmarks (original pixels, mm, confidence, status).
            sample: the post-processed sample: the preview under ``preview_key`` and, for the label
                image, ``pred`` = the label image indexed ``[x, y]``
                (:class:`scripts.transforms.LandmarkLabelOutputd`).
            source: the input file.
        """
        paths, extra, names = self.paths(result.image, source), self._extra(result), self.landmark_names
        if "overlay" in paths:
            preview = sample.get(self.preview_key) if self.preview_key else None
            if preview is None:  # the preprocessing kept no shrunk copy: decode the file again
                preview = read_image(source).array
                if preview.shape != result.image_hw:
                    raise ValueError(f"{source}: read as {preview.shape}, preprocessed as {result.image_hw}.")
            labels = [str(k) for k in range(result.num_landmarks)]
            write_overlay(paths["overlay"], np.asarray(preview), result.points_px, labels, self.overlay_max_size,
                          image_hw=result.image_hw)
        if "label" in paths:
            label_xy = sample[LandmarkKeys.PRED]
            label = np.asarray(label_xy).T
            if label.shape != result.image_hw:
                raise ValueError(
                    f"{source}: postprocessing gave 'pred' of shape {np.shape(label_xy)}, not the (W, H) label image "
                    f"{result.image_hw[::-1]} of LandmarkLabelOutputd."
                )
            write_label_image(paths["label"], label, result.spacing)
        write_landmarks_json(paths["json"], result, names, extra)
        names = names or [f"landmark_{k:02d}" for k in range(result.num_landmarks)]
        if "markups" in paths:
            write_markups_json(paths["markups"], result, names, image_frame(source), extra["provenance"])
        if "sr" in paths:
            write_landmark_sr(paths["sr"], source, result, names, extra["provenance"], extra.get("measurements"))

    def start(self) -> None:
        """Clear what a killed run may have left: hidden temporary files below OUT, and the folder tables
        (written again, complete, by :meth:`finish`)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.output_dir)
        for name in ("landmarks.csv", "errors.csv"):
            with contextlib.suppress(FileNotFoundError):
                (self.output_dir / name).unlink()

    def _csv_columns(self) -> list[str]:
        columns = list(PROVENANCE_COLUMNS)
        return columns + (list(self.measurements.columns()) if self.measurements is not None else [])

    def _csv_cells(self, document: dict) -> dict:
        cells = provenance_cells(document["provenance"])
        if "measurements" in document:
            cells.update(self.measurements.row(document["measurements"]))
        return cells

    def finish(self, succeeded: Sequence[str], errors: Sequence[dict]) -> None:
        """Write ``landmarks.csv`` from the JSON files of the ``succeeded`` image ids, and ``errors.csv``."""
        names, csv_writer = self.landmark_names, None
        for image_id in succeeded:
            document = json.loads(output_path(self.output_dir, "landmarks", image_id, ".json").read_text(encoding="utf-8"))
            result = landmark_result_from_document(document)
            if csv_writer is None:
                names = names or [str(m["name"]) for m in document["landmarks"]]
                csv_writer = LandmarkCsvWriter(self.output_dir / "landmarks.csv", names, self._csv_columns())
            csv_writer.write(result, self._csv_cells(document))
        (csv_writer or LandmarkCsvWriter(self.output_dir / "landmarks.csv", names or [], self._csv_columns())).close()
        write_error_csv(self.output_dir / "errors.csv", list(errors))
