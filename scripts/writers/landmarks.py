"""Predicted landmarks as files: one JSON per image, one CSV row per image, the table of failed files.

Coordinates follow :mod:`scripts.coords`: ``(x, y)`` = (column, row) in pixels of the *original*
image (the file as read by :func:`scripts.data.image_reader.read_image`), the integer ``k`` is the centre of pixel
``k``; millimetres are ``x_mm = x * sx``, ``y_mm = y * sy`` with the spacing ``(sx, sy)`` mm/px of the
file header, measured from the centre of the top-left pixel. A value that is not known (no spacing,
a missing landmark) is ``null`` in JSON and an empty cell in CSV, never 0. Files are written with
:func:`scripts.writers.files.atomic_write`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.writers.files import PathLike, atomic_write, write_text

__all__ = [
    "COORDINATE_CONVENTION",
    "STATUSES",
    "LandmarkResult",
    "landmarks_document",
    "landmark_result_from_document",
    "write_landmarks_json",
    "landmark_csv_header",
    "landmark_csv_row",
    "LandmarkCsvWriter",
    "write_error_csv",
]

COORDINATE_CONVENTION = (
    "x = column, y = row, in pixels of the original image, the integer k is the centre of pixel k "
    "(the image spans -0.5 .. W - 0.5); x_mm = x * sx, y_mm = y * sy with the header spacing (sx, sy) "
    "in mm per pixel, measured from the centre of the top-left pixel; null = unknown"
)

_DECIMALS = 4

#: Per-image trust flags, from most to least trusted (see :mod:`scripts.trust`).
STATUSES = ("ok", "low_confidence", "out_of_distribution")


@dataclass
class LandmarkResult:
    """The landmarks predicted for one image.

    Attributes:
        image: the input's path relative to the input folder (POSIX separators).
        image_hw: ``(H, W)`` of the original image, pixels.
        points_px: ``(N, 2)`` ``(x, y)`` original pixels; NaN rows for landmarks not found.
        confidence: ``(N,)`` in ``[0, 1]`` (decoded heatmap peak / its target height).
        spacing: ``(sx, sy)`` mm/px, or ``None`` if unknown.
        spacing_source: header field the spacing came from (e.g. ``"PixelSpacing"``), ``"unknown"``.
        points_mm: ``(N, 2)`` ``(x, y)`` in mm (``points_px * spacing``), NaN without spacing.
        status: how far to trust the result, one of :data:`STATUSES` (see :mod:`scripts.trust`).
        status_reasons: why the status is not ``"ok"`` (empty when it is).
    """

    image: str
    image_hw: tuple[int, int]
    points_px: np.ndarray
    confidence: np.ndarray
    spacing: tuple[float, float] | None
    spacing_source: str
    points_mm: np.ndarray
    status: str = "ok"
    status_reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.points_px = np.asarray(self.points_px, dtype=np.float64).reshape(-1, 2)
        n = len(self.points_px)
        self.confidence = np.asarray(self.confidence, dtype=np.float64).reshape(-1)
        self.points_mm = np.asarray(self.points_mm, dtype=np.float64).reshape(-1, 2)
        if len(self.confidence) != n or len(self.points_mm) != n:
            raise ValueError(
                f"{self.image}: {n} points but {len(self.confidence)} confidences and {len(self.points_mm)} mm points."
            )
        self.image_hw = (int(self.image_hw[0]), int(self.image_hw[1]))
        if self.status not in STATUSES:
            raise ValueError(f"{self.image}: status {self.status!r} is not one of {STATUSES}.")
        self.status_reasons = tuple(str(r) for r in self.status_reasons)

    @property
    def num_landmarks(self) -> int:
        return len(self.points_px)


def _number(value) -> float | None:
    """A finite value rounded to ``_DECIMALS`` decimals, ``None`` otherwise."""
    value = float(value)
    return round(value, _DECIMALS) if math.isfinite(value) else None


def _landmark_names(names: Sequence[str] | None, n: int) -> list[str]:
    if names is None:
        return [f"landmark_{k:02d}" for k in range(n)]
    names = [str(name) for name in names]
    if len(names) != n:
        raise ValueError(f"{len(names)} landmark names for {n} landmarks.")
    if len(set(names)) != n:
        raise ValueError(f"landmark names are not unique: {names}.")
    return names



def landmarks_document(result: LandmarkResult, landmark_names: Sequence[str] | None = None) -> dict:
    """One image's landmarks as a JSON-serialisable dictionary (no NaN: unknown values are ``None``).

    Content: ``image`` (relative input path), ``image_size`` ``{"width", "height"}`` px,
    ``spacing_mm_per_px`` ``{"x", "y"}`` or ``null``, ``spacing_source``, ``coordinate_convention`` and
    ``landmarks``: one object per landmark with ``index``, ``name``, ``x``, ``y`` (original px),
    ``x_mm``, ``y_mm`` (``null`` without spacing) and ``confidence`` in ``[0, 1]``; ``status``
    (``ok``, ``low_confidence`` or ``out_of_distribution``) and ``status_reasons`` (list of text).
    """
    names = _landmark_names(landmark_names, result.num_landmarks)
    spacing = None if result.spacing is None else {"x": _number(result.spacing[0]), "y": _number(result.spacing[1])}
    landmarks = [
        {
            "index": k,
            "name": names[k],
            "x": _number(result.points_px[k, 0]),
            "y": _number(result.points_px[k, 1]),
            "x_mm": _number(result.points_mm[k, 0]),
            "y_mm": _number(result.points_mm[k, 1]),
            "confidence": _number(result.confidence[k]),
        }
        for k in range(result.num_landmarks)
    ]
    return {
        "image": result.image,
        "image_size": {"width": result.image_hw[1], "height": result.image_hw[0]},
        "spacing_mm_per_px": spacing,
        "spacing_source": result.spacing_source,
        "coordinate_convention": COORDINATE_CONVENTION,
        "status": result.status,
        "status_reasons": list(result.status_reasons),
        "landmarks": landmarks,
    }


def landmark_result_from_document(document: dict) -> LandmarkResult:
    """The :class:`LandmarkResult` of a :func:`landmarks_document` (e.g. read back from its JSON file);
    values are those of the document (rounded to 4 decimals), ``null`` becomes NaN."""

    def value(v) -> float:
        return math.nan if v is None else float(v)

    marks = document["landmarks"]
    spacing = document.get("spacing_mm_per_px")
    return LandmarkResult(
        image=document["image"],
        image_hw=(document["image_size"]["height"], document["image_size"]["width"]),
        points_px=[[value(m["x"]), value(m["y"])] for m in marks],
        confidence=[value(m["confidence"]) for m in marks],
        spacing=None if spacing is None else (float(spacing["x"]), float(spacing["y"])),
        spacing_source=document.get("spacing_source", "unknown"),
        points_mm=[[value(m["x_mm"]), value(m["y_mm"])] for m in marks],
        status=document.get("status", "ok"),
        status_reasons=tuple(document.get("status_reasons", ())),
    )


def write_landmarks_json(
    path: PathLike, result: LandmarkResult, landmark_names: Sequence[str] | None = None, extra: dict | None = None
) -> Path:
    """Write :func:`landmarks_document` of one image as JSON (atomically), with the entries of
    ``extra`` (e.g. ``provenance``, ``measurements``) added at the top level."""
    document = landmarks_document(result, landmark_names)
    document.update(extra or {})
    return write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def landmark_csv_header(landmark_names: Sequence[str]) -> list[str]:
    """Columns of ``landmarks.csv``: ``image``, then ``<name>_x, <name>_y, <name>_confidence`` per
    landmark (original px), then ``<name>_x_mm, <name>_y_mm`` per landmark, then ``width, height``
    (px), ``spacing_x_mm, spacing_y_mm`` (mm/px), ``spacing_source``, ``status`` (``ok``,
    ``low_confidence``, ``out_of_distribution``) and ``status_reason`` (reasons joined by ``"; "``)."""
    columns = ["image"]
    for name in landmark_names:
        columns += [f"{name}_x", f"{name}_y", f"{name}_confidence"]
    for name in landmark_names:
        columns += [f"{name}_x_mm", f"{name}_y_mm"]
    return columns + ["width", "height", "spacing_x_mm", "spacing_y_mm", "spacing_source", "status", "status_reason"]


def _cell(value) -> str:
    number = _number(value)
    return "" if number is None else repr(number)


def landmark_csv_row(result: LandmarkResult, landmark_names: Sequence[str]) -> list[str]:
    """The cells of one image's row of ``landmarks.csv`` (:func:`landmark_csv_header`)."""
    if result.num_landmarks != len(landmark_names):
        raise ValueError(f"{result.image}: {result.num_landmarks} landmarks, the CSV has {len(landmark_names)}.")
    row = [result.image]
    for k in range(result.num_landmarks):
        row += [_cell(result.points_px[k, 0]), _cell(result.points_px[k, 1]), _cell(result.confidence[k])]
    for k in range(result.num_landmarks):
        row += [_cell(result.points_mm[k, 0]), _cell(result.points_mm[k, 1])]
    spacing = (math.nan, math.nan) if result.spacing is None else result.spacing
    row += [str(result.image_hw[1]), str(result.image_hw[0]), _cell(spacing[0]), _cell(spacing[1])]
    return row + [result.spacing_source, result.status, "; ".join(result.status_reasons)]


class LandmarkCsvWriter:
    """One CSV for a whole folder: a header (:func:`landmark_csv_header`) and one row per image.

    Rows are kept in memory (a few hundred bytes per image); :meth:`close` (also on leaving a ``with``
    block, even through an exception) writes the table with :func:`atomic_write`, so ``path`` only
    ever holds a complete table.

    Args:
        path: the CSV file, e.g. ``OUT/landmarks.csv``.
        landmark_names: the ``N`` landmark names (column prefixes).
        extra_columns: further columns after those of :func:`landmark_csv_header` (e.g. provenance,
            measurements), filled from the ``extra`` mapping of :meth:`write` (numbers rounded, ``None``
            -> empty cell).
    """

    def __init__(self, path: PathLike, landmark_names: Sequence[str], extra_columns: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.landmark_names = _landmark_names(landmark_names, len(landmark_names))
        self.extra_columns = [str(c) for c in extra_columns]
        self._rows: list[list[str]] | None = []

    @property
    def num_rows(self) -> int:
        return len(self._rows or [])

    def write(self, result: LandmarkResult, extra: dict | None = None) -> None:
        """Add the row of one image (``extra``: values of the ``extra_columns``)."""
        if self._rows is None:
            raise RuntimeError(f"{self.path}: the writer is closed.")
        extra = extra or {}
        cells = [
            "" if extra.get(c) is None else _cell(extra[c]) if isinstance(extra[c], (int, float)) else str(extra[c])
            for c in self.extra_columns
        ]
        self._rows.append(landmark_csv_row(result, self.landmark_names) + cells)

    def close(self) -> Path:
        """Write the table to :attr:`path` (once)."""
        if self._rows is not None:
            rows, self._rows = self._rows, None

            def write(tmp: str) -> None:
                with open(tmp, "w", encoding="utf-8", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow(landmark_csv_header(self.landmark_names) + self.extra_columns)
                    writer.writerows(rows)

            atomic_write(self.path, write)
        return self.path

    def __enter__(self) -> LandmarkCsvWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_error_csv(path: PathLike, rows: Sequence[dict]) -> Path:
    """Write the files that produced no result (atomically), header always present.

    Each row has ``image`` (relative path), ``status`` (``"failed"``: an image that could not be read
    or processed; ``"skipped"``: not recognised as an image), ``stage`` and ``reason``.
    """
    columns = ["image", "status", "stage", "reason"]

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({c: row.get(c, "") for c in columns})

    return atomic_write(path, write)

