"""Rule cv_eval: the end-to-end out-of-fold CV (the headline) and the classifier-only CV on
annotated points, vs the prior; the submission's temperatures, figures, the end-to-end
probabilities of every train row and the rows that fell back (cv_oof.json)."""
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from spinepipe.classify.end_to_end import evaluate_cv
from spinepipe.dataset import read_labels
from spinepipe.logs import setup_logging
from spinepipe.tracking import finish_run, flatten

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
parent = json.loads(Path(snakemake.input.parent).read_text())["run_id"]
finish_run(snakemake.params.tracking, parent, flatten({"cv": result}),
           [Path(snakemake.output.cv), Path(snakemake.output.confusion),
            Path(snakemake.output.calibration), Path(snakemake.output.degraded)])
