"""Rule dataset_summary: check the dataset layout and write its summary."""
import json
from pathlib import Path

from spinepipe.dataset import summarize_dataset
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
summary = summarize_dataset(Path(snakemake.params.data_dir))
Path(snakemake.output[0]).write_text(json.dumps(summary, indent=2))
