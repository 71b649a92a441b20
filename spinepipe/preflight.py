"""Checks that resolve every name and file the configuration refers to before any job runs.

:func:`preflight` runs in the workflow's main process right after the schema and
:func:`spinepipe.config.check_semantics` (and in ``snakemake -n``), so that a mistake which
would otherwise surface only at the rule that uses it, hours into a run, stops the run at
once with a message naming the key:

* every ``backbone`` (``localize.point_model``, ``localize.slice_model``, ``train``) is a
  timm model, and builds as the pipeline builds it (on the ``meta`` device: no memory, no
  weights);
* every ``train.augment[i]`` builds with the project's own builder and runs on a crop stack
  of the shape training feeds it; the localizer's augmentation builds too;
* every ``weights`` named exists: a checkpoint file, or a model folder holding one
  (:func:`spinepipe.backbones.weights_file`);
* every ``weights`` loads into its backbone as the pipeline builds it (on the CPU): a timm
  checkpoint of that architecture, first convolution adapted, classifier dropped, nothing
  missing, extra or of another shape (:func:`spinepipe.backbones.create_backbone`);
* the tracking store is usable: a SQLite or file store's folder can be created and written,
  an HTTP store answers within ``mlflow.request_timeout_s``;
* with a ``data_dir``, the competition files pass :func:`spinepipe.dataset.validate_dataset`
  (ids, duplicates, submission row ids), so a bad line stops the run, not a late stage.

Relative paths are resolved against the working directory, as the jobs resolve them.

The model-stack checks (backbones, augmentations, weights loads) import torch, timm and
albumentations and take seconds, on every Snakemake start, dry runs included. Once they have
passed, the working directory remembers it (``.snakemake/spinepipe-preflight/<key>``) for the
settings they read, each weights file's identity (resolved path, size, modification time),
the installed torch, timm and albumentations and the code they run; any change of those
checks again. The file, tracking and data checks run every time.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spinepipe.config import ConfigError

log = logging.getLogger(__name__)

def _find(config: Mapping[str, Any], name: str, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every key called ``name``, at any depth."""
    for key, value in config.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key == name:
            yield dotted, value
        elif isinstance(value, Mapping):
            yield from _find(value, name, dotted)


def _resolve(path: str | Path, workdir: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else workdir / path


def _short(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:400]


def backbone_kwargs(key: str) -> dict[str, Any]:
    """The backbone kwargs of the model whose ``backbone`` or ``weights`` is ``key``."""
    from spinepipe.backbones import POINT_FEATURES, POOLED_FEATURES

    return dict(POINT_FEATURES if key.startswith("localize.point_model.") else POOLED_FEATURES)


def _weights_settings(config: Mapping[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """(dotted ``weights`` key, its backbone, its value) of every non-empty ``weights``."""
    for key, value in _find(config, "weights"):
        section = config
        for part in key.split(".")[:-1]:
            section = section[part]
        if isinstance(value, str) and value:
            yield key, section.get("backbone"), value


def check_backbones(config: Mapping[str, Any]) -> list[str]:
    """Every ``backbone`` names a timm model that builds as its stage builds it."""
    import torch

    from spinepipe.backbones import create_backbone
    from spinepipe.torch_compat import import_timm

    timm = import_timm()
    problems = []
    for key, name in _find(config, "backbone"):
        if not isinstance(name, str):
            continue
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            problems.append(f"  {key}: {name!r} is not a timm model{hint}")
            continue
        kwargs = backbone_kwargs(key)
        try:
            with torch.device("meta"):
                create_backbone(name, None, **kwargs)
        except Exception:  # noqa: BLE001 - some models cannot be built on meta; try for real
            try:
                create_backbone(name, None, **kwargs)
            except Exception as error:  # noqa: BLE001 - reported with the key
                problems.append(f"  {key}: timm model {name!r} cannot be built with "
                                f"{kwargs}: {_short(error)}")
    return problems


def check_augment(config: Mapping[str, Any]) -> list[str]:
    """Every ``train.augment`` entry builds and runs on the crop stacks training feeds it
    (``crops.size`` square, one channel per slice of each view)."""
    from spinepipe.classify.data import build_transform, n_views
    from spinepipe.localize.training import point_augmenter

    problems = []
    train, crops = config["train"], config["crops"]
    families = list(train["families"]) + (["all"] if train["all_series_model"] else [])
    slices = 2 * crops["slices"] + 1
    channels = sorted({n_views(f) * slices for f in families}) or [slices]
    size = crops["size"]
    rng = np.random.default_rng(0)
    for i, spec in enumerate(train["augment"] or []):
        where = f"train.augment[{i}]"
        try:
            transform = build_transform(spec, where)
        except ValueError as error:
            problems.append(f"  {error}")
            continue
        for n in channels:
            stack = rng.random((size, size, n), dtype=np.float32)
            try:
                out = np.asarray(transform(image=stack, force_apply=True)["image"])
            except Exception as error:  # noqa: BLE001 - reported with the key
                problems.append(f"  {where} ({spec.get('name')}): fails on a {size}x{size}x{n} "
                                f"crop stack: {_short(error)}")
                break
            if out.shape != stack.shape:
                problems.append(f"  {where} ({spec.get('name')}): turns a {stack.shape} crop stack "
                                f"into {out.shape}")
                break
    point = config["localize"]["point_model"]
    if point["augment"]:
        try:
            point_augmenter(dict(point["augment"]) | {"seed": 0})
        except Exception as error:  # noqa: BLE001 - reported with the key
            problems.append(f"  localize.point_model.augment: {_short(error)}")
    return problems


def check_weights(config: Mapping[str, Any], workdir: Path) -> list[str]:
    """Every non-empty ``weights`` names a readable checkpoint file, or a model folder with
    one (light: nothing is read; :func:`check_weights_load` loads them)."""
    from spinepipe.backbones import WeightsError, weights_file

    problems = []
    for key, _, value in _weights_settings(config):
        try:
            path = weights_file(_resolve(value, workdir))
        except WeightsError as error:
            problems.append(f"  {key}: {error}")
            continue
        if not os.access(path, os.R_OK):
            problems.append(f"  {key}: weights file '{path}' is not readable")
    return problems


def _weights_path(value: str, workdir: Path) -> Path | None:
    """The checkpoint file of a ``weights`` value, or None where :func:`check_weights`
    reports it."""
    from spinepipe.backbones import WeightsError, weights_file

    try:
        path = weights_file(_resolve(value, workdir))
    except WeightsError:
        return None
    return path if os.access(path, os.R_OK) else None


def check_weights_load(config: Mapping[str, Any], workdir: Path) -> list[str]:
    """Every ``weights`` file loads into its backbone whole, as the pipeline builds it."""
    from spinepipe.backbones import WeightsError, create_backbone
    from spinepipe.torch_compat import import_timm

    timm = import_timm()
    problems = []
    for key, backbone, value in _weights_settings(config):
        path = _weights_path(value, workdir)
        if path is None or not isinstance(backbone, str) or not timm.is_model(backbone):
            continue  # reported by check_weights or check_backbones
        try:
            create_backbone(backbone, path, **backbone_kwargs(key))
        except WeightsError as error:
            problems.append(f"  {key}: {error}")
        except Exception as error:  # noqa: BLE001 - reported with the key
            problems.append(f"  {key}: '{path}' cannot be loaded into timm model {backbone!r}: "
                            f"{_short(error)}")
    return problems


def check_tracking(tracking: Mapping[str, Any], workdir: Path) -> list[str]:
    """The tracking store can be used: SQLite and file stores writable, HTTP answering."""
    from spinepipe.tracking.store import TrackingError, check_store

    try:
        check_store(tracking, workdir)
    except TrackingError as error:
        return [f"  mlflow.tracking_uri: {error}"]
    return []


def check_data_dir(config: Mapping[str, Any], workdir: Path) -> list[str]:
    """A configured competition folder passes the dataset checks (file, line, problem)."""
    from spinepipe.dataset import DatasetError, validate_dataset, validate_predict_folder

    data_dir = config["data_dir"]
    if not data_dir:
        return []  # the synthetic dataset is generated and checked by the workflow
    try:
        if config["predict"]["bundle"]:
            validate_predict_folder(_resolve(data_dir, workdir))
        else:
            validate_dataset(_resolve(data_dir, workdir))
    except DatasetError as error:
        return [f"  data_dir: {error}"]
    return []


PASSED_DIR = Path(".snakemake") / "spinepipe-preflight"


def _file_identity(value: str, workdir: Path) -> list[Any]:
    """A weights file's resolved path, size and modification time (the value as written
    where it does not resolve)."""
    path = _weights_path(value, workdir)
    if path is None:
        return [value]
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def model_stack_key(config: Mapping[str, Any], workdir: Path | None = None) -> str:
    """What the model-stack checks depend on, hashed: the settings they read, the identity of
    each weights file, the installed torch, timm and albumentations, and the code they run
    (this module's import closure)."""
    from importlib.metadata import PackageNotFoundError, version

    from spinepipe.code_inputs import code_digest

    workdir = Path.cwd() if workdir is None else workdir
    train, crops = config["train"], config["crops"]
    settings = {"backbones": sorted(_find(config, "backbone")),
                "train": {k: train[k] for k in ("families", "all_series_model", "augment")},
                "crops": {k: crops[k] for k in ("slices", "size")},
                "point_augment": config["localize"]["point_model"]["augment"],
                "weights": {key: _file_identity(value, workdir)
                            for key, _, value in _weights_settings(config)}}
    versions = {}
    for package in ("torch", "timm", "albumentations"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    text = json.dumps([settings, versions, code_digest(Path(__file__))], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_model_stack(config: Mapping[str, Any], workdir: Path) -> list[str]:
    """Backbones, augmentations and weights loads, unless they passed before with the same key."""
    key = model_stack_key(config, workdir)
    passed = workdir / PASSED_DIR / key
    if passed.is_file():
        log.info("preflight: backbones, augmentations and weights passed before with these "
                 "settings, files and packages (%s)", passed)
        return []
    problems: list[str] = []
    complete = True
    # looked up at call time: the checks are replaced in tests
    checks = {"check_backbones": lambda: check_backbones(config),
              "check_augment": lambda: check_augment(config),
              "check_weights_load": lambda: check_weights_load(config, workdir)}
    for name, check in checks.items():
        try:
            problems += check()
        except ImportError as error:  # e.g. a bare Snakemake env under --sdm conda
            complete = False
            log.warning("preflight: %s skipped, the model stack cannot be imported here (%s); "
                        "the jobs will check", name, error)
    if complete and not problems:
        try:
            passed.parent.mkdir(parents=True, exist_ok=True)
            passed.write_text("passed\n")
        except OSError as error:  # a read-only working directory only loses the shortcut
            log.debug("preflight: cannot remember the passed checks in %s: %s", passed, error)
    return problems


def preflight(config: Mapping[str, Any], workdir: Path | None = None) -> None:
    """Run every check; raise ConfigError listing all problems, each naming its key."""
    workdir = Path.cwd() if workdir is None else workdir
    problems = [*check_weights(config, workdir),
                *check_tracking(config["mlflow"], workdir),
                *check_data_dir(config, workdir),
                *check_model_stack(config, workdir)]
    if problems:
        raise ConfigError("invalid configuration (checked before any job):\n" + "\n".join(problems))
    log.info("preflight checks passed")
