"""Rule submission: fold ensemble, fallbacks for degraded rows, submission.csv in sample order."""
import json
import logging
from pathlib import Path

import polars as pl

from spinepipe.classify.inference import assemble_submission, ensemble, validate_submission
from spinepipe.dataset import read_labels, read_submission
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
predictions = pl.concat([pl.read_parquet(p) for p in snakemake.input.predictions])
temperatures = json.loads(Path(snakemake.input.temperatures).read_text())
ensembled = ensemble(predictions, temperatures, snakemake.params.cfg["fold_weights"])
sample = read_submission(Path(snakemake.input.sample))
unlocalized = pl.read_csv(snakemake.input.unlocalized, schema_overrides={"study_id": pl.Int64})
submission, degraded = assemble_submission(sample, ensembled, read_labels(Path(snakemake.input.labels)),
                                           pl.read_parquet(snakemake.input.index), unlocalized,
                                           pl.read_parquet(snakemake.input.series))
validate_submission(submission, sample)
submission.write_csv(snakemake.output.submission)
degraded.write_csv(snakemake.output.degraded)
logging.info("submission: %d rows, %d degraded (%d on the prior)", submission.height, degraded.height,
             (degraded["fallback"] == "prior").sum())
