"""Rule cv_eval: the end-to-end out-of-fold CV (the headline) and the classifier-only CV on
annotated points, vs the prior; the submission's temperatures, figures, the end-to-end
probabilities of every train row and the rows that fell back (cv_oof.json). Tracked as this
job's own run evaluate/cv/seed{seed}, nested under the seed's train run."""
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from spinepipe.classify.end_to_end import evaluate_cv
from spinepipe.dataset import read_labels
from spinepipe.logs import setup_logging
from spinepipe.tracking.context import workflow_context
from spinepipe.tracking.runs import flatten, mlflow_run

setup_logging(snakemake.log[0])
cfg = snakemake.params.cfg
figures = Path(snakemake.output.confusion).parent
result, temperatures, probabilities, degraded = evaluate_cv(
    pl.concat([pl.read_parquet(p) for p in snakemake.input.annotated]),
    pl.concat([pl.read_parquet(p) for p in snakemake.input.end_to_end]),
    read_labels(Path(snakemake.input.labels)), pl.read_parquet(snakemake.input.folds),
    pl.read_parquet(snakemake.input.index),
    pl.read_csv(snakemake.input.unlocalized, schema_overrides={"study_id": pl.Int64}),
    pl.read_parquet(snakemake.input.series), np.asarray(cfg["class_weights"]),
    cfg["temperature_scaling"], figures)
Path(snakemake.output.cv).write_text(json.dumps(result, indent=2))
Path(snakemake.output.temperatures).write_text(json.dumps(temperatures, indent=2))
probabilities.write_csv(snakemake.output.predictions)
degraded.write_csv(snakemake.output.degraded)
logging.info("cv: %s", json.dumps(result, indent=1))
# the outputs first, then the tracking store (best effort)
parent = json.loads(Path(snakemake.input.parent).read_text())
datasets = snakemake.input.get("datasets")  # optional: the evaluated split as a dataset input
workflow_context(snakemake.rule, snakemake.config, datasets,
                 {"train": "evaluation"} if datasets else None)
with mlflow_run(snakemake.params.tracking, f"evaluate/cv/seed{parent['seed']}",
                {"temperature_scaling": cfg["temperature_scaling"], "class_weights": cfg["class_weights"]},
                tags={"stage": "evaluate", "seed": str(parent["seed"])},
                parent_run_id=parent["run_id"]) as run:
    run(flatten(result))
    for path in (snakemake.output.cv, snakemake.output.confusion, snakemake.output.calibration,
                 snakemake.output.degraded):
        run.log_artifact(path)
