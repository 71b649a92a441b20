"""Shared fixtures: small synthetic datasets built with the project's own generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spinepipe.config import deep_update, load_config

REPO = Path(__file__).resolve().parents[1]

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


def make_config(*overlays: dict[str, Any]) -> dict[str, Any]:
    """The repository's config.yaml with test overlays applied (validated)."""
    config = load_config(REPO / "config.yaml")
    for overlay in (TINY, *overlays):
        config = deep_update(config, overlay)
    return config


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from spinepipe.synth.generate import generate_dataset

    config = make_config()
    out = tmp_path_factory.mktemp("tiny") / "synthetic"
    generate_dataset(config, out)
    return out, config


@pytest.fixture(scope="session")
def quirky_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from spinepipe.synth.generate import generate_dataset

    config = make_config(QUIRKY)
    out = tmp_path_factory.mktemp("quirky") / "synthetic"
    generate_dataset(config, out)
    return out, config
