"""Rule predict_test: one fold model of one family over the test crops (in torch, or its ONNX
export in onnxruntime)."""
from pathlib import Path

import polars as pl
import torch

from spinepipe.classify.inference import predict_family
from spinepipe.devices import resolve_device
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(max(snakemake.threads, 1))
cfg = snakemake.params.cfg
device = resolve_device(snakemake.params.device, "train.device")
predict_family(Path(snakemake.input.model), pl.read_parquet(snakemake.input.index), cfg["tta"],
               cfg["batch_size"], device, snakemake.params.runtime).write_parquet(snakemake.output[0])
