"""Folders of images for inference: the scan, and a dataset whose per-file failures are records, not exceptions.

* :func:`scan_image_folder` lists every image below a folder (recursively; DICOM with or without suffix,
  PNG, JPEG, TIFF, NIfTI, MHA/MHD, NRRD, see :func:`scripts.data.image_reader.is_image_candidate`) and the
  other files, which are reported as skipped.
* :class:`FailureIsolatingDataset` wraps a MONAI ``Dataset`` so that a file that cannot be read or
  preprocessed becomes ``{"index", "failure": (stage, reason)}``: one bad file never stops a ``DataLoader``.
* :func:`failure_reason` gives the one-line reason of ``errors.csv`` for an exception.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scripts.data.image_reader import ImageReadError, is_image_candidate

__all__ = [
    "FolderScan",
    "scan_image_folder",
    "is_within",
    "require_file",
    "root_cause",
    "read_error",
    "failure_reason",
    "resolve_num_workers",
    "FailureIsolatingDataset",
    "collate_as_list",
]

PathLike = str | os.PathLike


@dataclass
class FolderScan:
    """Result of :func:`scan_image_folder`.

    Attributes:
        root: the scanned folder (absolute).
        items: one datalist item per image, ``{"id": relative POSIX path, "image": absolute path}``,
            sorted by ``id``.
        skipped: relative paths of the other (non-hidden) files, which are not images.
    """

    root: str
    items: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def is_within(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or below it (both as given: resolve them first where links matter)."""
    return path == folder or path.is_relative_to(folder)


def scan_image_folder(root: PathLike, exclude: Sequence[PathLike] = ()) -> FolderScan:
    """List the images below ``root`` recursively (or ``root`` itself if it is a file).

    Hidden files and folders (name starting with ``.``) are ignored, and so are the folders in
    ``exclude`` (e.g. an output folder placed inside the input folder). Symbolic links to files are
    followed, links to folders are not; a broken link is listed as an item, so that reading it
    reports the broken link.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root_path = Path(root).expanduser().absolute()
    if not root_path.exists():
        raise FileNotFoundError(f"input folder {root_path} does not exist (set --dataset_dir).")
    if root_path.is_file():
        scan = FolderScan(str(root_path.parent))
        if is_image_candidate(root_path):
            scan.items.append({"id": root_path.name, "image": str(root_path)})
        else:
            scan.skipped.append(root_path.name)
        return scan
    excluded = [Path(p).expanduser().resolve() for p in exclude if p is not None]
    scan = FolderScan(str(root_path))
    for folder, dirs, files in os.walk(root_path):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not any(
            is_within((here / d).resolve(), ex) for ex in excluded))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = here / name
            rel = path.relative_to(root_path).as_posix()
            if is_image_candidate(path) or (path.is_symlink() and not path.exists()):
                scan.items.append({"id": rel, "image": str(path)})
            else:
                scan.skipped.append(rel)
    scan.items.sort(key=lambda item: item["id"])
    scan.skipped.sort()
    return scan


def require_file(path: PathLike, what: str) -> str:
    """``path`` as str if it is an existing file, else ``FileNotFoundError`` naming ``what`` it is."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what}: no file at {path}.")
    return os.fspath(path)


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from`` chain (MONAI wraps transform errors)."""
    seen = set()
    while error.__cause__ is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__
    return error


def read_error(error: BaseException) -> ImageReadError | None:
    """The outermost :class:`ImageReadError` of a ``raise ... from`` chain, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ImageReadError):
            return error
        seen.add(id(error))
        error = error.__cause__
    return None


def failure_reason(error: BaseException) -> str:
    """One line for ``errors.csv``: the bundle's own :class:`ImageReadError` (which names the file and
    the problem, e.g. a missing decoder) where there is one, else the innermost exception."""
    cause = read_error(error) or root_cause(error)
    return " ".join(f"{type(cause).__name__}: {cause}".split())


def resolve_num_workers(num_workers, num_items: int) -> int:
    """Number of ``DataLoader`` worker processes: an int as given, or ``"auto"``: one per spare core
    (``os.sched_getaffinity`` less the one that runs the network), at most 4, none for a single image."""
    if str(num_workers).lower() != "auto":
        value = int(num_workers)
        if value < 0:
            raise ValueError(f"num_workers must be >= 0 or 'auto', got {num_workers!r}.")
        return value
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if num_items <= 1 else max(1, min(4, cores - 1))


class FailureIsolatingDataset(torch.utils.data.Dataset):
    """``dataset[i]`` as ``{"index": i, "sample": ...}``, or ``{"index": i, "failure": (stage, reason)}`` when
    reading or preprocessing the file raises: one bad file never stops the ``DataLoader``."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            return {"index": index, "sample": self.dataset[index]}
        except Exception as err:  # recorded in errors.csv by the runner
            return {"index": index, "failure": ("reading" if read_error(err) is not None else "preprocessing", failure_reason(err))}


def collate_as_list(batch: list) -> list:
    """``collate_fn`` that keeps the items of a batch apart (they are stacked once the failures are out)."""
    return batch
