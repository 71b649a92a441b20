"""Rule metadata: instances.parquet and series.parquet for both splits."""
import logging
from pathlib import Path

import polars as pl

from spinepipe.dataset import read_series_descriptions
from spinepipe.logs import setup_logging
from spinepipe.metadata import summarize_series

setup_logging(snakemake.log[0])
instances = pl.concat([pl.read_parquet(p) for p in snakemake.input.instances])
series_table = pl.concat([
    read_series_descriptions(Path(snakemake.input.train_series)).with_columns(split=pl.lit("train")),
    read_series_descriptions(Path(snakemake.input.test_series)).with_columns(split=pl.lit("test")),
])
series = summarize_series(instances, series_table).join(
    series_table.select("study_id", "series_id", "split"), on=["study_id", "series_id"])
bad = instances.filter(pl.col("status") != "ok")
for row in bad.head(20).iter_rows(named=True):
    logging.warning("%s: %s (%s)", row["path"], row["status"], row["error"])
logging.info("%d files, %d not usable; %d series, %d with unresolved geometry",
             instances.height, bad.height, series.height, series.filter(~pl.col("geometry_ok")).height)
instances.write_parquet(snakemake.output.instances)
series.write_parquet(snakemake.output.series)
