"""Bad configuration gets a clear error naming the key and the problem."""

from __future__ import annotations

import pytest
from conftest import REPO, make_config

from spinepipe.config import ConfigError, deep_update, validate


def _error(overlay) -> str:
    config = deep_update(make_config(), overlay)
    with pytest.raises(ConfigError) as info:
        validate(config, REPO)
    return str(info.value)


def test_default_config_is_valid():
    validate(make_config(), REPO)


def test_negative_count_is_rejected():
    message = _error({"synthetic": {"n_train": -3}})
    assert "synthetic.n_train" in message and "-3" in message


def test_unknown_key_is_rejected():
    message = _error({"synthetic": {"n_trian": 5}})
    assert "n_trian" in message and "synthetic" in message


def test_missing_data_dir_is_rejected(tmp_path):
    message = _error({"data_dir": str(tmp_path / "nowhere")})
    assert "nowhere" in message and "does not exist" in message


def test_incomplete_data_dir_is_rejected(tmp_path):
    (tmp_path / "train.csv").write_text("study_id\n")
    message = _error({"data_dir": str(tmp_path)})
    assert "train_label_coordinates.csv" in message


def test_inverted_range_and_bad_priors_are_rejected():
    assert "minimum above its maximum" in _error({"synthetic": {"sagittal": {"slices": [20, 10]}}})
    bad = {"synthetic": {"priors": {"spinal": {"l1_l2": [0.5, 0.3, 0.3]}}}}
    assert "synthetic.priors.spinal.l1_l2" in _error(bad)


def test_rate_out_of_range_is_rejected():
    assert "synthetic.quirks.feet_first" in _error({"synthetic": {"quirks": {"feet_first": 1.5}}})


def test_grading_with_a_bundle_needs_a_folder_of_test_studies_only(tmp_path):
    """predict.bundle set: data_dir is required and needs test_series_descriptions.csv and
    test_images/ (no train file, no sample submission); an unknown runtime is refused."""
    with pytest.raises(ConfigError, match="data_dir: predict.bundle is set"):
        validate(make_config({"predict": {"bundle": str(tmp_path)}}))
    (tmp_path / "test_series_descriptions.csv").write_text("study_id,series_id,series_description\n")
    with pytest.raises(ConfigError, match="lacks test_images"):
        validate(make_config({"data_dir": str(tmp_path), "predict": {"bundle": str(tmp_path)}}))
    (tmp_path / "test_images").mkdir()
    validate(make_config({"data_dir": str(tmp_path), "predict": {"bundle": str(tmp_path)}}))
    with pytest.raises(ConfigError, match="train.csv"):  # training still needs every file
        validate(make_config({"data_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match="runtime"):
        validate(make_config({"data_dir": str(tmp_path),
                              "predict": {"bundle": str(tmp_path), "runtime": "tensorrt"}}))
