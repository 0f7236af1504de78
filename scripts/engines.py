"""Glue between the landmark samples and MONAI's engines: batch preparation, inferer, output transforms, handlers.

A collated landmark batch (see docs/DESIGN.md) carries ``image`` (B, 1, H, W), ``landmarks`` (B, N, 2)
network px, ``landmarks_mask`` (B, N), ``landmarks_orig`` (B, N, 2) original px, ``net_from_orig``
(B, 3, 3), ``orig_hw`` (B, 2) and ``spacing`` (B, 2) mm/px (NaN when unknown). Points are (x, y),
pixel centres at integers (``scripts.coords``).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import sys
from collections.abc import Mapping

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer
from monai.utils import CommonKeys as Keys

from scripts.heatmap import decode_heatmaps, points_to_original
from scripts.writers import atomic_write, remove_stale_temporaries

__all__ = [
    "TARGET_KEYS",
    "prepare_landmark_batch",
    "bf16_is_fast",
    "as_bool",
    "resolve_flag",
    "AutocastInferer",
    "decode_batch_points",
    "network_points_transform",
    "original_points_transform",
    "lower_is_better",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "BestModelCheckpoint",
    "LastCheckpoint",
    "BestMetricReport",
]

TARGET_KEYS = ("landmarks", "landmarks_mask", "landmarks_orig", "net_from_orig", "orig_hw", "spacing")
"""Batch keys passed on to the loss and the metrics as the engine's label."""


def _as_tensor(value, device, non_blocking):
    if isinstance(value, torch.Tensor):
        return value.to(device=device, non_blocking=non_blocking)
    return torch.as_tensor(value, device=device)


def prepare_landmark_batch(batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
    """Split a collated landmark batch into the network input and a dict of targets.

    Args:
        batchdata: collated batch dict with ``image`` (B, 1, H, W) and the keys of ``TARGET_KEYS``
            that are present.
        device: target device.
        kwargs: extra arguments of ``Tensor.to`` for the image only (e.g. ``memory_format``).

    Returns:
        ``(image, targets)`` where ``targets`` maps each present key of ``TARGET_KEYS`` to a tensor.
    """
    image = torch.as_tensor(batchdata["image"]).to(device=device, non_blocking=non_blocking, **kwargs)
    targets = {k: _as_tensor(batchdata[k], device, non_blocking) for k in TARGET_KEYS if k in batchdata}
    return image, targets


def bf16_is_fast(device) -> bool:
    """Whether bf16 autocast speeds up convolutions on ``device``.

    On CPUs, only with native bf16 support in oneDNN (AVX-512-BF16 or AMX); elsewhere PyTorch falls
    back to a reference convolution that is many times slower than fp32. On CUDA, where the GPU supports bf16.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0", "none", "")


def as_bool(value) -> bool:
    """A config flag as bool; also the strings a command line gives (``--resume true`` reaches the
    config as the string ``"true"``, and ``--lr_decay false`` as ``"false"``, which Python finds true).

    Raises:
        ValueError: a string that is not one of true/false, yes/no, on/off, 1/0.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    return bool(value)


def resolve_flag(value, device) -> bool:
    """Config flag that may be ``"auto"``: then True exactly where bf16 is fast (see ``bf16_is_fast``).

    Used for ``amp`` (bf16 autocast) and ``channels_last``, which pay off together on AMX CPUs and
    cost time on CPUs without native bf16. Other values go through :func:`as_bool`.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return bf16_is_fast(device)
    try:
        return as_bool(value)
    except ValueError:
        raise ValueError(f"expected true, false or 'auto', got {value!r}") from None


class AutocastInferer(Inferer):
    """Runs the network under ``torch.autocast`` and returns float32 heatmaps.

    MONAI's ``amp`` flag is CUDA-only; this inferer also gives bf16 autocast on CPUs with AMX.

    Args:
        device_type: ``"cpu"`` or ``"cuda"``.
        dtype: autocast dtype name, ``"bfloat16"`` or ``"float16"``.
        enabled: False runs plain fp32.
    """

    def __init__(self, device_type: str = "cpu", dtype: str = "bfloat16", enabled: bool = True) -> None:
        super().__init__()
        self.device_type = str(device_type).split(":")[0]
        self.dtype = getattr(torch, dtype)
        self.enabled = bool(enabled)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled):
            out = network(inputs, *args, **kwargs)
        return out.float()


def decode_batch_points(heatmaps: torch.Tensor) -> torch.Tensor:
    """Sub-pixel maxima of predicted heatmaps (B, N, H, W) -> points (B, N, 2), network px (x, y)."""
    points, _ = decode_heatmaps(heatmaps.detach().float())
    return points


DECODED_KEY = "pred_points"


def decoded_points(output: Mapping) -> torch.Tensor:
    """The decoded ``pred`` of an engine output, (B, N, 2) network px, decoded once per iteration.

    The first call stores ``(pred, points)`` in ``output[DECODED_KEY]`` (the engine's output dict), so
    the validation metrics and the evaluation report, which all read the same output, share one
    decoding; the stored points are used only while ``output["pred"]`` is the same tensor.
    """
    pred = output[Keys.PRED]
    cached = output.get(DECODED_KEY)
    if cached is not None and cached[0] is pred:
        return cached[1]
    points = decode_batch_points(pred)
    if isinstance(output, dict):
        output[DECODED_KEY] = (pred, points)
    return points


def network_points_transform(output: Mapping):
    """Engine output -> ``(pred_points, true_points)`` in network px, for point-error metrics.

    True points of landmarks that are missing are NaN and so ignored by the metrics.
    """
    return decoded_points(output), output[Keys.LABEL]["landmarks"].float()


def original_points_transform(output: Mapping):
    """Engine output -> ``(pred_points, true_points)`` in original-image px (ground truth from the annotation)."""
    label = output[Keys.LABEL]
    pred_net = decoded_points(output)
    return points_to_original(pred_net, label["net_from_orig"]).float(), label["landmarks_orig"].float()


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` for errors: MONAI starts ``best`` at -1, so any first value is an improvement."""
    return best < 0 or current < best


class FinalValidation:
    """Validates once more when training ends, unless its last epoch was just validated.

    ``ValidationHandler`` validates every ``interval`` epochs; a run whose epoch count is not a multiple
    of it (e.g. MONAI Label's short trainings, or ``--max_epochs 1``) would otherwise end without
    validating its last epoch, so the best checkpoint (``models/model.pt``) would not consider it.
    Attach it after ``ValidationHandler`` and before handlers that report the best metric.

    Args:
        validator: the evaluator, run as ``validator.run(epoch)`` like ``ValidationHandler`` does.
        interval: the ``ValidationHandler``'s epoch interval.
    """

    def __init__(self, validator, interval: int) -> None:
        self.validator = validator
        self.interval = max(1, int(interval))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch > 0 and epoch % self.interval != 0:
            self.validator.run(epoch)


def _unwrap(obj):
    """The module inside DistributedDataParallel / DataParallel, else ``obj``."""
    return getattr(obj, "module", obj)


def save_checkpoint(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically and durably: a hidden temporary file in the same folder,
    flushed to disk, then renamed over ``path`` (:func:`scripts.writers.atomic_write`), so that a
    kill or a power cut at any moment leaves either the old or the new complete file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only, so a
    crafted file cannot run code. Raises ``ValueError`` naming the file if it holds anything else
    or is damaged."""
    try:
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(
            f"checkpoint {os.fspath(path)} cannot be loaded as plain weights (weights_only=True): it is damaged, or "
            f"holds objects other than tensors and containers, which are refused because loading them could run "
            f"code: {' '.join(str(err).split())[:300]}"
        ) from err


def rng_state() -> dict:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global random generators, as tensors
    and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore :func:`rng_state` (CUDA states only where the same number of GPUs is there)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


class BestModelCheckpoint:
    """Saves the network's ``state_dict`` to ``path`` (e.g. ``models/model.pt``) whenever a validation
    gives a new best key metric, atomically and durably (:func:`save_checkpoint`).

    Attach to the evaluator (``val_handlers``). "New best" is MONAI's own decision: the epoch the
    evaluator records in ``state.best_metric_epoch`` (with its ``metric_cmp_fn``) is the epoch just
    validated. :class:`LastCheckpoint` saves and restores ``best_metric``/``best_metric_epoch``, so
    after a resume only a validation that beats the best so far replaces the file.

    Args:
        path: file written; it holds the bare ``state_dict`` (a ``DistributedDataParallel``
            wrapper's ``module.`` is left out), loadable with ``torch.load(..., weights_only=True)``.
        network: the network whose weights are saved.
    """

    def __init__(self, path: str, network: torch.nn.Module) -> None:
        self.path = str(path)
        self.network = network
        self.logger = logging.getLogger(self.__class__.__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if _rank() != 0 or getattr(engine.state, "best_metric_epoch", -1) != engine.state.epoch:
            return
        save_checkpoint(_unwrap(self.network).state_dict(), self.path)
        self.logger.info(f"saved {self.path} (best metric {engine.state.best_metric:.4f} at epoch {engine.state.epoch})")


class LastCheckpoint:
    """Saves the whole training state to one file after every epoch, atomically, and restores it on start.

    The file (``torch.save`` of a dict, loadable with ``weights_only=True``) holds ``state_dict()`` of
    every entry of ``save_dict`` (network, optimizer, loss, LR scheduler, ...: anything with
    ``state_dict``/``load_state_dict``; ``None`` entries, e.g. a disabled scheduler, are left out),
    ``"trainer"`` (epoch, iteration, epoch length), ``"best"`` (the evaluator's best metric and its
    epoch), ``"rng"`` (:func:`rng_state`) and ``"config"`` (the given settings). On resume all of it is
    restored before the first iteration; settings in ``config`` that differ from the saved ones are
    logged. The trainer's new ``max_epochs`` is kept, so a resumed run can be extended.

    Writes go through :func:`save_checkpoint` (temporary file, fsync, rename); hidden temporary files
    that a killed run left beside ``path`` are removed at start.

    Args:
        path: checkpoint file (e.g. ``models/last.ckpt``).
        save_dict: objects with ``state_dict``/``load_state_dict``; the engine it is attached to is
            added as ``"trainer"``.
        resume: load ``path`` when the trainer starts; without the file the run starts from scratch
            with a warning saying so.
        interval: save every ``interval`` epochs (and always at the end).
        evaluator: the validation engine whose ``best_metric``/``best_metric_epoch`` are kept.
        config: settings recorded in the file (e.g. preset, num_landmarks, learning_rate).
    """

    def __init__(
        self,
        path: str,
        save_dict: Mapping,
        resume: bool = False,
        interval: int = 1,
        evaluator: Engine | None = None,
        config: Mapping | None = None,
    ) -> None:
        self.path = str(path)
        self.save_dict = {name: obj for name, obj in dict(save_dict).items() if obj is not None}
        self.resume = as_bool(resume)
        self.interval = max(1, int(interval))
        self.evaluator = evaluator
        self.config = {str(k): v for k, v in dict(config or {}).items()}
        self.logger = logging.getLogger(self.__class__.__name__)

    def with_entries(self, entries: Mapping) -> LastCheckpoint:
        """A copy that also saves ``entries`` (e.g. the discriminators of Adversarial PoseNet)."""
        clash = sorted(set(entries) & set(self.save_dict))
        if clash:
            raise ValueError(f"{self.path} already saves {clash}.")
        return LastCheckpoint(self.path, {**self.save_dict, **entries}, self.resume, self.interval, self.evaluator, self.config)

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def load(self, engine: Engine) -> None:
        if _rank() == 0:
            remove_stale_temporaries(os.path.dirname(os.path.abspath(self.path)))
        if not self.resume:
            return
        if not os.path.isfile(self.path):
            message = f"--resume true, but there is no checkpoint {self.path}: training starts from scratch."
            self.logger.warning(message)
            print(f"WARNING: {message}", file=sys.stderr, flush=True)
            return
        state = load_checkpoint(self.path)
        for name, obj in self.save_dict.items():
            if name not in state:
                raise KeyError(f"checkpoint {self.path} has no entry '{name}' (has {sorted(state)})")
            if isinstance(obj, Engine):
                # keep the new max_epochs so that a resumed run can be extended
                max_epochs = engine.state.max_epochs
                obj.load_state_dict({k: v for k, v in state[name].items() if k != "max_epochs"} | {"max_epochs": max_epochs})
            else:
                _unwrap(obj).load_state_dict(state[name])
        best = state.get("best")
        if self.evaluator is not None and best is not None:
            self.evaluator.state.best_metric = best["metric"]
            self.evaluator.state.best_metric_epoch = best["epoch"]
        if "rng" in state:
            set_rng_state(state["rng"])
        changed = {k: (state.get("config", {}).get(k), v) for k, v in self.config.items() if state.get("config", {}).get(k) != v}
        if changed:
            self.logger.warning(f"resuming {self.path} with changed settings (saved -> now): {changed}")
        best_text = f", best metric {best['metric']:.4f} at epoch {best['epoch']}" if best and best["epoch"] >= 0 else ""
        self.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}{best_text}")

    def state(self) -> dict:
        """What :meth:`save` writes (see the class docstring)."""
        state = {name: _unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
        if self.evaluator is not None:
            state["best"] = {"metric": float(self.evaluator.state.best_metric),
                             "epoch": int(self.evaluator.state.best_metric_epoch)}
        state["rng"] = rng_state()
        state["config"] = self.config
        return state

    def save(self, engine: Engine) -> None:
        if _rank() != 0:
            return
        save_checkpoint(self.state(), self.path)


class BestMetricReport:
    """Prints the evaluator's best key metric when training completes (e.g. the mean point error).

    Args:
        evaluator: the validation engine whose ``state.best_metric`` is reported.
        name: what the metric is, with its unit, e.g. ``"mean point error (network px)"``.
    """

    def __init__(self, evaluator: Engine, name: str) -> None:
        self.evaluator = evaluator
        self.name = name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if _rank() != 0:
            return
        state = self.evaluator.state
        best, epoch = getattr(state, "best_metric", None), getattr(state, "best_metric_epoch", None)
        print(f"Best validation {self.name}: {best:.3f} at epoch {epoch}" if best is not None and best >= 0
              else f"No validation {self.name} was computed", flush=True)


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
