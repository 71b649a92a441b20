"""Rule cv_report: cv.json = the out-of-fold evaluation (end to end and on annotated points)
plus, where test labels exist (synthetic data), the submission's test score and the prior's,
and where the true severities are known (synthetic data), each split's Bayes floor and the
share of the prior-to-floor gap the CV and the test score close.
With test labels, tracked as this job's own run evaluate/test/seed{seed} (nested under the
seed's train run): the test scores beside the CV headline, so one row compares both."""
import json
import logging
from pathlib import Path

import polars as pl

from spinepipe.bayes_floor import placement
from spinepipe.classify.plots import plot_score_placement
from spinepipe.dataset import read_labels
from spinepipe.logs import setup_logging
from spinepipe.metric import prior_predictions, score
from spinepipe.tracking.context import workflow_context
from spinepipe.tracking.runs import flatten, mlflow_run

# cv_oof.json's figures that go beside the test scores (the rest stays in evaluate/cv/seed*)
CV_HEADLINE = ("cv_score", "cv_score_annotated_points", "localization_cost", "prior_score",
               "cv_score_uncalibrated", "floor_score", "gap_closed")
TEST_HEADLINE = ("test_score", "test_prior_score", "test_floor_score", "test_gap_closed")

setup_logging(snakemake.log[0])
result = json.loads(Path(snakemake.input.oof).read_text())
train_labels = read_labels(Path(snakemake.input.labels))
if snakemake.input.test_labels:
    test_labels = read_labels(Path(snakemake.input.test_labels[0]))
    submission = pl.read_csv(snakemake.input.submission)
    test = score(test_labels, submission)
    prior = score(test_labels, prior_predictions(train_labels, submission["row_id"].to_list()))
    result.update(test_score=test["score"], test_prior_score=prior["score"],
                  test_terms={k: v for k, v in test.items() if k != "score"})
if snakemake.input.truth:  # P(grade | true severity) of every graded structure
    truth = pl.read_csv(snakemake.input.truth[0])
    result.update(placement(truth.filter(pl.col("split") == "train"), train_labels,
                            result["cv_score"], result["prior_score"]))
    if "test_score" in result:
        result.update(placement(truth.filter(pl.col("split") == "test"), test_labels,
                                result["test_score"], result["test_prior_score"], prefix="test_"))
Path(snakemake.output.cv).write_text(json.dumps(result, indent=2))
plot_score_placement(result, Path(snakemake.output.placement))
logging.info("cv %.4f end to end, %.4f on annotated points (prior %.4f, floor %s); test %s "
             "(prior %s, floor %s)", result["cv_score"], result["cv_score_annotated_points"],
             result["prior_score"], result.get("floor_score"), result.get("test_score"),
             result.get("test_prior_score"), result.get("test_floor_score"))
if "test_score" in result:
    parent = json.loads(Path(snakemake.input.parent).read_text())
    datasets = snakemake.input.get("datasets")  # optional: the test split as a dataset input
    workflow_context(snakemake.rule, snakemake.config, datasets,
                     {"test": "evaluation"} if datasets else None)
    metrics = {k: result[k] for k in (*CV_HEADLINE, *TEST_HEADLINE) if k in result}
    with mlflow_run(snakemake.params.tracking, f"evaluate/test/seed{parent['seed']}", {},
                    tags={"stage": "evaluate", "seed": str(parent["seed"])},
                    parent_run_id=parent["run_id"]) as run:
        run(metrics | flatten({"test_terms": result["test_terms"]}))
        run.log_artifact(snakemake.output.cv)
        run.log_artifact(snakemake.output.placement)
