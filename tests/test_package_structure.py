"""How the package is put together: its modules and scripts use each other's public names
only, and (QA) what loads a study's inputs never imports the drawing code (or matplotlib)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from spinepipe.code_inputs import import_closure

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "spinepipe"
QA_FILES = sorted([*(PACKAGE / "qa").glob("*.py"), *(REPO / "workflow_scripts").glob("qa_*.py")])
# every module of the package, the rule scripts and the benchmarks
SOURCE_FILES = sorted([*PACKAGE.rglob("*.py"), *(REPO / "workflow_scripts").glob("*.py"),
                       *(REPO / "benchmarks").glob("*.py")])
LOADERS = ("inputs.py", "sources.py")
DRAWING = ("drawing.py", "sheet.py", "galleries.py")


def _imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


@pytest.mark.parametrize("path", SOURCE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_private_name_is_imported(path):
    """A module uses another's public names only (its underscore names are its own)."""
    private = [f"{node.module}.{alias.name}" for node in _imports(path)
               if isinstance(node, ast.ImportFrom) and node.module != "__future__"
               for alias in node.names if alias.name.startswith("_")]
    assert private == [], f"{path.name} imports private names"


@pytest.mark.parametrize("loader", LOADERS)
def test_input_loaders_do_not_import_drawing_code(loader):
    closure = [loader_path := PACKAGE / "qa" / loader, *import_closure(loader_path, PACKAGE)]
    drawing = [p.name for p in closure if p.parent.name == "qa" and p.name in DRAWING]
    assert drawing == []
    matplotlib = [p.name for p in closure for node in _imports(p)
                  if any(name.split(".")[0] == "matplotlib" for name in (
                      [a.name for a in node.names] if isinstance(node, ast.Import)
                      else [node.module or ""]))]
    assert matplotlib == []
