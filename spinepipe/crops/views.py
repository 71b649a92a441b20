"""The crop views: which series, which point, which canonical orientation.

A view is one 2.5D crop per study and level: a few slices around the target slice of one
series, cut around one localized point, in a canonical orientation so that every study
(whatever its scanner orientation) and both sides look alike:

- sagittal crops: image right = posterior, image down = inferior; slices ordered laterally
  (toward the patient's left for the canal, away from the mid-line for each foramen, so the
  right foramen is the mirror image of the left one);
- axial crops: image right = toward the side of the view (patient left for the canal and the
  left recess; patient right for the right recess, so it mirrors onto the left one), image
  down = posterior; slices ordered from inferior to superior.

A view with ``lateral_mm`` is cut on the sagittal slice that far from its centring point
toward the view's side (along the slice axis): the sagittal T2 recess views take the canal
point and move to the lateral recess, so the subarticular model still sees the recess when a
study has no usable Axial T2 series (and sees it on two series when it has one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinepipe.constants import AXIAL_T2, SAGITTAL_T1, SAGITTAL_T2

# LPS unit vectors
LEFT = np.array([1.0, 0.0, 0.0])
POSTERIOR = np.array([0.0, 1.0, 0.0])
SUPERIOR = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class View:
    name: str
    family: str               # window config key: the condition family the view serves
    series_key: str           # window config key: the series type
    series_description: str
    conditions: tuple[str, ...]  # coordinate conditions whose point centres the crop (mean)
    u_axis: tuple[float, float, float]      # patient direction of the crop's +x
    v_axis: tuple[float, float, float]      # patient direction of the crop's +y
    slice_axis: tuple[float, float, float]  # patient direction slices are ordered along
    lateral_mm: float = 0.0   # target slice moved this far from the point along slice_axis


# Canal centre to lateral recess, mm: the recess lies at the lateral edge of the dural sac,
# medial to the pedicle, about 10 mm from the mid-line in adults; the 2.5D crop's neighbour
# slices (3-4 mm apart on sagittal series) cover the spread between patients.
RECESS_LATERAL_MM = 10.0


def _t(v: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(x) for x in v)


VIEWS: dict[str, View] = {v.name: v for v in (
    View("sag_t2_canal", "spinal", "sagittal_t2", SAGITTAL_T2, ("Spinal Canal Stenosis",),
         _t(POSTERIOR), _t(-SUPERIOR), _t(LEFT)),
    View("axial_canal", "spinal", "axial_t2", AXIAL_T2,
         ("Left Subarticular Stenosis", "Right Subarticular Stenosis"),
         _t(LEFT), _t(POSTERIOR), _t(SUPERIOR)),
    View("sag_t1_left", "foraminal", "sagittal_t1", SAGITTAL_T1, ("Left Neural Foraminal Narrowing",),
         _t(POSTERIOR), _t(-SUPERIOR), _t(LEFT)),
    View("sag_t1_right", "foraminal", "sagittal_t1", SAGITTAL_T1, ("Right Neural Foraminal Narrowing",),
         _t(POSTERIOR), _t(-SUPERIOR), _t(-LEFT)),
    View("axial_left", "subarticular", "axial_t2", AXIAL_T2, ("Left Subarticular Stenosis",),
         _t(LEFT), _t(POSTERIOR), _t(SUPERIOR)),
    View("axial_right", "subarticular", "axial_t2", AXIAL_T2, ("Right Subarticular Stenosis",),
         _t(-LEFT), _t(POSTERIOR), _t(SUPERIOR)),
    View("sag_t2_left", "subarticular", "sagittal_t2", SAGITTAL_T2, ("Spinal Canal Stenosis",),
         _t(POSTERIOR), _t(-SUPERIOR), _t(LEFT), lateral_mm=RECESS_LATERAL_MM),
    View("sag_t2_right", "subarticular", "sagittal_t2", SAGITTAL_T2, ("Spinal Canal Stenosis",),
         _t(POSTERIOR), _t(-SUPERIOR), _t(-LEFT), lateral_mm=RECESS_LATERAL_MM),
)}

# What each model looks at. Per-family models see the series that fits their condition;
# sided families are one model for both sides (the right view is mirrored onto the left).
# "all" is the single all-series model kept for comparison: left / mid / right sagittal
# groups plus the axial canal view, predicting the five conditions of a level at once.
FAMILY_INPUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "spinal": {"center": ("sag_t2_canal", "axial_canal")},
    "foraminal": {"left": ("sag_t1_left",), "right": ("sag_t1_right",)},
    "subarticular": {"left": ("axial_left", "sag_t2_left"), "right": ("axial_right", "sag_t2_right")},
    "all": {"center": ("sag_t1_left", "sag_t2_canal", "sag_t1_right", "axial_canal")},
}
