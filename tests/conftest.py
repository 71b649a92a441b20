"""Shared fixtures: small synthetic datasets built with the project's own generator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from spinepipe.config import deep_update, load_config

REPO = Path(__file__).resolve().parents[1]
# processes that render a test dataset's shards (the result does not depend on it)
WORKERS = min(4, os.cpu_count() or 1)

TINY = {
    "synthetic": {
        "n_train": 6,
        "n_test": 3,
        "sagittal": {"matrix": [64, 80], "slices": [15, 17]},
        "axial": {"matrix": [64, 72]},
    },
    "metadata": {"shards": 2},  # per-study jobs per split (2 keep the Slurm test's job count low)
    "folds": {"n": 2},
    "localize": {
        "image_size": 64,
        "slice_image_size": 32,
        "axial_crop": 32,
        "threads": 1,
        "point_model": {"epochs": 1, "batch_size": 8},
        "slice_model": {"epochs": 1},
    },
    "crops": {"shards": 2, "size": 24, "margin": 2},
    "train": {"epochs": 1, "batch_size": 8, "threads": 1, "hidden": 16},
}
# Every quirk often enough that a handful of studies shows each of them.
QUIRKY = {
    "synthetic": {
        "n_train": 8,
        "n_test": 2,
        "quirks": {
            "reversed_order": 0.5,
            "instance_offset": 0.5,
            "instance_jumps": 0.5,
            "missing_series": 0.3,
            "two_axial_series": 0.5,
            "nan_label": 0.1,
            "coordinate_off": 0.2,
            "feet_first": 0.5,
        },
    }
}


# The slowest modules, started first under pytest-xdist (make test: --dist loadfile
# --no-loadscope-reorder keeps this order), so that the workers share out the rest meanwhile
# instead of one of them starting a long module at the end.
SLOWEST_FIRST = ("test_slurm", "test_workflow", "test_hostile_split", "test_code_inputs",
                 "test_rebuild")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.module.__name__
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module and among the rest stays


def make_config(*overlays: dict[str, Any]) -> dict[str, Any]:
    """The repository's config.yaml with test overlays applied (validated)."""
    config = load_config(REPO / "config.yaml")
    for overlay in (TINY, *overlays):
        config = deep_update(config, overlay)
    return config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The tiny pipeline's run, built once per test session (tests/workflow_runs.py):
    (working directory, the damaged test studies). Tests only read it or dry-run against
    it. Under pytest-xdist the workers share it: the first to ask builds it in the session's
    common temporary folder while the others wait on its lock."""
    import json

    from filelock import FileLock
    from workflow_runs import build_tiny_run

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder every worker's base folder lies in
    workdir, done = root / "tiny_run", root / "tiny_run.json"
    with FileLock(str(root / "tiny_run.lock")):
        if not done.is_file():
            workdir.mkdir(exist_ok=True)
            done.write_text(json.dumps(build_tiny_run(workdir)))
    return workdir, json.loads(done.read_text())


@pytest.fixture(scope="session")
def chromium() -> None:
    """Headless Chromium and chromedriver installed (apt-get when missing); a test that needs
    them is skipped, saying why, where they cannot be had, and fails in CI."""
    import browser
    from system_packages import unavailable

    try:
        browser.ensure_chromium()
    except browser.ChromiumUnavailable as reason:
        unavailable("headless Chromium", reason)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from spinepipe.synth.generate import generate_dataset

    config = make_config()
    out = tmp_path_factory.mktemp("tiny") / "synthetic"
    generate_dataset(config, out, workers=WORKERS)
    return out, config


@pytest.fixture(scope="session")
def quirky_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from spinepipe.synth.generate import generate_dataset

    config = make_config(QUIRKY)
    out = tmp_path_factory.mktemp("quirky") / "synthetic"
    generate_dataset(config, out, workers=WORKERS)
    return out, config
