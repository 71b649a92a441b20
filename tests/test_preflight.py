"""Every name and file the config refers to is resolved before any job: a bad backbone,
augmentation, weights file, tracking store or competition CSV stops the run at once with a
message naming the key (or the file and line). Weights files that exist but do not fit their
backbone: tests/test_pretrained_weights.py."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, make_config
from test_dataset_validation import write_dataset

from spinepipe.config import ConfigError, deep_update, validate
from spinepipe.preflight import preflight


def _error(tmp_path, overlay) -> str:
    config = deep_update(make_config(), overlay)
    validate(config, REPO)  # the schema and the semantic checks pass: only preflight objects
    with pytest.raises(ConfigError) as info:
        preflight(config, tmp_path)
    return str(info.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_default_config_passes(tmp_path):
    preflight(make_config(), tmp_path)


def test_passed_model_checks_are_remembered_until_what_they_read_changes(tmp_path, monkeypatch):
    """The backbone and augmentation checks run once per working directory and settings:
    again after a change of a setting they read, of an installed package or of their code,
    and a change that breaks a setting is still reported."""
    import importlib.metadata

    from spinepipe import preflight as module

    runs = []
    for name in ("check_backbones", "check_augment"):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda config, real=real, name=name: (
            runs.append(name), real(config))[1])
    config = make_config()
    preflight(config, tmp_path)
    assert runs == ["check_backbones", "check_augment"]
    assert [p.name for p in (tmp_path / module.PASSED_DIR).iterdir()] == [module.model_stack_key(config)]
    preflight(config, tmp_path)  # remembered: not run again
    preflight(deep_update(config, {"train": {"epochs": 99}}), tmp_path)  # a setting they do not read
    assert len(runs) == 2
    preflight(config, tmp_path / "elsewhere")  # another working directory checks for itself
    assert len(runs) == 4
    broken = deep_update(config, {"train": {"backbone": "resnet10"}})
    with pytest.raises(ConfigError, match="'resnet10' is not a timm model"):
        preflight(broken, tmp_path)
    with pytest.raises(ConfigError, match="'resnet10' is not a timm model"):
        preflight(broken, tmp_path)  # a failed check is never remembered
    assert len(runs) == 8
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.0.1" if name == "timm" else real_version(name))
    preflight(config, tmp_path)  # another timm: checked again
    assert len(runs) == 10
    import spinepipe.code_inputs

    monkeypatch.setattr(spinepipe.code_inputs, "code_digest", lambda path: "other code")
    preflight(config, tmp_path)  # other code: checked again
    assert len(runs) == 12


def test_unknown_backbones_are_named(tmp_path):
    message = _error(tmp_path, {"train": {"backbone": "resnet10"},
                                "localize": {"slice_model": {"backbone": "efficientnet_b99"}}})
    assert "train.backbone: 'resnet10' is not a timm model" in message
    assert "resnet10t" in message  # suggested
    assert "localize.slice_model.backbone: 'efficientnet_b99'" in message
    assert "localize.point_model.backbone" not in message


def test_unknown_transform_and_keyword_are_named(tmp_path):
    message = _error(tmp_path, {"train": {"augment": [
        {"name": "Affine", "scale": [0.9, 1.1]},
        {"name": "RandomBrightnessContrast", "brightnes_limit": 0.1},
        {"name": "GaussianBlurr"},
        {"name": "ToGray", "p": 1.0},
    ]}})
    assert "train.augment[0]" not in message
    assert "train.augment[1] (RandomBrightnessContrast)" in message and "brightnes_limit" in message
    assert "train.augment[2]: albumentations has no transform 'GaussianBlurr'" in message
    assert "train.augment[3] (ToGray)" in message  # cannot run on a multi-slice crop stack


def test_bad_transform_value_is_named(tmp_path):
    message = _error(tmp_path, {"train": {"augment": [{"name": "Affine", "scale": "large"}]}})
    assert "train.augment[0] (Affine)" in message


def test_missing_and_unreadable_weights_files_are_named(tmp_path):
    import torch

    from spinepipe.torch_compat import import_timm

    model = import_timm().create_model("resnet10t", pretrained=False)  # config.yaml's backbone
    torch.save(model.state_dict(), tmp_path / "here.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    message = _error(tmp_path, {"train": {"weights": "missing/backbone.pt"},
                                "localize": {"point_model": {"weights": "here.pt"},
                                             "slice_model": {"weights": "empty.pt"}}})
    assert "train.weights" in message and "missing/backbone.pt" in message
    assert "localize.slice_model.weights" in message and "empty.pt: empty file" in message
    assert "localize.point_model.weights" not in message


def test_unreachable_http_tracking_store_is_named(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    message = _error(tmp_path, {"mlflow": {"tracking_uri": uri, "request_timeout_s": 2}})
    assert "mlflow.tracking_uri" in message and uri in message and "not reachable" in message


def test_unusable_sqlite_store_is_named(tmp_path):
    (tmp_path / "folder.db").mkdir()
    message = _error(tmp_path, {"mlflow": {"tracking_uri": "sqlite:///folder.db"}})
    assert "mlflow.tracking_uri" in message and "folder.db" in message and "not a file" in message
    (tmp_path / "blocker").write_text("a file where a folder should be")
    message = _error(tmp_path, {"mlflow": {"tracking_uri": "sqlite:///blocker/mlflow.db"}})
    assert "blocker" in message and "not a folder" in message


def test_bad_competition_csv_is_named_with_its_line(tmp_path):
    data = write_dataset(tmp_path / "data")
    path = data / "sample_submission.csv"
    lines = path.read_text().splitlines()
    lines[4] = "201_spinal_canal_stenosis_l9,0.3,0.3,0.4"
    path.write_text("\n".join(lines) + "\n")
    message = _error(tmp_path, {"data_dir": str(data)})
    assert "data_dir" in message and "sample_submission.csv, line 5" in message


@pytest.mark.slow
def test_dry_run_with_a_bad_backbone_stops_before_any_job(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"train": {"backbone": "resnet_nope"}}))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                             "-d", str(tmp_path), "--cores", "1", "-n", "--configfile", "bad.yaml"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "train.backbone" in output and "resnet_nope" in output
    assert "Job stats" not in output  # no job was even planned
    assert not (tmp_path / "results").exists()
