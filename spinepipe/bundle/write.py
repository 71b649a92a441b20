"""Writing a bundle (training side): the fold models copied with only what prediction reads,
each exported to ONNX beside its checkpoint, the priors, temperatures and inference settings,
a model card, and a manifest with every file's sha256."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from spinepipe import checkpoints
from spinepipe.bundle.manifest import BUNDLE_FORMAT, MANIFEST, read_bundle, sha256
from spinepipe.classify.fold_model import load_model
from spinepipe.constants import CONDITIONS, LEVELS, SEVERITIES
from spinepipe.localize.inference import load_models
from spinepipe.metric import prior_table
from spinepipe.onnx_models import (
    export_point_model,
    export_severity_model,
    export_slice_model,
    onnx_path,
)

log = logging.getLogger(__name__)

# what prediction reads of a severity checkpoint's meta, and the weights it started from (the
# rest, such as the training history and the training study ids, stays with the training run)
SEVERITY_META = ("family", "fold", "crops", "train", "best_epoch", "best_val_loss", "start_weights")
# the start_weights of a model trained before checkpoints recorded them
NOT_RECORDED = "not recorded"
# slices of the example stack a slice model is exported with (the slice axis is dynamic)
EXAMPLE_SLICES = 15


def code_version() -> dict[str, Any]:
    """The code that wrote the bundle: package version, bundle format, git commit (if any)."""
    try:
        version = metadata.version("spinepipe")
    except metadata.PackageNotFoundError:
        version = "unknown"
    commit, dirty = "unknown", None
    try:
        here = Path(__file__).parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": version, "format": BUNDLE_FORMAT, "commit": commit, "dirty": dirty}


def _copy_localizer(source: Path, target: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The localizer checkpoint as it is, and its ONNX export."""
    shutil.copyfile(source, target)
    meta = checkpoints.load(target)["meta"]
    kind, task = meta["kind"], meta["task"]
    models = load_models({f"{kind}_{task}": [target]})[task]
    loc = settings["localize"]
    if kind == "point":
        size = loc["axial_crop"] if task == "axial_t2" else loc["image_size"]
        export_point_model(models.point[0], onnx_path(target), size, size)
    else:
        size = loc["slice_image_size"]
        export_slice_model(models.slice[0], onnx_path(target), EXAMPLE_SLICES, size, size)
    return {"kind": kind, "task": task, "fold": meta["fold"], "backbone": meta["backbone"],
            "start_weights": meta.get("start_weights", NOT_RECORDED)}


def _copy_severity(source: Path, target: Path) -> dict[str, Any]:
    """The severity checkpoint with the meta prediction reads, and its ONNX export."""
    saved = checkpoints.load(source)
    meta = {k: saved["meta"][k] for k in SEVERITY_META if k in saved["meta"]}
    checkpoints.save({"state_dict": saved["state_dict"], "meta": meta}, target)
    model, meta = load_model(target)
    export_severity_model(model, onnx_path(target), int(model.position.shape[0]), meta["crops"]["size"],
                          meta["crops"]["size"])
    return {"family": meta["family"], "fold": meta["fold"], "backbone": meta["train"]["backbone"],
            "head": meta["train"]["head"], "start_weights": meta.get("start_weights", NOT_RECORDED)}


def write_bundle(out: Path, *, localizers: Sequence[Path], severity_models: Sequence[Path],
                 temperatures: Mapping[str, float], labels: pl.DataFrame, settings: Mapping[str, Any],
                 card: Mapping[str, Any]) -> Path:
    """Write the bundle folder ``out`` (replaced whole: a half-written bundle never stays).

    ``card``: what the model card states (dataset record, scores, the configured weights'
    provenance for the manifest, training settings; see :func:`model_card`). The card's
    starting weights are those each model's checkpoint records."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "localizers").mkdir(parents=True)
    (partial / "severity").mkdir()
    models = {"localizers": [], "severity_models": []}
    described = []
    for source in sorted(localizers):
        target = partial / "localizers" / Path(source).name
        described.append(_copy_localizer(Path(source), target, settings) | {"file": target.name})
        models["localizers"].append(f"localizers/{target.name}")
    severity = []
    for source in sorted(severity_models):
        target = partial / "severity" / Path(source).name
        severity.append(_copy_severity(Path(source), target) | {"file": target.name})
        models["severity_models"].append(f"severity/{target.name}")
    (partial / "temperatures.json").write_text(json.dumps(dict(temperatures), indent=2, sort_keys=True) + "\n")
    prior_table(labels).write_csv(partial / "priors.csv")
    (partial / "config.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    code = code_version()
    families = sorted({m["family"] for m in severity})
    folds = sorted({m["fold"] for m in severity})
    (partial / "MODEL_CARD.md").write_text(model_card(card, described, severity, families, folds, code))
    files = {str(p.relative_to(partial)): sha256(p) for p in sorted(partial.rglob("*")) if p.is_file()}
    manifest = {"format": BUNDLE_FORMAT, "code": code, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "families": families, "folds": folds, **models,
                "scores": dict(card.get("scores", {})), "dataset": card.get("dataset", {}),
                "weights": card.get("weights", {}), "files": files}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    read_bundle(partial)  # what was written reads back
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    log.info("bundle %s: %d localizers, %d severity models, %d files", out, len(described), len(severity),
             len(files))
    return out


def _score_lines(scores: Mapping[str, Any]) -> list[str]:
    names = {"cv_score": "end-to-end cross-validation (the train studies at their out-of-fold predicted "
                         "points, as a new study is graded)",
             "cv_score_annotated_points": "cross-validation at the annotated points",
             "test_score": "the held-out test split", "prior_score": "the prior alone (for scale)"}
    return [f"- {names.get(k, k)}: **{v:.4f}**" for k, v in scores.items() if v is not None]


def localizer_counts(localizers: list[dict]) -> str:
    """'9 point, 3 slice' from the localizers' meta."""
    kinds = [m["kind"] for m in localizers]
    return ", ".join(f"{kinds.count(kind)} {kind}" for kind in ("point", "slice") if kind in kinds)


def _start_weights(weights: Any) -> str:
    if weights is None:
        return "from scratch (random initialisation)"
    if isinstance(weights, Mapping):
        return f"`{weights['path']}` (sha256 `{weights['sha256']}`)"
    return "not recorded (trained before checkpoints recorded their starting weights)"


def starting_weights(localizers: list[dict], severity: list[dict]) -> list[str]:
    """A card line per kind of model: the weights its models started from (from their meta)."""
    groups = {"Point localizers": [m for m in localizers if m["kind"] == "point"],
              "Slice localizers": [m for m in localizers if m["kind"] == "slice"],
              "Severity models": severity}
    lines = []
    for group, models in groups.items():
        described = sorted({_start_weights(m.get("start_weights", NOT_RECORDED)) for m in models})
        if described:
            lines.append(f"- {group}: {'; '.join(described)}")
    return lines


def model_card(card: Mapping[str, Any], localizers: list[dict], severity: list[dict], families: list[str],
               folds: list[int], code: Mapping[str, Any]) -> str:
    """The bundle's MODEL_CARD.md: what it grades, from what, how well, and its limits."""
    dataset = card.get("dataset", {})
    synthetic = str(dataset.get("name", "")).startswith("synthetic")
    backbones = sorted({m["backbone"] for m in localizers}) or ["-"]
    lines = [
        "# Model card: spinepipe lumbar spine degenerative grading bundle", "",
        "## What it grades",
        f"Five conditions ({', '.join(CONDITIONS)}) at five levels ({', '.join(LEVELS)}), each as "
        f"probabilities of {', '.join(SEVERITIES)}: the 25 rows per study of the RSNA 2024 Lumbar Spine "
        "Degenerative Classification format.",
        "Input: a folder of studies in that competition's layout (`test_images/<study>/<series>/*.dcm` and "
        "`test_series_descriptions.csv` naming each series Sagittal T1, Sagittal T2/STIR or Axial T2).",
        "",
        "## Models",
        f"- Localizers: a point model per series type and fold, and slice models where a slice method "
        f"is learned ({len(localizers)} models: {localizer_counts(localizers)}; "
        f"backbone {', '.join(backbones)}), also as ONNX.",
        f"- Severity: one model per condition family ({', '.join(families)}) and fold ({len(folds)} folds; "
        f"{len(severity)} models; backbone {', '.join(sorted({m['backbone'] for m in severity}))}, head "
        f"{', '.join(sorted({m['head'] for m in severity}))}), fold ensemble with per-family temperatures, "
        "also as ONNX.",
        "",
        "## Starting weights",
        "The backbone weights each model's training started from (path and sha256 of the file):",
        *starting_weights(localizers, severity),
        "",
        "## Data it was trained on",
        f"- Dataset: {dataset.get('name', 'unknown')} (digest {dataset.get('digest', '?')}), "
        f"{dataset.get('profile', {}).get('studies', '?')} studies, "
        f"{dataset.get('profile', {}).get('series', '?')} series.",
        "",
        "## Scores (competition weighted log loss, lower is better)",
        *(_score_lines(card.get("scores", {})) or ["- not measured"]),
        "",
        "## Known limits",
        *(["- Trained on the pipeline's **synthetic** dataset: a demonstration of the pipeline, "
           "not a model for real patients."] if synthetic else []),
        "- Not a medical device; its grades are for research.",
        "- A study's rows are graded from the series it has: a row whose every view is missing or "
        "could not be cut takes the training prior, and every such row is listed with its reason in "
        "degraded_rows.csv.",
        "- Series are recognised by their description in test_series_descriptions.csv; an unknown "
        "description is not graded.",
        "- Scores on a few dozen studies carry wide uncertainty; compare models over several seeds.",
        "",
        "## Code",
        f"spinepipe {code['version']}, bundle format {code['format']}, commit {code['commit']}"
        + (" (with uncommitted changes)" if code.get("dirty") else "") + ".",
        "",
    ]
    return "\n".join(lines)
