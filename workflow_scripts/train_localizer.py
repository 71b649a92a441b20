"""Rule train_localizer: one localization model (point or slice) for one task and fold."""
from pathlib import Path

import polars as pl

from spinepipe.dataset import read_coordinates
from spinepipe.localize.pipeline import train_fold
from spinepipe.logs import setup_logging
from spinepipe.tracking.context import workflow_context

setup_logging(snakemake.log[0])
workflow_context(snakemake.rule, snakemake.config, snakemake.input.datasets, {"train": "training"})
train_fold(snakemake.wildcards.kind, snakemake.wildcards.task, int(snakemake.wildcards.fold),
           coordinates=read_coordinates(Path(snakemake.input.coordinates)),
           stack_index=pl.read_parquet(snakemake.input.stacks),
           instances=pl.read_parquet(snakemake.input.instances),
           series=pl.read_parquet(snakemake.input.series),
           xref=pl.read_parquet(snakemake.input.xref), folds=pl.read_parquet(snakemake.input.folds),
           cfg=snakemake.params.cfg, tracking=snakemake.params.tracking,
           out=Path(snakemake.output.model), threads=snakemake.threads)
