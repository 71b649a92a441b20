"""Where a stage's models run: the configured device (``cpu`` or ``cuda``), or the CPU when
``cuda`` is asked for and no GPU is visible."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str, setting: str) -> torch.device:
    """``cuda`` when asked for and visible, else the CPU (with a warning naming the config
    ``setting`` that asked for it, e.g. ``train.device``)."""
    if name == "cuda" and not torch.cuda.is_available():
        log.warning("%s is cuda but no GPU is visible: running on CPU", setting)
        return torch.device("cpu")
    return torch.device(name)
