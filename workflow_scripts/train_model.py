"""Rule train_model: one severity model for one condition family and fold."""
import json
from pathlib import Path

import polars as pl

from spinepipe.classify.pipeline import train_fold
from spinepipe.dataset import read_labels
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
train_fold(snakemake.wildcards.family, int(snakemake.wildcards.fold),
           index=pl.read_parquet(snakemake.input.index),
           predicted_index=pl.read_parquet(snakemake.input.predicted_index),
           localization_error=json.loads(Path(snakemake.input.localization_error).read_text()),
           labels=read_labels(Path(snakemake.input.labels)),
           folds=pl.read_parquet(snakemake.input.folds), crop_cfg=snakemake.params.crops,
           cfg=snakemake.params.cfg, seed=snakemake.params.seed, tracking=snakemake.params.tracking,
           parent_run_id=json.loads(Path(snakemake.input.parent).read_text())["run_id"],
           out_model=Path(snakemake.output.model), out_predictions=Path(snakemake.output.predictions),
           checkpoint=Path(snakemake.params.checkpoint), threads=snakemake.threads)
