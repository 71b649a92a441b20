"""Label sampling follows the configured priors; the generator is deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from conftest import make_config

from spinepipe.constants import CONDITION_FAMILY, LEVELS
from spinepipe.synth.generate import generate_dataset, study_ids
from spinepipe.synth.labels import sample_labels


def _draw(priors, correlation: float, n: int, seed: int = 0) -> dict[tuple[str, str], np.ndarray]:
    rng = np.random.default_rng(seed)
    draws = [sample_labels(priors, correlation, rng) for _ in range(n)]
    return {key: np.array([d[key] for d in draws]) for key in draws[0]}


def test_labels_follow_configured_priors():
    priors = make_config()["synthetic"]["priors"]
    n = 20_000
    draws = _draw(priors, 0.5, n)
    for (condition, level), values in draws.items():
        expected = np.array(priors[CONDITION_FAMILY[condition]][level])
        observed = np.bincount(values, minlength=3) / n
        # 5 binomial standard deviations
        tolerance = 5 * np.sqrt(expected * (1 - expected) / n) + 1e-3
        assert np.all(np.abs(observed - expected) < tolerance), (condition, level, observed, expected)


def test_custom_priors_are_honoured():
    flat = {family: {lv: [0.2, 0.3, 0.5] for lv in LEVELS}
            for family in ("spinal", "foraminal", "subarticular")}
    draws = _draw(flat, 0.0, 8000, seed=3)
    pooled = np.concatenate(list(draws.values()))
    np.testing.assert_allclose(np.bincount(pooled, minlength=3) / pooled.size, [0.2, 0.3, 0.5],
                               atol=0.01)


def test_label_correlation_is_configurable():
    priors = make_config()["synthetic"]["priors"]
    a, b = ("spinal_canal_stenosis", "l4_l5"), ("left_subarticular_stenosis", "l4_l5")
    correlated = _draw(priors, 0.6, 6000)
    independent = _draw(priors, 0.0, 6000)
    assert np.corrcoef(correlated[a], correlated[b])[0, 1] > 0.2
    assert abs(np.corrcoef(independent[a], independent[b])[0, 1]) < 0.05


def test_study_ids_are_unique_stable_and_split_apart():
    train, test = study_ids(7, "train", 500), study_ids(7, "test", 200)
    assert len(set(train)) == 500 and not set(train) & set(test)
    assert study_ids(7, "train", 10) == train[:10]  # growing a split keeps existing ids
    assert study_ids(8, "train", 10) != train[:10]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "shards" not in p.parts}


def test_generation_is_deterministic_and_independent_of_sharding(tiny_dataset, tmp_path):
    dataset, config = tiny_dataset
    resharded = make_config({"metadata": {"shards": 1}})
    generate_dataset(resharded, tmp_path / "again")
    first, second = _digest(dataset), _digest(tmp_path / "again")
    assert first.keys() == second.keys()
    assert first == second
    assert any(name.endswith(".dcm") for name in first)


def test_a_different_seed_gives_different_data(tiny_dataset, tmp_path):
    dataset, _ = tiny_dataset
    other = make_config({"seed": 99, "synthetic": {"n_train": 2, "n_test": 1}})
    generate_dataset(other, tmp_path / "other")
    assert (tmp_path / "other" / "train.csv").read_bytes() != (dataset / "train.csv").read_bytes()
