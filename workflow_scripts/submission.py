"""Rule submission: fold ensemble, fallbacks for degraded rows, submission.csv in sample order
(without a sample_submission.csv: every graded study at every condition and level)."""
import json
import logging
from pathlib import Path

import polars as pl

from spinepipe.classify.inference import assemble_submission, ensemble, validate_submission
from spinepipe.dataset import read_submission, submission_rows
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
predictions = pl.concat([pl.read_parquet(p) for p in snakemake.input.predictions])
temperatures = json.loads(Path(snakemake.input.temperatures).read_text())
ensembled = ensemble(predictions, temperatures, snakemake.params.cfg["fold_weights"])
series = pl.read_parquet(snakemake.input.series)
if snakemake.input.sample:
    sample = read_submission(Path(snakemake.input.sample[0]))
else:
    sample = submission_rows(sorted(series["study_id"].unique().to_list()))
    logging.info("no sample_submission.csv: grading %d studies at every condition and level",
                 series["study_id"].n_unique())
unlocalized = pl.read_csv(snakemake.input.unlocalized, schema_overrides={"study_id": pl.Int64})
submission, degraded = assemble_submission(sample, ensembled,
                                           pl.read_csv(snakemake.input.priors),
                                           pl.read_parquet(snakemake.input.index), unlocalized, series)
validate_submission(submission, sample)
submission.write_csv(snakemake.output.submission)
degraded.write_csv(snakemake.output.degraded)
logging.info("submission: %d rows, %d degraded (%d on the prior)", submission.height, degraded.height,
             (degraded["fallback"] == "prior").sum())
