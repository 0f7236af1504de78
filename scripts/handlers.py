"""Ignite handlers of the training and validation workflows.

- :class:`BudgetLrSchedule`: warm-up + cosine/linear learning rate over a wall-clock budget and/or ``max_epochs``.
- :class:`FinalValidation`: one more validation when training ends off the validation interval.
- :class:`BestModelCheckpoint`: ``models/model.pt`` (bare ``state_dict``) at every new best key metric.
- :class:`LastCheckpoint`: the whole training state in ``models/last.ckpt`` every epoch, restored on resume.
- :class:`BestMetricReport`: prints the best key metric when training completes.
- :class:`WeightEMA` (attached by :class:`UpdateWeightEMA`): an exponential moving average of the weights, which validation and
  ``models/model.pt`` then use (``--ema_decay``; 0, the default, keeps the network itself).
- :class:`GradientNormClip`: clips the network's gradient norm before each optimizer step (``--grad_clip_norm``;
  0, the default, leaves the gradients alone).

Checkpoint files go through :mod:`scripts.checkpoints` (atomic durable writes, ``weights_only`` loads).

:class:`BudgetLrSchedule` drives the learning rate by the *fraction of the run done*, which is the
larger of the elapsed fraction of a wall-clock budget (``max_minutes``) and the fraction of
iterations done (``max_epochs`` x iterations per epoch): a linear warm-up, then a cosine (or
linear) decay to ``final_factor`` x the base rate. When the budget is spent it ends training with the
schedule finished (learning rate at its final value), so a budget-limited run is a complete run,
not a cut-off one. Without a budget it is an ordinary per-iteration warm-up + cosine schedule over
``max_epochs``.

Its ``state_dict`` / ``load_state_dict`` keep the elapsed training time, so a resumed run (``last.ckpt``)
continues the schedule where it stopped instead of starting the budget again. The trainer carries that
state itself (ignite's ``state_dict_user_keys``, key :data:`TRAINER_STATE_KEY`), so whatever saves and
loads the trainer (:class:`LastCheckpoint`) saves and resumes the schedule with it.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.engines.utils import IterationEvents
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from scripts.checkpoints import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from scripts.utils import as_bool, distributed_rank, unwrap_module
from scripts.writers.files import remove_stale_temporaries

__all__ = [
    "TRAINER_STATE_KEY",
    "schedule_factor",
    "BudgetLrSchedule",
    "FinalValidation",
    "BestModelCheckpoint",
    "LastCheckpoint",
    "BestMetricReport",
    "WeightEMA",
    "UpdateWeightEMA",
    "GradientNormClip",
]

#: ``engine.state`` attribute (saved with the trainer's ``state_dict``) holding :meth:`BudgetLrSchedule.state_dict`
TRAINER_STATE_KEY = "lr_budget"


def schedule_factor(progress: float, warmup_fraction: float = 0.05, final_factor: float = 0.0,
                    shape: str = "cosine") -> float:
    """Multiplier of the base learning rate at ``progress`` in ``[0, 1]`` of the run.

    Linear warm-up from ``final_factor`` (at least 1 %) to 1 over the first ``warmup_fraction``, then
    ``shape`` ``"cosine"`` (half a cosine) or ``"linear"`` down to ``final_factor`` at ``progress = 1``;
    ``"constant"`` keeps 1 after the warm-up.
    """
    p = min(max(float(progress), 0.0), 1.0)
    if warmup_fraction > 0 and p < warmup_fraction:
        start = max(final_factor, 0.01)
        return start + (1.0 - start) * p / warmup_fraction
    if shape == "constant":
        return 1.0
    q = (p - warmup_fraction) / max(1.0 - warmup_fraction, 1e-12)
    if shape == "cosine":
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * q))
    if shape == "linear":
        return final_factor + (1.0 - final_factor) * (1.0 - q)
    raise ValueError(f"schedule_factor: shape must be 'cosine', 'linear' or 'constant', got {shape!r}.")


class BudgetLrSchedule:
    """Warm-up + cosine/linear learning-rate schedule over a wall-clock budget and/or ``max_epochs``.

    Progress is ``max(elapsed / (budget - reserve), iteration / (max_epochs * epoch_length))``, where
    ``elapsed`` counts wall-clock seconds since the trainer started (validation included, plus the
    time of earlier runs when resumed) and ``reserve`` is the duration of the latest validation run
    (when ``validator`` is given), kept free for the final validation. The learning rate of every
    parameter group is set before each iteration to ``base_lr x schedule_factor(progress)``. When
    the budget is spent the trainer is terminated after the iteration, and, if that epoch would not
    be validated otherwise, ``validator`` runs once more so that the best checkpoint sees the final
    weights.

    Args:
        optimizer: the trainer's optimizer; its groups' current ``lr`` are the base rates.
        max_minutes: wall-clock budget of the training in minutes (``None`` or <= 0: no budget,
            the schedule runs over ``max_epochs``).
        warmup_fraction: fraction of the run spent in the linear warm-up.
        final_factor: learning rate at the end, as a fraction of the base rate.
        shape: ``"cosine"``, ``"linear"`` or ``"constant"`` (after the warm-up), or ``"none"``: leave
            the learning rate alone (another scheduler, or none) and only end training at the budget.
        validator: the validation engine (optional): its run time is reserved at the end of the
            budget, and it validates the last weights when the budget ends an epoch early.
        val_interval: the ``ValidationHandler``'s epoch interval; with ``validator``, the final
            validation runs only when the interrupted epoch is a multiple of it (otherwise
            ``scripts.handlers.FinalValidation`` does it).
        clock: time source in seconds (``time.monotonic``).

    Attach it after ``ValidationHandler`` and ``FinalValidation`` and before handlers that report the
    best metric. Save it with the training state (``state_dict``) to resume the schedule.
    """

    def __init__(self, optimizer, max_minutes: float | None = None, warmup_fraction: float = 0.05,
                 final_factor: float = 0.0, shape: str = "cosine", validator: Engine | None = None,
                 val_interval: int = 1, clock=time.monotonic) -> None:
        if shape != "none":
            schedule_factor(0.5, warmup_fraction, final_factor, shape)  # validates shape
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"BudgetLrSchedule: warmup_fraction must be in [0, 1), got {warmup_fraction!r}.")
        self.optimizer = optimizer
        self.budget_s = float(max_minutes) * 60.0 if max_minutes and float(max_minutes) > 0 else None
        self.warmup_fraction = float(warmup_fraction)
        self.final_factor = float(final_factor)
        self.shape = shape
        self.validator = validator
        self.val_interval = max(1, int(val_interval))
        self.clock = clock
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.elapsed_before_s = 0.0  # time of earlier (resumed) runs
        self.reserve_s = 0.0
        self.ended_by_budget = False
        self._start = None
        self._resume_checked = False
        self.logger = logging.getLogger(self.__class__.__name__)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Base rates, elapsed training seconds and the validation reserve (for ``last.ckpt``)."""
        return {"base_lrs": list(self.base_lrs), "elapsed_s": self.elapsed_s(), "reserve_s": self.reserve_s}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved schedule: the elapsed time of the saved run counts against the budget."""
        self.base_lrs = [float(v) for v in state["base_lrs"]]
        self.elapsed_before_s = float(state["elapsed_s"])
        self.reserve_s = float(state.get("reserve_s", 0.0))
        if self._start is not None:
            self._start = self.clock()

    # ------------------------------------------------------------------ engine
    def attach(self, engine: Engine) -> None:
        if TRAINER_STATE_KEY not in engine.state_dict_user_keys:
            engine.state_dict_user_keys.append(TRAINER_STATE_KEY)
        setattr(engine.state, TRAINER_STATE_KEY, None)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._resume_and_set_lr)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check_budget)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)
        engine.add_event_handler(Events.COMPLETED, self._publish)
        engine.add_event_handler(Events.COMPLETED, self._final_validation)
        if self.validator is not None:
            self.validator.add_event_handler(Events.STARTED, self._validation_started)
            self.validator.add_event_handler(Events.COMPLETED, self._validation_completed)

    def elapsed_s(self) -> float:
        """Seconds of training so far (this run since the trainer started, plus resumed runs)."""
        return self.elapsed_before_s + (0.0 if self._start is None else self.clock() - self._start)

    def progress(self, engine: Engine) -> float:
        """Fraction of the run done, in ``[0, 1]`` (see the class docstring)."""
        fractions = []
        epoch_length = engine.state.epoch_length
        if engine.state.max_epochs and epoch_length:
            # iterations done before the current one (ignite counts it from ITERATION_STARTED on)
            done = max(engine.state.iteration - 1, 0)
            fractions.append(done / (engine.state.max_epochs * epoch_length))
        if self.budget_s is not None:
            fractions.append(self.elapsed_s() / max(self.budget_s - self.reserve_s, 1e-9))
        return min(max(fractions, default=0.0), 1.0)

    def _started(self, engine: Engine) -> None:
        self._start = self.clock()
        self.ended_by_budget = False
        self._resume_checked = False
        setattr(engine.state, TRAINER_STATE_KEY, None)  # a resumed trainer state (loaded after this) fills it

    def _resume_and_set_lr(self, engine: Engine) -> None:
        if not self._resume_checked:  # first iteration: every STARTED handler (the resume) has run
            self._resume_checked = True
            saved = getattr(engine.state, TRAINER_STATE_KEY, None)
            if saved:
                self.load_state_dict(saved)
                self.logger.info(f"resumed the learning-rate schedule after {self.elapsed_before_s / 60:.1f} min")
        self._set_lr(engine)

    def _publish(self, engine: Engine) -> None:
        """Put the schedule's state on the trainer, where its ``state_dict`` (the checkpoint) finds it."""
        setattr(engine.state, TRAINER_STATE_KEY, self.state_dict())

    def _set_lr(self, engine: Engine) -> None:
        if self.shape == "none":
            return
        factor = schedule_factor(self.progress(engine), self.warmup_fraction, self.final_factor, self.shape)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def _check_budget(self, engine: Engine) -> None:
        if self.budget_s is None or self.ended_by_budget:
            return
        if self.elapsed_s() >= self.budget_s - self.reserve_s:
            self.ended_by_budget = True
            self.logger.info(
                f"time budget of {self.budget_s / 60:.1f} min spent after {engine.state.iteration} iterations "
                f"(epoch {engine.state.epoch}); the schedule is finished"
            )
            engine.terminate()

    def _validation_started(self, _engine: Engine) -> None:
        self._val_start = self.clock()

    def _validation_completed(self, _engine: Engine) -> None:
        self.reserve_s = self.clock() - getattr(self, "_val_start", self.clock())

    def _final_validation(self, engine: Engine) -> None:
        # FinalValidation covers epochs that are not multiples of the interval; an epoch cut short by
        # the budget that *is* a multiple was never validated by ValidationHandler either.
        if self.ended_by_budget and self.validator is not None and engine.state.epoch % self.val_interval == 0:
            self.validator.run(engine.state.epoch)


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
        if distributed_rank() != 0 or getattr(engine.state, "best_metric_epoch", -1) != engine.state.epoch:
            return
        save_checkpoint(unwrap_module(self.network).state_dict(), self.path)
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

    What MONAI's ``CheckpointSaver``/``CheckpointLoader`` lack and this keeps: writes go through
    :func:`scripts.checkpoints.save_checkpoint` (temporary file, fsync, rename: durable, not only atomic),
    loads through :func:`scripts.checkpoints.load_checkpoint` (``weights_only``, a clear error naming a
    damaged or unsafe file), the evaluator's best metric and epoch, the random generators and the trainer's
    user state (e.g. :class:`BudgetLrSchedule`'s elapsed time) travel with the file, and hidden temporary
    files that a killed run left beside ``path`` are removed at start. Restoring the objects is ignite's
    ``Checkpoint.load_objects``, as in ``CheckpointLoader``.

    Args:
        path: checkpoint file (e.g. ``models/last.ckpt``).
        save_dict: objects with ``state_dict``/``load_state_dict``; the engine it is attached to is
            added as ``"trainer"``.
        resume: load ``path`` when the trainer starts; without the file the run starts from scratch
            with a warning saying so.
        interval: save every ``interval`` epochs (and always at the end).
        evaluator: the validation engine whose ``best_metric``/``best_metric_epoch`` are kept.
        config: settings recorded in the file (e.g. dataset_name, num_landmarks, learning_rate).
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

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def load(self, engine: Engine) -> None:
        if distributed_rank() == 0:
            remove_stale_temporaries(os.path.dirname(os.path.abspath(self.path)))
        if not self.resume:
            return
        if not os.path.isfile(self.path):
            message = f"--resume true, but there is no checkpoint {self.path}: training starts from scratch."
            self.logger.warning(message)
            print(f"WARNING: {message}", file=sys.stderr, flush=True)
            return
        state = load_checkpoint(self.path)
        missing = sorted(set(self.save_dict) - set(state))
        if missing:
            raise KeyError(f"checkpoint {self.path} has no entry {missing} (has {sorted(state)})")
        # as MONAI's CheckpointLoader: ignite restores every object (unwrapping DDP), the new max_epochs is kept
        # so that a resumed run can be extended
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=self.save_dict, checkpoint={name: state[name] for name in self.save_dict})
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise ValueError(f"checkpoint {self.path} is at epoch {engine.state.epoch}, beyond --max_epochs {max_epochs}.")
        engine.state.max_epochs = max_epochs
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
        state = {name: unwrap_module(obj).state_dict() for name, obj in self.save_dict.items()}
        if self.evaluator is not None:
            state["best"] = {"metric": float(self.evaluator.state.best_metric),
                             "epoch": int(self.evaluator.state.best_metric_epoch)}
        state["rng"] = rng_state()
        state["config"] = self.config
        return state

    def save(self, engine: Engine) -> None:
        if distributed_rank() != 0:
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
        if distributed_rank() != 0:
            return
        state = self.evaluator.state
        best, epoch = getattr(state, "best_metric", None), getattr(state, "best_metric_epoch", None)
        print(f"Best validation {self.name}: {best:.3f} at epoch {epoch}" if best is not None and best >= 0
              else f"No validation {self.name} was computed", flush=True)


class WeightEMA:
    """Exponential moving average of a network's weights, updated after every training iteration.

    ``averaged = decay * averaged + (1 - decay) * weights`` (PyTorch's ``AveragedModel`` with
    ``get_ema_multi_avg_fn``, buffers included); the first update copies the weights. Validation,
    checkpoint selection and ``models/model.pt`` use :attr:`eval_network` (in ``configs/train.json``: the top-level
    ``ema``, attached by an :class:`UpdateWeightEMA` entry of ``train#handlers``; ``validate#evaluator#network`` is
    ``$@ema.eval_network``); the optimizer keeps stepping the network itself.
    ``decay`` 0 switches it off: :attr:`eval_network` is then the network, nothing is copied or updated, and
    :meth:`state_dict` is empty.

    With ``warmup`` the decay of the update after ``n`` earlier ones is ``min(decay, (1 + n) / (10 + n))``
    (the ramp of TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``): early on the average follows
    the network closely instead of keeping the initial weights, and from ``n = (10 * decay - 1) / (1 - decay)``
    (8,990 updates at 0.999) on it is the plain average. It matters for runs not much longer than the
    average's span; ``n_averaged`` is in :meth:`state_dict`, so a resumed run continues the ramp.

    Args:
        network: the trained network (a ``DistributedDataParallel`` wrapper is unwrapped).
        decay: weight of the old average per iteration, in ``[0, 1)``; 0.999 averages over ~1000 iterations.
        warmup: ramp the decay up from 0.1 as above (``--ema_warmup``); ``False`` uses ``decay`` from the second update.
    """

    def __init__(self, network: torch.nn.Module, decay: float = 0.0, warmup: bool = False) -> None:
        self.decay = float(decay)
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 switches the average off), got {decay!r}.")
        self.warmup = bool(warmup)
        self.network = network
        average = self._warmup_average if self.warmup else get_ema_multi_avg_fn(self.decay)
        self.averaged = (AveragedModel(unwrap_module(network), multi_avg_fn=average, use_buffers=True)
                         if self.decay > 0 else None)

    def _warmup_average(self, averaged: list, current: list, num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        get_ema_multi_avg_fn(min(self.decay, (1.0 + n) / (10.0 + n)))(averaged, current, num_averaged)

    @property
    def enabled(self) -> bool:
        return self.averaged is not None

    @property
    def eval_network(self) -> torch.nn.Module:
        """The averaged network (the network itself when switched off). Not named ``module``: that would make
        :func:`scripts.utils.unwrap_module` take this handler for a DDP wrapper."""
        return self.averaged.module if self.enabled else self.network

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)

    def update(self, engine: Engine | None = None) -> None:
        with torch.no_grad():
            self.averaged.update_parameters(unwrap_module(self.network))

    def state_dict(self) -> dict:
        return self.averaged.state_dict() if self.enabled else {}

    def load_state_dict(self, state: Mapping) -> None:
        if self.enabled:
            self.averaged.load_state_dict(state)


class UpdateWeightEMA:
    """The ``train#handlers`` entry that attaches a :class:`WeightEMA` defined elsewhere in the config.

    The average is a top-level config object (``ema``) because the evaluator reads it; referring to it from a
    list entry of its own keeps ``train#handlers`` a list of ``_target_`` dicts, which MONAI's property checks
    read and MONAI Label inserts its ``CheckpointLoader`` into (so a list index cannot name the average).
    """

    def __init__(self, ema: WeightEMA) -> None:
        self.ema = ema

    def attach(self, engine: Engine) -> None:
        self.ema.attach(engine)


class GradientNormClip:
    """Scale the network's gradients down to a total L2 norm of at most ``max_norm`` before each optimizer step.

    Runs on MONAI's ``IterationEvents.BACKWARD_COMPLETED``, which :class:`monai.engines.SupervisedTrainer` and the
    generator step of :class:`scripts.engines.AdversarialLandmarkTrainer` fire between ``backward()`` and
    ``optimizer.step()`` (``torch.nn.utils.clip_grad_norm_``). With batch size 1 one hard sample can give a gradient
    far above the usual; Adam's slow second moment then turns it into a step of many times the learning rate in
    every weight at once. At each epoch end it logs how many steps were clipped and the largest norm seen, the
    figures from which to choose ``max_norm``.

    Args:
        network: the trained network (a ``DistributedDataParallel`` wrapper's gradients are the module's).
        max_norm: the largest total gradient norm let through; 0 switches clipping off (nothing is attached).
    """

    def __init__(self, network: torch.nn.Module, max_norm: float = 0.0) -> None:
        self.max_norm = float(max_norm)
        if not (math.isfinite(self.max_norm) and self.max_norm >= 0.0):
            raise ValueError(f"grad_clip_norm must be a finite number >= 0 (0 switches clipping off), got {max_norm!r}.")
        self.network = network
        self.norms: list[float] = []
        self.logger = logging.getLogger(self.__class__.__name__)

    @property
    def enabled(self) -> bool:
        return self.max_norm > 0.0

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_epoch)

    def __call__(self, engine: Engine | None = None) -> float:
        norm = float(torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.max_norm))
        self.norms.append(norm)
        return norm

    @property
    def num_clipped(self) -> int:
        """How many of this epoch's steps so far had a gradient norm above ``max_norm`` (and were scaled down)."""
        return sum(norm > self.max_norm for norm in self.norms)

    @property
    def max_seen(self) -> float:
        """The largest gradient norm (before clipping) of this epoch's steps so far, 0 before the first."""
        return max(self.norms, default=0.0)

    def log_epoch(self, engine: Engine) -> None:
        if distributed_rank() == 0 and self.norms:
            self.logger.info(f"epoch {engine.state.epoch}: gradient norm clipped to {self.max_norm:g} in "
                             f"{self.num_clipped} of {len(self.norms)} steps (median {statistics.median(self.norms):.3g}, "
                             f"largest {self.max_seen:.3g})")
        self.norms = []
