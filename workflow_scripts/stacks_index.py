"""Rule stacks_index: the stack index of a split, its shards' indexes one after another
(rows point into the shards' .npy files)."""
import polars as pl

from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
pl.concat([pl.read_parquet(p) for p in snakemake.input.indexes]).write_parquet(snakemake.output[0])
