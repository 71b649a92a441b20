"""Rule tracking_init: create the MLflow store and experiment before training jobs start."""
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.tracking.store import init_tracking

setup_logging(snakemake.log[0])
experiment_id = init_tracking(snakemake.params.tracking)
Path(snakemake.output[0]).write_text(f"{snakemake.params.tracking['tracking_uri']} {experiment_id}\n")
