"""Rule predict_oof: one fold model of one family over the train studies its fold held out,
at their out-of-fold predicted points (crops split train_predicted)."""
from pathlib import Path

import polars as pl
import torch

from spinepipe.classify.held_out import predict_held_out
from spinepipe.devices import resolve_device
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(max(snakemake.threads, 1))
cfg = snakemake.params.cfg
device = resolve_device(snakemake.params.device, "train.device")
predict_held_out(Path(snakemake.input.model), pl.read_parquet(snakemake.input.index),
                 pl.read_parquet(snakemake.input.folds), int(snakemake.wildcards.fold), cfg["tta"],
                 cfg["batch_size"], device).write_parquet(snakemake.output[0])
