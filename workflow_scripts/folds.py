"""Rule folds: StratifiedGroupKFold by study on a severity summary, written once."""
from pathlib import Path

from spinepipe.dataset import read_labels
from spinepipe.folds import make_folds
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
make_folds(read_labels(Path(snakemake.input.labels)), snakemake.params.n,
           snakemake.params.seed).write_parquet(snakemake.output[0])
