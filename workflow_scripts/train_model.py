"""Rule train_model: one severity model for one condition family and fold."""
import json
from pathlib import Path

import polars as pl

from spinepipe.classify.mlflow_model import FOLD_MODEL_INFERENCE, log_model
from spinepipe.classify.pipeline import train_fold
from spinepipe.dataset import read_labels
from spinepipe.logs import setup_logging
from spinepipe.tracking.context import workflow_context

setup_logging(snakemake.log[0])
index = pl.read_parquet(snakemake.input.index)


def fold_model(run_id: str) -> None:
    """This fold's model as an MLflow model of its run (temperature 1: temperatures are fitted
    on the whole out-of-fold set later; inference settings overridable at load time)."""
    log_model(run_id, snakemake.params.tracking["tracking_uri"], "model", [Path(snakemake.output.model)],
              {}, Path(snakemake.input.labels), FOLD_MODEL_INFERENCE, index)


workflow_context(snakemake.rule, snakemake.config, snakemake.input.datasets,  # parent: the seed's train run
                 contexts={"train": "training"})
train_fold(snakemake.wildcards.family, int(snakemake.wildcards.fold),
           index=index,
           predicted_index=pl.read_parquet(snakemake.input.predicted_index),
           localization_error=json.loads(Path(snakemake.input.localization_error).read_text()),
           labels=read_labels(Path(snakemake.input.labels)),
           folds=pl.read_parquet(snakemake.input.folds), crop_cfg=snakemake.params.crops,
           cfg=snakemake.params.cfg, seed=snakemake.params.seed, tracking=snakemake.params.tracking,
           parent_run_id=json.loads(Path(snakemake.input.parent).read_text())["run_id"],
           out_model=Path(snakemake.output.model), out_predictions=Path(snakemake.output.predictions),
           checkpoint=Path(snakemake.params.checkpoint), threads=snakemake.threads,
           model_logger=fold_model)
