"""Rule axial_xref: level points from the sagittal coordinates, then the axial slices."""
from pathlib import Path

import polars as pl

from spinepipe.dataset import read_coordinates
from spinepipe.logs import setup_logging
from spinepipe.xref import (
                            annotation_points,
                            axial_cross_reference,
                            level_points,
                            slice_reader,
                            stack_geometries,
)

setup_logging(snakemake.log[0])
instances = pl.read_parquet(snakemake.input.instances)
series = pl.read_parquet(snakemake.input.series)
geometries = stack_geometries(instances, series)
points = level_points(annotation_points(read_coordinates(Path(snakemake.input.coordinates)),
                                        geometries), geometries)
points.write_parquet(snakemake.output.points)
reader = slice_reader(instances) if snakemake.params.symmetry_refine else None
axial_cross_reference(points, series, geometries, reader).write_parquet(snakemake.output.xref)
