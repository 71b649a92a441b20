"""Start-up hook (installed as a .pth file by the Makefile): before torchvision is first
imported, let :func:`spinepipe.torch_compat.ensure_torchvision_importable` define the op
schemas a CPU-only torch lacks, so a plain ``import timm`` works in the virtual environment.

It imports nothing heavy at start-up: torch is only imported when torchvision is.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder


class _BeforeTorchvision(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" and "torchvision" not in sys.modules:
            from spinepipe.torch_compat import ensure_torchvision_importable

            ensure_torchvision_importable()  # re-entry (it looks torchvision up) is a no-op
        return None  # the regular finders do the import


if not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
    sys.meta_path.insert(0, _BeforeTorchvision())
