"""An exponential moving average of a severity model's weights (``train.ema_decay``).

Validation loss swings between epochs on small folds, so picking the best epoch from one
epoch's weights is noisy; the average of the weights over recent steps is smoother.
timm's ``ModelEmaV3`` keeps it (parameters and buffers alike, BatchNorm statistics
included): ``ema = d_k * ema + (1 - d_k) * weights`` after optimizer step ``k``, with timm's
warm-up ``d_k = min(decay, 1 - k^(-2/3))`` (``d_1 = 0``: the random initial weights are
dropped at once). A run here has only some tens of steps per model, so a constant decay would
keep the initial weights in the average for several epochs. Training itself never reads it, so
the raw weights follow the same path with or without it; only validation and checkpoint
selection see the average.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from spinepipe.torch_compat import import_timm

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3

log = logging.getLogger(__name__)


def make_ema(model: torch.nn.Module, decay: float) -> ModelEmaV3 | None:
    """The moving average of ``model`` (a copy on its device and memory format, so make it
    after moving the model), or None when ``decay`` is 0 (off)."""
    if not decay:
        return None
    log.info("checkpoint selection on an exponential moving average of the weights (decay %g)", decay)
    # import_timm: a CPU-only torch needs it before timm imports
    return import_timm().utils.ModelEmaV3(model, decay=decay, use_warmup=True)


def evaluated_model(model: torch.nn.Module, ema: ModelEmaV3 | None) -> torch.nn.Module:
    """The weights validation and checkpoint selection read: the average when there is one."""
    return model if ema is None else ema.module


def ema_state(ema: ModelEmaV3 | None) -> dict[str, Any]:
    """The resume-state entry of the average (none without one)."""
    return {} if ema is None else {"ema": ema.module.state_dict()}


def resumable(state: Mapping[str, Any], ema: ModelEmaV3 | None) -> bool:
    """Whether a resume ``state`` holds an average exactly when this run keeps one."""
    return ("ema" in state) == (ema is not None)


def restore_ema(ema: ModelEmaV3 | None, state: Mapping[str, Any]) -> None:
    """Load the average saved in a resume ``state`` (see :func:`ema_state`)."""
    if ema is not None:
        ema.module.load_state_dict(state["ema"])
