"""The package modules a rule's script executes: the static import closure of the script
within ``spinepipe``, so a rule lists them as inputs without anyone keeping the list.

Snakemake reruns a rule when its script changes, not when library code the script imports
changes; listing the closure as inputs closes that gap. The closure follows every
``import``/``from ... import`` of the package (also those inside functions, which run when the
function does), relative imports, and the ``__init__.py`` of every package on the way, since
importing ``spinepipe.a.b`` executes ``spinepipe/__init__.py`` and ``spinepipe/a/__init__.py``.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "spinepipe"


def module_file(module: str, package_dir: Path) -> Path | None:
    """The file of a dotted ``spinepipe`` module name, or None outside the package or when
    no such module exists (then the name is an attribute, e.g. ``from spinepipe.x import f``)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file() and len(parts) > 1:
        return base.with_suffix(".py")
    return None


def _module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


@cache  # each file is parsed once per process (the Snakefile asks for ~40 closures)
def _imported_names(path: Path, package_dir: Path) -> frozenset[str]:
    """Dotted names a file imports (modules, or modules plus an attribute)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    inside = path.is_relative_to(package_dir)
    current = _module_name(path, package_dir) if inside else ""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: only meaningful inside the package
                if not inside:
                    continue
                anchor = current.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(name for name in names if name.split(".")[0] == PACKAGE)


def _with_parent_packages(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def _closure(path: Path, package_dir: Path) -> frozenset[Path]:
    seen: set[Path] = set()
    pending = [path]
    while pending:
        current = pending.pop()
        for name in _imported_names(current, package_dir):
            for module in _with_parent_packages(name):
                found = module_file(module, package_dir)
                if found is not None and found not in seen:
                    seen.add(found)
                    pending.append(found)
    return frozenset(seen)


def import_closure(script: Path, package_dir: Path) -> list[Path]:
    """Every ``spinepipe`` module file that running ``script`` can execute, sorted.

    ``package_dir`` is the package's folder (``<repo>/spinepipe``); the script itself is not
    included (Snakemake tracks a rule's script on its own)."""
    return sorted(_closure(script.resolve(), package_dir.resolve()))


def code_digest(module_file: Path) -> str:
    """SHA-256 over a module and every package module it can execute, for caches and resume
    states that must not outlive a change of the code that made them."""
    module_file = module_file.resolve()
    package_dir = next(p for p in module_file.parents if p.name == PACKAGE)
    digest = hashlib.sha256()
    for path in [module_file, *import_closure(module_file, package_dir)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()
