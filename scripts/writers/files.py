"""Atomic, durable file writing and safe output paths: the one way every output file of the bundle is written.

Every file is written to a hidden temporary file in the target folder, flushed to disk, then renamed
(:func:`atomic_write`), with the mode the umask gives, so a reader never sees a half-written file; an
exception or Ctrl-C leaves none behind (only a killed process can leave a hidden ``.<name>.*.tmp`` file,
which :func:`remove_stale_temporaries` clears). :func:`output_path` refuses to write through a symbolic
link inside the output folder.

:func:`output_path` derives output names from the input's path relative to the input folder by
mirroring it below a subfolder of the output folder (``a/b/img.dcm`` ->
``OUT/overlays/a/b/img.dcm.jpg``): the whole input name is kept, so ``x.png`` and ``x.jpg`` never
collide, and the result is checked to stay inside the output folder.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = [
    "PathLike",
    "atomic_write",
    "fsync_folder",
    "temporary_name_pattern",
    "remove_stale_temporaries",
    "write_text",
    "write_csv",
    "write_json",
    "output_path",
    "SymlinkInOutputError",
    "refuse_symlinks",
]

PathLike = str | os.PathLike


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


def write_csv(path: str | Path, rows: Sequence[dict]) -> None:
    """Write a list of flat dicts as CSV (columns in first-seen order), atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically; NaN becomes ``null``."""
    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (float, np.floating)):
            return float(value) if np.isfinite(value) else None
        if isinstance(value, np.integer):
            return int(value)
        return value

    write_text(path, json.dumps(clean(obj), indent=2))
