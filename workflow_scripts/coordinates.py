"""Rule coordinates: annotated + predicted coordinates, and the label-noise report."""
import logging
from pathlib import Path

import polars as pl

from spinepipe.dataset import read_coordinates
from spinepipe.localize.coordinates import merge_coordinates, plot_label_noise
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
noise_cfg = snakemake.params.noise
coordinates, noise = merge_coordinates(
    read_coordinates(Path(snakemake.input.annotated)), pl.read_parquet(snakemake.input.train),
    pl.read_parquet(snakemake.input.test), pl.read_parquet(snakemake.input.instances),
    pl.read_parquet(snakemake.input.series), noise_cfg["threshold_mm"], noise_cfg["action"])
logging.info("%d of %d annotations beyond %.1f mm of their out-of-fold prediction (action: %s)",
             noise.filter(pl.col("noisy")).height, noise.height, noise_cfg["threshold_mm"],
             noise_cfg["action"])
coordinates.write_parquet(snakemake.output.coordinates)
noise.sort("distance_mm", descending=True).write_csv(snakemake.output.noise)
plot_label_noise(noise, noise_cfg["threshold_mm"], Path(snakemake.output.plot))
