"""Landmark inference on a folder of images: folder scan, weights, and the pipelined folder runner.

Used by ``configs/inference.json``::

    python -m monai.bundle run --config_file configs/inference.json --dataset_dir IN --output_dir OUT

* :func:`scan_image_folder` lists every image below the input folder (recursively; DICOM with or
  without suffix, PNG, JPEG, TIFF, NIfTI, MHA/MHD, NRRD, see :func:`scripts.data.image_reader.is_image_candidate`)
  and the other files, which are reported as skipped.
* :class:`FolderInference` (a MONAI ``Evaluator``) decodes and preprocesses the images in
  ``DataLoader`` workers while the network runs on batches, and post-processes and writes each
  image in a writer process (the ``postprocessing`` of :mod:`scripts.transforms.post`, the writers of
  :mod:`scripts.writers`); a file that fails is recorded in ``OUT/errors.csv`` with its reason and
  the others go on.

Outputs below ``OUT``: ``landmarks.csv`` (one row per image), ``errors.csv``, and per input
``a/b/img.dcm``: ``landmarks/a/b/img.dcm.json``, ``overlays/a/b/img.dcm.png``,
``labels/a/b/img.dcm.png`` (disc of value ``k + 1`` per landmark, the original image's size),
``markups/a/b/img.dcm.mrk.json`` (3D Slicer) and, for DICOM inputs, ``sr/a/b/img.dcm.sr.dcm``
(DICOM SR); every output carries the provenance and, with ``measurements``, the measurements.
Overlays and label images can be switched off (``--overlays false``, ``--label_images false``).
Every result carries a trust ``status`` (:mod:`scripts.trust`). A run that produced no result
raises :class:`FolderInferenceError` (exit code 1 of ``monai.bundle run``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Mapping, Sequence
import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.engines import Evaluator
from torch.utils.data import DataLoader
from tqdm import tqdm

from scripts.checkpoints import load_checkpoint
from scripts.data.image_reader import ImageReadError, is_image_candidate, read_image
from scripts.keys import LandmarkKeys
from scripts.transforms.post import landmark_result
from scripts.provenance import PROVENANCE_COLUMNS, provenance_cells
from scripts.utils import as_bool
from scripts.writers import (
    LandmarkCsvWriter,
    LandmarkResult,
    landmark_result_from_document,
    output_path,
    remove_stale_temporaries,
    write_error_csv,
    write_label_image,
    write_landmarks_json,
    write_overlay_png,
)
from scripts.writers.dicom_sr import is_dicom, require_highdicom, write_landmark_sr
from scripts.writers.slicer_markups import image_frame, write_markups_json

__all__ = [
    "FolderScan",
    "scan_image_folder",
    "require_file",
    "load_weights",
    "resolve_num_workers",
    "FolderInference",
    "FolderInferenceError",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------------
# folder scan


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


def _is_within(path: Path, folder: Path) -> bool:
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
            _is_within((here / d).resolve(), ex) for ex in excluded))
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


# ----------------------------------------------------------------------------------------------
# weights


def load_weights(network: torch.nn.Module, ckpt_path: PathLike) -> torch.nn.Module:
    """Load a checkpoint into ``network`` (strictly) and return it.

    Accepts a plain ``state_dict`` (what ``CheckpointSaver`` writes for one object, e.g.
    ``models/model.pt``) or a dict holding it under ``"model"`` or ``"network"`` (e.g.
    ``models/last.ckpt``); a ``"module."`` prefix (DistributedDataParallel) is removed.

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: the file holds no weights, holds objects other than tensors and containers
            (refused unread: loading them could run code), or the weights do not fit the network
            (message names the file).
    """
    path = os.fspath(ckpt_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found.")
    state = load_checkpoint(path)  # weights_only: a crafted file cannot run code
    if isinstance(state, Mapping) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        nested = next((state[k] for k in ("model", "network") if isinstance(state.get(k), Mapping)), None)
        if nested is None:
            raise ValueError(f"checkpoint {path} holds no network weights (entries: {sorted(state)}).")
        state = nested
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a state_dict.")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint {path} does not fit network_def (trained with another preset, num_landmarks "
            f"or num_filters?): {' '.join(str(err).split())[:800]}"
        ) from err
    return network


# ----------------------------------------------------------------------------------------------
# the runner


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from`` chain (MONAI wraps transform errors)."""
    seen = set()
    while error.__cause__ is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__
    return error


def _read_error(error: BaseException) -> ImageReadError | None:
    """The outermost :class:`ImageReadError` of a ``raise ... from`` chain, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ImageReadError):
            return error
        seen.add(id(error))
        error = error.__cause__
    return None


def _reason(error: BaseException) -> str:
    """One line for ``errors.csv``: the bundle's own :class:`ImageReadError` (which names the file and
    the problem, e.g. a missing decoder) where there is one, else the innermost exception."""
    cause = _read_error(error) or _root_cause(error)
    return " ".join(f"{type(cause).__name__}: {cause}".split())


class FolderInferenceError(RuntimeError):
    """Folder inference produced no result (or, with ``strict``, some files failed); the outputs are written."""


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


class _IsolatedItems(torch.utils.data.Dataset):
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
            return {"index": index, "failure": ("reading" if _read_error(err) is not None else "preprocessing", _reason(err))}


def _as_list(batch: list) -> list:
    """``collate_fn`` that keeps the items of a batch apart (they are stacked once the failures are out)."""
    return batch


class FolderInference(Evaluator):
    """Predict landmarks for every image of a folder and write the results; failures are recorded.

    A MONAI ``Evaluator`` over a ``DataLoader`` of the folder's items. Per iteration (a batch of
    ``batch_size`` items): the items were read and preprocessed by ``dataset[i]`` (the ``preprocessing``
    on ``{"id", "image"}``) in ``num_workers`` worker processes while the previous batch ran; the
    images that loaded are stacked and run through ``inferer(images (B, C, H', W'), network)`` ->
    heatmaps ``(B, N, H', W')`` at once (one at a time if the batch fails, so that the failure names
    its file); then each image goes to a writer process (forked, so that Python-heavy writers such as
    the DICOM SR do not hold the network's GIL; it dies with the runner), which runs the ``postprocessing`` on
    ``{**sample, "pred": heatmaps (N, H', W')}`` (it must provide ``pred_landmarks_orig`` (N, 2),
    ``pred_landmarks_mm`` (N, 2), ``pred_confidence`` (N,) and, for the label files, ``pred`` = the
    label image indexed ``[x, y]``, :class:`scripts.transforms.LandmarkLabelOutputd`) and the
    writers (see the module docstring for the files). ``batch_size=1, num_workers=0,
    num_writers=0`` is the sequential path (everything in the calling process, one image at a time);
    the results are the same (within float rounding of batched convolutions).

    Any exception while reading, preprocessing, predicting, post-processing or writing a file puts
    it into ``errors.csv`` (``status`` failed, the ``stage`` and the reason) and removes its outputs of
    earlier runs; files that are not images are listed there as skipped. At the end the run prints
    ``"N succeeded, M failed"`` and raises :class:`FolderInferenceError` if nothing succeeded.

    Consistency after a kill: every file is written atomically (:func:`scripts.writers.atomic_write`,
    mode from the umask); a run first removes the hidden temporary files a killed run left below
    ``OUT`` and the previous ``landmarks.csv``/``errors.csv``, and writes both at its end, the CSV
    rebuilt from the per-image JSON files of this run, so ``landmarks.csv`` exists only after a
    complete run and agrees with the JSON files. Nothing is written through a symbolic link inside
    ``OUT`` (:class:`scripts.writers.SymlinkInOutputError`, the image fails).

    Args:
        dataset: a MONAI ``Dataset`` over the items of :func:`scan_image_folder` with the
            ``preprocessing`` as transform.
        output_dir: output folder; must not be the input folder nor contain it.
        network: the eager network (``network_def``), used with ``ckpt_path``.
        inferer: called as ``inferer(inputs (B, C, H', W'), network)`` -> heatmaps ``(B, N, H', W')``; an
            inferer with ``uses_network = False`` (:class:`scripts.inferers.OnnxRuntimeInferer`) runs its
            own model, and then no checkpoint is loaded.
        postprocessing: callable on the sample dictionary (e.g. a ``Compose``).
        device: device of the network and the input.
        ckpt_path: weights for ``network`` (see :func:`load_weights`).
        torchscript_path: if given, run this TorchScript model (``models/model.ts``) instead of
            ``network`` + ``ckpt_path``.
        allow_random_weights: run without a checkpoint (smoke tests only); otherwise a missing
            checkpoint is an error before anything is written.
        dataset_dir: the input folder (used to refuse an output folder that contains it).
        skipped: relative paths of non-image files, listed in ``errors.csv`` as skipped.
        landmark_names: the ``N`` names used in the CSV and JSON (default ``landmark_00`` ...).
        label_format: ``"png"`` or ``"nii.gz"`` (or ``"nii"``).
        overlay_max_size: longest side of the overlay PNG, pixels.
        write_overlays, write_labels: switch these outputs off.
        write_markups: write a 3D Slicer markups file per image (:mod:`scripts.writers.slicer_markups`).
        write_sr: write a DICOM SR per DICOM input (:mod:`scripts.writers.dicom_sr`; needs ``highdicom``).
        measurements: callable ``(points_px (N, 2), spacing or None) -> dict`` with ``columns()`` and
            ``row(dict)`` (e.g. :class:`scripts.measurements.LowerLimbMeasurements`), or ``None``.
        provenance: the run's :func:`scripts.provenance.provenance_record`, added to every output.
        memory_format: ``torch.memory_format`` of the network input (e.g. ``torch.channels_last``).
        progress: show a tqdm progress bar; ``None``: only when stderr is a terminal.
        preview_key: sample key of the shrunk image the overlay is drawn from (written by
            :class:`scripts.transforms.LoadLandmarkImaged`), so each file is decoded once; without it
            the file is read again for the overlay.
        strict: fail the run (:class:`FolderInferenceError`) when any image failed, not only when all did.
        batch_size: images per forward pass.
        num_workers: ``DataLoader`` worker processes that read and preprocess (0: in the calling
            thread), or ``"auto"`` (:func:`resolve_num_workers`).
        num_writers: processes that post-process and write (0: in the calling process).
    """

    def __init__(
        self,
        dataset,
        output_dir: PathLike,
        network: torch.nn.Module,
        inferer,
        postprocessing,
        device: str | torch.device = "cpu",
        ckpt_path: PathLike | None = None,
        torchscript_path: PathLike | None = None,
        allow_random_weights: bool = False,
        dataset_dir: PathLike | None = None,
        skipped: Sequence[str] = (),
        landmark_names: Sequence[str] | None = None,
        label_format: str = "png",
        overlay_max_size: int = 1024,
        write_overlays: bool = True,
        write_labels: bool = True,
        write_markups: bool = True,
        write_sr: bool = True,
        measurements=None,
        provenance: Mapping | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        progress: bool | None = None,
        preview_key: str | None = LandmarkKeys.IMAGE_PREVIEW.value,
        strict: bool = False,
        batch_size: int = 1,
        num_workers: int | str = 0,
        num_writers: int = 1,
    ) -> None:
        if label_format not in ("png", "nii", "nii.gz"):
            raise ValueError(f"label_format must be 'png', 'nii' or 'nii.gz', got {label_format!r}.")
        if int(batch_size) < 1 or int(num_writers) < 0:
            raise ValueError(f"batch_size must be >= 1 and num_writers >= 0, got {batch_size}, {num_writers}.")
        self.dataset = dataset
        self.batch_size, self.num_writers = int(batch_size), int(num_writers)
        self.num_workers = resolve_num_workers(num_workers, len(dataset))
        loader = DataLoader(
            _IsolatedItems(dataset), batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
            collate_fn=_as_list, prefetch_factor=2 if self.num_workers else None,
        )
        super().__init__(device=torch.device(device), val_data_loader=loader, decollate=False, mode="eval")
        self.output_dir = Path(output_dir).expanduser().absolute()
        self.network = network
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = torch.device(device)
        self.ckpt_path = None if ckpt_path is None else os.fspath(ckpt_path)
        self.torchscript_path = None if torchscript_path is None else os.fspath(torchscript_path)
        self.allow_random_weights = as_bool(allow_random_weights)
        self.dataset_dir = None if dataset_dir is None else Path(dataset_dir).expanduser().absolute()
        self.skipped = list(skipped)
        self.landmark_names = None if landmark_names is None else [str(n) for n in landmark_names]
        self.label_suffix = "." + label_format
        self.overlay_max_size = int(overlay_max_size)
        self.write_overlays = as_bool(write_overlays)
        self.write_labels = as_bool(write_labels)
        self.write_markups, self.write_sr = as_bool(write_markups), as_bool(write_sr)
        self.measurements = measurements
        self.provenance = dict(provenance or {})
        self.memory_format = memory_format
        self.progress = progress
        self.preview_key = preview_key
        self.strict = as_bool(strict)  # a command line gives the string 'false'
        self._loaded_network: torch.nn.Module | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque = deque()
        self._outcomes: dict[int, tuple[str, str, tuple[str, str] | None]] = {}  # index -> (id, source, failure)
        self._bar = None

    # -- set-up

    def load_network(self) -> torch.nn.Module | None:
        """The network to run, in eval mode: TorchScript, or ``network`` with the checkpoint loaded;
        ``None`` when the inferer runs its own model (``uses_network = False``).

        Raises:
            FileNotFoundError: the TorchScript file, the inferer's own model or the checkpoint is missing
                (the latter unless ``allow_random_weights``).
        """
        if not getattr(self.inferer, "uses_network", True):
            self.inferer.load()  # a missing model file is an error before anything is written
            return None
        if self.torchscript_path is not None:
            if not os.path.isfile(self.torchscript_path):
                raise FileNotFoundError(
                    f"TorchScript model {self.torchscript_path} not found: export it with `python -m monai.bundle "
                    "ckpt_export ...` (see the README) or set --use_torchscript false."
                )
            network = torch.jit.load(self.torchscript_path, map_location=self.device)
        elif self.ckpt_path is not None and os.path.isfile(self.ckpt_path):
            network = load_weights(self.network, self.ckpt_path).to(self.device)
        elif self.allow_random_weights:
            logger.warning("no checkpoint loaded: running with RANDOM weights (allow_random_weights is set).")
            network = self.network.to(self.device)
        else:
            raise FileNotFoundError(
                f"checkpoint {self.ckpt_path} not found: train the model first, pass --ckpt_path PATH, or use "
                "--use_torchscript true for models/model.ts (--allow_random_weights true runs untrained weights, "
                "for smoke tests only)."
            )
        return network.eval()

    def _check_folders(self) -> None:
        if self.dataset_dir is None:
            return
        out, inp = self.output_dir.resolve(), self.dataset_dir.resolve()
        if _is_within(inp, out):
            raise ValueError(
                f"output folder {out} is the input folder or contains it ({inp}); choose another --output_dir "
                "so that inputs can never be overwritten."
            )

    # -- prediction

    def _forward(self, images: list[torch.Tensor], network) -> torch.Tensor:
        """``images`` ``B x (C, H', W')`` -> heatmaps ``(B, N, H', W')`` float32 on the CPU."""
        for image in images:
            if image.ndim != 3:
                raise ValueError(f"preprocessing gave an image of shape {tuple(image.shape)}, expected (C, H, W).")
        inputs = torch.stack(images).to(self.device, memory_format=self.memory_format)
        return self.inferer(inputs, network).detach().float().cpu()

    def predict(self, samples: list[dict], network) -> list[torch.Tensor | Exception]:
        """Heatmaps ``(N, H', W')`` of each preprocessed sample, batched; where the batch fails, each sample
        alone, so that an exception (returned in its place) belongs to one sample."""
        images = [_plain_tensor(sample[LandmarkKeys.IMAGE]) for sample in samples]
        try:
            return list(self._forward(images, network))
        except Exception:
            if len(images) == 1:
                raise
        results: list[torch.Tensor | Exception] = []
        for image in images:
            try:
                results.append(self._forward([image], network)[0])
            except Exception as err:
                results.append(err)
        return results

    # -- one image: paths, post-processing, writers

    def _outputs(self, image_id: str, source: str) -> dict[str, Path]:
        paths = {"json": output_path(self.output_dir, "landmarks", image_id, ".json")}
        if self.write_overlays:
            paths["overlay"] = output_path(self.output_dir, "overlays", image_id, ".png")
        if self.write_labels:
            paths["label"] = output_path(self.output_dir, "labels", image_id, self.label_suffix)
        if self.write_markups:
            paths["markups"] = output_path(self.output_dir, "markups", image_id, ".mrk.json")
        if self.write_sr and is_dicom(source):
            paths["sr"] = output_path(self.output_dir, "sr", image_id, ".sr.dcm")
        return paths

    def _extra(self, result: LandmarkResult) -> dict:
        """Provenance (with the image's spacing source) and measurements of one image, for every output."""
        extra = {"provenance": {**self.provenance, "spacing_source": result.spacing_source}}
        if self.measurements is not None:
            extra["measurements"] = self.measurements(result.points_px, result.spacing)
        return extra

    def _csv_columns(self) -> list[str]:
        columns = list(PROVENANCE_COLUMNS)
        return columns + (list(self.measurements.columns()) if self.measurements is not None else [])

    def _csv_cells(self, extra: dict) -> dict:
        cells = provenance_cells(extra["provenance"])
        if "measurements" in extra:
            cells.update(self.measurements.row(extra["measurements"]))
        return cells

    def _write(self, result: LandmarkResult, sample: Mapping, source: str, paths: dict[str, Path], extra: dict) -> None:
        names = self.landmark_names
        if "overlay" in paths:
            preview = sample.get(self.preview_key) if self.preview_key else None
            if preview is None:  # the preprocessing kept no shrunk copy: decode the file again
                preview = read_image(source).array
                if preview.shape != result.image_hw:
                    raise ValueError(f"{source}: read as {preview.shape}, preprocessed as {result.image_hw}.")
            labels = [str(k) for k in range(result.num_landmarks)]
            write_overlay_png(paths["overlay"], np.asarray(preview), result.points_px, labels, self.overlay_max_size,
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
        # -- 3D Slicer markups and DICOM SR (issue 14)
        names = names or [f"landmark_{k:02d}" for k in range(result.num_landmarks)]
        if "markups" in paths:
            write_markups_json(paths["markups"], result, names, image_frame(source), extra["provenance"])
        if "sr" in paths:
            write_landmark_sr(paths["sr"], source, result, names, extra["provenance"], extra.get("measurements"))

    def finish_image(self, sample: dict, heatmaps: torch.Tensor, image_id: str, source: str) -> None:
        """Post-process one image's heatmaps ``(N, H', W')`` and write its outputs (a writer process's job).

        Raises:
            _StageError: naming the stage (``postprocessing`` or ``writing``) that failed.
        """
        stage = "postprocessing"
        try:
            post = self.postprocessing({**sample, LandmarkKeys.PRED.value: heatmaps})
            result = landmark_result(post, image_id)
            stage = "writing"
            self._write(result, post, source, self._outputs(image_id, source), self._extra(result))
        except Exception as err:
            raise _StageError(stage, err) from err

    def _writer_pool(self) -> ProcessPoolExecutor | None:
        """``num_writers`` forked processes running :meth:`finish_image` of this runner, or ``None`` (write
        in this process). Forked, so that they hold this runner (transforms, settings) without pickling it,
        and forked at once, before the network or an ONNX Runtime session starts threads here (a forked
        copy of such an object can dead-lock when the copy is freed)."""
        global _WRITER
        if not self.num_writers:
            return None
        if "fork" not in multiprocessing.get_all_start_methods():  # Windows: write in this process
            logger.info("no fork on this platform: writing in the calling process (num_writers 0).")
            return None
        _WRITER = self
        gc.collect()  # no garbage of earlier runs (e.g. their sessions) goes into the writers
        pool = ProcessPoolExecutor(self.num_writers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_writer_process_setup)
        pool.submit(int).result()  # forks every writer now
        return pool

    # -- bookkeeping of outcomes

    def _record(self, index: int, image_id: str, source: str, failure: tuple[str, str] | None) -> None:
        """Record the outcome of item ``index`` (``failure`` = (stage, reason)); a failed file's outputs of
        earlier runs are removed, so that OUT never holds a result this run did not give."""
        if failure is not None:
            logger.warning("%s: %s failed: %s", image_id, *failure)
            with contextlib.suppress(Exception):
                for path in self._outputs(image_id, source).values():
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        self._outcomes[index] = (image_id, source, failure)
        if self._bar is not None:
            self._bar.update(1)

    def _collect(self, keep: int) -> None:
        """Wait for the oldest writer jobs until at most ``keep`` are pending, and record their outcomes."""
        while len(self._pending) > keep:
            index, image_id, source, job = self._pending.popleft()
            try:
                failure = job.result()
            except _StageError as err:  # sequential
                failure = (err.stage, _reason(err.error))
            except Exception as err:  # the writer process died (e.g. killed, out of memory)
                failure = ("writing", _reason(err))
            self._record(index, image_id, source, failure)

    def _submit(self, index: int, sample: dict, heatmaps: torch.Tensor, image_id: str, source: str) -> None:
        if self._pool is None:  # sequential: write now
            job: Future = Future()
            try:
                self.finish_image(sample, heatmaps, image_id, source)
                job.set_result(None)
            except _StageError as err:
                job.set_exception(err)
        else:
            job = self._pool.submit(_finish_in_writer, sample, heatmaps, image_id, source)
        self._pending.append((index, image_id, source, job))
        # bounded: a few batches in flight, so memory stays that of a few images
        self._collect(keep=2 * self.batch_size * max(1, self.num_writers))

    # -- the engine

    def _iteration(self, engine, batchdata: list[dict]) -> dict:
        """One batch of :class:`_IsolatedItems` entries: forward the images that loaded, hand each to a writer."""
        loaded = []
        for entry in batchdata:
            item = self.dataset.data[entry["index"]]
            image_id, source = str(item.get("id", Path(item["image"]).name)), str(item["image"])
            if "failure" in entry:
                self._record(entry["index"], image_id, source, entry["failure"])
            else:
                loaded.append((entry, image_id, source))
        if not loaded:
            return {"images": 0}
        samples = [entry["sample"] for entry, _, _ in loaded]
        try:
            heatmaps = self.predict(samples, self._loaded_network)
        except Exception as err:
            heatmaps = [err] * len(samples)
        for (entry, image_id, source), sample, maps in zip(loaded, samples, heatmaps):
            if isinstance(maps, Exception):
                self._record(entry["index"], image_id, source, ("inference", _reason(maps)))
            else:
                self._submit(entry["index"], sample, maps, image_id, source)
        return {"images": len(loaded)}

    # -- the folder

    def _start(self) -> None:
        """Clear what a run that was killed may have left: hidden temporary files below OUT, and the
        folder-level tables (they are written again, complete, at the end of this run)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.output_dir)
        for name in ("landmarks.csv", "errors.csv"):
            with contextlib.suppress(FileNotFoundError):
                (self.output_dir / name).unlink()

    def _finish(self, succeeded: list[str], names: list[str] | None, errors: list[dict]) -> None:
        """Write ``landmarks.csv`` from the per-image JSON files of this run, and ``errors.csv``."""
        csv_writer = None
        for image_id in succeeded:
            document = json.loads(output_path(self.output_dir, "landmarks", image_id, ".json").read_text(encoding="utf-8"))
            result = landmark_result_from_document(document)
            if csv_writer is None:
                names = names or [str(m["name"]) for m in document["landmarks"]]
                csv_writer = LandmarkCsvWriter(self.output_dir / "landmarks.csv", names, self._csv_columns())
            csv_writer.write(result, self._csv_cells(document))
        (csv_writer or LandmarkCsvWriter(self.output_dir / "landmarks.csv", names or [], self._csv_columns())).close()
        write_error_csv(self.output_dir / "errors.csv", errors)

    def run(self) -> dict[str, list[str]]:  # type: ignore[override]
        """Process every item; returns ``{"succeeded": [...], "failed": [...], "skipped": [...]}`` (ids, in
        folder order).

        Raises:
            FolderInferenceError: after writing every output, when no image succeeded, or when
                ``strict`` and some image failed (``python -m monai.bundle run`` then exits with 1).
        """
        self._check_folders()
        items = list(self.dataset.data)
        if self.write_sr and any(is_dicom(item["image"]) for item in items):
            require_highdicom()
        self._outcomes, self._pending = {}, deque()
        show = sys.stderr.isatty() if self.progress is None else bool(self.progress)
        self._pool = self._writer_pool()  # first: before the network or a session starts threads here
        try:
            self._loaded_network = self.load_network()  # a missing model: an error before anything is written
        except BaseException:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool = None
            raise
        try:
            self._start()
            with torch.inference_mode(), tqdm(total=len(items), disable=not show, unit="image") as self._bar:
                try:
                    Evaluator.run(self)
                finally:
                    self._collect(keep=0)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool, self._bar = None, None
            summary = self._summary()
            self._finish(summary["succeeded"], self.landmark_names, self._error_rows())
            message = f"{len(summary['succeeded'])} succeeded, {len(summary['failed'])} failed"
            if self.skipped:
                message += f", {len(self.skipped)} non-image file(s) skipped"
            print(f"{message}; results in {self.output_dir}" + (
                f", failures listed in {self.output_dir / 'errors.csv'}" if summary["failed"] or self.skipped else ""),
                flush=True)
        if not summary["succeeded"]:
            raise FolderInferenceError(
                f"no image of {self.dataset_dir or 'the input'} gave a result ({len(summary['failed'])} failed, "
                f"{len(self.skipped)} skipped): see {self.output_dir / 'errors.csv'}."
            )
        if self.strict and summary["failed"]:
            raise FolderInferenceError(
                f"{len(summary['failed'])} of {len(items)} images failed (strict): see {self.output_dir / 'errors.csv'}."
            )
        return summary

    def _summary(self) -> dict[str, list[str]]:
        ordered = [self._outcomes[i] for i in sorted(self._outcomes)]
        return {
            "succeeded": [image_id for image_id, _, failure in ordered if failure is None],
            "failed": [image_id for image_id, _, failure in ordered if failure is not None],
            "skipped": list(self.skipped),
        }

    def _error_rows(self) -> list[dict]:
        rows = [
            {"image": rel, "status": "skipped", "stage": "scan", "reason": "not an image file (unknown suffix, no DICOM magic)"}
            for rel in self.skipped
        ]
        for index in sorted(self._outcomes):
            image_id, _, failure = self._outcomes[index]
            if failure is not None:
                rows.append({"image": image_id, "status": "failed", "stage": failure[0], "reason": failure[1]})
        return rows

    __call__ = run


#: the runner whose :meth:`FolderInference.finish_image` the forked writer processes run
_WRITER: FolderInference | None = None


def _writer_process_setup() -> None:
    """In a writer process: keep what was inherited (never freed here), die with the runner (Linux), one
    torch thread (the runner's threads run the network)."""
    gc.freeze()
    torch.set_num_threads(1)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _finish_in_writer(sample: dict, heatmaps: torch.Tensor, image_id: str, source: str) -> tuple[str, str] | None:
    """A writer process's job: :meth:`FolderInference.finish_image`; returns ``(stage, reason)`` of a failure."""
    try:
        _WRITER.finish_image(sample, heatmaps, image_id, source)
    except _StageError as err:
        return err.stage, _reason(err.error)
    return None


class _StageError(Exception):
    """A writer job's failure with the stage it happened in (``error`` is the original exception)."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(stage, error)
        self.stage, self.error = stage, error


def _plain_tensor(image) -> torch.Tensor:
    """A ``torch.Tensor`` of ``image`` (a ``MetaTensor`` without its metadata, or an array)."""
    return image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)


BACKENDS = ("torch", "onnxruntime")


def unknown_backend(backend: str):
    """Raise the error of a ``--backend`` that is not one of :data:`BACKENDS`."""
    raise ValueError(f"--backend must be one of {BACKENDS}, got {backend!r}.")
