"""Rule dataset_record: one split's MLflow dataset record (name, digest of its CSVs and
file list, source, study/series/file counts); training and evaluation runs log them."""
import json
import logging
from pathlib import Path

import polars as pl

from spinepipe.logs import setup_logging
from spinepipe.tracking_datasets import dataset_records

setup_logging(snakemake.log[0])
records = dataset_records(Path(snakemake.params.data_dir), snakemake.params.name,
                          pl.read_parquet(snakemake.input.instances), pl.read_parquet(snakemake.input.series),
                          splits=(snakemake.wildcards.split,))
Path(snakemake.output[0]).write_text(json.dumps(records, indent=2) + "\n")
for split, record in records.items():
    logging.info("%s: %s digest %s %s", split, record["name"], record["digest"], record["profile"])
