"""Rule coordinates_test: the test studies' coordinates, their predicted points (no
annotations exist for them)."""
import polars as pl

from spinepipe.localize.coordinates import predicted_coordinates
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
predicted_coordinates(pl.read_parquet(snakemake.input[0])).write_parquet(snakemake.output[0])
