"""Rule crops_index: the shards' indices in one table (with each row's array), and counts."""
import json
import logging
from pathlib import Path

import polars as pl

from spinepipe.crops.build import crop_summary
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
frames = [pl.read_parquet(p).with_columns(array=pl.lit(str(Path(p).with_suffix(".npy"))))
          for p in snakemake.input.shards]
index = pl.concat(frames).sort("study_id", "level", "view")
index.write_parquet(snakemake.output.index)
summary = crop_summary(index)
Path(snakemake.output.summary).write_text(json.dumps(summary, indent=2))
logging.info("crops: %s", summary)
