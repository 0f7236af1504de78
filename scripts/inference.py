"""Landmark inference on a folder of images: the pipelined folder runner.

Used by ``configs/inference.json``::

    python -m monai.bundle run --config_file configs/inference.json --dataset_dir IN --output_dir OUT

:class:`FolderInference` (a MONAI ``Evaluator``) runs over the items of
:func:`scripts.data.folder.scan_image_folder`: ``DataLoader`` workers decode and preprocess the images
(:class:`scripts.data.folder.FailureIsolatingDataset`: a file that fails becomes a failure record)
while the network runs on batches; each image is then post-processed (:mod:`scripts.transforms.post`)
and written (:class:`scripts.writers.results.LandmarkResultWriter`) in a writer process. A file that
fails is recorded in ``OUT/errors.csv`` with its stage and reason, and the others go on.

Outputs below ``OUT``: ``landmarks.csv`` (one row per image), ``errors.csv``, and per input
``a/b/img.dcm``: ``landmarks/a/b/img.dcm.json``, ``overlays/a/b/img.dcm.jpg`` (``--overlay_format png``: ``.png``),
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
import logging
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import torch
from monai.engines import Evaluator
from torch.utils.data import DataLoader
from tqdm import tqdm

from scripts.checkpoints import load_weights
from scripts.data.folder import (
    FailureIsolatingDataset,
    collate_as_list,
    failure_reason,
    is_within,
    resolve_num_workers,
)
from scripts.keys import LandmarkKeys
from scripts.transforms.post import landmark_result
from scripts.utils import as_bool
from scripts.writers.results import LandmarkResultWriter

__all__ = [
    "FolderInference",
    "FolderInferenceError",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


class FolderInferenceError(RuntimeError):
    """Folder inference produced no result (or, with ``strict``, some files failed); the outputs are written."""


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
        writer: writes each image's outputs and the folder tables below its ``output_dir``
            (:class:`~scripts.writers.results.LandmarkResultWriter`: which outputs, names, provenance,
            measurements); ``output_dir`` must not be the input folder nor contain it.
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
        memory_format: ``torch.memory_format`` of the network input (e.g. ``torch.channels_last``).
        progress: show a tqdm progress bar; ``None``: only when stderr is a terminal.
        strict: fail the run (:class:`FolderInferenceError`) when any image failed, not only when all did.
        batch_size: images per forward pass.
        num_workers: ``DataLoader`` worker processes that read and preprocess (0: in the calling
            thread), or ``"auto"`` (:func:`resolve_num_workers`).
        num_writers: processes that post-process and write (0: in the calling process).
    """

    def __init__(
        self,
        dataset,
        writer: LandmarkResultWriter,
        network: torch.nn.Module,
        inferer,
        postprocessing,
        device: str | torch.device = "cpu",
        ckpt_path: PathLike | None = None,
        torchscript_path: PathLike | None = None,
        allow_random_weights: bool = False,
        dataset_dir: PathLike | None = None,
        skipped: Sequence[str] = (),
        memory_format: torch.memory_format = torch.contiguous_format,
        progress: bool | None = None,
        strict: bool = False,
        batch_size: int = 1,
        num_workers: int | str = 0,
        num_writers: int = 1,
    ) -> None:
        if int(batch_size) < 1 or int(num_writers) < 0:
            raise ValueError(f"batch_size must be >= 1 and num_writers >= 0, got {batch_size}, {num_writers}.")
        self.dataset = dataset
        self.batch_size, self.num_writers = int(batch_size), int(num_writers)
        self.num_workers = resolve_num_workers(num_workers, len(dataset))
        loader = DataLoader(
            FailureIsolatingDataset(dataset), batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
            collate_fn=collate_as_list, prefetch_factor=2 if self.num_workers else None,
            worker_init_fn=_reader_process_setup,
        )
        super().__init__(device=torch.device(device), val_data_loader=loader, decollate=False, mode="eval")
        self.writer = writer
        self.network = network
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = torch.device(device)
        self.ckpt_path = None if ckpt_path is None else os.fspath(ckpt_path)
        self.torchscript_path = None if torchscript_path is None else os.fspath(torchscript_path)
        self.allow_random_weights = as_bool(allow_random_weights)
        self.dataset_dir = None if dataset_dir is None else Path(dataset_dir).expanduser().absolute()
        self.skipped = list(skipped)
        self.memory_format = memory_format
        self.progress = progress
        self.strict = as_bool(strict)  # a command line gives the string 'false'
        self._loaded_network: torch.nn.Module | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque = deque()
        self._outcomes: dict[int, tuple[str, str, tuple[str, str] | None]] = {}  # index -> (id, source, failure)
        self._bar = None

    @property
    def output_dir(self) -> Path:
        """The output folder, the writer's."""
        return self.writer.output_dir

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
        if is_within(inp, out):
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
            self.writer.write(result, post, source)
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
            self.writer.remove(image_id, source)
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
                failure = (err.stage, failure_reason(err.error))
            except Exception as err:  # the writer process died (e.g. killed, out of memory)
                failure = ("writing", failure_reason(err))
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
        """One batch of :class:`~scripts.data.folder.FailureIsolatingDataset` entries: forward the images that loaded, hand each to a writer."""
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
                self._record(entry["index"], image_id, source, ("inference", failure_reason(maps)))
            else:
                self._submit(entry["index"], sample, maps, image_id, source)
        return {"images": len(loaded)}

    # -- the folder

    def run(self) -> dict[str, list[str]]:  # type: ignore[override]
        """Process every item; returns ``{"succeeded": [...], "failed": [...], "skipped": [...]}`` (ids, in
        folder order).

        Raises:
            FolderInferenceError: after writing every output, when no image succeeded, or when
                ``strict`` and some image failed (``python -m monai.bundle run`` then exits with 1).
        """
        self._check_folders()
        items = list(self.dataset.data)
        self.writer.check([str(item["image"]) for item in items])
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
            self.writer.start()
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
            self.writer.finish(summary["succeeded"], self._error_rows())
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


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this (child) process when the process that started it dies (Linux; elsewhere
    nothing), so that a runner killed with SIGKILL leaves no orphans: a ``DataLoader`` worker blocked writing to
    the dead runner's full pipe would otherwise wait forever."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _reader_process_setup(worker_id: int) -> None:
    """``worker_init_fn`` of the reading ``DataLoader`` workers: die with the runner."""
    _die_with_parent()


def _writer_process_setup() -> None:
    """In a writer process: keep what was inherited (never freed here), die with the runner (Linux), one
    torch thread (the runner's threads run the network)."""
    gc.freeze()
    torch.set_num_threads(1)
    _die_with_parent()


def _finish_in_writer(sample: dict, heatmaps: torch.Tensor, image_id: str, source: str) -> tuple[str, str] | None:
    """A writer process's job: :meth:`FolderInference.finish_image`; returns ``(stage, reason)`` of a failure."""
    try:
        _WRITER.finish_image(sample, heatmaps, image_id, source)
    except _StageError as err:
        return err.stage, failure_reason(err.error)
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
