"""Rule localize: predicted slices and points for the studies of one shard of a split."""
from pathlib import Path

import polars as pl

from spinepipe.localize.predict import localize
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
split = snakemake.wildcards.split
predictions, reasons = localize(
    split, checkpoints=[Path(p) for p in snakemake.input.models],
    stack_index=pl.read_parquet(snakemake.input.stacks),
    instances=pl.read_parquet(snakemake.input.instances),
    series=pl.read_parquet(snakemake.input.series),
    folds=pl.read_parquet(snakemake.input.folds) if split == "train" else None,
    cfg=snakemake.params.cfg, threads=snakemake.threads, runtime=snakemake.params.runtime)
predictions.write_parquet(snakemake.output.predictions)
reasons.write_csv(snakemake.output.reasons)
