"""The training jitter of a family, set from the measured out-of-fold localization error.

``train.point_jitter`` / ``train.slice_jitter`` may be numbers (crop pixels, slices) or
``auto``: the ``train.jitter_quantile`` quantile of the errors the localizer made on the
train studies it did not see (``results/localize/oof_error.json``, from
``localize.coordinates.error_summary``), converted to the pixels of each view's crop, the
largest over the family's views, and never beyond the cached margins (``crops.margin``,
``crops.extra_slices``). So the classifier learns the shifts test-time localization makes,
not a guess.
"""

from __future__ import annotations

import logging
from typing import Any

from spinepipe.crops.views import FAMILY_INPUTS, VIEWS

log = logging.getLogger(__name__)

AUTO = "auto"
# which family's localization error moves a view's centre: the view's centring conditions
_ERROR_FAMILY = {"Spinal": "spinal", "Foraminal": "foraminal", "Subarticular": "subarticular"}


def _error_family(view_name: str) -> str:
    condition = VIEWS[view_name].conditions[0]
    return next(family for word, family in _ERROR_FAMILY.items() if word in condition)


def _crop_pixels(view_name: str, errors: dict[str, Any], key: str, crop_cfg: dict[str, Any]) -> float | None:
    """The quantile ``key`` of the view's per-axis error, in crop pixels."""
    view = VIEWS[view_name]
    family_errors = errors.get(_error_family(view_name)) or {}
    if crop_cfg["mode"] == "mm":
        error = (family_errors.get("axis_mm") or {}).get(key)
        window = crop_cfg["window_mm"][view.family][view.series_key]
    else:
        error = (family_errors.get("axis_share") or {}).get(key)
        window = crop_cfg["window_ratio"][view.family][view.series_key]
    return None if error is None else error * crop_cfg["size"] / window


def resolve_jitter(family: str, train_cfg: dict[str, Any], crop_cfg: dict[str, Any],
                   errors: dict[str, Any]) -> dict[str, int]:
    """``{"point_jitter": pixels, "slice_jitter": slices}`` for ``family``'s training."""
    key = f"q{round(float(train_cfg['jitter_quantile']) * 100)}"
    views = [v for side_views in FAMILY_INPUTS[family].values() for v in side_views]
    resolved: dict[str, int] = {}
    point, slices = train_cfg["point_jitter"], train_cfg["slice_jitter"]
    if point == AUTO:
        measured = [p for p in (_crop_pixels(v, errors, key, crop_cfg) for v in views) if p is not None]
        if not measured:
            log.warning("%s: no out-of-fold localization error measured; point_jitter auto is 0", family)
        point = round(max(measured)) if measured else 0
    if slices == AUTO:
        measured = [((errors.get(_error_family(v)) or {}).get("slice") or {}).get(key) for v in views]
        measured = [m for m in measured if m is not None]
        if not measured:
            log.warning("%s: no out-of-fold slice error measured; slice_jitter auto is 0", family)
        slices = round(max(measured)) if measured else 0
    resolved["point_jitter"] = min(int(point), int(crop_cfg["margin"]))
    resolved["slice_jitter"] = min(int(slices), int(crop_cfg["extra_slices"]))
    return resolved
