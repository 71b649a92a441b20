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


@pytest.mark.parametrize("section, key", [("train", "view_dropout"), ("train", "predicted_point_share"),
                                          ("train", "jitter_quantile"), ("train", "ema_decay"),
                                          ("localize", "foramen_realign"),
                                          ("localize", "canal_slice_from_axial")])
def test_a_config_missing_a_key_gets_the_schemas_error_not_a_default(section, key):
    """The code reads these keys without a fallback: config.yaml and the schema are their one
    source, so a config that leaves one out is refused, naming it."""
    config = make_config()
    del config[section][key]
    with pytest.raises(ConfigError) as info:
        validate(config, REPO)
    assert f"'{key}' is a required property" in str(info.value) and section in str(info.value)


@pytest.mark.parametrize("overlay, expected", [
    ({"train": {"seeds": [3, "3"]}}, "repeats a seed"),
    ({"seed": 7, "train": {"seeds": ["7"]}}, "is the master seed"),
    ({"localize": {"decode": {"spacing_mm": [60.0, 20.0]}}}, "localize.decode.spacing_mm"),
], ids=["repeated seed", "master seed", "decode range"])
def test_checks_beyond_the_schema_run_in_the_one_validation(overlay, expected):
    """What the workflow used to check on its own (seeds) is in the one validation the
    workflow and the tests both call."""
    assert expected in _error(overlay)


def test_view_dropout_is_one_share_or_one_per_family():
    """train.view_dropout: a number for every family, or exactly the three families each
    with a share in [0, 1]."""
    shares = {"spinal": 0.0, "foraminal": 0.2, "subarticular": 0.25}
    config = make_config({"train": {"view_dropout": shares}})
    validate(config, REPO)
    assert config["train"]["view_dropout"] == shares
    validate(make_config({"train": {"view_dropout": 0.0}}), REPO)
    partial = make_config()
    partial["train"]["view_dropout"] = {"spinal": 0.0, "foraminal": 0.2}  # no subarticular
    assert "train.view_dropout" in _error_of(partial)
    assert "train.view_dropout" in _error({"train": {"view_dropout": shares | {"all": 0.1}}})
    assert "train.view_dropout" in _error({"train": {"view_dropout": shares | {"spinal": 1.5}}})
    assert "train.view_dropout" in _error({"train": {"view_dropout": 1.2}})


def test_ema_decay_is_off_by_default_and_below_one():
    assert make_config()["train"]["ema_decay"] == 0
    validate(make_config({"train": {"ema_decay": 0.99}}), REPO)
    assert "train.ema_decay" in _error({"train": {"ema_decay": 1.0}})
    assert "train.ema_decay" in _error({"train": {"ema_decay": -0.1}})


def _error_of(config) -> str:
    with pytest.raises(ConfigError) as info:
        validate(config, REPO)
    return str(info.value)
