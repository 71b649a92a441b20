"""Loading and validating the pipeline configuration.

The JSON schema (``schemas/config.schema.yaml``) catches types, unknown keys and negative
counts; :func:`check_semantics` catches what a schema cannot express (ranges given upside
down, priors that do not sum to one, a data folder that does not exist). What the config
names outside itself (timm backbones, albumentations transforms, weights files, the tracking
store, a real data folder's CSVs) is resolved by :mod:`spinepipe.preflight`, which the
workflow runs right after these checks, before any job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"
DATASET_FILES = (
    "train.csv",
    "train_label_coordinates.csv",
    "train_series_descriptions.csv",
    "test_series_descriptions.csv",
    "sample_submission.csv",
)
# what grading new studies with a trained bundle reads (sample_submission.csv is optional)
PREDICT_FILES = ("test_series_descriptions.csv", "test_images")


class ConfigError(ValueError):
    """A configuration value that the pipeline cannot run with."""


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate_schema(config: Mapping[str, Any]) -> None:
    """Raise ConfigError listing every schema violation with its key path."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {_where(e)}: {e.message}" for e in errors]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))


def _iter_ranges(node: Any, path: str = ""):
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _iter_ranges(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list) and len(node) == 2 and path.endswith(("_mm", "slices")):
        yield path, node


def check_semantics(config: Mapping[str, Any], base_dir: Path | None = None) -> None:
    """Checks beyond the schema; raise ConfigError naming the key and the problem."""
    problems: list[str] = []
    for path, (low, high) in _iter_ranges(config.get("synthetic", {}), "synthetic"):
        if low > high:
            problems.append(f"  {path}: range [{low}, {high}] has its minimum above its maximum")
    for family, levels in config.get("synthetic", {}).get("priors", {}).items():
        for level, probs in levels.items():
            if not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
                problems.append(f"  synthetic.priors.{family}.{level}: {probs} sums to "
                                f"{sum(probs):.4f}, not 1")
    weights = config.get("inference", {}).get("fold_weights")
    n_folds = config.get("folds", {}).get("n")
    if weights is not None and len(weights) != n_folds:
        problems.append(f"  inference.fold_weights: {len(weights)} weights for {n_folds} folds")
    elif weights is not None and sum(weights) <= 0:
        problems.append("  inference.fold_weights: the weights sum to zero")
    problems += _seed_problems(config)
    problems += _decode_problems(config)
    data_dir = config.get("data_dir", "")
    predicting = bool(config.get("predict", {}).get("bundle"))
    if predicting and not data_dir:
        problems.append("  data_dir: predict.bundle is set, so data_dir must name the folder of the "
                        "studies to grade (test_images/ and test_series_descriptions.csv)")
    if data_dir:
        folder = Path(data_dir)
        if not folder.is_absolute() and base_dir is not None:
            folder = base_dir / folder
        if not folder.is_dir():
            problems.append(f"  data_dir: folder '{folder}' does not exist")
        else:
            needed = PREDICT_FILES if predicting else DATASET_FILES
            missing = [f for f in needed if not (folder / f).exists()]
            if missing:
                problems.append(f"  data_dir: '{folder}' lacks {', '.join(missing)}")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))


def _seed_problems(config: Mapping[str, Any]) -> list[str]:
    """Further training seeds (``train.seeds``, digit strings from ``--config`` too): each
    once, and never the master seed, whose run is results/train and results/eval."""
    seeds = [int(s) for s in config.get("train", {}).get("seeds", [])]
    if len(set(seeds)) != len(seeds):
        return [f"  train.seeds: {seeds} repeats a seed"]
    if config.get("seed") in seeds:
        return [f"  train.seeds: {config['seed']} is the master seed (top-level 'seed'), whose run "
                "is results/train and results/eval; list only further seeds"]
    return []


def _decode_problems(config: Mapping[str, Any]) -> list[str]:
    """``localize.decode`` ranges given upside down."""
    decode = config.get("localize", {}).get("decode", {})
    return [f"  localize.decode.{key}: range {list(decode[key])} has its minimum above its maximum"
            for key in ("spacing_ratio", "spacing_mm") if key in decode and decode[key][0] > decode[key][1]]


def validate(config: Mapping[str, Any], base_dir: Path | None = None) -> None:
    """Every check of a configuration: the schema, then what it cannot express
    (:func:`check_semantics`); the workflow and the tests both call this."""
    validate_schema(config)
    check_semantics(config, base_dir)


def load_config(*paths: Path | str, base_dir: Path | None = None) -> dict[str, Any]:
    """Read config files in order (later ones overlay earlier ones) and validate."""
    config: dict[str, Any] = {}
    for path in paths:
        overlay = yaml.safe_load(Path(path).read_text()) or {}
        config = deep_update(config, overlay)
    validate(config, base_dir)
    return config


def deep_update(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge, as Snakemake does for --configfile overlays."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged
