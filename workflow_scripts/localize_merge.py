"""Rule localize_merge: a split's localization (predictions, unlocalized reasons) from its
shards."""
import logging

import polars as pl

from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
predictions = pl.concat([pl.read_parquet(p) for p in snakemake.input.predictions], how="vertical_relaxed")
reasons = pl.concat([pl.read_csv(p, infer_schema=False) for p in snakemake.input.reasons],
                    how="vertical_relaxed")
# in study order as one job over the split wrote them (each shard's rows are in study order)
predictions.sort("study_id", maintain_order=True).write_parquet(snakemake.output.predictions)
reasons.sort(pl.col("study_id").cast(pl.Int64, strict=False), maintain_order=True).write_csv(snakemake.output.reasons)
logging.info("%d predicted points from %d shards; %d unlocalized entries", predictions.height,
             len(snakemake.input.predictions), reasons.height)
