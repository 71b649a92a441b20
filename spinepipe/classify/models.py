"""Severity classifier: a timm backbone encodes every slice of every view, a sequence head
pools the slices, and a linear layer gives three severity logits per condition."""

from __future__ import annotations

import torch
from torch import nn

from spinepipe.backbones import POOLED_FEATURES, create_backbone
from spinepipe.constants import LEVELS, SEVERITIES

HEADS = ("gru", "lstm", "meanmax")


class SeverityModel(nn.Module):
    """(B, T, H, W) slices (T = views x slices) and their mask (B, T) -> severity logits
    (B, n_outputs, 3) and, when ``aux``, level logits (B, 5) from the same pooled features.

    Each slice position (view and offset from the target) has a learned embedding, so the
    head knows which series and which neighbour a feature comes from. Masked slices (absent
    from the stack or from a missing series) are ignored by the pooling.
    """

    def __init__(self, backbone: str, n_slices: int, n_outputs: int, head: str = "gru",
                 hidden: int = 64, dropout: float = 0.2, aux: bool = True,
                 weights: str | None = None) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
        self.n_outputs, self.head_kind = n_outputs, head
        self.encoder = create_backbone(backbone, weights, **POOLED_FEATURES)
        features = self.encoder.num_features
        self.position = nn.Parameter(torch.zeros(n_slices, features))
        if head == "meanmax":
            pooled = 2 * features
        else:
            rnn = nn.GRU if head == "gru" else nn.LSTM
            self.rnn = rnn(features, hidden, batch_first=True, bidirectional=True)
            self.attention = nn.Linear(2 * hidden, 1)
            pooled = 2 * hidden
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(pooled, n_outputs * len(SEVERITIES))
        self.level_head = nn.Linear(pooled, len(LEVELS)) if aux else None

    def pool(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # a sample with every slice masked keeps them all rather than dividing by zero
        mask = mask | ~mask.any(dim=1, keepdim=True)
        if self.head_kind == "meanmax":
            m = mask[..., None].to(features.dtype)
            mean = (features * m).sum(1) / m.sum(1)
            maxed = features.masked_fill(~mask[..., None], float("-inf")).amax(1)
            return torch.cat([mean, maxed], dim=-1)
        # masked slices enter the recurrence as zeros, whatever their pixels held
        sequence = self.rnn(features * mask[..., None].to(features.dtype))[0]
        scores = self.attention(sequence).squeeze(-1).masked_fill(~mask, float("-inf"))
        return (scores.softmax(dim=1)[..., None] * sequence).sum(1)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t, h, w = images.shape
        features = self.encoder(images.reshape(b * t, 1, h, w)).view(b, t, -1) + self.position
        pooled = self.dropout(self.pool(features, mask))
        out = {"logits": self.classifier(pooled).view(b, self.n_outputs, len(SEVERITIES))}
        if self.level_head is not None:
            out["level_logits"] = self.level_head(pooled)
        return out
