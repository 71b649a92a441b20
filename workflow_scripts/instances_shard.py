"""Rule instances_shard: header-only parse of one shard of studies."""
from pathlib import Path

from spinepipe.dataset import read_series_descriptions
from spinepipe.logs import setup_logging
from spinepipe.metadata import parse_shard

setup_logging(snakemake.log[0])
series = read_series_descriptions(Path(snakemake.input.series))
frame = parse_shard(Path(snakemake.params.data_dir), snakemake.wildcards.split, series,
                    int(snakemake.wildcards.shard), snakemake.params.shards,
                    Path(snakemake.params.cache_dir))
frame.write_parquet(snakemake.output[0])
