"""Rule localizer_stacks: decode each series of a split once into a resized stack."""
from pathlib import Path

import polars as pl

from spinepipe.localize.stacks import build_stacks
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
split = snakemake.wildcards.split
series = pl.read_parquet(snakemake.input.series).filter(pl.col("split") == split)
instances = pl.read_parquet(snakemake.input.instances).filter(pl.col("split") == split)
size = snakemake.params.size
index = build_stacks(instances, series, {d: size for d in series["series_description"].unique()},
                     Path(snakemake.output.stacks))
index.write_parquet(snakemake.output.index)
