"""Rules metadata_split / metadata: instances.parquet and series.parquet, concatenated from
the header-parse shards of one split (metadata_split) or from both splits (metadata)."""
import logging

import polars as pl

from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
instances = pl.concat([pl.read_parquet(p) for p in snakemake.input.instances], how="vertical_relaxed")
series = pl.concat([pl.read_parquet(p) for p in snakemake.input.series], how="vertical_relaxed")
bad = instances.filter(pl.col("status") != "ok")
for row in bad.head(20).iter_rows(named=True):
    logging.warning("%s: %s (%s)", row["path"], row["status"], row["error"])
logging.info("%d files, %d not usable; %d series, %d with unresolved geometry",
             instances.height, bad.height, series.height, series.filter(~pl.col("geometry_ok")).height)
instances.write_parquet(snakemake.output.instances)
series.write_parquet(snakemake.output.series)
