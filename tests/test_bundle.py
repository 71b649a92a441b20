"""A bundle read back: refused before any work when it cannot be trusted (missing or altered
file, another bundle format, no manifest, absent folder, a registry URI that resolves to
nothing), and the folder of studies it grades checked. The whole bundle, written by the tiny
training run and graded by the predict-only workflow, is in tests/test_workflow.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spinepipe.bundle.manifest import (
    BUNDLE_FORMAT,
    BundleError,
    read_bundle,
    resolve_bundle,
    sha256,
)
from spinepipe.dataset import DatasetError, validate_predict_folder


def small_bundle(root: Path) -> Path:
    """A bundle folder with two listed files and its manifest (no models: reading it back
    checks the manifest, not what the files hold)."""
    (root / "severity").mkdir(parents=True)
    (root / "severity" / "spinal_fold0.onnx").write_bytes(b"\x08\x01" * 500)
    (root / "priors.csv").write_text("condition,level,normal_mild,moderate,severe\n")
    files = {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = {"format": BUNDLE_FORMAT, "code": {"version": "0.1.0", "commit": "abc"}, "families": ["spinal"],
                "folds": [0], "localizers": [], "severity_models": [], "files": files}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_an_intact_bundle_reads_back(tmp_path):
    bundle = read_bundle(small_bundle(tmp_path / "bundle"))
    assert bundle.families == ["spinal"] and bundle.folds == [0]


@pytest.mark.parametrize("damage, message", [
    ("altered", "severity/spinal_fold0.onnx: altered"),
    ("missing", "priors.csv: missing"),
    ("format", "bundle format 999 (written by spinepipe 0.1.0, commit abc)"),
    ("manifest", "manifest.json is missing"),
    ("absent", "no such folder"),
])
def test_a_bundle_that_cannot_be_trusted_is_refused(tmp_path, damage, message):
    root = small_bundle(tmp_path / "bundle")
    if damage == "altered":
        path = root / "severity" / "spinal_fold0.onnx"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one bit pattern flipped, size unchanged
        path.write_bytes(bytes(data))
    elif damage == "missing":
        (root / "priors.csv").unlink()
    elif damage == "format":
        manifest = json.loads((root / "manifest.json").read_text())
        (root / "manifest.json").write_text(json.dumps(manifest | {"format": 999}))
    elif damage == "manifest":
        (root / "manifest.json").unlink()
    else:
        root = tmp_path / "nowhere"
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_bundle(root)
    read_bundle(small_bundle(tmp_path / "fresh"))  # and an intact one still reads


def test_a_registry_uri_that_names_no_model_is_refused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(BundleError, match="models:/absent/1: cannot be fetched from the registry"):
        resolve_bundle("models:/absent/1", tmp_path / "cache", uri)
    assert not any((tmp_path / "cache").glob("*")), "a failed fetch left files behind"


def test_the_folder_to_grade_needs_studies_and_their_images(tmp_path):
    csv = tmp_path / "test_series_descriptions.csv"
    csv.write_text("study_id,series_id,series_description\n")
    with pytest.raises(DatasetError, match="no studies to grade"):
        validate_predict_folder(tmp_path)
    csv.write_text("study_id,series_id,series_description\n7,70,Sagittal T1\n")
    with pytest.raises(DatasetError, match="test_images.*missing"):
        validate_predict_folder(tmp_path)
    (tmp_path / "test_images").mkdir()
    series, sample = validate_predict_folder(tmp_path)
    assert series["study_id"].to_list() == [7] and sample is None
