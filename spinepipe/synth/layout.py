"""Where the synthetic dataset's studies go: their ids, their shards and the CSV files of
each split. Kept apart from the generator (no imaging libraries) because the workflow reads
it whenever it is parsed, in every cluster job too.

Every study draws from its own random stream, seeded by (seed, split, study index), so a
study does not depend on how studies are grouped into shards, and adding studies leaves the
existing ones untouched.
"""

from __future__ import annotations

import numpy as np

SPLITS = {"train": 1, "test": 2}
# disjoint id ranges keep train and test ids apart without looking at each other
ID_RANGES = {"train": (1_000_000, 2_200_000_000), "test": (2_200_000_000, 4_290_000_000)}


def study_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], index, stream])


def study_id_for(seed: int, split: str, index: int) -> int:
    low, high = ID_RANGES[split]
    return int(study_rng(seed, split, index, stream=1).integers(low, high))


def study_ids(seed: int, split: str, count: int) -> list[int]:
    """Unique ids for studies 0..count-1 of a split; a clash redraws the later study's id."""
    ids: list[int] = []
    seen: set[int] = set()
    for index in range(count):
        candidate, attempt = study_id_for(seed, split, index), 0
        while candidate in seen:
            attempt += 1
            low, high = ID_RANGES[split]
            candidate = int(study_rng(seed, split, index, stream=100 + attempt).integers(low, high))
        seen.add(candidate)
        ids.append(candidate)
    return ids


def study_shard(study_id: int, shards: int) -> int:
    """The shard of a study in every per-study stage (synthesis, header parse, localizer
    stacks and inference): fixed by its id, so a study never moves and a new one touches
    only its own shard."""
    return study_id % shards


def shard_indices(seed: int, split: str, count: int, shards: int) -> list[list[int]]:
    """Per shard, the indices (0..count-1) of the split's studies whose id falls in it."""
    out: list[list[int]] = [[] for _ in range(shards)]
    for index, study_id in enumerate(study_ids(seed, split, count)):
        out[study_shard(study_id, shards)].append(index)
    return out


SPLIT_CSVS = {
    "train": ("train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv"),
    "test": ("test_series_descriptions.csv", "sample_submission.csv", "test_labels.csv"),
}
TRUTH_CSVS = ("level_centers.csv", "quirks.csv", "grade_probabilities.csv")
