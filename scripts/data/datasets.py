"""Dataset folder -> validated MONAI datalists, one per split.

A dataset folder holds

* ``images/``: one file per image named ``<id>.<suffix>`` in any format of :mod:`scripts.data.image_reader`
  (``.png``, ``.jpg``, ``.dcm``, ``.nii.gz``, ...), or ``<id>`` alone for a DICOM file;
* ``landmarks.csv``: header ``id,x0,y0,x1,y1,...`` (or ``id,<name>_x,<name>_y,...``), one row per
  image, coordinates ``(x, y)`` = (column, row) in original pixels as in :mod:`scripts.coords`;
  both cells of a landmark empty (or ``nan``) = missing landmark;
* ``splits.csv`` (optional): header ``id,split`` plus optional ``width,height`` (checked against
  the image) and ``spacing_x,spacing_y`` (mm/px, overriding the image header). Without it the ids
  are split deterministically by a hash: about 20 % ``valid``, the rest ``train``.

Everything is parsed and checked when a :class:`LandmarkDataset` is built; any problem raises a
:class:`DatasetError` naming the file, the data row (1-based, with its line and id) and the problem.
Landmark bounds are checked against image headers only (:func:`scripts.data.image_reader.read_image_size`).

A datalist item is ``{"id": str, "image": absolute path, "landmarks": (N, 2) float32 with NaN rows
for missing landmarks, "spacing": [sx, sy] mm/px from splits.csv or None}``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.coords import inside_image
from scripts.data.image_reader import ImageReadError, image_suffix, is_image_candidate, read_image_size
from scripts.keys import LandmarkKeys

__all__ = ["DatasetError", "LandmarkDataset", "load_datalist", "default_split", "split_off_tuning"]

logger = logging.getLogger(__name__)

LANDMARKS_CSV = "landmarks.csv"
SPLITS_CSV = "splits.csv"
IMAGES_DIR = "images"
VALID_FRACTION_PERCENT = 20
_SPLITS_COLUMNS = ("id", "split", "width", "height", "spacing_x", "spacing_y")
_MISSING = ("", "nan")


class DatasetError(ValueError):
    """A dataset folder is malformed; the message names the file, the row and the problem."""


@dataclass
class _Row:
    """One data row of a CSV file: its 1-based data row number, its line in the file, its cells."""

    number: int
    line: int
    cells: list[str]


@dataclass
class _SplitEntry:
    split: str
    row: _Row
    size_wh: tuple[int | None, int | None]
    spacing: list[float] | None


def _where(path: Path, row: _Row, row_id: str | None = None) -> str:
    who = f", id {row_id!r}" if row_id else ""
    return f"{path}, row {row.number} (line {row.line}{who})"


def _read_csv(path: Path) -> tuple[list[str], list[_Row]]:
    """Header and non-blank data rows of a CSV file, cells stripped of surrounding spaces."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header, rows = None, []
            for cells in reader:
                cells = [c.strip() for c in cells]
                if not any(cells):
                    continue
                if header is None:
                    header = cells
                else:
                    rows.append(_Row(len(rows) + 1, reader.line_num, cells))
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read as a UTF-8 CSV file: {e}") from e
    if header is None:
        raise DatasetError(f"{path}: file is empty (no header)")
    return header, rows


def _pair_name(x_column: str, y_column: str) -> str | None:
    """Landmark name of an x/y column pair: ``x3``/``y3`` -> "3", ``tip_x``/``tip_y`` -> "tip"."""
    if len(x_column) > 2 and x_column.endswith("_x") and y_column == x_column[:-2] + "_y":
        return x_column[:-2]
    if len(x_column) > 1 and x_column.startswith("x") and y_column == "y" + x_column[1:]:
        return x_column[1:]
    return None


def _landmark_names(path: Path, header: list[str]) -> list[str]:
    columns = header[1:]
    if not header or header[0] != "id" or not columns or len(columns) % 2:
        raise DatasetError(
            f"{path}, header: expected 'id' followed by x/y column pairs ('x0,y0,x1,y1,...' or "
            f"'<name>_x,<name>_y,...'), got {','.join(header)!r}"
        )
    names: list[str] = []
    for k in range(0, len(columns), 2):
        x_column, y_column = columns[k], columns[k + 1]
        name = _pair_name(x_column, y_column)
        if name is None:
            raise DatasetError(
                f"{path}, header: columns {k + 2} and {k + 3} ({x_column!r}, {y_column!r}) are not "
                "an x/y pair such as 'x3','y3' or 'tip_x','tip_y'"
            )
        if name in names:
            raise DatasetError(f"{path}, header: landmark {name!r} appears twice")
        names.append(name)
    return names


def _number(where: str, column: str, cell: str) -> float:
    """A coordinate cell as float; NaN for an empty or ``nan`` cell."""
    if cell.lower() in _MISSING:
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        raise DatasetError(f"{where}: column {column!r}: {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: column {column!r}: {cell!r} is not a finite number")
    return value


def _check_columns(path: Path, row: _Row, header: list[str]) -> str:
    """Checks the cell count and the id of a row; returns the id."""
    row_id = row.cells[0]
    if len(row.cells) != len(header):
        raise DatasetError(
            f"{_where(path, row, row_id)}: wrong number of columns: {len(row.cells)}, the header has "
            f"{len(header)}"
        )
    if not row_id:
        raise DatasetError(f"{_where(path, row)}: empty id")
    return row_id


def _parse_landmarks(path: Path) -> tuple[list[str], dict[str, tuple[_Row, np.ndarray]]]:
    header, rows = _read_csv(path)
    names = _landmark_names(path, header)
    parsed: dict[str, tuple[_Row, np.ndarray]] = {}
    for row in rows:
        row_id = _check_columns(path, row, header)
        where = _where(path, row, row_id)
        if row_id in parsed:
            raise DatasetError(f"{where}: duplicate id (first in row {parsed[row_id][0].number})")
        points = np.empty((len(names), 2), dtype=np.float32)
        for j, name in enumerate(names):
            x_column, y_column = header[1 + 2 * j], header[2 + 2 * j]
            x_cell, y_cell = row.cells[1 + 2 * j], row.cells[2 + 2 * j]
            x, y = _number(where, x_column, x_cell), _number(where, y_column, y_cell)
            if math.isnan(x) != math.isnan(y):
                given, empty = (x_column, y_column) if math.isnan(y) else (y_column, x_column)
                raise DatasetError(
                    f"{where}: landmark {_landmark_label(j, name)} is half missing: column {given!r} "
                    f"is set but {empty!r} is empty; give both coordinates or neither"
                )
            points[j] = (x, y)
        parsed[row_id] = (row, points)
    return names, parsed


def _landmark_label(index: int, name: str) -> str:
    return str(index) if name == str(index) else f"{index} ({name!r})"


def _positive(where: str, column: str, cell: str, integer: bool) -> float | None:
    """A positive number (integer if asked) or ``None`` for an empty cell."""
    if cell == "":
        return None
    kind = "positive integer" if integer else "positive number"
    try:
        value = float(cell)
    except ValueError:
        raise DatasetError(f"{where}: column {column!r}: {cell!r} is not a {kind}") from None
    if not (math.isfinite(value) and value > 0 and (value.is_integer() or not integer)):
        raise DatasetError(f"{where}: column {column!r}: {cell!r} is not a {kind}")
    return value


def _parse_splits(path: Path, known_ids: dict) -> dict[str, _SplitEntry]:
    header, rows = _read_csv(path)
    unknown = [c for c in header if c not in _SPLITS_COLUMNS]
    if unknown or len(set(header)) != len(header) or not {"id", "split"} <= set(header):
        raise DatasetError(
            f"{path}, header: expected columns 'id,split' plus optionally 'width,height' and "
            f"'spacing_x,spacing_y' (each once), got {','.join(header)!r}"
        )
    if ("spacing_x" in header) != ("spacing_y" in header):
        raise DatasetError(f"{path}, header: give both 'spacing_x' and 'spacing_y' or neither")
    column = {name: header.index(name) for name in header}
    entries: dict[str, _SplitEntry] = {}
    for row in rows:
        row_id = _check_columns(path, row, header)
        where = _where(path, row, row_id)
        cell = {name: row.cells[i] for name, i in column.items()}
        split = cell["split"]
        if not split:
            raise DatasetError(f"{where}: empty split name")
        if row_id in entries:
            first = entries[row_id]
            if first.split == split:
                raise DatasetError(f"{where}: duplicate id (first in row {first.row.number})")
            raise DatasetError(
                f"{where}: overlapping splits: id is in split {split!r} here and in split "
                f"{first.split!r} in row {first.row.number}"
            )
        if row_id not in known_ids:
            raise DatasetError(f"{where}: unknown id: it has no row in {LANDMARKS_CSV}")
        width, height = (_positive(where, c, cell.get(c, ""), integer=True) for c in ("width", "height"))
        sx, sy = (_positive(where, c, cell.get(c, ""), integer=False) for c in ("spacing_x", "spacing_y"))
        if (sx is None) != (sy is None):
            raise DatasetError(f"{where}: give both spacing_x and spacing_y or neither")
        entries[row_id] = _SplitEntry(
            split=split,
            row=row,
            size_wh=(None if width is None else int(width), None if height is None else int(height)),
            spacing=None if sx is None else [sx, sy],
        )
    return entries


def default_split(image_id: str) -> str:
    """Deterministic split of an id when there is no splits.csv: ``"valid"`` for about 20 % of
    ids (by a SHA-1 hash of the id, stable across runs and machines), else ``"train"``."""
    digest = hashlib.sha1(image_id.encode("utf-8")).digest()
    return "valid" if int.from_bytes(digest[:4], "big") % 100 < VALID_FRACTION_PERCENT else "train"


def split_off_tuning(datalist: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """Carve a deterministic tuning subset out of a (training) datalist.

    Model selection (the best checkpoint, early stopping, hyper-parameters) must not look at the split
    that is reported; this takes ``round(fraction * len(datalist))`` items (at least 1 when
    ``fraction > 0``) out of ``datalist`` to select on instead. Which items is decided by a SHA-1
    hash of ``"tune:" + id`` (stable across runs, machines and list order, unrelated to
    :func:`default_split`): the items with the smallest hashes. E.g. 0.11 of the 91 hand training
    images gives 10.

    Args:
        datalist: items with an ``"id"`` (see :meth:`LandmarkDataset.datalist`).
        fraction: in ``[0, 1)``; 0 returns ``(datalist, [])``.

    Returns:
        ``(rest, tuning)``, both in the order of ``datalist``.
    """
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"tune_fraction must be in [0, 1), got {fraction!r}.")
    if fraction == 0.0 or not datalist:
        return list(datalist), []
    count = min(max(1, round(fraction * len(datalist))), len(datalist) - 1)
    ranked = sorted(datalist, key=lambda d: hashlib.sha1(f"tune:{d['id']}".encode("utf-8")).digest())
    tuning_ids = {d[LandmarkKeys.ID] for d in ranked[:count]}
    kept = [d for d in datalist if d[LandmarkKeys.ID] not in tuning_ids]
    return kept, [d for d in datalist if d[LandmarkKeys.ID] in tuning_ids]


def _scan_images(images_dir: Path) -> dict[str, Path]:
    """Map id -> image file in ``images_dir`` (id = file name without its image suffix)."""
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: image folder not found (a dataset needs {IMAGES_DIR}/)")
    found: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if not is_image_candidate(path):
            continue
        suffix = image_suffix(path)
        image_id = path.name[: len(path.name) - len(suffix)] if suffix else path.name
        if image_id in found:
            raise DatasetError(
                f"{images_dir}: files {found[image_id].name!r} and {path.name!r} both have id {image_id!r}"
            )
        found[image_id] = path
    return found


class LandmarkDataset:
    """A validated landmark dataset folder (format in the module docstring).

    Args:
        dataset_dir: folder with ``images/``, ``landmarks.csv`` and optionally ``splits.csv``.
        check_bounds: read every image header to check that landmarks lie inside the image
            (pixel-centre bounds ``[-0.5, W - 0.5]`` x ``[-0.5, H - 0.5]``, see scripts.coords)
            and that ``width``/``height`` in splits.csv match; False skips all image reading.

    Attributes:
        dataset_dir: absolute path of the folder.
        num_landmarks: N, landmarks per image.
        landmark_names: N names from the landmarks.csv header (``x3`` -> "3", ``tip_x`` -> "tip").
        ids: image ids in landmarks.csv order.
        splits: split name -> ids of that split (landmarks.csv order).

    Raises:
        DatasetError: on any problem, naming the file, row and problem.
    """

    def __init__(self, dataset_dir: str | os.PathLike, check_bounds: bool = True) -> None:
        self.dataset_dir = Path(dataset_dir).expanduser().resolve()
        if not self.dataset_dir.is_dir():
            raise DatasetError(f"{self.dataset_dir}: dataset folder not found")
        landmarks_path = self.dataset_dir / LANDMARKS_CSV
        splits_path = self.dataset_dir / SPLITS_CSV

        self.landmark_names, rows = _parse_landmarks(landmarks_path)
        self.num_landmarks = len(self.landmark_names)
        self.ids = list(rows)
        if not self.ids:
            raise DatasetError(f"{landmarks_path}: no data rows")

        if splits_path.exists():
            entries = _parse_splits(splits_path, rows)
            for row_id, (row, _) in rows.items():
                if row_id not in entries:
                    raise DatasetError(
                        f"{_where(landmarks_path, row, row_id)}: id has no row in {splits_path}"
                    )
            split_of = {row_id: entries[row_id].split for row_id in self.ids}
        else:
            entries = {}
            split_of = {row_id: default_split(row_id) for row_id in self.ids}
            logger.warning(
                "%s not found: splitting %d ids by a hash of the id (about %d %% valid)",
                splits_path, len(self.ids), VALID_FRACTION_PERCENT,
            )
        self.splits: dict[str, list[str]] = {} if entries else {"train": [], "valid": []}
        for entry in entries.values():  # split names in order of first appearance
            self.splits.setdefault(entry.split, [])
        for row_id in self.ids:
            self.splits[split_of[row_id]].append(row_id)
        for name, members in self.splits.items():
            if not members:
                logger.warning("%s: split %r is empty", self.dataset_dir, name)

        images = _scan_images(self.dataset_dir / IMAGES_DIR)
        for row_id, (row, _) in rows.items():
            if row_id not in images:
                raise DatasetError(
                    f"{_where(landmarks_path, row, row_id)}: missing image file: no "
                    f"{IMAGES_DIR}/{row_id}.<suffix> with a supported image suffix, nor a DICOM "
                    f"file {IMAGES_DIR}/{row_id}"
                )
        unused = sorted(set(images) - set(rows))
        if unused:
            logger.warning(
                "%s: %d image(s) without a row in %s are ignored, e.g. %s",
                self.dataset_dir / IMAGES_DIR, len(unused), LANDMARKS_CSV, images[unused[0]].name,
            )

        if check_bounds:
            for row_id, (row, points) in rows.items():
                self._check_image(
                    images[row_id], (landmarks_path, row, row_id), points, (splits_path, entries.get(row_id))
                )

        self._landmarks = {row_id: points for row_id, (_, points) in rows.items()}
        self._images = {row_id: images[row_id] for row_id in self.ids}
        self._spacing = {row_id: (entries[row_id].spacing if entries else None) for row_id in self.ids}

    def _check_image(
        self,
        image: Path,
        source: tuple[Path, _Row, str],
        points: np.ndarray,
        split_source: tuple[Path, _SplitEntry | None],
    ) -> None:
        """Landmarks inside the image and splits.csv width/height equal to the image's size."""
        landmarks_path, row, row_id = source
        splits_path, entry = split_source
        try:
            h, w = read_image_size(image)
        except ImageReadError as e:
            raise DatasetError(f"{_where(landmarks_path, row, row_id)}: unreadable image: {e}") from e
        if entry is not None:
            width, height = entry.size_wh
            if (width is not None and width != w) or (height is not None and height != h):
                raise DatasetError(
                    f"{_where(splits_path, entry.row, row_id)}: width x height = {width} x {height} "
                    f"does not match the image {image.name} (W x H = {w} x {h})"
                )
        present = ~np.isnan(points[:, 0])
        outside = np.flatnonzero(present & ~inside_image(points, (h, w)))
        if outside.size:
            j = int(outside[0])
            raise DatasetError(
                f"{_where(landmarks_path, row, row_id)}: landmark "
                f"{_landmark_label(j, self.landmark_names[j])} at (x, y) = "
                f"({points[j, 0]:g}, {points[j, 1]:g}) lies outside the image {image.name} of "
                f"W x H = {w} x {h} (x must be in [-0.5, {w - 0.5}], y in [-0.5, {h - 0.5}])"
                + (f"; {outside.size - 1} more landmark(s) outside" if outside.size > 1 else "")
            )

    def split_names(self) -> list[str]:
        """Split names, in order of first appearance in splits.csv (``train``, ``valid`` without)."""
        return list(self.splits)

    def datalist(self, split: str) -> list[dict]:
        """Datalist of one split, in landmarks.csv order; each call returns fresh items.

        Returns:
            list of ``{"id": str, "image": str absolute path, "landmarks": (N, 2) float32
            (x, y) original pixels with NaN rows for missing landmarks, "spacing": [sx, sy] mm/px
            from splits.csv or None}``.
        """
        if split not in self.splits:
            raise DatasetError(
                f"{self.dataset_dir}: no split {split!r}; available splits: {', '.join(self.splits)}"
            )
        return [
            {
                LandmarkKeys.ID.value: row_id,
                LandmarkKeys.IMAGE.value: str(self._images[row_id]),
                LandmarkKeys.LANDMARKS.value: self._landmarks[row_id].copy(),
                LandmarkKeys.SPACING.value: None if self._spacing[row_id] is None else list(self._spacing[row_id]),
            }
            for row_id in self.splits[split]
        ]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}: {len(ids)}" for name, ids in self.splits.items())
        return (
            f"LandmarkDataset({str(self.dataset_dir)!r}, {len(self.ids)} images, "
            f"{self.num_landmarks} landmarks, splits {{{sizes}}})"
        )


_CACHE: dict[tuple, LandmarkDataset] = {}


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def load_datalist(dataset_dir: str | os.PathLike, split: str) -> list[dict]:
    """Datalist of one split of a dataset folder (see :meth:`LandmarkDataset.datalist`).

    The validated :class:`LandmarkDataset` is cached per folder within the process and rebuilt
    when landmarks.csv, splits.csv or the image folder change.
    """
    folder = Path(dataset_dir).expanduser().resolve()
    key = (folder,) + tuple(_mtime_ns(folder / name) for name in (LANDMARKS_CSV, SPLITS_CSV, IMAGES_DIR))
    if key not in _CACHE:
        for stale in [k for k in _CACHE if k[0] == folder]:
            del _CACHE[stale]
        _CACHE[key] = LandmarkDataset(folder)
    return _CACHE[key].datalist(split)
