"""Rule qa_cases: the cases each gallery shows, and the train studies that get a sheet."""
from pathlib import Path

import polars as pl

from spinepipe.dataset import read_labels
from spinepipe.logs import setup_logging
from spinepipe.metric import labels_to_long
from spinepipe.qa.cases import (
    cases_table,
    confident_wrong_cases,
    degraded_cases,
    label_noise_cases,
    localization_error_cases,
)
from spinepipe.qa.sources import sampled_train_studies

setup_logging(snakemake.log[0])
cfg = snakemake.params.cfg
n = cfg["gallery_size"]
label_noise = pl.read_csv(snakemake.input.label_noise)
cases = cases_table(
    localization_error_cases(label_noise, n),
    label_noise_cases(label_noise, n),
    confident_wrong_cases(pl.read_csv(snakemake.input.oof),
                          labels_to_long(read_labels(Path(snakemake.input.labels))), n),
    degraded_cases(pl.read_csv(snakemake.input.degraded)))
cases.write_csv(snakemake.output.cases)
series = pl.read_parquet(snakemake.input.series)
train = series.filter(pl.col("split") == "train")["study_id"].unique().to_list()
in_galleries = cases.filter(pl.col("gallery") != "degraded")["study_id"].to_list()
chosen = sampled_train_studies(train, cfg["train_sample"], snakemake.params.seed, in_galleries)
Path(snakemake.output.train_studies).write_text("".join(f"{s}\n" for s in chosen))
