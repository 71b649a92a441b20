"""Generating the synthetic RSNA-format dataset: one study, one shard, and the merge.

Every study draws from its own random stream, seeded by (seed, split, study index), so a
study's files do not depend on how studies are grouped into shards, and adding studies
leaves the existing ones untouched.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm import tqdm

from spinepipe.constants import (
    AXIAL_T2,
    CONDITION_FAMILY,
    CONDITION_NAMES,
    CONDITION_SIDE,
    CONDITIONS,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SEVERITIES,
    SHARD_IMAGES,
    SUBMISSION_COLUMNS,
    row_id,
)
from spinepipe.synth.anatomy import SpineAnatomy, random_anatomy
from spinepipe.synth.dicom_writer import build_dataset, write_dataset
from spinepipe.synth.labels import (
    READER_STREAM,
    pathology_from_severities,
    read_grades,
    sample_true_severities,
    severity_table,
)
from spinepipe.synth.layout import (
    SPLITS,
    shard_indices,
    study_ids,
    study_rng,
)
from spinepipe.synth.render import BiasField, render_slice, to_stored
from spinepipe.synth.series import SeriesPlan, plan_study_series

log = logging.getLogger(__name__)

SERIES_FOR_FAMILY = {"spinal": SAGITTAL_T2, "foraminal": SAGITTAL_T1, "subarticular": AXIAL_T2}

COORDINATE_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "instance_number": pl.Int64,
                     "condition": pl.String, "level": pl.String, "x": pl.Float64,
                     "y": pl.Float64}
SERIES_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String}
CENTER_SCHEMA = {"study_id": pl.Int64, "level": pl.String, "x_mm": pl.Float64,
                 "y_mm": pl.Float64, "z_mm": pl.Float64, "normal_x": pl.Float64,
                 "normal_y": pl.Float64, "normal_z": pl.Float64, "lateral_x": pl.Float64,
                 "lateral_y": pl.Float64, "lateral_z": pl.Float64,
                 "foramen_offset_mm": pl.Float64, "recess_offset_mm": pl.Float64}
LABEL_SCHEMA = {"study_id": pl.Int64, **{c: pl.String for c in LABEL_COLUMNS}}
SEVERITY_SCHEMA = {"study_id": pl.Int64, "condition": pl.String, "level": pl.String,
                   "true_severity": pl.Float64, "narrowing": pl.Float64,
                   "p_normal_mild": pl.Float64, "p_moderate": pl.Float64, "p_severe": pl.Float64}
QUIRK_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String,
                "quirk": pl.String}


@dataclass
class StudyTables:
    """Rows a study contributes to each output table."""

    labels: list[dict[str, Any]] = field(default_factory=list)
    coordinates: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    centers: list[dict[str, Any]] = field(default_factory=list)
    quirks: list[dict[str, Any]] = field(default_factory=list)
    severities: list[dict[str, Any]] = field(default_factory=list)


def _annotate(plan: SeriesPlan, point: np.ndarray) -> tuple[int, float, float, float]:
    """Instance number and pixel (x, y) of ``point`` on the stack's nearest slice."""
    best = None
    for plane, number in zip(plan.planes, plan.instance_numbers):
        x, y, distance = plane.to_pixel(point)
        if best is None or abs(distance) < abs(best[3]):
            best = (number, float(x), float(y), float(distance))
    assert best is not None
    return best


def _write_series(plan: SeriesPlan, anatomy: SpineAnatomy, study_id: int, series_number: int,
                  folder: Path, patient_position: str, noise: float,
                  rng: np.random.Generator) -> None:
    bits = int(rng.choice([12, 16]))
    scale = rng.uniform(0.15, 0.6) * (2**bits - 1)
    bias = BiasField(rng, anatomy.level_center(2))
    for plane, number in zip(plan.planes, plan.instance_numbers):
        image = render_slice(anatomy, plane, plan.rows, plan.columns, plan.contrast, bias,
                             noise, rng)
        ds = build_dataset(study_id=study_id, series_id=plan.series_id,
                           series_number=series_number, description=plan.description,
                           contrast=plan.contrast, plane=plane, instance_number=number,
                           slice_thickness=plan.slice_thickness, spacing=plan.spacing,
                           patient_position=patient_position,
                           pixels=to_stored(image, scale, bits), bits_stored=bits)
        write_dataset(ds, folder / str(plan.series_id) / f"{number}.dcm")


def study_grading(syn: dict[str, Any], seed: int, split: str, index: int
                  ) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], int], np.random.Generator]:
    """A study's true severities, its reader's grades, and the study's random stream, which
    goes on to draw the anatomy and the images."""
    rng = study_rng(seed, split, index)
    severities = sample_true_severities(syn["label_correlation"], rng)
    # the reader draws from its own stream: its noise changes labels, never an image
    labels = read_grades(severities, syn["priors"], syn["reader_noise"],
                         study_rng(seed, split, index, stream=READER_STREAM))
    return severities, labels, rng


def generate_study(syn: dict[str, Any], seed: int, split: str, index: int, study_id: int,
                   image_root: Path) -> StudyTables:
    """Render and write one study; return its table rows."""
    quirks = syn["quirks"]
    severities, labels, rng = study_grading(syn, seed, split, index)
    anatomy = random_anatomy(rng, pathology_from_severities(severities, syn["priors"], rng))
    feet_first = bool(rng.random() < quirks["feet_first"])
    series_ids = sorted({int(i) for i in rng.integers(10**8, 4 * 10**9, 8)})[:4]
    rng.shuffle(series_ids)
    plans = plan_study_series(anatomy, series_ids, syn, feet_first, rng)
    missing = None
    if rng.random() < quirks["missing_series"]:
        missing = str(rng.choice([SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2]))
        plans = [p for p in plans if p.description != missing]
    nan_cells = {key for key in labels if rng.random() < quirks["nan_label"]}

    tables = StudyTables(severities=[
        {"study_id": study_id, **row}
        for row in severity_table(severities, syn["priors"], syn["reader_noise"])])
    tables.labels.append({"study_id": study_id, **{
        f"{c}_{lv}": None if (c, lv) in nan_cells else SEVERITIES[labels[(c, lv)]]
        for c in CONDITIONS for lv in LEVELS}})
    if missing:
        tables.quirks.append({"study_id": study_id, "series_id": None,
                              "series_description": missing, "quirk": "missing_series"})
    if feet_first:
        tables.quirks.append({"study_id": study_id, "series_id": None,
                              "series_description": None, "quirk": "feet_first"})
    for k, level in enumerate(LEVELS):
        c, n = anatomy.level_center(k), anatomy.disc_normal(k)
        lat = anatomy.lateral_axis
        tables.centers.append({
            "study_id": study_id, "level": LEVEL_NAMES[level],
            "x_mm": c[0], "y_mm": c[1], "z_mm": c[2],
            "normal_x": n[0], "normal_y": n[1], "normal_z": n[2],
            "lateral_x": lat[0], "lateral_y": lat[1], "lateral_z": lat[2],
            "foramen_offset_mm": anatomy.foramen_offset,
            "recess_offset_mm": anatomy.recess_offset})

    folder = image_root / str(study_id)
    if folder.exists():
        shutil.rmtree(folder)
    position = "FFS" if feet_first else "HFS"
    for number, plan in enumerate(plans, start=1):
        _write_series(plan, anatomy, study_id, number, folder, position, syn["noise"], rng)
        tables.series.append({"study_id": study_id, "series_id": plan.series_id,
                              "series_description": plan.description})
        for quirk, on in plan.flags.items():
            if on:
                tables.quirks.append({"study_id": study_id, "series_id": plan.series_id,
                                      "series_description": plan.description, "quirk": quirk})
        if plan.description == AXIAL_T2:
            tables.quirks.append({"study_id": study_id, "series_id": plan.series_id,
                                  "series_description": plan.description,
                                  "quirk": f"axial_{plan.axial_mode}"})

    # annotations: on the first series of the kind a radiologist grades each family on
    by_description: dict[str, SeriesPlan] = {}
    for plan in plans:
        by_description.setdefault(plan.description, plan)
    for condition in CONDITIONS:
        family, side = CONDITION_FAMILY[condition], CONDITION_SIDE[condition]
        plan = by_description.get(SERIES_FOR_FAMILY[family])
        if plan is None:
            continue
        for k, level in enumerate(LEVELS):
            if (condition, level) in nan_cells:
                continue
            number, x, y, _ = _annotate(plan, anatomy.structure_center(k, family, side))
            if rng.random() < quirks["coordinate_off"]:
                angle, shift = rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 5.0)
                x, y = x + shift * np.cos(angle), y + shift * np.sin(angle)
                tables.quirks.append({"study_id": study_id, "series_id": plan.series_id,
                                      "series_description": plan.description,
                                      "quirk": f"coordinate_off:{condition}:{level}"})
            tables.coordinates.append({
                "study_id": study_id, "series_id": plan.series_id, "instance_number": number,
                "condition": CONDITION_NAMES[condition], "level": LEVEL_NAMES[level],
                "x": x, "y": y})
    return tables


def generate_shard(synthetic: dict[str, Any], seed: int, split: str, indices: Sequence[int],
                   shard_dir: Path) -> None:
    """Write the images (``shard_dir/images/<study>/<series>/<n>.dcm``) of the studies
    ``indices`` of a split and their table pieces, all inside ``shard_dir``.

    Only the studies' own settings matter here (not the total study count), so growing the
    dataset leaves existing shards as they are. An empty ``indices`` writes empty tables.
    """
    ids = study_ids(seed, split, max(indices) + 1) if indices else []
    image_root = shard_dir / SHARD_IMAGES
    image_root.mkdir(parents=True, exist_ok=True)
    merged = StudyTables()
    for index in tqdm(indices, desc=f"{split} studies", unit="study", disable=None):
        tables = generate_study(synthetic, seed, split, index, ids[index], image_root)
        for name in ("labels", "coordinates", "series", "centers", "quirks", "severities"):
            getattr(merged, name).extend(getattr(tables, name))
        log.info("%s study %d (index %d) written", split, ids[index], index)
    shard_dir.mkdir(parents=True, exist_ok=True)
    for name, schema in (("labels", LABEL_SCHEMA), ("coordinates", COORDINATE_SCHEMA),
                         ("series", SERIES_SCHEMA), ("centers", CENTER_SCHEMA),
                         ("quirks", QUIRK_SCHEMA), ("severities", SEVERITY_SCHEMA)):
        pl.DataFrame(getattr(merged, name), schema=schema).write_parquet(shard_dir / f"{name}.parquet")


def generate_dataset(config: dict[str, Any], dataset_dir: Path, workers: int = 1) -> None:
    """Whole dataset from one call (tests, benchmarks), its shards rendered by ``workers``
    processes; the workflow runs the shards as jobs. The result does not depend on
    ``workers`` (each study draws from its own stream)."""
    syn = config["synthetic"]
    shards: dict[str, list[Path]] = {}
    tasks = []
    for split in SPLITS:
        shards[split] = []
        for i, indices in enumerate(shard_indices(config["seed"], split, syn[f"n_{split}"],
                                                  config["metadata"]["shards"])):
            shard_dir = dataset_dir / "shards" / f"{split}_{i:04d}"
            tasks.append((syn, config["seed"], split, indices, shard_dir))
            shards[split].append(shard_dir)
    if workers > 1 and len(tasks) > 1:
        # spawned, not forked: the caller may hold threads (torch, a test runner)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context) as pool:
            for done in [pool.submit(generate_shard, *task) for task in tasks]:
                done.result()
    else:
        for task in tasks:
            generate_shard(*task)
    merge_shards(shards["train"], shards["test"], dataset_dir)


def _concat(shard_dirs: list[Path], name: str, schema: dict) -> pl.DataFrame:
    frames = [pl.read_parquet(d / f"{name}.parquet") for d in shard_dirs]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def link_images(shard_dirs: list[Path], image_root: Path) -> None:
    """The competition's ``<split>_images/<study>/...`` tree from the shards' images: hard
    links (no second copy, and an unchanged study keeps its files' identity and mtimes),
    copies where the file system refuses links."""
    image_root.mkdir(parents=True, exist_ok=True)
    for shard_dir in shard_dirs:
        for source in sorted((shard_dir / SHARD_IMAGES).rglob("*.dcm")):
            target = image_root / source.relative_to(shard_dir / SHARD_IMAGES)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)




def merge_split(split: str, shard_dirs: list[Path], dataset_dir: Path) -> None:
    """One split's competition files (``SPLIT_CSVS[split]``) and its image tree
    (``<split>_images``) from its shards. Per split, so a new test study leaves the train
    files (and everything built from them) as they are."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    link_images(shard_dirs, dataset_dir / f"{split}_images")
    labels = _concat(shard_dirs, "labels", LABEL_SCHEMA).sort("study_id")
    series = _concat(shard_dirs, "series", SERIES_SCHEMA).sort("study_id", "series_id")
    if split == "train":
        labels.write_csv(dataset_dir / "train.csv")
        condition_order = {CONDITION_NAMES[c]: i for i, c in enumerate(CONDITIONS)}
        level_order = {LEVEL_NAMES[lv]: i for i, lv in enumerate(LEVELS)}
        coords = _concat(shard_dirs, "coordinates", COORDINATE_SCHEMA).with_columns(
            pl.col("condition").replace_strict(condition_order).alias("_c"),
            pl.col("level").replace_strict(level_order).alias("_l"),
        ).sort("study_id", "_c", "_l").drop("_c", "_l")
        coords.write_csv(dataset_dir / "train_label_coordinates.csv")
        series.write_csv(dataset_dir / "train_series_descriptions.csv")
        return
    labels.write_csv(dataset_dir / "test_labels.csv")
    series.write_csv(dataset_dir / "test_series_descriptions.csv")
    rows = [row_id(s, c, lv) for s in labels["study_id"].to_list() for c in CONDITIONS for lv in LEVELS]
    third = 1.0 / 3.0
    pl.DataFrame({"row_id": rows, **{col: [third] * len(rows) for col in SUBMISSION_COLUMNS}}
                 ).write_csv(dataset_dir / "sample_submission.csv")


def merge_truth(train_shards: list[Path], test_shards: list[Path], dataset_dir: Path) -> None:
    """The ground truth of both splits (``TRUTH_CSVS``): true level centres, quirks and each
    graded structure's true severity with the reader's ``P(grade | true severity)``."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    pl.concat([
        _concat(train_shards, "severities", SEVERITY_SCHEMA).with_columns(split=pl.lit("train")),
        _concat(test_shards, "severities", SEVERITY_SCHEMA).with_columns(split=pl.lit("test")),
    ]).sort("split", "study_id", "condition", "level", descending=[True, False, False, False]
            ).write_csv(dataset_dir / "grade_probabilities.csv")
    centers = pl.concat([
        _concat(train_shards, "centers", CENTER_SCHEMA).with_columns(split=pl.lit("train")),
        _concat(test_shards, "centers", CENTER_SCHEMA).with_columns(split=pl.lit("test")),
    ]).sort("split", "study_id", "level", descending=[True, False, False])
    centers.write_csv(dataset_dir / "level_centers.csv")
    pl.concat([
        _concat(train_shards, "quirks", QUIRK_SCHEMA).with_columns(split=pl.lit("train")),
        _concat(test_shards, "quirks", QUIRK_SCHEMA).with_columns(split=pl.lit("test")),
    ]).sort("split", "study_id", "series_id", "quirk", descending=[True, False, False, False]
            ).write_csv(dataset_dir / "quirks.csv")


def merge_shards(train_shards: list[Path], test_shards: list[Path], dataset_dir: Path) -> None:
    """Write the competition CSVs, the ground-truth files and the image trees
    (``train_images``, ``test_images``) from the shards."""
    merge_split("train", train_shards, dataset_dir)
    merge_split("test", test_shards, dataset_dir)
    merge_truth(train_shards, test_shards, dataset_dir)
