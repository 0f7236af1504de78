"""Small helpers the configs and engines share: boolean flags from command lines, the bf16 question,
the distributed rank and the module inside a data-parallel wrapper."""

from __future__ import annotations

import torch

__all__ = ["as_bool", "resolve_flag", "bf16_is_fast", "distributed_rank", "unwrap_module"]


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


def distributed_rank() -> int:
    """This process's rank in ``torch.distributed``, 0 when it is not initialised."""
    return torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0


def unwrap_module(obj):
    """The module inside DistributedDataParallel / DataParallel, else ``obj``."""
    return getattr(obj, "module", obj)
