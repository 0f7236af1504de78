"""What machine a benchmark ran on: every speed or accuracy-per-minute figure depends on it.

CPU models differ between sessions (an AVX2-only EPYC, an EPYC with AVX-512-BF16, a Xeon with AMX), and
``amp: auto`` turns bf16 autocast on only where it is fast, so a figure without its machine cannot be compared.
"""

from __future__ import annotations

import os
import platform

import torch

from scripts.utils import bf16_is_fast


def cpu_model() -> str:
    """Processor name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """One-minute load average (how busy the machine is), None where unknown."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def describe(device: str | torch.device = "cpu") -> dict:
    """CPU model, CPU count, torch version and threads, whether bf16 is fast on ``device``, load average now."""
    device = torch.device(device)
    machine = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "bf16_is_fast": bf16_is_fast(device),
               "load_average": load_average()}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine
