"""Make ``import timm`` work on a CPU-only torch.

timm imports torchvision, and the only torchvision matching torch 2.13.0 is a CUDA build
whose C++ ops cannot load against the CPU wheel. torchvision then registers fake kernels
for ``torchvision::nms`` and ``torchvision::qnms`` without checking that the ops exist, and
the import dies with "operator torchvision::nms does not exist". Defining the two schemas
first lets torchvision (and timm) import; the ops themselves are never called here. On a
GPU machine the ops library loads and nothing is touched.
"""

from __future__ import annotations

import logging
import sys

import torch

log = logging.getLogger(__name__)

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # kept alive: dropping it removes the defs
_checking = False  # looking torchvision up can re-enter through the start-up import hook


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def _ops_library_loads() -> bool:
    """Whether torchvision's compiled ops can be loaded against this torch."""
    try:
        from importlib.util import find_spec
        from pathlib import Path

        spec = find_spec("torchvision")
        if spec is None or spec.origin is None:
            return False
        candidates = sorted(Path(spec.origin).parent.glob("_C*.so"))
        if not candidates:
            return False
        torch.ops.load_library(str(candidates[0]))
        return True
    except (OSError, RuntimeError):
        return False


def ensure_torchvision_importable() -> None:
    """Define the torchvision op schemas torchvision needs at import, where they are absent."""
    global _library, _checking
    if "torchvision" in sys.modules or _library is not None or _checking:
        return
    _checking = True
    try:
        missing = [name for name in _SCHEMAS if not _op_exists(name)]
        if not missing or _ops_library_loads():
            return
    finally:
        _checking = False
    _library = torch.library.Library("torchvision", "DEF")
    for name in missing:
        _library.define(_SCHEMAS[name])
    log.debug("defined torchvision op schemas %s for a CPU-only torch", missing)


def import_timm():
    """``import timm`` after making sure it can import; returns the module."""
    ensure_torchvision_importable()
    import timm

    return timm
