"""Inferers: how a network is run on a batch (MONAI's ``Inferer`` interface)."""

from __future__ import annotations

import torch
from monai.inferers import Inferer

__all__ = ["AutocastInferer"]


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
