"""What the localization settings (``localize`` of the config) decide beyond single values:
which models a run trains, and each point model's epochs. Read by the workflow when it plans
jobs, so nothing here imports torch."""

from __future__ import annotations

from typing import Any

from spinepipe.constants import AXIAL_T2, SAGITTAL_T1, SAGITTAL_T2

# each localization task and the series type it reads
TASK_SERIES = {"sagittal_t2": SAGITTAL_T2, "sagittal_t1": SAGITTAL_T1, "axial_t2": AXIAL_T2}
TASKS = tuple(TASK_SERIES)
KINDS = ("point", "slice")


def slice_method(cfg: dict[str, Any], task: str) -> str:
    """``slice_method``: one method for every series type, or one per type."""
    method = cfg["slice_method"]
    return method if isinstance(method, str) else method[task]


def trains_slice_model(cfg: dict[str, Any], task: str) -> bool:
    """A slice model is trained for a series type whose slice method is learned, or for every
    type when ``compare_slice_methods`` asks for the learned choice beside the geometric one."""
    return cfg["compare_slice_methods"] or slice_method(cfg, task) == "learned"


def trained_models(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, task) of every localizer a training run trains: a point model per series type,
    and the slice models :func:`trains_slice_model` asks for."""
    return [("point", task) for task in TASKS] + [("slice", task) for task in TASKS
                                                  if trains_slice_model(cfg, task)]


def point_epochs(cfg: dict[str, Any], task: str) -> int:
    """``point_model.epochs``: one count for every series type, or one per type."""
    epochs = cfg["point_model"]["epochs"]
    return epochs if isinstance(epochs, int) else epochs[task]


# how trained models are read at inference (slice choice, decoding), never used in training:
# a change to one of them re-runs localization, not the localizers' training
INFERENCE_ONLY = ("foramen_refine_slices", "foramen_realign", "canal_slice_from_axial",
                  "axial_refine_slices", "decode")


def training_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``localize`` settings a localizer's training reads: all but ``INFERENCE_ONLY``."""
    return {k: v for k, v in cfg.items() if k not in INFERENCE_ONLY}
