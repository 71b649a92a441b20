"""Rule coordinates: the train studies' annotated + predicted coordinates, their out-of-fold
predicted points alone (the end-to-end CV's crops), and the label-noise report."""
import json
import logging
from pathlib import Path

import polars as pl

from spinepipe.dataset import read_coordinates
from spinepipe.localize.coordinates import (
                                            error_summary,
                                            merge_coordinates,
                                            plot_label_noise,
                                            predicted_coordinates,
)
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
noise_cfg = snakemake.params.noise
predicted_train = pl.read_parquet(snakemake.input.train)
coordinates, noise = merge_coordinates(
    read_coordinates(Path(snakemake.input.annotated)), predicted_train,
    pl.read_parquet(snakemake.input.instances),
    pl.read_parquet(snakemake.input.series), noise_cfg["threshold_mm"], noise_cfg["action"])
logging.info("%d of %d annotations beyond %.1f mm of their out-of-fold prediction (action: %s)",
             noise.filter(pl.col("noisy")).height, noise.height, noise_cfg["threshold_mm"],
             noise_cfg["action"])
coordinates.write_parquet(snakemake.output.coordinates)
predicted_coordinates(predicted_train).write_parquet(snakemake.output.train_predicted)
noise.sort("distance_mm", descending=True).write_csv(snakemake.output.noise)
Path(snakemake.output.oof_error).write_text(json.dumps(error_summary(noise), indent=2))
plot_label_noise(noise, noise_cfg["threshold_mm"], Path(snakemake.output.plot))
