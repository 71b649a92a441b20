"""Rule localizer_stacks: decode each series of one shard of studies once into a resized
stack (all of the shard's slices in one .npy) and index them."""
from pathlib import Path

import polars as pl

from spinepipe.localize.stacks import build_stacks
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
index = build_stacks(pl.read_parquet(snakemake.input.instances), pl.read_parquet(snakemake.input.series),
                     snakemake.params.size, Path(snakemake.output.stacks))
index.write_parquet(snakemake.output.index)
