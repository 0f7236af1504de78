"""scripts.handlers.BudgetLrSchedule on real ignite engines, and ``--max_minutes`` / ``--tune_fraction``
through ``python -m monai.bundle run training`` on a tiny demo data set."""

from __future__ import annotations

import math
import re

import pytest
import torch
from ignite.engine import Engine, Events

from monai.engines import SupervisedTrainer

from scripts.handlers import BudgetLrSchedule, GradientNormClip, WeightEMA, schedule_factor
from tests.helpers import run_bundle, training_values


TINY = {"num_filters": 8, "spatial_size": [64, 64], "sigma": 1.5}


class FakeClock:
    """A clock that advances ``step`` seconds every time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Validator(Engine):
    """An ignite engine that, like MONAI's evaluators, is run as ``run(global_epoch)``."""

    def run(self, global_epoch: int = 1):  # noqa: D102
        return super().run([0], max_epochs=1)


def _optimizer(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_schedule_factor_shapes():
    assert schedule_factor(0.0, 0.1, 0.0) == pytest.approx(0.01)
    assert schedule_factor(0.05, 0.1, 0.0) == pytest.approx(0.505)
    assert schedule_factor(0.1, 0.1, 0.0) == pytest.approx(1.0)
    assert schedule_factor(0.55, 0.1, 0.0) == pytest.approx(0.5)
    assert schedule_factor(1.0, 0.1, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert schedule_factor(1.0, 0.1, 0.02, "linear") == pytest.approx(0.02)
    assert schedule_factor(0.7, 0.0, 0.0, "constant") == 1.0
    with pytest.raises(ValueError, match="shape must be"):
        schedule_factor(0.5, 0.1, 0.0, "step")


def test_budget_ends_training_with_finished_schedule_and_validates_the_cut_epoch():
    optimizer = _optimizer()
    lrs, validated = [], []
    trainer = Engine(lambda e, b: lrs.append(optimizer.param_groups[0]["lr"]))
    validator = Validator(lambda e, b: None)
    validator.add_event_handler(Events.COMPLETED, lambda e: validated.append(trainer.state.iteration))
    # every clock read advances 0.7 s; a budget of 1 min ends the run long before 100 epochs
    schedule = BudgetLrSchedule(optimizer, max_minutes=1.0, warmup_fraction=0.1, validator=validator,
                                clock=FakeClock(0.7))
    schedule.attach(trainer)
    trainer.run(range(10), max_epochs=100)
    assert schedule.ended_by_budget and trainer.state.iteration < 100
    assert trainer.state.iteration % 10 != 0  # stopped inside an epoch ...
    assert validated == [trainer.state.iteration]  # ... which was validated once at the end
    peak = max(lrs)
    assert peak == pytest.approx(0.1, rel=0.05) and lrs[0] < 0.03  # warm-up, then ...
    assert lrs[-1] < 0.002 and optimizer.param_groups[0]["lr"] < 0.002  # ... decayed to ~0 at the end
    assert all(a >= b for a, b in zip(lrs[lrs.index(peak):], lrs[lrs.index(peak) + 1:]))  # monotone decay


def test_without_budget_schedule_runs_over_max_epochs_and_state_resumes():
    optimizer = _optimizer()
    lrs = []
    trainer = Engine(lambda e, b: lrs.append(optimizer.param_groups[0]["lr"]))
    schedule = BudgetLrSchedule(optimizer, warmup_fraction=0.0)
    schedule.attach(trainer)
    trainer.run(range(5), max_epochs=4)
    assert not schedule.ended_by_budget and trainer.state.iteration == 20
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * i / 20)) for i in range(20)]
    assert lrs == pytest.approx(expected)

    # a budget schedule saved after 30 s of a 1-minute budget continues from there
    clock = FakeClock(0.0)
    first = BudgetLrSchedule(_optimizer(), max_minutes=1.0, warmup_fraction=0.0, clock=clock)
    first._start = clock()
    clock.now += 30.0
    state = first.state_dict()
    assert state["elapsed_s"] == pytest.approx(30.0)
    second = BudgetLrSchedule(_optimizer(lr=0.5), max_minutes=1.0, warmup_fraction=0.0, clock=FakeClock(0.0))
    second.load_state_dict(state)
    assert second.base_lrs == [0.1] and second.elapsed_s() == pytest.approx(30.0)
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs, engine.state.epoch_length = None, None
    assert second.progress(engine) == pytest.approx(0.5)


def test_max_minutes_ends_a_bundle_run_with_lr_near_zero(tiny_dataset, tmp_path):
    values = {**TINY, "dataset_dir": str(tiny_dataset), "ckpt_dir": str(tmp_path / "models"),
              "output_dir": str(tmp_path / "runs"), "max_epochs": 1000, "val_interval": 1,
              "max_minutes": 0.15, "lr_schedule": "cosine", "tune_fraction": 0.34, "scn_variant": "fast"}
    log = run_bundle("training", ["configs/train.json"], values)
    assert re.search(r"time budget of 0\.1 min spent after \d+ iterations", log), log[-2000:]
    assert "Best validation mean point error (network px)" in log
    state = torch.load(tmp_path / "models" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] < 1000 * state["trainer"]["epoch_length"]
    lr = state["optimizer"]["param_groups"][0]["lr"]
    assert 0.0 <= lr < 0.02 * 1e-4  # the cosine reached ~0 when the budget ended
    assert (tmp_path / "models" / "model.pt").is_file()
    # the trainer's state in last.ckpt carries the schedule: a resumed run finds the budget spent
    assert state["trainer"]["lr_budget"]["elapsed_s"] >= 0.15 * 60 - state["trainer"]["lr_budget"]["reserve_s"]
    log = run_bundle("training", ["configs/train.json"], {**values, "resume": True})
    assert re.search(r"resumed the learning-rate schedule after 0\.[12] min", log), log[-2000:]
    done = state["trainer"]["iteration"]
    assert re.search(rf"time budget of 0\.1 min spent after {done + 1} iterations", log), log[-2000:]


def test_weight_ema_averages_after_each_iteration_and_is_the_network_when_off():
    net = torch.nn.Linear(1, 1, bias=False)
    ema = WeightEMA(net, decay=0.75)
    engine = Engine(lambda e, b: None)
    ema.attach(engine)
    values = iter([1.0, 2.0, 4.0])

    @engine.on(Events.ITERATION_STARTED)
    def step(_):
        with torch.no_grad():
            net.weight.fill_(next(values))

    engine.run([0, 1, 2], max_epochs=1)
    # first update copies (1); then 0.75 * 1 + 0.25 * 2 = 1.25; then 0.75 * 1.25 + 0.25 * 4 = 1.9375
    assert ema.eval_network.weight.item() == pytest.approx(1.9375) and net.weight.item() == 4.0
    restored = WeightEMA(torch.nn.Linear(1, 1, bias=False), decay=0.75)
    restored.load_state_dict(ema.state_dict())
    assert restored.eval_network.weight.item() == pytest.approx(1.9375) and int(restored.averaged.n_averaged) == 3

    off = WeightEMA(net, decay=0.0)
    assert off.eval_network is net and off.state_dict() == {} and not off.enabled
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        WeightEMA(net, decay=1.0)


def test_weight_ema_warmup_ramps_the_decay_up_to_the_plain_average():
    def averaged(decay: float, warmup: bool, values: list[float]) -> WeightEMA:
        net = torch.nn.Linear(1, 1, bias=False)
        ema = WeightEMA(net, decay=decay, warmup=warmup)
        for value in values:
            with torch.no_grad():
                net.weight.fill_(value)
            ema.update()
        return ema

    # copy (1); decay min(0.75, 2/11) -> 2/11 * 1 + 9/11 * 2; then min(0.75, 3/12) = 0.25 -> 0.25 * prev + 0.75 * 4
    second = 2 / 11 + 18 / 11
    assert averaged(0.75, True, [1.0, 2.0, 4.0]).eval_network.weight.item() == pytest.approx(0.25 * second + 3.0)
    # from n = (10 * 0.75 - 1) / 0.25 = 26 updates on the ramp is at the decay: the next update is the plain one
    ema = averaged(0.75, True, [0.0] * 27)
    before = ema.eval_network.weight.item()
    with torch.no_grad():
        ema.network.weight.fill_(8.0)
    ema.update()
    assert ema.eval_network.weight.item() == pytest.approx(0.75 * before + 0.25 * 8.0)
    # a long run forgets the start with or without the ramp; a short one keeps far less of it with the ramp
    start_then_ones = [100.0] + [1.0] * 50
    plain, ramped = (averaged(0.9, w, start_then_ones).eval_network.weight.item() for w in (False, True))
    assert plain == pytest.approx(1.0 + 99.0 * 0.9 ** 50) and ramped < 1.0 + 1e-3 < plain


def test_ema_weights_are_validated_saved_and_resumed_by_a_bundle_run(tiny_dataset, tmp_path):
    values = training_values(tiny_dataset, tmp_path, **TINY, max_epochs=1, ema_decay=0.5, scn_variant="fast")
    run_bundle("training", ["configs/train.json"], values)
    best = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    state = torch.load(tmp_path / "models" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(state["ema"]["n_averaged"]) == 2
    # model.pt (the only validation, so the best) holds the average, not the last weights
    assert all(torch.equal(best[k], state["ema"]["module." + k]) for k in best)
    assert any(not torch.equal(best[k], state["network"][k]) for k in best)
    run_bundle("training", ["configs/train.json"], {**values, "max_epochs": 2, "resume": True})
    state = torch.load(tmp_path / "models" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(state["ema"]["n_averaged"]) == 4  # continued, not restarted


def _one_sgd_step(max_norm: float) -> tuple[float, float, GradientNormClip]:
    """One step of a real MONAI trainer (SGD, lr 1) on a sample with a large loss: the raw gradient norm and
    the norm of the weight change."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    data = [{"image": torch.full((1, 4), 10.0), "label": torch.full((1, 1), -100.0)}]
    raw = torch.autograd.grad(torch.nn.functional.mse_loss(net(data[0]["image"]), data[0]["label"]),
                              list(net.parameters()))
    clip = GradientNormClip(net, max_norm=max_norm)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
                                loss_function=torch.nn.MSELoss(), train_handlers=[clip])
    trainer.run()
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    return float(torch.cat([g.flatten() for g in raw]).norm()), float((after - before).norm()), clip


def test_gradient_norm_clip_bounds_the_step_of_a_monai_trainer():
    raw_norm, step, clip = _one_sgd_step(max_norm=0.5)
    assert raw_norm > 100.0
    assert step == pytest.approx(0.5, rel=1e-4)  # SGD at lr 1: the step is the clipped gradient
    assert clip.num_clipped == 0 and clip.max_seen == 0.0  # reset at the epoch end, after logging
    raw_off, step_off, off = _one_sgd_step(max_norm=0.0)
    assert not off.enabled and step_off == pytest.approx(raw_off, rel=1e-4)  # off: the raw gradient
    with pytest.raises(ValueError, match="grad_clip_norm must be a finite number >= 0"):
        GradientNormClip(torch.nn.Linear(1, 1), max_norm=-1.0)


def test_grad_clip_norm_clips_a_bundle_training_run(tiny_dataset, tmp_path):
    values = training_values(tiny_dataset, tmp_path, **TINY, max_epochs=1, grad_clip_norm=1e-9, scn_variant="fast")
    log = run_bundle("training", ["configs/train.json"], values)
    found = re.search(r"epoch 1: gradient norm clipped to 1e-09 in (\d+) of (\d+) steps "
                      r"\(median ([0-9.e+-]+), largest ([0-9.e+-]+)\)", log)
    assert found, log[-2000:]
    assert int(found.group(1)) == int(found.group(2)) > 0
    assert 1e-9 < float(found.group(3)) <= float(found.group(4))
