"""Saving and loading model files and training checkpoints without unpickling.

Every ``.pt`` file the pipeline writes is read back with ``torch.load(weights_only=True)``,
which rebuilds only tensors and plain containers (dict, list, tuple, set, str, int, float,
bool, None) and refuses anything else: a file placed under ``results/`` can never run code
when a later stage reads it. :func:`save` therefore converts what it is given to those
types first (numpy arrays to tensors, numpy scalars to Python numbers, paths to strings) and
rejects any other object at save time, so a model that cannot be reloaded is never written.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A model or checkpoint file that cannot be loaded safely."""


def plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` with every leaf an allowed type for a weights-only load; raises TypeError
    naming the key path of anything else."""
    if isinstance(value, np.generic):  # before the Python types: np.float64 is a float
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor)):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, OrderedDict):  # a state dict: keep its type and version metadata
        converted = OrderedDict((plain(k, where), plain(v, f"{where}[{k!r}]"))
                                for k, v in value.items())
        if hasattr(value, "_metadata"):
            converted._metadata = plain(value._metadata, f"{where}._metadata")
        return converted
    if isinstance(value, Mapping):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, (list, set, frozenset)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} cannot be saved for a weights-only load")


def save(obj: Mapping[str, Any], path: Path) -> None:
    """Write ``obj`` (converted by :func:`plain`) atomically: a kill mid-write never leaves
    a broken file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    torch.save(plain(obj), partial)
    os.replace(partial, path)


def load(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save` (tensors and plain containers only)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "WeightsUnpickler error" in line),
                      lines[-1] if lines else "")
        raise CheckpointError(
            f"{path}: refusing to load: it holds objects other than tensors and plain "
            f"containers ({reason[:300]}); delete it to rebuild it") from error


def rng_state() -> dict[str, Any]:
    """The torch, numpy (global) and Python ``random`` states as allowed types."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": numpy_state["bit_generator"],
                  "key": numpy_state["state"]["key"].astype(np.int64).tolist(),
                  "pos": int(numpy_state["state"]["pos"]),
                  "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
        "python": random.getstate(),  # (version, tuple of ints, gauss_next): plain already
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (parts absent from ``state`` are left as is)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        saved = state["numpy"]
        np.random.set_state({"bit_generator": saved["bit_generator"],
                             "state": {"key": np.asarray(saved["key"], dtype=np.uint32),
                                       "pos": saved["pos"]},
                             "has_gauss": saved["has_gauss"], "gauss": saved["gauss"]})
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
