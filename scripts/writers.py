"""Write predicted landmarks: one JSON per image, one CSV row per image, overlay PNGs, label images.

Coordinates follow :mod:`scripts.coords`: ``(x, y)`` = (column, row) in pixels of the *original*
image (the file as read by :func:`scripts.io.read_image`), the integer ``k`` is the centre of pixel
``k``; millimetres are ``x_mm = x * sx``, ``y_mm = y * sy`` with the spacing ``(sx, sy)`` mm/px of the
file header, measured from the centre of the top-left pixel. A value that is not known (no spacing,
a missing landmark) is ``null`` in JSON and an empty cell in CSV, never 0.

Every file is written atomically and durably: to a hidden temporary file in the target folder,
flushed to disk, then renamed (:func:`atomic_write`), with the mode the umask gives, so a reader
never sees a half-written file; an exception or Ctrl-C leaves none behind (only a killed process
can leave a hidden ``.<name>.*.tmp`` file, which :func:`remove_stale_temporaries` clears).
:func:`output_path` refuses to write through a symbolic link inside the output folder.

:func:`output_path` derives output names from the input's path relative to the input folder by
mirroring it below a subfolder of the output folder (``a/b/img.dcm`` ->
``OUT/overlays/a/b/img.dcm.png``): the whole input name is kept, so ``x.png`` and ``x.jpg`` never
collide, and the result is checked to stay inside the output folder.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

from scripts.coords import apply_matrix, resize_matrix

__all__ = [
    "COORDINATE_CONVENTION",
    "STATUSES",
    "LandmarkResult",
    "landmark_result_from_document",
    "landmark_csv_row",
    "atomic_write",
    "fsync_folder",
    "temporary_name_pattern",
    "remove_stale_temporaries",
    "write_text",
    "output_path",
    "SymlinkInOutputError",
    "refuse_symlinks",
    "write_landmarks_json",
    "landmark_csv_header",
    "LandmarkCsvWriter",
    "write_error_csv",
    "downscale_image",
    "render_overlay",
    "write_overlay_png",
    "landmark_label_image",
    "write_label_image",
]

PathLike = str | os.PathLike

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


# ----------------------------------------------------------------------------------------------
# paths and atomic writing


def output_path(output_dir: PathLike, subdir: str, relative_input: str, suffix: str) -> Path:
    """``output_dir/subdir/<relative_input><suffix>``, refusing any path that leaves ``output_dir``.

    Args:
        output_dir: the output folder.
        subdir: kind of output, e.g. ``"overlays"`` (a single folder name).
        relative_input: the input's path relative to the input folder, POSIX separators
            (``"a/b/img.dcm"``); absolute paths and ``..`` components are refused.
        suffix: appended to the full input name, e.g. ``".png"`` -> ``img.dcm.png``.

    Raises:
        ValueError: the result would not lie inside ``output_dir/subdir``.
    """
    rel = PurePosixPath(relative_input)
    if rel.is_absolute() or not rel.parts or any(part in ("", ".", "..") for part in rel.parts):
        raise ValueError(f"output name: {relative_input!r} is not a plain relative path.")
    if not subdir or "/" in subdir or "\\" in subdir or subdir in (".", ".."):
        raise ValueError(f"output subfolder {subdir!r} must be a single folder name.")
    base = Path(output_dir) / subdir
    path = base.joinpath(*rel.parts[:-1], rel.parts[-1] + suffix)
    refuse_symlinks(output_dir, path)
    if not path.resolve().is_relative_to(base.resolve()):
        raise ValueError(f"output path {path} for {relative_input!r} leaves {base}.")
    return path


class SymlinkInOutputError(ValueError):
    """An output would be written through a symbolic link inside the output folder."""


def refuse_symlinks(output_dir: PathLike, path: PathLike) -> None:
    """Raise :class:`SymlinkInOutputError` if ``path`` (below ``output_dir``) or any folder between
    them is a symbolic link, so that nothing is written outside ``output_dir`` through a link placed
    in it (``output_dir`` itself may be a link)."""
    root, current = Path(output_dir), Path(path)
    rel = current.relative_to(root)
    for depth in range(len(rel.parts), 0, -1):
        part = root.joinpath(*rel.parts[:depth])
        if part.is_symlink():
            raise SymlinkInOutputError(
                f"{part} is a symbolic link (to {os.readlink(part)}) inside the output folder {root}: refusing to "
                "write through it; remove the link or choose another --output_dir."
            )


def _current_umask() -> int:
    """The process's umask (read by setting and restoring it: POSIX has no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_folder(folder: PathLike) -> None:
    """Flush a folder's entries (e.g. a rename into it) to disk; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(os.fspath(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary_name_pattern(name: str) -> str:
    """Glob pattern of the hidden temporary files :func:`atomic_write` creates for a file ``name``."""
    return f".{name}.*.tmp"


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Remove the hidden ``.<name>.<random>.tmp`` files that a killed :func:`atomic_write` left in
    ``folder`` and below it (links to folders are not followed). Returns the removed paths."""
    removed = []
    for here, _, files in os.walk(folder):
        for name in files:
            path = Path(here) / name
            if fnmatch.fnmatchcase(name, ".*.*.tmp") and path.is_file() and not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def atomic_write(path: PathLike, write: Callable[[str], None], durable: bool = True) -> Path:
    """Create ``path`` atomically: ``write(temp_path)`` fills a hidden temporary file in the same
    folder (``.<name>.<random>.tmp``), which is then renamed to ``path`` (replacing an older file);
    on any error the temporary file is removed and ``path`` is left as it was. Parent folders are
    created. The file gets the mode ``0o666`` less the process's umask, like ``open(path, "w")``
    would give it (the temporary file starts at ``0o600``).

    Args:
        durable: also flush the file before the rename and the folder after it (``fsync``), so that
            after a power cut ``path`` holds the old or the new content, never an empty file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_folder(path.parent)
    return path


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, write)


# ----------------------------------------------------------------------------------------------
# JSON and CSV


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


# ----------------------------------------------------------------------------------------------
# overlay


def _to_8bit(image: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """Window ``image`` ``(H, W)`` linearly between its ``lower``/``upper`` percentiles into uint8."""
    low, high = np.percentile(image, (lower, upper))
    if not high > low:
        low, high = float(image.min()), float(image.max())
    if not high > low:
        return np.zeros(image.shape, dtype=np.uint8)
    scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def downscale_image(image: np.ndarray, max_size: int) -> np.ndarray:
    """``image`` ``(H, W)`` shrunk (antialiased) so that its longer side is at most ``max_size``."""
    h, w = image.shape
    scale = min(1.0, max_size / max(h, w))
    if scale >= 1.0:
        return np.asarray(image, dtype=np.float32)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()


_COLOURS = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
]


def render_overlay(
    image: np.ndarray,
    points_px: np.ndarray,
    labels: Sequence[str] | None = None,
    max_size: int = 1024,
    image_hw: Sequence[int] | None = None,
):
    """The image as 8-bit RGB with numbered landmark markers, shrunk if large.

    Args:
        image: ``(H, W)`` original image, any grey values (windowed to the 1st-99th percentiles).
        points_px: ``(N, 2)`` ``(x, y)`` original pixels; NaN rows are not drawn.
        labels: text drawn next to each marker, default ``"0"``, ``"1"``, ...
        max_size: longest side of the overlay, pixels; larger images are shrunk (points follow with
            the pixel-centre convention of :mod:`scripts.coords`).
        image_hw: ``(H, W)`` of the original image when ``image`` is a shrunk copy of it (e.g. the
            preview of :class:`scripts.transforms.LoadLandmarkImaged`); ``points_px`` stay in original pixels.

    Returns:
        a ``PIL.Image.Image`` in mode ``"RGB"``.
    """
    from PIL import Image, ImageDraw, ImageFont

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"overlay: expected an (H, W) image, got shape {image.shape}.")
    points = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    labels = [str(k) for k in range(len(points))] if labels is None else [str(t) for t in labels]
    small = downscale_image(image, int(max_size))
    original_hw = image.shape if image_hw is None else (int(image_hw[0]), int(image_hw[1]))
    points = apply_matrix(points, resize_matrix(original_hw, small.shape))
    canvas = Image.fromarray(_to_8bit(small)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    size = max(small.shape)
    radius = max(2.0, size / 250.0)
    font = ImageFont.load_default(size=max(10, round(size / 70)))
    for k, (x, y) in enumerate(points):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        colour = _COLOURS[k % len(_COLOURS)]
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=max(1, round(radius / 2)))
        draw.text(
            (x + 1.5 * radius, y - 1.5 * radius), labels[k], fill=colour, font=font,
            stroke_width=max(1, round(radius / 3)), stroke_fill=(0, 0, 0),
        )
    return canvas


def write_overlay_png(
    path: PathLike,
    image: np.ndarray,
    points_px: np.ndarray,
    labels: Sequence[str] | None = None,
    max_size: int = 1024,
    image_hw: Sequence[int] | None = None,
) -> Path:
    """Render with :func:`render_overlay` and save as an 8-bit RGB PNG (atomically)."""
    overlay = render_overlay(image, points_px, labels, max_size, image_hw)
    return atomic_write(path, lambda tmp: overlay.save(tmp, format="PNG"))


# ----------------------------------------------------------------------------------------------
# label image


def landmark_label_image(points_px: np.ndarray, image_hw: Sequence[int], radius: float = 5.0) -> np.ndarray:
    """A label image with a filled disc of value ``k + 1`` around landmark ``k`` (0 = background).

    A pixel ``[row, col]`` belongs to the disc of ``(x, y)`` when ``(col - x)^2 + (row - y)^2 <= radius^2``
    (pixel centres at integers); where discs overlap the later landmark wins; NaN landmarks and the
    parts of discs outside the image are left out.

    Args:
        points_px: ``(N, 2)`` ``(x, y)`` original pixels.
        image_hw: ``(H, W)`` of the label image (the original image's size).
        radius: disc radius in pixels (>= 0; 0 marks the pixel nearest to the point).

    Returns:
        ``(H, W)`` uint8 label image (uint16 for more than 255 landmarks).
    """
    points = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    if radius < 0:
        raise ValueError(f"label disc radius must be >= 0, got {radius}.")
    h, w = int(image_hw[0]), int(image_hw[1])
    label = np.zeros((h, w), dtype=np.uint8 if len(points) < 256 else np.uint16)
    reach = max(float(radius), 0.5)
    for k, (x, y) in enumerate(points):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        c0, c1 = max(0, math.ceil(x - reach)), min(w - 1, math.floor(x + reach))
        r0, r1 = max(0, math.ceil(y - reach)), min(h - 1, math.floor(y + reach))
        if c0 > c1 or r0 > r1:
            continue
        cols = np.arange(c0, c1 + 1, dtype=np.float64)
        rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
        inside = (cols - x) ** 2 + (rows - y) ** 2 <= reach**2
        label[r0 : r1 + 1, c0 : c1 + 1][inside] = k + 1
    return label


def write_label_image(path: PathLike, label: np.ndarray, spacing: Sequence[float] | None = None) -> Path:
    """Save a label image ``(H, W)`` (atomically) as PNG (``.png``, uint8 or uint16 grey) or NIfTI
    (``.nii`` / ``.nii.gz``, array stored as ``[x, y, 1]`` with pixdim ``(sx, sy, 1)`` mm when
    ``spacing`` is given, so that :func:`scripts.io.read_image` reads back the same ``(H, W)``).
    """
    path = Path(path)
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: a label image must be (H, W) uint8 or uint16, got {label.dtype} {label.shape}.")
    name = path.name.lower()
    if name.endswith(".png"):
        from PIL import Image

        image = Image.fromarray(label)  # mode "L" or "I;16"
        return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        sx, sy = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
        nifti = nib.Nifti1Image(np.ascontiguousarray(label.T[:, :, None]), np.diag([sx, sy, 1.0, 1.0]))
        nifti.header.set_xyzt_units("mm")
        suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"

        def write(tmp: str) -> None:
            # nibabel picks the compression from the file name: save under the real suffix, then move
            named = tmp + suffix
            try:
                nib.save(nifti, named)
                os.replace(named, tmp)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(named)

        return atomic_write(path, write)
    raise ValueError(f"{path}: label images are written as .png, .nii or .nii.gz.")

