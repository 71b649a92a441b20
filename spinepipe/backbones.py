"""Backbone factory of every model (localization and severity): a timm model built with one
input channel, trained from scratch or started from a local weights file; nothing is
downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from spinepipe.torch_compat import import_timm


def create_backbone(name: str, weights: str | None = None, **kwargs) -> nn.Module:
    """A timm model with random weights, or weights from a local file (never a hub)."""
    timm = import_timm()
    model = timm.create_model(name, pretrained=False, in_chans=1, **kwargs)
    if weights:
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if len(missing) > len(state) // 2:
            raise ValueError(f"{weights}: does not match backbone {name} "
                             f"({len(missing)} missing keys)")
    return model
