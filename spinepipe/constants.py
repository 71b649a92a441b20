"""Names fixed by the competition's data format (RSNA 2024 Lumbar Spine Degenerative Classification),
and the few names the pipeline's own stages share.

Where each spelling is used: docs/contracts.md, section 1 "Input dataset" (names and
spellings); the level order in patient space: section 4 "Geometry conventions".
"""

from __future__ import annotations

import re

# what runs the trained models when grading (predict.runtime): torch, or their ONNX exports
# in onnxruntime
RUNTIMES = ("torch", "onnx")

LEVELS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")
LEVEL_NAMES: dict[str, str] = {lv: lv.upper().replace("_", "/") for lv in LEVELS}

CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
CONDITION_NAMES: dict[str, str] = {
    c: " ".join(w.capitalize() for w in c.split("_")) for c in CONDITIONS
}
# Condition family (what the pathology narrows) and side of each condition.
CONDITION_FAMILY: dict[str, str] = {
    "spinal_canal_stenosis": "spinal",
    "left_neural_foraminal_narrowing": "foraminal",
    "right_neural_foraminal_narrowing": "foraminal",
    "left_subarticular_stenosis": "subarticular",
    "right_subarticular_stenosis": "subarticular",
}
CONDITION_SIDE: dict[str, str] = {
    "spinal_canal_stenosis": "center",
    "left_neural_foraminal_narrowing": "left",
    "right_neural_foraminal_narrowing": "right",
    "left_subarticular_stenosis": "left",
    "right_subarticular_stenosis": "right",
}
FAMILIES: tuple[str, ...] = ("spinal", "foraminal", "subarticular")

SEVERITIES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
SUBMISSION_COLUMNS: tuple[str, ...] = ("normal_mild", "moderate", "severe")

SAGITTAL_T1 = "Sagittal T1"
SAGITTAL_T2 = "Sagittal T2/STIR"
AXIAL_T2 = "Axial T2"
SERIES_DESCRIPTIONS: tuple[str, ...] = (SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2)
# The series a radiologist annotates each condition family on.
FAMILY_SERIES: dict[str, str] = {
    "spinal": SAGITTAL_T2,
    "foraminal": SAGITTAL_T1,
    "subarticular": AXIAL_T2,
}

LABEL_COLUMNS: tuple[str, ...] = tuple(f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS)


def row_id(study_id: int, condition: str, level: str) -> str:
    """Submission row id, e.g. ``4003253_spinal_canal_stenosis_l1_l2``."""
    return f"{study_id}_{condition}_{level}"


# a row id's parts: study id, condition (one of CONDITIONS), level (one of LEVELS)
ROW_ID_PATTERN = (r"^(?P<study_id>\d+)_(?P<condition>" + "|".join(CONDITIONS) + r")_(?P<level>"
                  + "|".join(LEVELS) + r")$")
_ROW_ID = re.compile(ROW_ID_PATTERN)


def split_row_id(row_id: str) -> tuple[int, str, str]:
    """``"4003253_spinal_canal_stenosis_l1_l2"`` -> ``(4003253, "spinal_canal_stenosis",
    "l1_l2")``; ValueError for anything else."""
    match = _ROW_ID.match(row_id)
    if match is None:
        raise ValueError(f"malformed row_id: {row_id!r}")
    return int(match["study_id"]), match["condition"], match["level"]

# Where a synthetic shard folder keeps its studies' images (<shard>/images/<study>/<series>/);
# the pipeline reads them there, and <split>_images holds hard links to the same files.
SHARD_IMAGES = "images"
