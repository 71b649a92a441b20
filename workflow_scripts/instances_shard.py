"""Rule instances_shard: header-only parse of one shard of studies, and its series rows."""
import io
from pathlib import Path

import polars as pl

from spinepipe.constants import SHARD_IMAGES
from spinepipe.dataset import SERIES_SCHEMA
from spinepipe.logs import setup_logging
from spinepipe.metadata import parse_shard

setup_logging(snakemake.log[0])
split = snakemake.wildcards.split
if snakemake.params.synthetic:  # a synthesis shard: its images and its series rows
    shard_dir = Path(snakemake.input.source)
    table, image_root = pl.read_parquet(shard_dir / "series.parquet"), shard_dir / SHARD_IMAGES
else:  # a real dataset: this shard's rows of the series CSV, read when the workflow was parsed
    table = pl.read_csv(io.StringIO(snakemake.params.rows), schema_overrides=SERIES_SCHEMA)
    image_root = Path(snakemake.params.data_dir) / f"{split}_images"
instances, series = parse_shard(image_root, split, table, Path(snakemake.params.cache_dir))
instances.write_parquet(snakemake.output.instances)
series.write_parquet(snakemake.output.series)
