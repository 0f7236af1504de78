"""Training state that survives a kill (scripts.engines: BestModelCheckpoint, LastCheckpoint, save/load).

Real training runs through ``python -m monai.bundle run training`` in a subprocess, killed with SIGKILL
while ``models/model.pt`` (or ``last.ckpt``) is being written; a resume that must carry the best
metric, the LR scheduler and the optimizer; crafted pickles that must not run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from scripts.checkpoints import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from scripts.handlers import LastCheckpoint
from scripts.checkpoints import load_weights
from scripts.networks.scn import SpatialConfigurationNet
from tests.helpers import BUNDLE_ROOT, config_network, run_bundle, training_values

TRAIN = "configs/train.json"
GRID = {"spatial_size": [32, 32], "sigma": 1.5, "amp": False}


def _values(dataset: Path, work: Path, **extra) -> dict:
    return training_values(dataset, work, **{**GRID, **extra})


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_models_folder(models: Path, num_filters: int) -> None:
    """Every (non-hidden) file under models/ loads with weights_only=True; model.pt fits the network;
    the only hidden files are the temporary files of an interrupted atomic write."""
    for path in models.iterdir():
        if path.name.startswith("."):
            assert path.name.endswith(".tmp"), path
            continue
        state = load_checkpoint(path)
        if path.name == "model.pt":
            config_network(num_filters=num_filters).load_state_dict(state)
        else:
            assert {"network", "optimizer", "trainer", "best", "rng", "config"} <= set(state)


def _kill_during_write(command: list[str], env: dict, models: Path, name: str, old: set, timeout: float = 240.0):
    """Start training, freeze it (SIGSTOP) as soon as a new temporary file of ``name`` (not in ``old``)
    appears in ``models``, and SIGKILL it. Returns (whether the write was still under way when the process was
    frozen, the temporary file names seen)."""
    with open(models.parent / "log.txt", "ab") as log:
        proc = subprocess.Popen(command, cwd=BUNDLE_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    prefix, deadline = f".{name}.", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            temps = [e.name for e in os.scandir(models) if e.name.startswith(prefix) and e.name not in old]
            if temps:
                os.kill(proc.pid, signal.SIGSTOP)
                still_writing = [t for t in temps if (models / t).exists()]
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return bool(still_writing), still_writing
            time.sleep(0.002)
        raise AssertionError(f"no write of {name} within {timeout} s (exit {proc.poll()}): "
                             f"{(models.parent / 'log.txt').read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_while_checkpoints_are_written_leaves_loadable_files(tiny_dataset, tmp_path):
    """Killed (SIGKILL) while model.pt, then last.ckpt, is being replaced: the old files stay whole."""
    num_filters = 64  # the default network: model.pt is ~16 MB, so its write takes a while
    values = _values(tiny_dataset, tmp_path, num_filters=num_filters, max_epochs=1)
    run_bundle("training", [TRAIN], values)  # a complete first run: model.pt and last.ckpt
    models = tmp_path / "models"
    _check_models_folder(models, num_filters)
    before = {p.name: _digest(p) for p in models.iterdir()}

    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN,
               "--bundle_root", str(BUNDLE_ROOT)]
    for key, value in {**values, "max_epochs": 50}.items():
        command += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(BUNDLE_ROOT))
    # a fresh run's first validation is always its best, so each run rewrites model.pt at epoch 1
    hits, stale = 0, set()
    for target in ["model.pt", "last.ckpt", "model.pt", "last.ckpt", "model.pt"]:  # more only if a kill came late
        hit, temps = _kill_during_write(command, env, models, target, stale)
        assert not stale & {p.name for p in models.iterdir()}, "a killed run's temporary file was not cleaned up"
        stale = set(temps)
        hits += hit
        _check_models_folder(models, num_filters)
        # the file being replaced when the kill came is the old, complete one (model.pt is written
        # before last.ckpt in an epoch, so a kill during last.ckpt comes after a new model.pt)
        assert _digest(models / target) == before[target]
        before = {p.name: _digest(p) for p in models.iterdir() if not p.name.startswith(".")}
        if hits >= 3:
            break
    assert hits >= 3, "the kills never came while a checkpoint was being written"
    # what is left resumes (LastCheckpoint's own loading, as --resume true does it)
    net = config_network(num_filters=num_filters)
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = 2
    handler = LastCheckpoint(str(models / "last.ckpt"), {"network": net}, resume=True)
    handler.attach(engine)
    handler.load(engine)
    assert engine.state.epoch == 1 and engine.state.iteration == 2


def test_resume_carries_best_metric_scheduler_and_optimizer(tiny_dataset, tmp_path):
    """Two epochs, then a resume to four: the LR schedule and Adam's step counts go on where they
    stopped, and a validation worse than the saved best does not replace model.pt."""
    lr, total = 1e-4, 4
    values = _values(tiny_dataset, tmp_path, num_filters=8, learning_rate=lr, lr_decay=True, lr_schedule="none",
                     **{"lr_scheduler#total_iters": total})
    log = run_bundle("training", [TRAIN], {**values, "max_epochs": 2, "resume": True})
    assert "there is no checkpoint" in log and "starts from scratch" in log  # resume without a file says so
    models = tmp_path / "models"
    state = load_checkpoint(models / "last.ckpt")
    assert state["lr_scheduler"]["last_epoch"] == 2 and state["trainer"]["iteration"] == 4
    assert state["best"]["epoch"] in (1, 2) and state["best"]["metric"] > 0
    assert state["config"]["lr_decay"] is True and state["config"]["num_filters"] == 8

    # pretend an earlier epoch had reached an error no later epoch can beat
    state["best"] = {"metric": 1e-3, "epoch": 2}
    save_checkpoint(state, models / "last.ckpt")
    best_before = _digest(models / "model.pt")

    log = run_bundle("training", [TRAIN], {**values, "max_epochs": total, "resume": True})
    assert "resumed from" in log and "best metric 0.0010 at epoch 2" in log
    state = load_checkpoint(models / "last.ckpt")
    assert _digest(models / "model.pt") == best_before  # epochs 3 and 4 were worse: model.pt kept
    assert state["best"] == {"metric": 1e-3, "epoch": 2}
    assert state["trainer"]["iteration"] == 8 and state["lr_scheduler"]["last_epoch"] == total
    # LinearLR from 1 to 0.01 over 4 epochs ends at lr * 0.01, as in an uninterrupted run
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr * 0.01)
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {8.0}  # Adam's moments went on from step 4


class _Payload:
    """Unpickling calls ``os.mkdir(marker)``: stands for any code a crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    net = SpatialConfigurationNet(num_landmarks=3, num_filters=4)
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "last.ckpt"
    torch.save({"network": net.state_dict(), "trainer": {"epoch": 1}, "payload": _Payload(marker)}, crafted)
    torch.load(crafted, weights_only=False)  # the file really runs code when fully unpickled
    assert marker.is_dir()
    marker.rmdir()

    engine = Engine(lambda e, b: None)
    handler = LastCheckpoint(str(crafted), {"network": net}, resume=True)
    handler.attach(engine)
    with pytest.raises(ValueError, match="last.ckpt cannot be loaded as plain weights"):
        handler.load(engine)
    with pytest.raises(ValueError, match="weights_only"):
        load_weights(net, crafted)
    torch.save(_Payload(marker), tmp_path / "model.pt")
    with pytest.raises(ValueError, match="model.pt cannot be loaded"):
        load_weights(net, tmp_path / "model.pt")
    assert not marker.exists()


def test_last_checkpoint_loads_with_weights_only_and_restores_rng(tmp_path):
    """The genuine file holds only tensors and plain values; the random streams go on after a reload."""
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    path = tmp_path / "state.ckpt"
    save_checkpoint({"rng": rng_state()}, path)
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    set_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_checkpoint_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        save_checkpoint({"x": torch.zeros(2)}, tmp_path / "a.pt")
        os.umask(0o002)
        save_checkpoint({"x": torch.zeros(2)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == 0o664
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]
