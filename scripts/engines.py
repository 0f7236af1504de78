"""Glue between the landmark samples and MONAI's engines: batch preparation, inferer, output transforms, handlers.

A collated landmark batch (see docs/DESIGN.md) carries ``image`` (B, 1, H, W), ``landmarks`` (B, N, 2)
network px, ``landmarks_mask`` (B, N), ``landmarks_orig`` (B, N, 2) original px, ``net_from_orig``
(B, 3, 3), ``orig_hw`` (B, 2) and ``spacing`` (B, 2) mm/px (NaN when unknown). Points are (x, y),
pixel centres at integers (``scripts.coords``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer
from monai.utils import CommonKeys as Keys

from scripts.heatmap import decode_heatmaps, points_to_original

__all__ = [
    "TARGET_KEYS",
    "prepare_landmark_batch",
    "bf16_is_fast",
    "resolve_flag",
    "AutocastInferer",
    "decode_batch_points",
    "network_points_transform",
    "original_points_transform",
    "lower_is_better",
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


def resolve_flag(value, device) -> bool:
    """Config flag that may be ``"auto"``: then True exactly where bf16 is fast (see ``bf16_is_fast``).

    Used for ``amp`` (bf16 autocast) and ``channels_last``, which pay off together on AMX CPUs and
    cost time on CPUs without native bf16.
    """
    if isinstance(value, str):
        if value.lower() != "auto":
            raise ValueError(f"expected true, false or 'auto', got {value!r}")
        return bf16_is_fast(device)
    return bool(value)


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


class LastCheckpoint:
    """Saves the training state to one file after every epoch, atomically, and restores it on start.

    Args:
        path: checkpoint file (e.g. ``models/last.ckpt``).
        save_dict: objects with ``state_dict``/``load_state_dict`` (network, optimizer, loss, ...); the
            engine it is attached to is added as ``"trainer"`` (epoch and iteration counters).
        resume: load ``path`` when the trainer starts, if it exists.
        interval: save every ``interval`` epochs (and always at the end).
    """

    def __init__(self, path: str, save_dict: Mapping, resume: bool = False, interval: int = 1) -> None:
        self.path = str(path)
        self.save_dict = dict(save_dict)
        self.resume = bool(resume)
        self.interval = max(1, int(interval))
        self.logger = logging.getLogger(self.__class__.__name__)

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def load(self, engine: Engine) -> None:
        if not (self.resume and os.path.isfile(self.path)):
            return
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        for name, obj in self.save_dict.items():
            if name not in state:
                raise KeyError(f"checkpoint {self.path} has no entry '{name}' (has {sorted(state)})")
            if isinstance(obj, Engine):
                # keep the new max_epochs so that a resumed run can be extended
                max_epochs = engine.state.max_epochs
                obj.load_state_dict({k: v for k, v in state[name].items() if k != "max_epochs"} | {"max_epochs": max_epochs})
            else:
                getattr(obj, "module", obj).load_state_dict(state[name])
        self.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}")

    def save(self, engine: Engine) -> None:
        if _rank() != 0:
            return
        state = {name: getattr(obj, "module", obj).state_dict() for name, obj in self.save_dict.items()}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, self.path)


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
