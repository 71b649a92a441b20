"""Rule coordinates_merge: coordinates.parquet, every study's points (train and test) in one
table, for the QA sheets and the user; the crops read the per-split files."""
import logging

import polars as pl

from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
merged = pl.concat([pl.read_parquet(p) for p in snakemake.input.splits]).sort(
    "study_id", "condition", "level")
merged.write_parquet(snakemake.output[0])
logging.info("%d coordinates of %d studies", merged.height, merged["study_id"].n_unique())
