"""Grading a folder of studies with a trained bundle in one process: the chain of the
predict-only workflow's rules (header parse, localizer stacks, localization, crops, fold
models, ensemble, submission), each stage timed. The MLflow model of a bundle predicts with
it, and ``benchmarks/bench_predict.py`` measures it; the workflow runs the same stage
functions one job per shard."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch

from spinepipe.bundle.manifest import Bundle, localization_settings
from spinepipe.classify.fold_model import load_model
from spinepipe.classify.inference import (
    assemble_submission,
    ensemble,
    predict_family,
    validate_submission,
)
from spinepipe.crops.build import build_crops
from spinepipe.dataset import submission_rows, validate_predict_folder
from spinepipe.localize.coordinates import predicted_coordinates
from spinepipe.localize.predict import load_localizers, localize
from spinepipe.localize.stacks import build_stacks
from spinepipe.metadata import parse_shard

log = logging.getLogger(__name__)

SPLIT = "test"  # the layout a bundle grades: test_images/ and test_series_descriptions.csv


@dataclass
class StageTimes:
    """Wall seconds per stage, in the order they ran."""
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def grade_folder(bundle: Bundle, data_dir: Path, work: Path, *, runtime: str = "torch", threads: int = 1,
                 batch_size: int = 64, times: StageTimes | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The submission and the degraded-rows report of the studies in ``data_dir``, with
    intermediate files (header cache, stacks, crops) under ``work``."""
    times = times if times is not None else StageTimes()
    torch.set_num_threads(max(threads, 1))
    settings = bundle.settings
    work.mkdir(parents=True, exist_ok=True)
    with times.stage("read"):
        table, sample = validate_predict_folder(data_dir)
    with times.stage("parse"):
        instances, series = parse_shard(data_dir / f"{SPLIT}_images", SPLIT, table, work / "cache")
    with times.stage("stacks"):
        stacks = build_stacks(instances, series, settings["localize"]["image_size"], work / "stacks.npy")
    with times.stage("load models"):
        localizers = load_localizers(bundle.localizers, runtime)
        severity = {path: load_model(path, "cpu", runtime) for path in bundle.severity_models}
    with times.stage("localize"):
        points, unlocalized = localize(
            SPLIT, checkpoints=bundle.localizers, stack_index=stacks, instances=instances, series=series,
            folds=None, cfg=localization_settings(settings, report_learned_slices=False),
            threads=threads, runtime=runtime, models=localizers)
    with times.stage("crops"):
        studies = sorted(series["study_id"].unique().to_list())
        array = work / "crops.npy"
        crop_index = build_crops(studies, predicted_coordinates(points), instances, series,
                                 settings["crops"], array)
        crop_index = crop_index.with_columns(array=pl.lit(str(array))).sort("study_id", "level", "view")
    with times.stage("severity"):
        predictions = pl.concat([predict_family(path, crop_index, settings["inference"]["tta"], batch_size,
                                                "cpu", runtime, loaded) for path, loaded in severity.items()])
    with times.stage("submission"):
        ensembled = ensemble(predictions, bundle.temperatures, settings["inference"]["fold_weights"])
        sample = sample if sample is not None else submission_rows(studies)
        submission, degraded = assemble_submission(sample, ensembled, bundle.priors, crop_index, unlocalized,
                                                   series)
        validate_submission(submission, sample)
    log.info("graded %d studies of %s: %d rows, %d degraded; %s", len(studies), data_dir, submission.height,
             degraded.height, {k: round(v, 2) for k, v in times.seconds.items()})
    return submission, degraded
