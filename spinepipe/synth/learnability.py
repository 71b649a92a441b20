"""Is the synthetic pathology learnable? A deliberately simple check.

Intensity profiles through the true structure centres (canal on Sagittal T2, foramen on
Sagittal T1, recess on Axial T2), fed to a per-family logistic regression trained on the
synthetic training studies and scored with the competition metric on the held-out test
studies, next to the prior (training label frequencies) and the test split's Bayes floor
(the labels are a reader's noisy calls: no model reaches 0), with the share of the gap closed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.ndimage import map_coordinates
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from spinepipe.bayes_floor import placement
from spinepipe.constants import (
    CONDITION_FAMILY,
    CONDITION_SIDE,
    CONDITIONS,
    FAMILIES,
    FAMILY_SERIES,
    LEVEL_NAMES,
    LEVELS,
    SEVERITIES,
    SUBMISSION_COLUMNS,
    row_id,
)
from spinepipe.dataset import read_labels, read_series_descriptions
from spinepipe.dicom_io import SeriesReadError, SeriesVolume, read_series
from spinepipe.metric import prior_predictions, score

log = logging.getLogger(__name__)

PROFILE_HALF_MM = 12.0
PROFILE_STEP_MM = 1.0
SEVERITY_WEIGHT = np.array([1.0, 2.0, 4.0])


def _profiles(volume: SeriesVolume, point: np.ndarray, directions: list[np.ndarray]) -> np.ndarray:
    """Mean of three parallel intensity lines along each direction through ``point``."""
    index, _ = volume.nearest_slice(point)
    plane, image = volume.planes[index], volume.pixels[index]
    scale = np.percentile(image, 99) + 1e-6
    steps = np.arange(-PROFILE_HALF_MM, PROFILE_HALF_MM + 1e-9, PROFILE_STEP_MM)
    features = []
    for k, direction in enumerate(directions):
        across = directions[1 - k]
        lines = []
        for shift in (-1.0, 0.0, 1.0):
            pts = point + steps[:, None] * direction + shift * across
            x, y, _ = plane.to_pixel(pts)
            lines.append(map_coordinates(image, [y, x], order=1, mode="nearest"))
        features.append(np.mean(lines, axis=0) / scale)
    return np.concatenate(features)


def _family_directions(family: str, side: str, lateral: np.ndarray) -> list[np.ndarray]:
    anterior_posterior = np.array([0.0, 1.0, 0.0])
    if family == "subarticular":  # axial: outward from the mid-line, and front-to-back
        outward = lateral if side == "left" else -lateral
        return [outward, anterior_posterior]
    return [anterior_posterior, np.array([0.0, 0.0, 1.0])]


def extract_features(dataset_dir: Path, split: str) -> pl.DataFrame:
    """One row per (study, condition, level) whose series exists: row_id and features."""
    series = read_series_descriptions(dataset_dir / f"{split}_series_descriptions.csv")
    centers = pl.read_csv(dataset_dir / "level_centers.csv").filter(pl.col("split") == split)
    rows: list[dict[str, Any]] = []
    for study_id in tqdm(sorted(centers["study_id"].unique().to_list()), desc=f"{split} features",
                         disable=None):
        study_series = series.filter(pl.col("study_id") == study_id)
        volumes: dict[str, SeriesVolume] = {}
        for description in set(FAMILY_SERIES.values()):
            match = study_series.filter(pl.col("series_description") == description)
            if match.height == 0:
                continue
            folder = dataset_dir / f"{split}_images" / str(study_id) / str(match["series_id"][0])
            try:
                volumes[description] = read_series(folder)
            except SeriesReadError as error:
                log.warning("skipping series: %s", error)
        study_centers = {r["level"]: r for r in centers.filter(pl.col("study_id") == study_id)
                         .iter_rows(named=True)}
        for condition in CONDITIONS:
            family, side = CONDITION_FAMILY[condition], CONDITION_SIDE[condition]
            volume = volumes.get(FAMILY_SERIES[family])
            if volume is None:
                continue
            for k, level in enumerate(LEVELS):
                c = study_centers[LEVEL_NAMES[level]]
                center = np.array([c["x_mm"], c["y_mm"], c["z_mm"]])
                lateral = np.array([c["lateral_x"], c["lateral_y"], c["lateral_z"]])
                sign = {"left": 1.0, "right": -1.0, "center": 0.0}[side]
                offset = c["foramen_offset_mm"] if family == "foraminal" else c["recess_offset_mm"]
                point = center + sign * offset * lateral
                feats = _profiles(volume, point, _family_directions(family, side, lateral))
                level_onehot = np.eye(len(LEVELS))[k]
                rows.append({"row_id": row_id(study_id, condition, level), "family": family,
                             "features": np.concatenate([feats, level_onehot]).tolist()})
    return pl.DataFrame(rows, schema={"row_id": pl.String, "family": pl.String,
                                      "features": pl.List(pl.Float64)})


def _targets(labels: pl.DataFrame) -> pl.DataFrame:
    long = labels.unpivot(index="study_id", variable_name="column", value_name="label")
    return long.select(
        row_id=pl.col("study_id").cast(pl.String) + "_" + pl.col("column"),
        target=pl.col("label").replace_strict({s: i for i, s in enumerate(SEVERITIES)},
                                              default=None, return_dtype=pl.Int8),
    )


def learnability_check(dataset_dir: Path) -> dict[str, Any]:
    """Fit on train, score on test; returns the simple model's and the prior's figures."""
    train_labels = read_labels(dataset_dir / "train.csv")
    test_labels = read_labels(dataset_dir / "test_labels.csv")
    train = extract_features(dataset_dir, "train").join(_targets(train_labels), on="row_id")
    test = extract_features(dataset_dir, "test")
    test_rows = [row_id(s, c, lv) for s in test_labels["study_id"].to_list()
                 for c in CONDITIONS for lv in LEVELS]
    prior = prior_predictions(train_labels, test_rows)
    predicted = []
    for family in FAMILIES:
        fit = train.filter((pl.col("family") == family) & pl.col("target").is_not_null())
        apply = test.filter(pl.col("family") == family)
        if fit.height == 0 or apply.height == 0:
            continue
        x = np.array(fit["features"].to_list())
        y = fit["target"].to_numpy()
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
        model.fit(x, y, logisticregression__sample_weight=SEVERITY_WEIGHT[y])
        probs = np.zeros((apply.height, 3))
        probs[:, model.classes_] = model.predict_proba(np.array(apply["features"].to_list()))
        predicted.append(pl.DataFrame({"row_id": apply["row_id"],
                                       **{c: probs[:, i] for i, c in enumerate(SUBMISSION_COLUMNS)}}))
    model_rows = pl.concat(predicted) if predicted else prior.head(0)
    # rows whose series is missing keep the prior
    combined = prior.join(model_rows, on="row_id", how="left", suffix="_model").select(
        "row_id", *[pl.coalesce(f"{c}_model", c).alias(c) for c in SUBMISSION_COLUMNS])
    model_score = score(test_labels, combined)
    prior_score = score(test_labels, prior)
    truth = pl.read_csv(dataset_dir / "grade_probabilities.csv").filter(pl.col("split") == "test")
    result = {"model_score": model_score["score"], "prior_score": prior_score["score"],
              "model": model_score, "prior": prior_score,
              **placement(truth, test_labels, model_score["score"], prior_score["score"]),
              "train_rows": train.height, "test_rows": test.height}
    log.info("learnability: simple model %.4f vs prior %.4f, floor %.4f (competition metric, "
             "held-out test)", model_score["score"], prior_score["score"], result["floor_score"])
    return result
