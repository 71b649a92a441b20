"""Where a split's study sheets read from: one object holding the run's tables for a split,
handing out ``StudyInputs`` per study (``spinepipe.qa.inputs.load_study_inputs``).

Train studies are shown as the end-to-end CV sees them: their out-of-fold predicted points,
the crops cut there (``train_predicted``) and the out-of-fold probabilities, next to the
annotated points and the labels. Test studies show what the submission used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from spinepipe.dataset import read_labels
from spinepipe.geometry import StackGeometry
from spinepipe.localize.stacks import StackCache
from spinepipe.metric import labels_to_long
from spinepipe.qa.inputs import load_study_inputs
from spinepipe.qa.types import StudyInputs
from spinepipe.xref import stack_geometries

log = logging.getLogger(__name__)


@dataclass
class SplitSources:
    """A split's tables, loaded once; ``inputs(study_id)`` builds one study's sheet inputs."""

    series: pl.DataFrame
    geometries: dict[int, StackGeometry]
    stacks: StackCache | None
    predictions: pl.DataFrame | None
    coordinates: pl.DataFrame | None
    crop_index: pl.DataFrame | None
    crop_cfg: dict[str, Any] | None
    probabilities: pl.DataFrame | None
    labels_long: pl.DataFrame | None
    reasons: pl.DataFrame | None
    foramen_offset_mm: float  # config geometry.foramen_offset_mm

    @classmethod
    def from_files(cls, *, split: str, series: Path, instances: Path, stacks: Path | None, predictions: Path | None,
                   coordinates: Path | None, crop_index: Path | None, crop_cfg: dict[str, Any] | None,
                   probabilities: Path | None, labels: Path | None, reasons: Path | None,
                   foramen_offset_mm: float) -> SplitSources:
        """The ``split`` rows of ``series.parquet``; every other path but ``instances`` may be
        None (not drawn then). ``foramen_offset_mm``: config ``geometry.foramen_offset_mm``."""
        series_table = pl.read_parquet(series).filter(pl.col("split") == split)
        geometries = stack_geometries(pl.read_parquet(instances), series_table)
        return cls(
            series=series_table, geometries=geometries,
            stacks=None if stacks is None else StackCache(pl.read_parquet(stacks)),
            predictions=_read(predictions), coordinates=_read(coordinates),
            crop_index=_read(crop_index), crop_cfg=crop_cfg, probabilities=_read(probabilities),
            labels_long=None if labels is None else labels_to_long(read_labels(labels)),
            reasons=_read(reasons), foramen_offset_mm=foramen_offset_mm)

    def studies(self) -> list[int]:
        return sorted(self.series["study_id"].unique().to_list())

    def inputs(self, study_id: int) -> StudyInputs | None:
        """The study's sheet inputs, or None when the split does not list it."""
        if study_id not in set(self.series["study_id"].to_list()):
            return None
        return load_study_inputs(study_id, self.series, self.geometries, self.stacks, self.predictions,
                                 self.coordinates, self.crop_index, self.crop_cfg, self.probabilities,
                                 self.labels_long, self.reasons,
                                 foramen_offset_mm=self.foramen_offset_mm)


def _read(path: Path | None) -> pl.DataFrame | None:
    if path is None:
        return None
    path = Path(path)
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    return pl.read_csv(path, infer_schema_length=10000)


def shard_studies(studies: list[int], shard: int, shards: int) -> list[int]:
    """The studies of one sheet shard (study_id modulo the shard count, as the crop shards)."""
    return [s for s in studies if s % shards == shard]


def sampled_train_studies(studies: list[int], n: int, seed: int, always: list[int] = ()) -> list[int]:
    """``n`` train studies drawn with ``seed`` (the same ones every run), plus ``always``."""
    rng = np.random.default_rng(seed)
    ordered = sorted(studies)
    drawn = rng.choice(len(ordered), size=min(n, len(ordered)), replace=False) if ordered else []
    chosen = {ordered[i] for i in drawn} | (set(always) & set(ordered))
    return sorted(chosen)
