"""Severities and the reader's grades follow the configured priors; the reader's noise changes
labels and never an image; the generator is deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from conftest import make_config

from spinepipe.constants import CONDITION_FAMILY, LEVELS
from spinepipe.synth.generate import generate_dataset, generate_study
from spinepipe.synth.labels import (
    grade_probabilities,
    narrowing_fraction,
    read_grades,
    reader_cuts,
    sample_true_severities,
)
from spinepipe.synth.layout import study_ids


def _draw(priors, correlation: float, n: int, seed: int = 0,
          noise: float = 0.3) -> dict[tuple[str, str], np.ndarray]:
    rng = np.random.default_rng(seed)
    draws = [read_grades(sample_true_severities(correlation, rng), priors, noise, rng)
             for _ in range(n)]
    return {key: np.array([d[key] for d in draws]) for key in draws[0]}


@pytest.mark.slow  # tens of thousands of draws
def test_labels_follow_configured_priors():
    priors = make_config()["synthetic"]["priors"]
    n = 20_000
    draws = _draw(priors, 0.5, n, noise=0.6)  # the reader's cuts keep the prior at any noise
    for (condition, level), values in draws.items():
        expected = np.array(priors[CONDITION_FAMILY[condition]][level])
        observed = np.bincount(values, minlength=3) / n
        # 5 binomial standard deviations
        tolerance = 5 * np.sqrt(expected * (1 - expected) / n) + 1e-3
        assert np.all(np.abs(observed - expected) < tolerance), (condition, level, observed, expected)


@pytest.mark.slow  # tens of thousands of draws
def test_custom_priors_are_honoured():
    flat = {family: {lv: [0.2, 0.3, 0.5] for lv in LEVELS}
            for family in ("spinal", "foraminal", "subarticular")}
    draws = _draw(flat, 0.0, 8000, seed=3)
    pooled = np.concatenate(list(draws.values()))
    np.testing.assert_allclose(np.bincount(pooled, minlength=3) / pooled.size, [0.2, 0.3, 0.5],
                               atol=0.01)


@pytest.mark.slow  # tens of thousands of draws
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
    """One shard in this process against the tiny dataset's shards rendered by WORKERS."""
    dataset, config = tiny_dataset
    resharded = make_config({"metadata": {"shards": 1}})
    generate_dataset(resharded, tmp_path / "again", workers=1)
    first, second = _digest(dataset), _digest(tmp_path / "again")
    assert first.keys() == second.keys()
    assert first == second
    assert any(name.endswith(".dcm") for name in first)


def _study_content(dataset: Path, study_id: int) -> tuple[list, list[bytes]]:
    """A study's labels (in column order) and the pixel bytes of each of its series' middle
    slice (in series-description order): its content, without its ids."""
    labels = pl.read_csv(dataset / "train.csv").filter(pl.col("study_id") == study_id)
    series = pl.read_csv(dataset / "train_series_descriptions.csv").filter(
        pl.col("study_id") == study_id).sort("series_description")
    pixels = []
    for series_id in series["series_id"]:
        files = sorted((dataset / "train_images" / str(study_id) / str(series_id)).glob("*.dcm"),
                       key=lambda f: int(f.stem))
        pixels.append(pydicom.dcmread(files[len(files) // 2]).PixelData)
    return list(labels.drop("study_id").row(0)), pixels


def test_a_different_seed_gives_different_data(tiny_dataset, tmp_path):
    """The first studies of a dataset drawn with another seed: other ids, other labels and
    other images than the same studies (same split, same index) with the tiny config's seed."""
    dataset, config = tiny_dataset
    count = 2
    other = make_config({"seed": config["seed"] + 1, "synthetic": {"n_train": count, "n_test": 1}})
    generate_dataset(other, tmp_path / "other")
    ids = study_ids(config["seed"], "train", count)
    other_ids = study_ids(other["seed"], "train", count)
    assert not set(ids) & set(other_ids)
    mine = [_study_content(dataset, study_id) for study_id in ids]
    theirs = [_study_content(tmp_path / "other", study_id) for study_id in other_ids]
    assert [labels for labels, _ in mine] != [labels for labels, _ in theirs]
    for (_, my_pixels), (_, their_pixels) in zip(mine, theirs):
        assert my_pixels and their_pixels
        assert not set(my_pixels) & set(their_pixels)  # no slice drawn twice


def test_grade_probabilities_are_the_readers_call_frequencies():
    """P(grade | z) from the probit equals the frequencies of many readers' calls on one z,
    for a borderline structure (two readers would disagree) and a clear one."""
    prior, noise = [0.6, 0.25, 0.15], 0.4
    cuts = reader_cuts(prior, noise)
    rng = np.random.default_rng(1)
    for z in (cuts[0] + 0.05, cuts[1] + 1.5):
        calls = [read_grades({("spinal_canal_stenosis", "l4_l5"): z},
                             {"spinal": {"l4_l5": prior}}, noise, rng)[("spinal_canal_stenosis", "l4_l5")]
                 for _ in range(4000)]
        observed = np.bincount(calls, minlength=3) / len(calls)
        np.testing.assert_allclose(observed, grade_probabilities([z], cuts, noise)[0], atol=0.025)
    borderline = grade_probabilities([cuts[0]], cuts, noise)[0]
    assert 0.45 < borderline[0] < 0.55  # a coin toss between Normal/Mild and Moderate
    np.testing.assert_array_equal(grade_probabilities([cuts[0] + 0.01, cuts[1] + 0.01], cuts, 0.0),
                                  [[0, 1, 0], [0, 0, 1]])


def test_narrowing_rises_with_true_severity_across_the_band_edges():
    prior = [0.6, 0.25, 0.15]
    z = np.linspace(-3, 3, 61)
    shown = np.array([narrowing_fraction(v, prior) for v in z])
    assert np.all(np.diff(shown) > 0) and 0 <= shown[0] < 0.05 and 0.85 < shown[-1] <= 0.9
    edges = reader_cuts(prior, 0.0)
    np.testing.assert_allclose([narrowing_fraction(e, prior) for e in edges], [0.325, 0.65])


def test_reader_noise_changes_labels_and_no_image(tmp_path):
    """The same study (seed, split, index) generated with the reader's noise on and off: every
    DICOM file and every point identical, the labels not."""
    syn = make_config()["synthetic"]
    tables = {}
    for noise in (0.0, 0.8):
        root = tmp_path / str(noise)
        tables[noise] = generate_study(syn | {"reader_noise": noise}, 11, "train", 0, 123, root)
    assert _digest(tmp_path / "0.0") == _digest(tmp_path / "0.8")
    assert tables[0.0].coordinates == tables[0.8].coordinates
    assert [r["true_severity"] for r in tables[0.0].severities] == \
        [r["true_severity"] for r in tables[0.8].severities]
    assert tables[0.0].labels != tables[0.8].labels
