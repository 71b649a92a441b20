"""Rule geometry_eval: metadata and cross-reference measured against the ground truth."""
import json
from pathlib import Path

import polars as pl

from spinepipe.geometry_eval import evaluate_geometry
from spinepipe.logs import setup_logging
from spinepipe.xref import stack_geometries

setup_logging(snakemake.log[0])
instances = pl.read_parquet(snakemake.input.instances)
series = pl.read_parquet(snakemake.input.series)
result = evaluate_geometry(series, stack_geometries(instances, series),
                           pl.read_parquet(snakemake.input.xref),
                           pl.read_csv(snakemake.input.centers), pl.read_csv(snakemake.input.quirks),
                           snakemake.params.foramen_offset_mm)
Path(snakemake.output[0]).write_text(json.dumps(result, indent=2))
