"""Rule localize_eval: localization figures against the ground truth, logged to MLflow."""
import json
import logging
from pathlib import Path

import polars as pl

from spinepipe.localize.evaluate import evaluate_localization
from spinepipe.logs import setup_logging
from spinepipe.tracking.context import workflow_context
from spinepipe.tracking.runs import flatten, mlflow_run
from spinepipe.xref import stack_geometries

setup_logging(snakemake.log[0])
workflow_context(snakemake.rule, snakemake.config, snakemake.input.datasets,
                 {"train": "evaluation", "test": "evaluation"})
instances = pl.read_parquet(snakemake.input.instances)
series = pl.read_parquet(snakemake.input.series)
geometries = stack_geometries(instances, series)
centers = pl.read_csv(snakemake.input.centers)
result = {split: evaluate_localization(pl.read_parquet(getattr(snakemake.input, split)), geometries,
                                       centers.filter(pl.col("split") == split))
          for split in ("train", "test")}
Path(snakemake.output[0]).write_text(json.dumps(result, indent=2))
for line in json.dumps(result, indent=1).splitlines():
    logging.info(line)
with mlflow_run(snakemake.params.tracking, "evaluate/localization", {}, tags={"stage": "evaluate"}) as log_metrics:
    log_metrics({k.replace("/", "_"): v for k, v in flatten(result).items()
                 if isinstance(v, (int, float))})
