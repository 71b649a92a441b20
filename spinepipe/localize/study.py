"""Localizing every level of a study with the fold models: slices, then points.

Order of work per study: Sagittal T2 canal slice and points -> 3D canal points -> Sagittal T1
foramen slices (from the canal, in mm) and points -> level points -> axial cross-reference
-> axial recess points -> (``canal_slice_from_axial``) the canal slice moved onto the mid-line
the recess points give, and the canal points decoded again there. Each step that cannot run
records why; nothing raises for one study.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl
import torch

from spinepipe.constants import (
    AXIAL_T2,
    CONDITION_NAMES,
    LEVEL_NAMES,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
)
from spinepipe.geometry import StackGeometry
from spinepipe.localize.decode import DECODE_DEFAULTS, MapFrames, check_decode, realign_to_reference
from spinepipe.localize.inference import (
    FoldModels,
    canal_level_shift,
    midline_slices,
    nearest_decoded,
    point_heatmaps,
    predict_levels,
    predict_points,
    predict_slices,
    refine_axial_slice,
    refine_foramen_slices,
)
from spinepipe.localize.samples import LEVEL_INDEX, SIDES, TASK_OF, crop, flip_columns
from spinepipe.localize.settings import slice_method
from spinepipe.localize.stacks import StackCache
from spinepipe.xref import axial_cross_reference, level_points, select_sagittal_slices

log = logging.getLogger(__name__)

CANAL = CONDITION_NAMES["spinal_canal_stenosis"]
FORAMEN = {side: CONDITION_NAMES[f"{side}_neural_foraminal_narrowing"] for side in SIDES}
RECESS = {side: CONDITION_NAMES[f"{side}_subarticular_stenosis"] for side in SIDES}

PREDICTION_SCHEMA = {
    "study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String,
    "condition": pl.String, "level": pl.String, "side": pl.String,
    "instance_number": pl.Int64, "slice_index": pl.Int64, "x": pl.Float64, "y": pl.Float64,
    "confidence": pl.Float64, "spread_px": pl.Float64,
    "geometric_slice": pl.Int64, "learned_slice": pl.Int64, "slice_method": pl.String,
}
REASON_SCHEMA = {"study_id": pl.Int64, "series_description": pl.String, "reason": pl.String}


def _first(series: pl.DataFrame, description: str, cache: StackCache) -> dict[str, Any] | None:
    for row in series.filter(pl.col("series_description") == description).iter_rows(named=True):
        if row["series_id"] in cache:
            return row
    return None


class StudyLocalizer:
    def __init__(self, models: dict[str, FoldModels], cache: StackCache,
                 geometries: dict[int, StackGeometry], read_slice, cfg: dict[str, Any]) -> None:
        self.models, self.cache, self.geometries, self.read_slice = models, cache, geometries, read_slice
        check_decode(cfg["decode"])  # a bad range fails here, not once per study
        self.cfg = cfg

    def _row(self, study_id, series, condition, level, side, index, x, y, scale, peak, spread,
             geometric, learned) -> dict[str, Any]:
        stack = self.cache.get(series["series_id"])
        return {"study_id": study_id, "series_id": series["series_id"],
                "series_description": series["series_description"], "condition": condition,
                "level": LEVEL_NAMES[level], "side": side,
                "instance_number": int(stack["instance_numbers"][index]), "slice_index": int(index),
                "x": float(x * scale[0]), "y": float(y * scale[1]), "confidence": float(peak),
                "spread_px": float(spread * scale[0]), "geometric_slice": geometric,
                "learned_slice": learned, "slice_method": self.slice_method(TASK_OF[series["series_description"]])}

    def slice_method(self, task: str) -> str:
        return slice_method(self.cfg, task)

    def _learned_slices(self, task: str, images: np.ndarray, size: int,
                        slice_ok: np.ndarray | None) -> np.ndarray | None:
        """The slice model's choice, where the slice method uses it or the localization is
        compared with the geometric one (``report_learned_slices``: a training run with
        ``compare_slice_methods``); a bundle grading new studies skips it."""
        if self.slice_method(task) != "learned" and not self.cfg["report_learned_slices"]:
            return None
        return predict_slices(self.models[task].slice, images, size, slice_ok)

    def _choose(self, task: str, geometric: int, learned: int | None, slice_ok: np.ndarray | None) -> int:
        if self.slice_method(task) == "learned" and learned is not None:
            return nearest_decoded(int(learned), slice_ok)
        return nearest_decoded(int(geometric), slice_ok)

    def localize(self, study_id: int, series: pl.DataFrame) -> tuple[list[dict], list[dict]]:
        """Prediction rows of every level of the study and, for what could not be localized,
        the reasons (module docstring: the order of work)."""
        reasons: list[dict] = []
        t2, t1 = _first(series, SAGITTAL_T2, self.cache), _first(series, SAGITTAL_T1, self.cache)
        rows: list[dict] = []
        canal_points: dict[int, np.ndarray] = {}
        level_like: list[dict] = []  # each sagittal point as an annotation would give it (mm)
        if t2 is None:
            reasons.append({"study_id": study_id, "series_description": SAGITTAL_T2,
                            "reason": "no usable Sagittal T2/STIR series"})
        else:
            rows += self._sagittal_t2(study_id, t2)
            canal_points = {level: self._patient_point(r) for level, r in zip(LEVELS, rows)}
        if t1 is None:
            reasons.append({"study_id": study_id, "series_description": SAGITTAL_T1,
                            "reason": "no usable Sagittal T1 series"})
        else:
            rows += self._sagittal_t1(study_id, t1, canal_points)
        level_like = [{"study_id": study_id, "condition": r["condition"], "level": r["level"],
                       "series_id": r["series_id"], **dict(zip(("px", "py", "pz"), self._patient_point(r)))}
                      for r in rows]
        shift = 0
        if canal_points and len(level_like) == 3 * len(LEVELS):
            rows, level_like, shift = self._reconcile_canal(study_id, rows, level_like)
        axial_rows = self._axial(study_id, series, level_like, reasons)
        rows += axial_rows
        if t2 is not None and self.cfg["canal_slice_from_axial"]:
            rows = self._canal_on_midline(study_id, t2, rows, axial_rows, decode_again=shift == 0)
        return rows, reasons

    def _sagittal_t2(self, study_id: int, t2: dict[str, Any]) -> list[dict]:
        """The five canal rows: each level on its slice (geometric: the slice nearest the
        middle of the stack, as scanners centre sagittal stacks on the mid-line; or learned),
        the points decoded jointly."""
        stack, geometry = self.cache.get(t2["series_id"]), self.geometries[t2["series_id"]]
        positions = geometry.ipp @ geometry.normals[0]
        middle = int(np.argmin(np.abs(positions - (positions.min() + positions.max()) / 2)))
        learned = self._learned_slices("sagittal_t2", stack["images"], self.cfg["slice_image_size"],
                                       stack.get("slice_ok"))
        learned_k = [None if learned is None else int(learned[k]) for k in range(len(LEVELS))]
        chosen = [self._choose("sagittal_t2", middle, learned_k[k], stack.get("slice_ok"))
                  for k in range(len(LEVELS))]
        return self._canal(study_id, t2, chosen, middle, learned_k)

    def _foramen_slices(self, geometry: StackGeometry, stack: dict[str, Any],
                        canal_points: dict[int, np.ndarray]) -> tuple[np.ndarray, ...]:
        """(levels, sides) slice indices of the foramina: geometric (the fixed offset from the
        canal, in mm), learned (or None), and the ones used."""
        learned = self._learned_slices("sagittal_t1", stack["images"], self.cfg["slice_image_size"],
                                       stack.get("slice_ok"))
        mid_point = np.mean(list(canal_points.values()), axis=0) if canal_points else None
        geometric = np.zeros((len(LEVELS), len(SIDES)), dtype=np.int64)
        learned_ks = np.full(geometric.shape, None, dtype=object)
        index = np.zeros_like(geometric)
        for k, level in enumerate(LEVELS):
            reference = canal_points.get(level, mid_point)
            if reference is None:  # no canal: the stack centre is the mid-line guess
                reference = geometry.ipp[len(geometry) // 2]
            choice = select_sagittal_slices(geometry, reference, self.cfg["foramen_offset_mm"])
            for s, side in enumerate(SIDES):
                learned_ks[k, s] = None if learned is None else int(learned[k * 2 + s])
                geometric[k, s] = geometry.index_of(choice[side])
                index[k, s] = self._choose("sagittal_t1", geometric[k, s], learned_ks[k, s],
                                           stack.get("slice_ok"))
        return geometric, learned_ks, index

    def _sagittal_t1(self, study_id: int, t1: dict[str, Any],
                     canal_points: dict[int, np.ndarray]) -> list[dict]:
        """The ten foramen rows: slices from the canal (refined on the foramen model's
        response), each side's five levels decoded together and put back in step with the
        canal where they are unevenly spaced."""
        stack, geometry = self.cache.get(t1["series_id"]), self.geometries[t1["series_id"]]
        models = self.models["sagittal_t1"].point
        geometric, learned_ks, index = self._foramen_slices(geometry, stack, canal_points)
        every_slice = None  # the heatmaps of every slice: read once, by the refinement
        if self.cfg["foramen_refine_slices"] > 0 and models:
            every_slice = point_heatmaps(models, np.asarray(stack["images"], dtype=np.float32))
            index = refine_foramen_slices(models, stack["images"], index, self.cfg["foramen_refine_slices"],
                                          stack.get("slice_ok"), mean_prob=every_slice[0])
        decoded, side_maps, side_frames = [], [], []
        for s in range(len(SIDES)):  # the five levels of one side together, each on its own slice
            unique = sorted(set(index[:, s].tolist()))
            frames = MapFrames.from_stack(geometry, index[:, s], stack["images"].shape[1:], stack["scale"])
            images = stack["images"][unique].astype(np.float32)
            chosen = torch.as_tensor(unique)
            heatmaps = (point_heatmaps(models, images) if every_slice is None
                        else (every_slice[0][chosen], every_slice[1][:, chosen]))
            pick = [unique.index(i) for i in index[:, s]]
            decoded.append(predict_levels(models, images, pick, frames, self.cfg["decode"], heatmaps=heatmaps))
            side_maps.append(heatmaps[0][torch.as_tensor(pick), torch.arange(len(LEVELS))])
            side_frames.append(frames)
        if self.cfg.get("foramen_realign", False):  # absent from bundles made before it
            decoded = self._realign_foramina(study_id, decoded, side_maps, side_frames,
                                             [canal_points[level] for level in LEVELS] if canal_points else None,
                                             stack["images"].shape[1:])
        return [self._row(study_id, t1, FORAMEN[side], level, side, index[k, s],
                          *decoded[s][0][k], stack["scale"], decoded[s][1][k], decoded[s][2][k],
                          int(geometric[k, s]), learned_ks[k, s])
                for k, level in enumerate(LEVELS) for s, side in enumerate(SIDES)]

    def _realign_foramina(self, study_id: int, decoded: list[tuple], maps: list[torch.Tensor],
                          frames: list[MapFrames], canal: list[np.ndarray] | None,
                          image_shape: tuple[int, ...]) -> list[tuple]:
        """Each foramen side's levels put back in step with the canal's (or, without a canal,
        the other side's) where its own steps along the spine are implausible
        (``realign_to_reference``): a side that put two levels on one disc, or skipped one."""
        size = np.array([image_shape[-1], image_shape[-2]], dtype=np.float64)
        decode = DECODE_DEFAULTS | self.cfg["decode"]
        result = list(decoded)
        for s, side in enumerate(SIDES):
            other = 1 - s
            reference = (np.stack(canal) if canal is not None
                         else frames[other].to_patient(result[other][0] / size))
            xy, peak, spread = result[s]
            uv, moved = realign_to_reference(maps[s], frames[s], xy / size, reference,
                                             decode["spacing_ratio"], decode["radius"])
            if moved:
                log.warning("study %s: %s foramen levels %s sat off the %s's and were decoded again "
                            "within half a level of it", study_id, side,
                            [LEVEL_NAMES[LEVELS[k]] for k in moved], "canal" if canal is not None else "other side")
                result[s] = (uv * size, peak, spread)
        return result

    def _reconcile_canal(self, study_id: int, rows: list[dict],
                         points: list[dict]) -> tuple[list[dict], list[dict], int]:
        """Canal rows relabelled when the whole canal series sits a level off both foramen
        sides (``canal_level_shift``): level j takes the canal point found at the foramina's
        level j; a level the canal never found (the end the shift uncovers) is the foramina's
        mid-point projected on its slice, moved by the canal's median in-plane offset from the
        foramina elsewhere. Everything after (slices, axial cross-reference) uses the result."""
        by = {(p["condition"], p["level"]): np.array([p["px"], p["py"], p["pz"]]) for p in points}
        names = [LEVEL_NAMES[level] for level in LEVELS]
        canal = np.stack([by[(CANAL, n)] for n in names])
        left = np.stack([by[(FORAMEN["left"], n)] for n in names])
        right = np.stack([by[(FORAMEN["right"], n)] for n in names])
        shift = canal_level_shift(canal, left, right)
        if shift == 0:
            return rows, points, 0
        log.warning("study %s: the Sagittal T2 levels sit %+d level(s) off both foramen sides; "
                    "canal points relabelled from the foramina", study_id, shift)
        old = [r for r in rows if r["condition"] == CANAL]
        geometry = self.geometries[old[0]["series_id"]]
        middle = (left + right) / 2.0
        projected = np.array([geometry.to_pixel(old[j]["slice_index"], middle[j]) for j in range(len(old))])
        sources = {j: j - shift for j in range(len(old)) if 0 <= j - shift < len(old)}
        offset = np.median([[old[k]["x"], old[k]["y"]] - projected[j] for j, k in sources.items()], axis=0)
        moved = []
        for j, row in enumerate(old):
            if j in sources:
                source = old[sources[j]]
                row = source | {"level": row["level"], "confidence": source["confidence"]}
            else:
                x, y = projected[j] + offset
                row = row | {"x": float(x), "y": float(y), "confidence": 0.0}
            moved.append(row)
        canal_of = {r["level"]: self._patient_point(r) for r in moved}
        points = [p | dict(zip(("px", "py", "pz"), canal_of[p["level"]])) if p["condition"] == CANAL else p
                  for p in points]
        return moved + [r for r in rows if r["condition"] != CANAL], points, shift

    def _patient_point(self, row: dict[str, Any]) -> np.ndarray:
        """A prediction row's point in patient mm (rows hold original-pixel coordinates)."""
        return self.geometries[row["series_id"]].to_patient(row["slice_index"], row["x"], row["y"])

    def _canal(self, study_id: int, t2: dict[str, Any], chosen: list[int], geometric: int,
               learned: list[int | None]) -> list[dict]:
        """The five canal points decoded jointly, level k on slice ``chosen[k]``."""
        stack, geometry = self.cache.get(t2["series_id"]), self.geometries[t2["series_id"]]
        unique = sorted(set(chosen))
        frames = MapFrames.from_stack(geometry, chosen, stack["images"].shape[1:], stack["scale"])
        xy, peak, spread = predict_levels(self.models["sagittal_t2"].point,
                                          stack["images"][unique].astype(np.float32),
                                          [unique.index(c) for c in chosen], frames, self.cfg["decode"])
        return [self._row(study_id, t2, CANAL, level, "center", chosen[k], *xy[k], stack["scale"],
                          peak[k], spread[k], geometric, learned[k])
                for k, level in enumerate(LEVELS)]

    def _canal_on_midline(self, study_id: int, t2: dict[str, Any], rows: list[dict],
                          axial_rows: list[dict], decode_again: bool = True) -> list[dict]:
        """Canal rows moved to the mid-line slice the axial recess points give (midline_slices),
        their points decoded again there, or (``decode_again`` false: points that the canal
        heatmaps contradict, see _reconcile_canal) kept where they are in the image plane."""
        recess: dict[int, dict[str, np.ndarray]] = {}
        for r in axial_rows:
            recess.setdefault(LEVEL_INDEX[r["level"]], {})[r["side"]] = self._patient_point(r)
        pairs = {k: np.stack([sides[s] for s in SIDES]) for k, sides in recess.items() if len(sides) == 2}
        stack = self.cache.get(t2["series_id"])
        target = midline_slices(self.geometries[t2["series_id"]], pairs, stack.get("slice_ok"))
        canal = [r for r in rows if r["condition"] == CANAL]
        if not target or all(target[k] == canal[k]["slice_index"] for k in range(len(canal))):
            return rows
        if decode_again:
            moved = self._canal(study_id, t2, [target[k] for k in range(len(LEVELS))],
                                canal[0]["geometric_slice"], [r["learned_slice"] for r in canal])
        else:
            numbers = stack["instance_numbers"]
            moved = [r | {"slice_index": int(target[k]), "instance_number": int(numbers[target[k]])}
                     for k, r in enumerate(canal)]
        for r in moved:
            r["slice_method"] = "axial_midline"
        return moved + [r for r in rows if r["condition"] != CANAL]

    def _axial(self, study_id: int, series: pl.DataFrame, points: list[dict],
               reasons: list[dict]) -> list[dict]:
        axial = series.filter((pl.col("series_description") == AXIAL_T2)
                              & pl.col("series_id").is_in(list(self.cache.rows)))
        if axial.height == 0:
            reasons.append({"study_id": study_id, "series_description": AXIAL_T2,
                            "reason": "no usable Axial T2 series"})
            return []
        if not points:
            reasons.append({"study_id": study_id, "series_description": AXIAL_T2,
                            "reason": "no sagittal level point to cross-reference from"})
            return []
        frame = pl.DataFrame(points, schema={"study_id": pl.Int64, "condition": pl.String,
                                             "level": pl.String, "series_id": pl.Int64,
                                             "px": pl.Float64, "py": pl.Float64, "pz": pl.Float64})
        level_pts = level_points(frame, self.geometries)
        xref = axial_cross_reference(level_pts, axial, self.geometries, self.read_slice)
        rows = []
        size = self.cfg["axial_crop"]
        for series_id in axial["series_id"].to_list():
            srow = axial.filter(pl.col("series_id") == series_id).row(0, named=True)
            stack = self.cache.get(series_id)
            # the point model learned left and right in the radiological view (samples.point_samples)
            mirrored = self.geometries[series_id].mirrored
            learned = self._learned_slices("axial_t2", stack["images"],
                                     self.cfg["slice_image_size"], stack.get("slice_ok"))
            for r in xref.filter(pl.col("series_id") == series_id).iter_rows(named=True):
                k = LEVEL_INDEX[r["level"]]
                learned_k = None if learned is None else int(learned[k])
                index = self._choose("axial_t2", r["slice_index"], learned_k, stack.get("slice_ok"))
                scale = stack["scale"]
                if self.cfg["axial_refine_slices"] > 0 and self.models["axial_t2"].point:
                    index = refine_axial_slice(self.models["axial_t2"].point, stack["images"],
                                               self.geometries[series_id], index,
                                               (r["x"] / scale[0], r["y"] / scale[1]), size,
                                               self.cfg["axial_refine_slices"], stack.get("slice_ok"))
                image, corner = crop(stack["images"][index].astype(np.float32),
                                     (r["x"] / scale[0], r["y"] / scale[1]), size)
                if mirrored:
                    image = flip_columns(image, np.zeros((0, 2)))[0]
                xy, peak, spread = predict_points(self.models["axial_t2"].point, image[None],
                                                  self.cfg["decode"])
                if mirrored:
                    xy = flip_columns(image, xy)[1]
                for s, side in enumerate(SIDES):
                    x, y = xy[0, s] + corner
                    rows.append(self._row(study_id, srow, RECESS[side], LEVELS[k], side, index, x, y,
                                          scale, peak[0, s], spread[0, s], int(r["slice_index"]),
                                          learned_k))
        return rows


def localize_split(studies: list[int], series: pl.DataFrame, localizer_for_study) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run a localizer over studies; ``localizer_for_study(study_id)`` picks the fold models."""
    rows, reasons = [], []
    for study_id in studies:
        study_series = series.filter(pl.col("study_id") == study_id)
        try:
            r, why = localizer_for_study(study_id).localize(study_id, study_series)
        except Exception as error:  # one broken study never stops the others
            log.exception("study %s: localization failed", study_id)
            r, why = [], [{"study_id": study_id, "series_description": None,
                           "reason": f"localization failed: {type(error).__name__}: {error}"[:300]}]
        rows += r
        reasons += why
    return pl.DataFrame(rows, schema=PREDICTION_SCHEMA), pl.DataFrame(reasons, schema=REASON_SCHEMA)
