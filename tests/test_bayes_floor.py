"""The Bayes floor: exact against enumeration and Monte Carlo, reached by an oracle that knows
the true severities, and below every other prediction."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from conftest import make_config

from spinepipe.bayes_floor import (
    PROBABILITY_COLUMNS,
    expected_score,
    expected_weighted_loss,
    gap_closed,
    labelled_rows,
    oracle_predictions,
    oracle_submission,
)
from spinepipe.constants import CONDITION_FAMILY, CONDITIONS, LEVELS, SEVERITIES
from spinepipe.metric import labels_to_long, prior_predictions, score
from spinepipe.synth.generate import study_grading
from spinepipe.synth.labels import severity_table


def test_expected_weighted_loss_equals_enumeration():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=4)
    losses = rng.uniform(0, 3, size=(4, 3))
    weights = np.array([1, 2, 4])
    exact = 0.0
    for labels in itertools.product(range(3), repeat=4):
        chance = np.prod([probs[i, k] for i, k in enumerate(labels)])
        w = weights[list(labels)]
        exact += chance * np.sum(w * losses[np.arange(4), list(labels)]) / np.sum(w)
    assert expected_weighted_loss(probs, losses, weights) == pytest.approx(exact, rel=1e-12)


def _split(n_studies: int, noise: float = 0.3) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Truth rows and wide labels of a split drawn with the generator's own grading path."""
    syn = make_config()["synthetic"] | {"reader_noise": noise}
    truth, labels = [], []
    for index in range(n_studies):
        severities, grades, _ = study_grading(syn, 5, "test", index)
        truth += [{"study_id": index, **row} for row in severity_table(severities, syn["priors"], noise)]
        labels.append({"study_id": index, **{f"{c}_{lv}": SEVERITIES[grades[(c, lv)]]
                                             for c in CONDITIONS for lv in LEVELS}})
    return pl.DataFrame(truth), pl.DataFrame(labels)


def _monte_carlo(rows: pl.DataFrame, draws: int, seed: int = 0) -> np.ndarray:
    """The oracle's metric over fresh label draws from P(grade | true severity)."""
    rng = np.random.default_rng(seed)
    probs = rows.select(PROBABILITY_COLUMNS).to_numpy()
    cells = [f"{c}_{lv}" for c, lv in zip(rows["condition"], rows["level"])]
    submission = oracle_submission(rows)
    scores = []
    for _ in range(draws):
        grades = (rng.random(len(probs))[:, None] > np.cumsum(probs, axis=1)[:, :2]).sum(axis=1)
        wide = (pl.DataFrame({"study_id": rows["study_id"], "cell": cells,
                              "label": [SEVERITIES[g] for g in grades]})
                .pivot(on="cell", index="study_id", values="label"))
        scores.append(score(wide, submission)["score"])
    return np.array(scores)


@pytest.mark.slow  # a thousand scorings
def test_floor_equals_monte_carlo_on_a_generated_split():
    truth, labels = _split(12)
    rows = labelled_rows(truth, labels_to_long(labels))
    floor = expected_score(rows)["score"]
    scores = _monte_carlo(rows, 1000)
    error = scores.std(ddof=1) / np.sqrt(len(scores))
    assert error < 0.003  # 4 errors: well inside the split-to-split spread of a 12-study floor
    assert abs(scores.mean() - floor) < 4 * error, (floor, scores.mean(), error)


@pytest.mark.slow  # hundreds of studies graded
def test_oracle_with_the_true_severities_reaches_the_floor():
    """Scored against the reader's actual labels of 300 generated studies, the oracle lands on
    the floor within the noise of the labels; predicting P itself, or the prior, does not."""
    truth, labels = _split(300)
    rows = labelled_rows(truth, labels_to_long(labels))
    floor = expected_score(rows)["score"]
    spread = _monte_carlo(rows, 20).std(ddof=1)
    oracle = score(labels, oracle_submission(rows))["score"]
    assert abs(oracle - floor) < 3 * spread, (oracle, floor, spread)
    plain = expected_score(rows, rows.select(PROBABILITY_COLUMNS).to_numpy())["score"]
    prior = score(labels, prior_predictions(labels, rows["row_id"].to_list()))["score"]
    assert plain > floor + 3 * spread and prior > floor + 0.5


def test_floor_rises_with_reader_noise_and_is_zero_without():
    floors = [expected_score(labelled_rows(t, labels_to_long(lab)))["score"]
              for t, lab in (_split(10, noise) for noise in (0.0, 0.3, 0.8))]
    assert floors[0] == pytest.approx(0.0, abs=1e-9)
    assert 0.1 < floors[1] < floors[2]


def test_oracle_reweights_by_the_metric_class_weights():
    q = oracle_predictions(np.array([[0.5, 0.3, 0.2]]))
    np.testing.assert_allclose(q, [[0.5, 0.6, 0.8]] / np.float64(1.9))


def test_missing_labels_are_no_rows_and_a_truthless_label_is_refused():
    truth, labels = _split(2)
    cell = f"{CONDITIONS[0]}_{LEVELS[0]}"
    rows = labelled_rows(truth, labels_to_long(labels.with_columns(pl.lit(None).alias(cell))))
    assert rows.height == 2 * 25 - 2
    with pytest.raises(ValueError, match="without a true severity"):
        labelled_rows(truth.filter(pl.col("study_id") == 0), labels_to_long(labels))
    assert CONDITION_FAMILY[CONDITIONS[0]] in rows["group"].to_list()


def test_gap_closed_places_a_score_between_prior_and_floor():
    assert gap_closed(1.0, prior=1.0, floor=0.3) == 0.0
    assert gap_closed(0.3, prior=1.0, floor=0.3) == 1.0
    assert gap_closed(0.65, prior=1.0, floor=0.3) == pytest.approx(0.5)


@pytest.mark.parametrize("with_floor", [True, False], ids=["synthetic", "real data"])
def test_score_placement_figure(tmp_path, with_floor):
    """The figure cv_report adds to the report: drawn with floors (synthetic data) and without
    (a real data_dir: no true severities, no test labels)."""
    from PIL import Image

    from spinepipe.classify.plots import plot_score_placement

    cv = {"cv_score": 0.5, "cv_score_annotated_points": 0.45, "prior_score": 1.1}
    if with_floor:
        cv |= {"floor_score": 0.3, "gap_closed": 0.75, "test_score": 0.55, "test_prior_score": 1.05,
               "test_floor_score": 0.28, "test_gap_closed": 0.65}
    path = tmp_path / "placement.png"
    plot_score_placement(cv, path)
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    assert pixels.std() > 10 and pixels.shape[0] < pixels.shape[1]
