"""Rule crops_shard: every view of the shard's studies, cut once into a memory-mappable array
(at the points of the split's coordinates file: see CROP_SPLITS in rules/crops.smk)."""
from pathlib import Path

import polars as pl

from spinepipe.crops.build import build_crops
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
shard = int(snakemake.wildcards.shard)
cfg = snakemake.params.cfg
series = pl.read_parquet(snakemake.input.series).filter(pl.col("split") == snakemake.params.studies)
studies = sorted(s for s in series["study_id"].unique().to_list() if s % cfg["shards"] == shard)
index = build_crops(studies, pl.read_parquet(snakemake.input.coordinates),
                    pl.read_parquet(snakemake.input.instances), series, cfg,
                    Path(snakemake.output.array))
index.write_parquet(snakemake.output.index)
