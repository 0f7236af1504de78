"""The model folder (``models/``): checkpoint files saved atomically and durably, loaded ``weights_only``,
the random generators' state they carry, and the histogram-matching reference kept beside them.

Every file under ``models/`` is written through :func:`save_checkpoint` and read through
:func:`load_checkpoint`; :func:`rng_state` holds only tensors and plain values, so it loads with
``weights_only=True`` too.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from scripts.writers.files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "load_weights", "rng_state", "set_rng_state", "keep_reference_image"]


def save_checkpoint(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically and durably: a hidden temporary file in the same folder,
    flushed to disk, then renamed over ``path`` (:func:`scripts.writers.files.atomic_write`), so that a
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


def keep_reference_image(reference_image: str | os.PathLike | None, ckpt_dir: str | os.PathLike) -> str | None:
    """Copy the histogram-matching reference image next to the checkpoints (``ckpt_dir``).

    Inference has no training data at hand; it reads the reference from the model folder, so a
    trained model folder is complete on its own. Does nothing when ``reference_image`` is None.
    Returns the copy's path.
    """
    if reference_image is None:
        return None
    source = Path(reference_image)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: histogram-matching reference image not found (set --reference_image).")
    target = Path(ckpt_dir) / source.name
    if target.resolve() != source.resolve():
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
    return str(target)


def load_weights(network: torch.nn.Module, ckpt_path: str | os.PathLike) -> torch.nn.Module:
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
            f"checkpoint {path} does not fit network_def (trained with another data overlay, scn_variant, "
            f"num_landmarks or num_filters?): {' '.join(str(err).split())[:800]}"
        ) from err
    return network
