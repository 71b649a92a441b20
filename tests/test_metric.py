"""Tests for spinepipe.metric: every expected value is worked out by hand."""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import log_loss

from spinepipe.metric import (
    ANY_SEVERE_WEIGHTS,
    SEVERITIES,
    SEVERITY_WEIGHTS,
    labels_to_long,
    prior_predictions,
    score,
)

CONDITIONS = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
LEVELS = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")
COLUMNS = [f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS]
N, M, S = SEVERITIES  # "Normal/Mild", "Moderate", "Severe"
SP, LF, LS, RS = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)


def make_labels(studies: dict[int, dict[str, str]]) -> pl.DataFrame:
    """Wide labels table; every column not given is null."""
    ids = list(studies)
    data: dict[str, list] = {"study_id": ids}
    for col in COLUMNS:
        data[col] = [studies[s].get(col) for s in ids]
    return pl.DataFrame(data, schema={"study_id": pl.Int64, **{c: pl.Utf8 for c in COLUMNS}})


def make_preds(
    study_ids: list[int],
    overrides: dict[str, tuple[float, float, float]] | None = None,
    default: tuple[float, float, float] = (0.6, 0.3, 0.1),
) -> pl.DataFrame:
    """A prediction for every row of every study: ``default`` unless overridden."""
    overrides = overrides or {}
    row_ids = [f"{s}_{col}" for s in study_ids for col in COLUMNS]
    probs = [overrides.get(r, default) for r in row_ids]
    return pl.DataFrame(
        {
            "row_id": row_ids,
            "normal_mild": [p[0] for p in probs],
            "moderate": [p[1] for p in probs],
            "severe": [p[2] for p in probs],
        }
    )


# Two studies with a handful of labels; every other label is missing.
TINY_LABELS = {
    1: {f"{SP}_l1_l2": N, f"{SP}_l2_l3": S, f"{LF}_l1_l2": M, f"{RS}_l4_l5": S},
    2: {f"{SP}_l1_l2": M, f"{LF}_l3_l4": N, f"{LS}_l5_s1": N},
}
TINY_PREDS = {
    f"1_{SP}_l1_l2": (0.7, 0.2, 0.1),
    f"1_{SP}_l2_l3": (0.2, 0.3, 0.5),
    f"2_{SP}_l1_l2": (0.3, 0.6, 0.1),
    f"1_{LF}_l1_l2": (0.5, 0.4, 0.1),
    f"2_{LF}_l3_l4": (0.8, 0.1, 0.1),
    f"1_{RS}_l4_l5": (0.1, 0.3, 0.6),
    f"2_{LS}_l5_s1": (0.9, 0.05, 0.05),
    # Unlabelled spinal level with a high severe probability: must be ignored.
    f"1_{SP}_l5_s1": (0.0, 0.1, 0.9),
    f"2_{SP}_l4_l5": (0.0, 0.05, 0.95),
}
# Weighted losses of the tiny case: weight 1 / 2 / 4 for a true N / M / S.
TINY_SPINAL = (1 * -math.log(0.7) + 4 * -math.log(0.5) + 2 * -math.log(0.6)) / (1 + 4 + 2)
TINY_FORAMINAL = (2 * -math.log(0.4) + 1 * -math.log(0.8)) / (2 + 1)
TINY_SUBARTICULAR = (4 * -math.log(0.6) + 1 * -math.log(0.9)) / (4 + 1)
# Study 1 has a severe spinal level: y=1, p=max(0.1, 0.5), weight 6.
# Study 2 has none: y=0, p=0.1, weight 1.
TINY_ANY = (6 * -math.log(0.5) + 1 * -math.log(1 - 0.1)) / (6 + 1)


def test_constants() -> None:
    assert SEVERITIES == ("Normal/Mild", "Moderate", "Severe")
    assert SEVERITY_WEIGHTS == {0: 1.0, 1: 2.0, 2: 4.0}
    assert ANY_SEVERE_WEIGHTS == (1.0, 6.0)


def test_labels_to_long() -> None:
    long = labels_to_long(make_labels(TINY_LABELS))
    assert long.columns == ["row_id", "study_id", "condition", "level", "group", "target"]
    assert long.height == 2 * 25
    assert long["target"].dtype == pl.Int8
    assert long["row_id"][0] == "1_spinal_canal_stenosis_l1_l2"
    assert long["row_id"][25] == "2_spinal_canal_stenosis_l1_l2"
    by_id = {r["row_id"]: r for r in long.iter_rows(named=True)}
    assert by_id[f"1_{SP}_l2_l3"]["target"] == 2
    assert by_id[f"1_{LF}_l1_l2"]["target"] == 1
    assert by_id[f"2_{LF}_l3_l4"]["target"] == 0
    assert by_id[f"2_{LF}_l3_l4"]["group"] == "foraminal"
    assert by_id[f"2_{LF}_l3_l4"]["condition"] == LF
    assert by_id[f"2_{LF}_l3_l4"]["level"] == "l3_l4"
    assert by_id[f"1_{RS}_l4_l5"]["group"] == "subarticular"
    assert by_id[f"1_{SP}_l5_s1"]["group"] == "spinal"
    assert by_id[f"1_{SP}_l5_s1"]["target"] is None
    assert long["target"].null_count() == 50 - 7
    counts = long.group_by("group").len()
    assert dict(zip(counts["group"], counts["len"])) == {"spinal": 10, "foraminal": 20, "subarticular": 20}


def test_labels_to_long_rejects_unknown_label() -> None:
    with pytest.raises(ValueError, match="unknown severity"):
        labels_to_long(make_labels({1: {f"{SP}_l1_l2": "Mild"}}))


def test_tiny_case_by_hand() -> None:
    result = score(make_labels(TINY_LABELS), make_preds([1, 2], TINY_PREDS))
    assert result["spinal"] == pytest.approx(TINY_SPINAL, rel=1e-12)
    assert result["foraminal"] == pytest.approx(TINY_FORAMINAL, rel=1e-12)
    assert result["subarticular"] == pytest.approx(TINY_SUBARTICULAR, rel=1e-12)
    assert result["any_severe_spinal"] == pytest.approx(TINY_ANY, rel=1e-12)
    expected = (TINY_SPINAL + TINY_FORAMINAL + TINY_SUBARTICULAR + TINY_ANY) / 4
    assert result["score"] == pytest.approx(expected, rel=1e-12)


def test_spinal_term_matches_sklearn() -> None:
    result = score(make_labels(TINY_LABELS), make_preds([1, 2], TINY_PREDS))
    y = [0, 2, 1]
    p = [[0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.3, 0.6, 0.1]]
    assert result["spinal"] == pytest.approx(
        log_loss(y, p, sample_weight=[1, 4, 2], labels=[0, 1, 2]), rel=1e-12
    )


def test_missing_labels_are_ignored() -> None:
    labels = make_labels(TINY_LABELS)
    base = score(labels, make_preds([1, 2], TINY_PREDS))
    # Changing predictions of unlabelled rows changes nothing.
    other = score(labels, make_preds([1, 2], TINY_PREDS, default=(0.01, 0.01, 0.98)))
    assert other == pytest.approx(base, rel=1e-12)
    # Unlabelled rows may be absent from the predictions altogether.
    labelled = set(labels_to_long(labels).drop_nulls("target")["row_id"])
    only_labelled = make_preds([1, 2], TINY_PREDS).filter(pl.col("row_id").is_in(labelled))
    assert only_labelled.height == 7
    assert score(labels, only_labelled) == pytest.approx(base, rel=1e-12)


def test_study_without_spinal_labels_left_out_of_any_severe() -> None:
    studies = {**TINY_LABELS, 3: {f"{LF}_l2_l3": M}}
    preds = make_preds([1, 2, 3], {**TINY_PREDS, f"3_{LF}_l2_l3": (0.25, 0.5, 0.25)}, default=(0.0, 0.0, 1.0))
    result = score(make_labels(studies), preds)
    assert result["any_severe_spinal"] == pytest.approx(TINY_ANY, rel=1e-12)
    assert result["spinal"] == pytest.approx(TINY_SPINAL, rel=1e-12)
    assert result["foraminal"] == pytest.approx(
        (2 * -math.log(0.4) + 1 * -math.log(0.8) + 2 * -math.log(0.5)) / (2 + 1 + 2), rel=1e-12
    )


def test_perfect_predictions_score_zero() -> None:
    labels = make_labels(TINY_LABELS)
    long = labels_to_long(labels).drop_nulls("target")
    onehot = {r: tuple(float(t == k) for k in range(3)) for r, t in zip(long["row_id"], long["target"])}
    result = score(labels, make_preds([1, 2], onehot, default=(1.0, 0.0, 0.0)))
    for key in ("spinal", "foraminal", "subarticular", "any_severe_spinal", "score"):
        assert result[key] == pytest.approx(0.0, abs=1e-12)


def test_uniform_predictions() -> None:
    third = 1 / 3
    result = score(make_labels(TINY_LABELS), make_preds([1, 2], default=(third, third, third)))
    for key in ("spinal", "foraminal", "subarticular"):
        assert result[key] == pytest.approx(math.log(3), rel=1e-12)
    # Positive study 1: -log(1/3), weight 6; negative study 2: -log(2/3), weight 1.
    any_severe = (6 * -math.log(1 / 3) + 1 * -math.log(2 / 3)) / 7
    assert result["any_severe_spinal"] == pytest.approx(any_severe, rel=1e-12)
    assert result["score"] == pytest.approx((3 * math.log(3) + any_severe) / 4, rel=1e-12)


def test_predictions_are_normalised() -> None:
    labels = make_labels(TINY_LABELS)
    base = score(labels, make_preds([1, 2], TINY_PREDS))
    # Each row scaled by a different factor gives the same score.
    scaled = {r: tuple(x * (i + 2) for x in p) for i, (r, p) in enumerate(TINY_PREDS.items())}
    assert score(labels, make_preds([1, 2], scaled)) == pytest.approx(base, rel=1e-12)

    # By hand: (2, 1, 1) -> (0.5, 0.25, 0.25); (1, 1, 2) -> (0.25, 0.25, 0.5).
    one = make_labels({1: {f"{SP}_l1_l2": M, f"{SP}_l2_l3": S}})
    preds = make_preds([1], {f"1_{SP}_l1_l2": (2.0, 1.0, 1.0), f"1_{SP}_l2_l3": (1.0, 1.0, 2.0)})
    result = score(one, preds)
    assert result["spinal"] == pytest.approx((2 * -math.log(0.25) + 4 * -math.log(0.5)) / 6, rel=1e-12)
    # any_severe uses the normalised severe probability: max(0.25, 0.5).
    assert result["any_severe_spinal"] == pytest.approx(-math.log(0.5), rel=1e-12)


def test_probabilities_are_clipped() -> None:
    labels = make_labels({1: {f"{SP}_l1_l2": S}})
    result = score(labels, make_preds([1], {f"1_{SP}_l1_l2": (1.0, 0.0, 0.0)}))
    assert math.isfinite(result["score"])
    assert result["spinal"] == pytest.approx(-math.log(1e-15), rel=1e-9)
    assert result["any_severe_spinal"] == pytest.approx(-math.log(1e-15), rel=1e-9)


def test_missing_prediction_row_raises() -> None:
    labels = make_labels(TINY_LABELS)
    preds = make_preds([1, 2], TINY_PREDS).filter(pl.col("row_id") != f"2_{LF}_l3_l4")
    with pytest.raises(ValueError, match=f"2_{LF}_l3_l4"):
        score(labels, preds)


def test_extra_prediction_rows_are_ignored() -> None:
    labels = make_labels(TINY_LABELS)
    base = score(labels, make_preds([1, 2], TINY_PREDS))
    extra = pl.concat([make_preds([1, 2], TINY_PREDS), make_preds([999], default=(0.0, 0.0, 1.0))])
    assert score(labels, extra) == pytest.approx(base, rel=1e-12)


def test_group_without_labels_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    labels = make_labels({1: {f"{SP}_l1_l2": N, f"{SP}_l2_l3": S}, 2: {f"{SP}_l1_l2": M}})
    with caplog.at_level(logging.WARNING, logger="spinepipe.metric"):
        result = score(labels, make_preds([1, 2], TINY_PREDS))
    assert math.isnan(result["foraminal"]) and math.isnan(result["subarticular"])
    assert result["spinal"] == pytest.approx(TINY_SPINAL, rel=1e-12)
    assert result["any_severe_spinal"] == pytest.approx(TINY_ANY, rel=1e-12)
    assert result["score"] == pytest.approx((TINY_SPINAL + TINY_ANY) / 2, rel=1e-12)
    assert "foraminal" in caplog.text and "subarticular" in caplog.text


# Four training studies for the prior tests.
PRIOR_LABELS = {
    1: {f"{SP}_l1_l2": N, f"{SP}_l2_l3": N, f"{LF}_l1_l2": M, f"{LS}_l5_s1": S},
    2: {f"{SP}_l1_l2": N, f"{SP}_l2_l3": S, f"{LF}_l1_l2": M, f"{LS}_l5_s1": N},
    3: {f"{SP}_l1_l2": M, f"{LF}_l1_l2": N},
    4: {f"{SP}_l1_l2": S},
}


# By hand, each group's pooled counts (N, M, S), Laplace-smoothed: (counts + 1) / (total + 3):
#   spinal       N,N,M,S (l1_l2) + N,S (l2_l3) = (3, 1, 2) of 6 -> (4, 2, 3) / 9;
#   foraminal    M,M,N (left l1_l2)            = (1, 2, 0) of 3 -> (2, 3, 1) / 6;
#   subarticular S,N (left l5_s1)              = (1, 0, 1) of 2 -> (2, 1, 2) / 5.
# Each column then adds one pseudo-observation spread as its group's frequencies:
#   (counts + group_freq) / (total + 1).
def test_prior_predictions_reproduce_frequencies() -> None:
    labels = make_labels(PRIOR_LABELS)
    ids = [
        f"7_{SP}_l1_l2",  # N, N, M, S
        f"7_{SP}_l2_l3",  # N, S
        f"8_{SP}_l5_s1",  # no labels: spinal group frequencies
        f"7_{LF}_l1_l2",  # M, M, N
        "7_right_neural_foraminal_narrowing_l4_l5",  # no labels: foraminal group frequencies
        f"7_{LS}_l5_s1",  # S, N
        f"9_{RS}_l1_l2",  # no labels: subarticular group frequencies
    ]
    prior = prior_predictions(labels, ids)
    assert prior.columns == ["row_id", "normal_mild", "moderate", "severe"]
    assert prior["row_id"].to_list() == ids
    F = Fraction
    expected = [
        # (2, 1, 1) of 4: ((2 + 4/9) / 5, (1 + 2/9) / 5, (1 + 3/9) / 5) = (22, 11, 12) / 45
        ((2 + F(4, 9)) / 5, (1 + F(2, 9)) / 5, (1 + F(3, 9)) / 5),
        # (1, 0, 1) of 2: (13, 2, 12) / 27
        ((1 + F(4, 9)) / 3, (0 + F(2, 9)) / 3, (1 + F(3, 9)) / 3),
        # no labels: (0 + group_freq) / (0 + 1) = group_freq
        (F(4, 9), F(2, 9), F(3, 9)),
        # (1, 2, 0) of 3: (8, 15, 1) / 24
        ((1 + F(2, 6)) / 4, (2 + F(3, 6)) / 4, (0 + F(1, 6)) / 4),
        (F(2, 6), F(3, 6), F(1, 6)),
        # (1, 0, 1) of 2: (7, 1, 7) / 15
        ((1 + F(2, 5)) / 3, (0 + F(1, 5)) / 3, (1 + F(2, 5)) / 3),
        (F(2, 5), F(1, 5), F(2, 5)),
    ]
    assert expected[0] == (F(22, 45), F(11, 45), F(12, 45))
    assert expected[1] == (F(13, 27), F(2, 27), F(12, 27))
    assert expected[3] == (F(8, 24), F(15, 24), F(1, 24))
    assert expected[5] == (F(7, 15), F(1, 15), F(7, 15))
    assert all(sum(row) == 1 for row in expected)
    np.testing.assert_allclose(
        prior.select("normal_mild", "moderate", "severe").to_numpy(),
        [[float(x) for x in row] for row in expected],
        rtol=1e-12,
    )


def test_prior_predictions_give_absent_class_positive_probability() -> None:
    labels = make_labels(PRIOR_LABELS)
    ids = [
        f"1_{SP}_l2_l3",  # N, S: no Moderate in the column (but one in the group)
        f"1_{LF}_l1_l2",  # M, M, N: no Severe in the column nor anywhere in its group
        f"1_{LS}_l5_s1",  # S, N: no Moderate in the column nor anywhere in its group
    ]
    prior = prior_predictions(labels, ids)
    moderate_sp, severe_lf, moderate_ls = (
        prior["moderate"][0], prior["severe"][1], prior["moderate"][2]
    )
    assert moderate_sp > 0 and severe_lf > 0 and moderate_ls > 0
    # (0 + group_freq) / (total + 1), see test_prior_predictions_reproduce_frequencies.
    assert moderate_sp == pytest.approx((2 / 9) / 3, rel=1e-12)
    assert severe_lf == pytest.approx((1 / 6) / 4, rel=1e-12)
    assert moderate_ls == pytest.approx((1 / 5) / 3, rel=1e-12)
    # So a held-out label of that class has a finite loss, not -log(1e-15).
    held_out = make_labels({5: {f"{LF}_l1_l2": S}})
    result = score(held_out, prior_predictions(labels, [f"5_{c}" for c in COLUMNS]))
    assert result["foraminal"] == pytest.approx(-math.log((1 / 6) / 4), rel=1e-12)


def test_prior_predictions_uniform_when_group_unlabelled(caplog: pytest.LogCaptureFixture) -> None:
    labels = make_labels({1: {f"{SP}_l1_l2": N}})
    with caplog.at_level(logging.WARNING, logger="spinepipe.metric"):
        prior = prior_predictions(labels, [f"1_{RS}_l3_l4", f"1_{LS}_l1_l2", f"1_{SP}_l1_l2", f"1_{SP}_l2_l3"])
    probs = prior.select("normal_mild", "moderate", "severe").to_numpy()
    # Subarticular has no labels: group_freq = (0 + 1) / (0 + 3) = 1/3 each, and a
    # column with no labels gets (0 + 1/3) / (0 + 1) = exactly 1/3 each.
    assert probs[0].tolist() == [1 / 3] * 3
    assert probs[1].tolist() == [1 / 3] * 3
    # Spinal pooled (1, 0, 0) of 1 -> group_freq (2, 1, 1) / 4; l1_l2 has (1, 0, 0) of 1:
    # ((1 + 2/4) / 2, (0 + 1/4) / 2, (0 + 1/4) / 2) = (3/4, 1/8, 1/8); l2_l3 has none: (2, 1, 1) / 4.
    np.testing.assert_allclose(probs[2:], [[3 / 4, 1 / 8, 1 / 8], [2 / 4, 1 / 4, 1 / 4]], rtol=1e-12)
    assert "subarticular" in caplog.text
    assert "spinal" not in caplog.text and "foraminal" in caplog.text


def test_prior_predictions_rejects_malformed_row_id() -> None:
    with pytest.raises(ValueError, match="malformed"):
        prior_predictions(make_labels(PRIOR_LABELS), ["1_spinal_canal_stenosis_l9_l9"])


def test_prior_score_by_hand() -> None:
    labels = make_labels(PRIOR_LABELS)
    ids = [f"{s}_{col}" for s in PRIOR_LABELS for col in COLUMNS]
    result = score(labels, prior_predictions(labels, ids))
    # Priors worked out in test_prior_predictions_reproduce_frequencies.
    # spinal: l1_l2 prior (22, 11, 12) / 45 for N, N, M, S; l2_l3 prior (13, 2, 12) / 27 for N, S.
    spinal = (
        1 * -math.log(22 / 45) + 1 * -math.log(22 / 45) + 2 * -math.log(11 / 45) + 4 * -math.log(12 / 45)
        + 1 * -math.log(13 / 27) + 4 * -math.log(12 / 27)
    ) / (1 + 1 + 2 + 4 + 1 + 4)
    # foraminal: left l1_l2 prior (8, 15, 1) / 24 for M, M, N.
    foraminal = (2 * -math.log(15 / 24) + 2 * -math.log(15 / 24) + 1 * -math.log(8 / 24)) / (2 + 2 + 1)
    # subarticular: left l5_s1 prior (7, 1, 7) / 15 for S, N.
    subarticular = (4 * -math.log(7 / 15) + 1 * -math.log(7 / 15)) / (4 + 1)
    # any_severe over labelled spinal levels (severe prior: l1_l2 12/45, l2_l3 12/27):
    # study 1: N, N -> y=0, p=12/27; study 2: N, S -> y=1, p=12/27;
    # study 3: M -> y=0, p=12/45;    study 4: S -> y=1, p=12/45.
    any_severe = (
        1 * -math.log(1 - 12 / 27) + 6 * -math.log(12 / 27)
        + 1 * -math.log(1 - 12 / 45) + 6 * -math.log(12 / 45)
    ) / (1 + 6 + 1 + 6)
    assert result["spinal"] == pytest.approx(spinal, rel=1e-12)
    assert result["foraminal"] == pytest.approx(foraminal, rel=1e-12)
    assert result["subarticular"] == pytest.approx(subarticular, rel=1e-12)
    assert result["any_severe_spinal"] == pytest.approx(any_severe, rel=1e-12)
    assert result["score"] == pytest.approx((spinal + foraminal + subarticular + any_severe) / 4, rel=1e-12)


def test_row_ids_are_built_and_split_by_one_pair_of_functions():
    from spinepipe.constants import CONDITIONS, LEVELS, row_id, split_row_id

    for condition in CONDITIONS:
        for level in LEVELS:
            assert split_row_id(row_id(4003253, condition, level)) == (4003253, condition, level)
    for bad in ("4003253_spinal_canal_stenosis", "x_spinal_canal_stenosis_l1_l2",
                "4003253_spinal_canal_stenosis_l1_l2_", "4003253_left_spinal_canal_stenosis_l1_l2"):
        with pytest.raises(ValueError, match="malformed row_id"):
            split_row_id(bad)
