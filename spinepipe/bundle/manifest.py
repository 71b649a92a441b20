"""Reading a bundle back: its manifest, the files it lists (checked against their sha256),
and a ``models:/<name>/<version>`` registry URI resolved to a local copy. A bundle written
by another bundle format, or with a file missing or altered, is refused before any work."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from spinepipe.localize.settings import INFERENCE_ONLY

log = logging.getLogger(__name__)

# Bumped whenever a bundle written before could be read wrongly by this code (model classes,
# preprocessing, file layout); a bundle of another format is refused, never guessed at.
BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
REGISTRY_PREFIX = "models:/"
# where a registered model's files sit inside its MLflow model folder (artifacts={"bundle": ...})
REGISTERED_BUNDLE_PATH = Path("artifacts") / "bundle"


# the localization settings the inference stages read (stacks, slice and point choice): the
# input sizes and slice method the models were trained with, and the settings read only there
LOCALIZE_INFERENCE_KEYS = ("image_size", "slice_image_size", "axial_crop", "slice_method", *INFERENCE_ONLY)


def inference_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What the inference stages read of a training configuration: the bundle's config.json,
    and the params of the prediction rules of a training run (so both grade alike). Job
    layout (shards, threads, devices) stays with the configuration of whoever grades."""
    return {"localize": {k: config["localize"][k] for k in LOCALIZE_INFERENCE_KEYS},
            "foramen_offset_mm": config["geometry"]["foramen_offset_mm"],
            "crops": {k: v for k, v in config["crops"].items() if k != "shards"},
            "inference": {k: v for k, v in config["inference"].items() if k != "batch_size"}}


def localization_settings(settings: dict[str, Any], report_learned_slices: bool) -> dict[str, Any]:
    """The cfg of the localization stage from :func:`inference_settings`;
    ``report_learned_slices``: also run the slice models where the slice method does not use
    them (a training run, to compare the methods; grading skips them)."""
    return settings["localize"] | {"foramen_offset_mm": settings["foramen_offset_mm"],
                                   "report_learned_slices": report_learned_slices}


class BundleError(ValueError):
    """A bundle that cannot be used: absent, of another format, or with a missing or altered file."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def localizers(self) -> list[Path]:
        """The localizer checkpoints (their .onnx exports lie beside them)."""
        return [self.root / name for name in self.manifest["localizers"]]

    def severity_model(self, family: str, fold: int | str) -> Path:
        return self.root / "severity" / f"{family}_fold{int(fold)}.pt"

    @property
    def severity_models(self) -> list[Path]:
        return [self.root / name for name in self.manifest["severity_models"]]

    @property
    def families(self) -> list[str]:
        return list(self.manifest["families"])

    @property
    def folds(self) -> list[int]:
        return list(self.manifest["folds"])

    @property
    def settings(self) -> dict[str, Any]:
        """The inference settings the bundle was trained with (config.json)."""
        return json.loads((self.root / "config.json").read_text())

    @property
    def temperatures(self) -> dict[str, float]:
        return json.loads((self.root / "temperatures.json").read_text())

    @property
    def priors(self) -> pl.DataFrame:
        return pl.read_csv(self.root / "priors.csv")


def read_bundle(root: Path, verify: bool = True) -> Bundle:
    """The bundle in folder ``root``; ``verify``: every file of the manifest present with its
    sha256 (a Slurm job re-reading a bundle its main process verified may skip that)."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle {root}: no such folder")
    manifest_path = root / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"bundle {root}: {MANIFEST} is missing (not a bundle folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"bundle {root}: {MANIFEST} is not valid JSON ({error})") from None
    found = manifest.get("format")
    if found != BUNDLE_FORMAT:
        code = manifest.get("code", {})
        raise BundleError(
            f"bundle {root}: bundle format {found!r} (written by spinepipe {code.get('version', '?')}, "
            f"commit {code.get('commit', '?')}), but this code reads format {BUNDLE_FORMAT}: "
            "grade with the code version that trained it, or retrain")
    if verify:
        problems = []
        for name, expected in sorted(manifest["files"].items()):
            path = root / name
            if not path.is_file():
                problems.append(f"{name}: missing")
            elif sha256(path) != expected:
                problems.append(f"{name}: altered (sha256 differs from the manifest)")
        if problems:
            raise BundleError(f"bundle {root}: refused, {len(problems)} file(s) do not match its "
                              "manifest: " + "; ".join(problems[:10]))
    return Bundle(root, manifest)


def resolve_bundle(reference: str, cache: Path, tracking_uri: str | None = None,
                   verify: bool = True) -> Bundle:
    """A bundle folder, or ``models:/<name>/<version>`` downloaded once from the MLflow
    registry at ``tracking_uri`` into ``cache`` (then read from there)."""
    if not reference.startswith(REGISTRY_PREFIX):
        return read_bundle(Path(reference), verify)
    name_version = reference[len(REGISTRY_PREFIX):].strip("/")
    local = Path(cache) / name_version.replace("/", "-v", 1).replace("/", "_")
    bundle_dir = local / REGISTERED_BUNDLE_PATH
    if not (bundle_dir / MANIFEST).is_file():
        download_registered(reference, local, tracking_uri)
    return read_bundle(bundle_dir, verify)


def download_registered(reference: str, target: Path, tracking_uri: str | None) -> None:
    """The registered model's files into ``target`` (a partial download never stays)."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=str(partial))
    except Exception as error:  # noqa: BLE001 - any registry failure is the same problem to the user
        shutil.rmtree(partial, ignore_errors=True)
        raise BundleError(f"bundle {reference}: cannot be fetched from the registry at {tracking_uri}: "
                          f"{type(error).__name__}: {str(error)[:300]}") from error
    if not (partial / REGISTERED_BUNDLE_PATH / MANIFEST).is_file():
        shutil.rmtree(partial, ignore_errors=True)
        raise BundleError(f"bundle {reference}: the registered model holds no bundle "
                          f"({REGISTERED_BUNDLE_PATH / MANIFEST} absent): not a spinepipe bundle model")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    log.info("bundle %s fetched into %s", reference, target)
