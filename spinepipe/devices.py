"""Where a stage's models run: the configured device (``cpu`` or ``cuda``), or the CPU when
``cuda`` is asked for and no GPU is visible; and in which precision they train."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str, setting: str) -> torch.device:
    """``cuda`` when asked for and visible, else the CPU (with a warning naming the config
    ``setting`` that asked for it, e.g. ``train.device``)."""
    if name == "cuda" and not torch.cuda.is_available():
        log.warning("%s is cuda but no GPU is visible: running on CPU", setting)
        return torch.device("cpu")
    return torch.device(name)


PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags (/proc/cpuinfo) of native bfloat16 arithmetic: AVX512-BF16 or AMX on x86, BF16 on
# Arm. Without them oneDNN emulates bf16, and mixed precision is slower than float32.
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes in bfloat16 natively (False where it cannot be told)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(_BF16_FLAGS & set(value.split()))
    return False


def autocast_dtype(device: torch.device, precision: str, setting: str) -> torch.dtype | None:
    """The dtype training runs its forward passes in under ``torch.autocast`` (None: float32).

    ``auto``: float16 on a GPU (with a gradient scaler), bfloat16 on a CPU with native bf16
    arithmetic (1.7-1.9x the training steps per second of float32 there), else float32.
    ``bf16`` asks for bfloat16 anywhere; ``fp32`` turns mixed precision off. ``setting``
    names the config key in errors, e.g. ``train.precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{setting} is {precision!r}; expected one of {PRECISIONS}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_native_bf16():
            log.warning("%s is bf16 but this CPU has no native bfloat16: it is emulated (slow)", setting)
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    """The name of an autocast dtype as the config and the model card spell it."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` to ``dtype`` on ``device``; a no-op context for None (float32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The gradient scaler training in ``dtype`` needs: active for float16 only (bfloat16 has
    float32's range)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
