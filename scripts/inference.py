"""Landmark inference on a folder of images: folder scan, heatmap post-processing, and the runner.

Used by ``configs/inference.json``::

    python -m monai.bundle run --config_file configs/inference.json --dataset_dir IN --output_dir OUT

* :func:`scan_image_folder` lists every image below the input folder (recursively; DICOM with or
  without suffix, PNG, JPEG, TIFF, NIfTI, MHA/MHD, NRRD, see :func:`scripts.io.is_image_candidate`)
  and the other files, which are reported as skipped.
* :class:`DecodeLandmarksd` and :class:`LandmarksToOriginald` are the ``postprocessing``: heatmaps
  ``pred`` ``(N, H', W')`` -> points in network pixels and a confidence -> points in original pixels
  and mm (axis order and pixel centres of :mod:`scripts.coords`).
* :class:`LandmarkLabelOutputd` ends the ``postprocessing`` with the bundle's post-processed
  output, the form MONAI Label's bundle tasks expect: ``pred`` becomes the label image of the
  predicted landmarks (disc of value ``k + 1`` per landmark) and ``result`` their coordinates (JSON).
* :class:`FolderInference` loads the weights, runs preprocessing, inferer and postprocessing on one
  file at a time and writes with :mod:`scripts.writers`; a file that fails is recorded in
  ``OUT/errors.csv`` with its reason and the others go on.

Outputs below ``OUT``: ``landmarks.csv`` (one row per image), ``errors.csv``, and per input
``a/b/img.dcm``: ``landmarks/a/b/img.dcm.json``, ``overlays/a/b/img.dcm.png``,
``labels/a/b/img.dcm.png`` (disc of value ``k + 1`` per landmark, the original image's size),
``markups/a/b/img.dcm.mrk.json`` (3D Slicer) and, for DICOM inputs, ``sr/a/b/img.dcm.sr.dcm``
(DICOM SR); every output carries the provenance and, with ``measurements``, the measurements.
Every result carries a trust ``status`` (:mod:`scripts.trust`). A run that produced no result
raises :class:`FolderInferenceError` (exit code 1 of ``monai.bundle run``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from tqdm import tqdm

from scripts.checkpoints import load_checkpoint
from scripts.data.image_reader import ImageReadError, is_image_candidate, read_image
from scripts.heatmap import decode_heatmaps, points_to_mm, points_to_original
from scripts.provenance import PROVENANCE_COLUMNS, provenance_cells
from scripts.utils import as_bool
from scripts.writers import (
    LandmarkCsvWriter,
    LandmarkResult,
    landmark_label_image,
    landmark_result_from_document,
    landmarks_document,
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
    "DecodeLandmarks",
    "DecodeLandmarksd",
    "LandmarksToOriginald",
    "landmark_result",
    "LandmarkLabelOutputd",
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
# post-processing transforms


class DecodeLandmarks(Transform):
    """Heatmaps of one image -> sub-pixel maxima and a confidence per landmark.

    Args:
        gamma: height of the target Gaussians in training; the confidence is ``peak / gamma`` clipped
            to ``[0, 1]``.
    """

    def __init__(self, gamma: float = 100.0) -> None:
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma}.")
        self.gamma = float(gamma)

    def __call__(self, heatmaps) -> tuple[np.ndarray, np.ndarray]:
        """``heatmaps`` ``(N, H, W)`` tensor or array -> ``(points (N, 2) float32 (x, y) heatmap px,
        confidence (N,) float32)``."""
        hm = torch.as_tensor(heatmaps.as_tensor() if hasattr(heatmaps, "as_tensor") else heatmaps)
        if hm.ndim != 3:
            raise ValueError(f"{type(self).__name__}: expected heatmaps (N, H, W), got shape {tuple(hm.shape)}.")
        points, peak = decode_heatmaps(hm.detach().float()[None])
        confidence = (peak[0] / self.gamma).clamp(0.0, 1.0)
        return points[0].cpu().numpy().astype(np.float32), confidence.cpu().numpy().astype(np.float32)


class DecodeLandmarksd(MapTransform):
    """Dictionary version of :class:`DecodeLandmarks`.

    Reads the heatmaps ``d[key]`` ``(N, H, W)`` and writes ``d[points_key]`` ``(N, 2)`` network pixels
    and ``d[confidence_key]`` ``(N,)``.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        points_key: str = "pred_landmarks",
        confidence_key: str = "pred_confidence",
        gamma: float = 100.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"{type(self).__name__}: exactly one heatmap key, got {self.keys}.")
        self.points_key = points_key
        self.confidence_key = confidence_key
        self.decoder = DecodeLandmarks(gamma)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.points_key], d[self.confidence_key] = self.decoder(d[key])
        return d


class LandmarksToOriginald(MapTransform):
    """Network-pixel points -> original pixels (through ``net_from_orig``) and mm (through ``spacing``).

    Writes ``d[orig_key]`` ``(N, 2)`` ``(x, y)`` original pixels and ``d[mm_key]`` ``(N, 2)`` mm
    (NaN when the spacing is the NaN pair, i.e. unknown), both float64.

    Args:
        keys: the points ``(N, 2)`` in network pixels (``DecodeLandmarksd``'s ``points_key``).
        orig_key, mm_key: keys written; for several ``keys`` they are suffixed with the key.
        matrix_key: the ``(3, 3)`` ``net_from_orig`` of the preprocessing.
        spacing_key: ``(sx, sy)`` mm/px, NaN pair when unknown (``LoadLandmarkImaged``).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred_landmarks",
        orig_key: str = "pred_landmarks_orig",
        mm_key: str = "pred_landmarks_mm",
        matrix_key: str = "net_from_orig",
        spacing_key: str = "spacing",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.orig_key, self.mm_key = orig_key, mm_key
        self.matrix_key, self.spacing_key = matrix_key, spacing_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        several = len(self.keys) > 1
        for key in self.key_iterator(d):
            points = np.asarray(torch.as_tensor(d[key]).cpu(), dtype=np.float64)
            matrix = np.asarray(torch.as_tensor(d[self.matrix_key]).cpu(), dtype=np.float64)
            spacing = d.get(self.spacing_key)
            spacing = np.full(2, np.nan) if spacing is None else np.asarray(torch.as_tensor(spacing).cpu(), np.float64)
            orig = points_to_original(points, matrix)
            suffix = f"_{key}" if several else ""
            d[self.orig_key + suffix] = orig
            d[self.mm_key + suffix] = points_to_mm(orig, spacing.reshape(2))
        return d


def landmark_result(sample: Mapping, image_id: str) -> LandmarkResult:
    """The :class:`scripts.writers.LandmarkResult` of a post-processed sample.

    Reads ``orig_hw``, ``pred_landmarks_orig`` ``(N, 2)``, ``pred_landmarks_mm`` ``(N, 2)``,
    ``pred_confidence`` ``(N,)``, ``spacing`` (NaN pair when unknown), ``spacing_source`` and, where
    :class:`scripts.trust.TrustStatusd` ran, ``status`` and ``status_reasons`` (else ``"ok"``).
    """
    spacing = np.asarray(sample.get("spacing", (np.nan, np.nan)), dtype=np.float64).reshape(2)
    known = bool(np.isfinite(spacing).all())
    return LandmarkResult(
        image=image_id,
        image_hw=tuple(int(v) for v in np.asarray(sample["orig_hw"]).reshape(2)),
        points_px=sample["pred_landmarks_orig"],
        confidence=sample["pred_confidence"],
        spacing=(float(spacing[0]), float(spacing[1])) if known else None,
        spacing_source=str(sample.get("spacing_source", "unknown")) if known else "unknown",
        points_mm=sample["pred_landmarks_mm"],
        status=str(sample.get("status", "ok")),
        status_reasons=tuple(sample.get("status_reasons", ())),
    )


class LandmarkLabelOutputd(MapTransform):
    """Post-processed output: the label image of the predicted landmarks, plus their coordinates as JSON.

    Replaces ``d[label_key]`` (the heatmaps) with a uint8 label image of the original image's size,
    a disc of value ``k + 1`` and radius ``radius`` original pixels around landmark ``k``
    (:func:`scripts.writers.landmark_label_image`), and writes ``d[result_key]`` =
    :func:`scripts.writers.landmarks_document` (original pixels, mm, confidence; JSON-serialisable).

    The label array is indexed ``[x, y]``, shape ``(W, H)`` (a transposed view, no copy): the spatial
    order of arrays from MONAI's ``LoadImage``, which MONAI's and MONAI Label's image writers
    transpose back when saving, so the saved file is upright. This is the one place where the bundle's ``[row, col]`` arrays
    are converted (see :mod:`scripts.coords`); the coordinates in ``result`` are ``(x, y)`` pixels.

    Args:
        radius: disc radius, original pixels.
        landmark_names: the ``N`` names of the JSON (default ``landmark_00`` ...).
        label_key, result_key: keys written.
        image_path_keys: keys tried, in order, for the image name in the JSON (``id`` of the folder
            datalist, ``image_path`` of MONAI Label).
    """

    def __init__(
        self,
        radius: float = 5.0,
        landmark_names: Sequence[str] | None = None,
        label_key: str = "pred",
        result_key: str = "result",
        image_path_keys: Sequence[str] = ("id", "image_path"),
    ) -> None:
        super().__init__(label_key)
        self.radius = float(radius)
        self.landmark_names = None if landmark_names is None else list(landmark_names)
        self.label_key, self.result_key = label_key, result_key
        self.image_path_keys = tuple(image_path_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        name = next((str(d[k]) for k in self.image_path_keys if d.get(k) is not None), "")
        result = landmark_result(d, os.path.basename(name) if os.path.isabs(name) else name)
        d[self.label_key] = landmark_label_image(result.points_px, result.image_hw, self.radius).T
        d[self.result_key] = landmarks_document(result, self.landmark_names)
        return d


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


class FolderInference:
    """Predict landmarks for every image of a folder and write the results; failures are recorded.

    Per image (one at a time, so memory stays that of one image): ``dataset[i]`` (the
    ``preprocessing`` applied to ``{"id", "image"}``), ``inferer(image[None], network)``,
    ``postprocessing`` on ``{**sample, "pred": heatmaps (N, H', W')}``, which must provide
    ``pred_landmarks_orig`` (N, 2), ``pred_landmarks_mm`` (N, 2), ``pred_confidence`` (N,) and, for
    the label files, ``pred`` = the label image indexed ``[x, y]`` (:class:`LandmarkLabelOutputd`), then
    the writers (see the module docstring for the files). Any exception while doing so puts the
    file into ``errors.csv`` (``status`` failed, the ``stage`` and the reason) and removes its
    outputs of earlier runs; files that are not images are listed there as skipped. At the end the
    run prints ``"N succeeded, M failed"`` and raises :class:`FolderInferenceError` if nothing succeeded.

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
        inferer: called as ``inferer(inputs (1, C, H', W'), network)`` -> heatmaps ``(1, N, H', W')``.
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
        write_markups: write a 3D Slicer markups file per image (:mod:`scripts.slicer_markups`).
        write_sr: write a DICOM SR per DICOM input (:mod:`scripts.dicom_sr`; needs ``highdicom``).
        measurements: callable ``(points_px (N, 2), spacing or None) -> dict`` with ``columns()`` and
            ``row(dict)`` (e.g. :class:`scripts.measurements.LowerLimbMeasurements`), or ``None``.
        provenance: the run's :func:`scripts.provenance.provenance_record`, added to every output.
        memory_format: ``torch.memory_format`` of the network input (e.g. ``torch.channels_last``).
        progress: show a tqdm progress bar; ``None``: only when stderr is a terminal.
        preview_key: sample key of the shrunk image the overlay is drawn from (written by
            :class:`scripts.transforms.LoadLandmarkImaged`), so each file is decoded once; without it
            the file is read again for the overlay.
        strict: fail the run (:class:`FolderInferenceError`) when any image failed, not only when all did.
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
        preview_key: str | None = "image_preview",
        strict: bool = False,
    ) -> None:
        if label_format not in ("png", "nii", "nii.gz"):
            raise ValueError(f"label_format must be 'png', 'nii' or 'nii.gz', got {label_format!r}.")
        self.dataset = dataset
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

    # -- set-up

    def load_network(self) -> torch.nn.Module:
        """The network to run, in eval mode: TorchScript, or ``network`` with the checkpoint loaded.

        Raises:
            FileNotFoundError: the TorchScript file or the checkpoint is missing (the latter unless
                ``allow_random_weights``).
        """
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

    # -- one image

    def _predict(self, sample: dict, network: torch.nn.Module) -> dict:
        image = torch.as_tensor(sample["image"])
        if image.ndim != 3:
            raise ValueError(f"preprocessing gave an image of shape {tuple(image.shape)}, expected (C, H, W).")
        inputs = image[None].to(self.device, memory_format=self.memory_format)
        heatmaps = self.inferer(inputs, network)
        return {**sample, "pred": heatmaps[0].detach().float().cpu()}

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
            label_xy = sample["pred"]
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

    def run(self) -> dict[str, list[str]]:
        """Process every item; returns ``{"succeeded": [...], "failed": [...], "skipped": [...]}`` (ids).

        Raises:
            FolderInferenceError: after writing every output, when no image succeeded, or when
                ``strict`` and some image failed (``python -m monai.bundle run`` then exits with 1).
        """
        network = self.load_network()
        self._check_folders()
        self._start()
        items = list(self.dataset.data)
        if self.write_sr and any(is_dicom(item["image"]) for item in items):
            require_highdicom()
        names = self.landmark_names
        summary: dict[str, list[str]] = {"succeeded": [], "failed": [], "skipped": list(self.skipped)}
        errors = [
            {"image": rel, "status": "skipped", "stage": "scan", "reason": "not an image file (unknown suffix, no DICOM magic)"}
            for rel in self.skipped
        ]
        show = sys.stderr.isatty() if self.progress is None else bool(self.progress)
        try:
            with torch.inference_mode(), tqdm(total=len(items), disable=not show, unit="image") as bar:
                for index, item in enumerate(items):
                    image_id = str(item.get("id", Path(item["image"]).name))
                    stage = "preprocessing"
                    paths: dict[str, Path] = {}
                    try:
                        paths = self._outputs(image_id, item["image"])
                        sample = self.dataset[index]
                        stage = "inference"
                        sample = self._predict(sample, network)
                        stage = "postprocessing"
                        sample = self.postprocessing(sample)
                        result = landmark_result(sample, image_id)
                        if names is None:
                            names = [f"landmark_{k:02d}" for k in range(result.num_landmarks)]
                        stage = "writing"
                        self._write(result, sample, item["image"], paths, self._extra(result))
                        summary["succeeded"].append(image_id)
                    except Exception as err:  # one bad file must not stop the folder
                        if stage == "preprocessing" and _read_error(err) is not None:
                            stage = "reading"
                        logger.warning("%s: %s failed: %s", image_id, stage, _reason(err))
                        for path in paths.values():
                            with contextlib.suppress(FileNotFoundError):
                                path.unlink()
                        errors.append({"image": image_id, "status": "failed", "stage": stage, "reason": _reason(err)})
                        summary["failed"].append(image_id)
                    bar.update(1)
        finally:
            self._finish(summary["succeeded"], names, errors)
            message = f"{len(summary['succeeded'])} succeeded, {len(summary['failed'])} failed"
            if self.skipped:
                message += f", {len(self.skipped)} non-image file(s) skipped"
            print(f"{message}; results in {self.output_dir}" + (
                f", failures listed in {self.output_dir / 'errors.csv'}" if errors else ""), flush=True)
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

    __call__ = run

