"""Localization models: a heatmap point model and a slice model over a whole stack.

Both wrap a timm backbone named in the config (``spinepipe.backbones``: trained from scratch
by default, or from a local timm checkpoint file or model folder); nothing is downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spinepipe.backbones import POINT_FEATURES, POOLED_FEATURES, create_backbone


def soft_argmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected (x, y) in [0, 1] of each heatmap (B, K, H, W), and the peak probability."""
    prob = logits.flatten(2).softmax(-1).view_as(logits)
    return _expectation(prob)


def _cell_centres(prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y of the map's cell centres in [0, 1]."""
    h, w = prob.shape[-2:]
    xs = (torch.arange(w, device=prob.device, dtype=prob.dtype) + 0.5) / w
    ys = (torch.arange(h, device=prob.device, dtype=prob.dtype) + 0.5) / h
    return xs, ys


def _expectation(prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = _cell_centres(prob)
    x = (prob.sum(2) * xs).sum(-1)
    y = (prob.sum(3) * ys).sum(-1)
    return torch.stack([x, y], dim=-1), prob.flatten(2).max(-1).values


def local_soft_argmax(prob: torch.Tensor, radius: int = 3, search: float | None = 0.1) -> torch.Tensor:
    """(x, y) in [0, 1] of each probability map (B, K, H, W): the expectation within a
    (2 radius + 1)-cell window around its peak.

    A global expectation averages the modes of neighbouring, similar-looking discs and pulls
    middle levels towards each other; the local one keeps sub-cell precision. The peak is
    searched only within ``search`` (a fraction of the map size) of the global expectation, so
    a stronger mode on another disc cannot capture the point.
    """
    return window_expectation(prob, search_peak(prob, search), radius)


def search_peak(prob: torch.Tensor, search: float | None = 0.1) -> torch.Tensor:
    """Flat cell index (B, K) of each map's maximum within ``search`` of its global mean."""
    flat = prob.flatten(2)
    if search is None:
        return flat.argmax(-1)
    centre, _ = _expectation(prob)
    gx, gy = _cell_centres(prob)
    d2 = ((gx[None, None, None, :] - centre[..., 0, None, None]) ** 2
          + (gy[None, None, :, None] - centre[..., 1, None, None]) ** 2)
    return torch.where(d2.flatten(2) <= search**2, flat, torch.zeros_like(flat)).argmax(-1)


def window_expectation(prob: torch.Tensor, peak: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """(x, y) in [0, 1]: the expectation of each map (B, K, H, W) within the
    (2 radius + 1)-cell window around its cell ``peak`` (B, K, flat index)."""
    b, k, h, w = prob.shape
    flat = prob.flatten(2)
    py, px = peak // w, peak % w
    offsets = torch.arange(-radius, radius + 1, device=prob.device)
    ys = (py[..., None] + offsets).clamp(0, h - 1)  # (B, K, R)
    xs = (px[..., None] + offsets).clamp(0, w - 1)
    index = (ys[..., :, None] * w + xs[..., None, :]).flatten(2)  # (B, K, R*R)
    weights = flat.gather(-1, index)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    n = len(offsets)
    cx = (xs[..., None, :].expand(-1, -1, n, -1).flatten(2).to(prob.dtype) + 0.5) / w
    cy = (ys[..., :, None].expand(-1, -1, -1, n).flatten(2).to(prob.dtype) + 0.5) / h
    return torch.stack([(weights * cx).sum(-1), (weights * cy).sum(-1)], dim=-1)


class PointModel(nn.Module):
    """Backbone features at strides 4 and 8 fused, one heatmap per target point at stride 2."""

    def __init__(self, backbone: str, n_points: int, weights: str | None = None) -> None:
        super().__init__()
        self.encoder = create_backbone(backbone, weights, **POINT_FEATURES)
        c4, c8 = self.encoder.feature_info.channels()
        self.lateral = nn.Conv2d(c8, c4, 1)
        self.head = nn.Sequential(nn.Conv2d(c4, 64, 3, padding=1), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.Conv2d(64, n_points, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f4, f8 = self.encoder(images)
        fused = f4 + F.interpolate(self.lateral(f8), size=f4.shape[-2:], mode="bilinear",
                                   align_corners=False)
        # heatmaps at stride 2: finer cells for the soft-argmax than the stride-4 features
        logits = F.interpolate(self.head(fused), scale_factor=2, mode="bilinear", align_corners=False)
        # float32 from here whatever the autocast: the soft-argmax sums thousands of cells
        logits = logits.float()
        xy, peak = soft_argmax(logits)
        return {"logits": logits, "xy": xy, "peak": peak}


class SliceModel(nn.Module):
    """Each slice encoded by the backbone, a bi-GRU over the stack, one score per slice and
    target (level, or level and side): a softmax over slices picks each target's slice."""

    def __init__(self, backbone: str, n_targets: int, hidden: int = 64,
                 weights: str | None = None) -> None:
        super().__init__()
        self.encoder = create_backbone(backbone, weights, **POOLED_FEATURES)
        self.rnn = nn.GRU(self.encoder.num_features, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, n_targets)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """stack (B, S, H, W) -> logits (B, S, n_targets)."""
        b, s, h, w = stack.shape
        features = self.encoder(stack.reshape(b * s, 1, h, w)).view(b, s, -1)
        return self.head(self.rnn(features)[0])


def build_localizer(kind: str, backbone: str, n_outputs: int, weights: str | None = None) -> PointModel | SliceModel:
    """The ``kind`` (point | slice) model with ``n_outputs`` points or slice targets: the one
    factory for training (``weights``: its starting weights, "" or None from scratch) and for
    rebuilding a checkpoint (its weights then come from the checkpoint)."""
    if kind == "point":
        return PointModel(backbone, n_outputs, weights or None)
    if kind == "slice":
        return SliceModel(backbone, n_outputs, weights=weights or None)
    raise ValueError(f"unknown localizer kind {kind!r}; expected point or slice")
