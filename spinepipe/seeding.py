"""Seeding of the global random generators before a model is built and trained."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's, in that order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
