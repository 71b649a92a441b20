"""A hostile test split: the project's synthetic studies re-encoded into the transfer syntaxes
clinical exports use, and damaged the ways real archives are damaged, one defect per study.

``build_split_pair(dataset, clean_dir, hostile_dir)`` writes two competition-layout data folders
that share the train split (linked, not copied):

- ``clean``: the healthy test studies, the originals of the losslessly re-encoded studies and
  of the defects that must change nothing;
- ``hostile``: every test study, with the re-encoded and damaged ones in place of the originals.

The returned :class:`HostilePlan` says which study got what and what each must give.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
from dicom_encodings import SYNTAXES, reencode
from pydicom import uid
from pydicom.encaps import encapsulate

from spinepipe.constants import AXIAL_T2, SAGITTAL_T1, SAGITTAL_T2

# One syntax per series; each study's three series re-encoded.
ENCODED_STUDIES: list[dict[str, str]] = [
    {SAGITTAL_T1: "jpeg_lossless_sv1", SAGITTAL_T2: "jpeg_ls_lossless", AXIAL_T2: "deflated_explicit_vr_le"},
    {SAGITTAL_T1: "jpeg2000_lossless", SAGITTAL_T2: "rle_lossless", AXIAL_T2: "explicit_vr_be"},
    {SAGITTAL_T1: "implicit_vr_le", SAGITTAL_T2: "explicit_vr_le", AXIAL_T2: "jpeg_lossless_sv1"},
    {SAGITTAL_T1: "jpeg_ls_near_lossless", SAGITTAL_T2: "jpeg2000", AXIAL_T2: "jpeg_baseline_8bit"},
]


@dataclass(frozen=True)
class Defect:
    """A damage done to one series of a study, and what the submission must say of it."""

    name: str
    series: str                      # series description damaged
    reason: str                      # words every affected degraded row's reason contains
    on_prior: bool                   # the family graded on that series falls back to the prior
    changes_nothing: bool = False    # predictions must equal the undamaged study's


DEFECTS: list[Defect] = [
    Defect("undecodable_slice", SAGITTAL_T1, "could not be decoded", on_prior=False),
    Defect("truncated_file", SAGITTAL_T2, "truncated", on_prior=False),
    Defect("nan_orientation", SAGITTAL_T2, "bad_geometry", on_prior=False),
    Defect("zero_orientation", SAGITTAL_T1, "bad_geometry", on_prior=True),
    Defect("zero_pixel_spacing", AXIAL_T2, "bad_geometry", on_prior=True),
    Defect("duplicate_instance_number", SAGITTAL_T2, "keyed by file", on_prior=False),
    Defect("no_instance_numbers", AXIAL_T2, "keyed by file", on_prior=False),
    Defect("no_rows", SAGITTAL_T1, "bad_header", on_prior=True),
    Defect("single_slice", SAGITTAL_T2, "single usable slice", on_prior=False),
    Defect("empty_csv_description", AXIAL_T2, "unknown series description", on_prior=True),
    Defect("duplicate_csv_row", AXIAL_T2, "", on_prior=False, changes_nothing=True),
    Defect("no_dicom_series_description", SAGITTAL_T1, "", on_prior=False, changes_nothing=True),
]
N_HEALTHY = 2
N_TEST = N_HEALTHY + len(ENCODED_STUDIES) + len(DEFECTS)


@dataclass
class HostilePlan:
    healthy: list[int] = field(default_factory=list)
    encoded: dict[int, dict[str, str]] = field(default_factory=dict)   # study -> description -> syntax
    defects: dict[int, Defect] = field(default_factory=dict)
    # (re-encoded file, original file, lossless) for the bit-exactness check
    encoded_files: list[tuple[Path, Path, bool]] = field(default_factory=list)

    @property
    def unchanged(self) -> list[int]:
        """Studies whose predictions must equal the clean run's."""
        lossless = [s for s, syntaxes in self.encoded.items()
                    if all(SYNTAXES[n][1] for n in syntaxes.values())]
        return sorted(self.healthy + lossless
                      + [s for s, d in self.defects.items() if d.changes_nothing])


def _edit_all(folder: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


def _undecodable(path: Path) -> None:
    """Header intact, pixel data a JPEG-LS stream of noise: only decoding finds out."""
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = uid.JPEGLSLossless
    ds.PixelData = encapsulate([np.random.default_rng(0).bytes(512)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def _damage(defect: Defect, folder: Path) -> None:
    files = sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem))
    if defect.name == "undecodable_slice":
        _undecodable(files[len(files) // 2 + 2])
    elif defect.name == "truncated_file":
        files[3].write_bytes(files[3].read_bytes()[:1500])
    elif defect.name == "nan_orientation":
        _edit_all(folder, lambda ds: setattr(ds, "ImageOrientationPatient", ["nan"] * 6))
    elif defect.name == "zero_orientation":
        _edit_all(folder, lambda ds: setattr(ds, "ImageOrientationPatient", [0] * 6))
    elif defect.name == "zero_pixel_spacing":
        _edit_all(folder, lambda ds: setattr(ds, "PixelSpacing", [0, 0]))
    elif defect.name == "duplicate_instance_number":
        ds = pydicom.dcmread(files[6])
        ds.InstanceNumber = int(files[5].stem)
        ds.save_as(files[6])
    elif defect.name == "no_instance_numbers":
        _edit_all(folder, lambda ds: delattr(ds, "InstanceNumber"))
        for i, path in enumerate(files):
            path.rename(folder / f"IMG{i:04d}.dcm")
    elif defect.name == "no_rows":
        _edit_all(folder, lambda ds: delattr(ds, "Rows"))
    elif defect.name == "single_slice":
        for path in files[:len(files) // 2] + files[len(files) // 2 + 1:]:
            path.unlink()
    elif defect.name == "no_dicom_series_description":
        _edit_all(folder, lambda ds: delattr(ds, "SeriesDescription") if "SeriesDescription" in ds else None)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst, target_is_directory=src.is_dir())


def build_split_pair(dataset: Path, clean: Path, hostile: Path) -> HostilePlan:
    series = pl.read_csv(dataset / "test_series_descriptions.csv")
    sample = pl.read_csv(dataset / "sample_submission.csv")
    studies = sorted(series["study_id"].unique().to_list())
    assert len(studies) == N_TEST, "generate the dataset with hostile.N_TEST test studies"
    plan = HostilePlan(healthy=studies[:N_HEALTHY])
    encoded_ids = studies[N_HEALTHY:N_HEALTHY + len(ENCODED_STUDIES)]
    plan.encoded = dict(zip(encoded_ids, ENCODED_STUDIES))
    plan.defects = dict(zip(studies[N_HEALTHY + len(ENCODED_STUDIES):], DEFECTS))

    for folder in (clean, hostile):
        folder.mkdir(parents=True)
        for name in ("train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv"):
            shutil.copy(dataset / name, folder / name)
        _link(dataset / "train_images", folder / "train_images")

    in_clean = plan.unchanged
    pl.read_csv(dataset / "test_series_descriptions.csv").filter(
        pl.col("study_id").is_in(in_clean)).write_csv(clean / "test_series_descriptions.csv")
    _study_of = pl.col("row_id").str.split("_").list.first().cast(pl.Int64)
    sample.filter(_study_of.is_in(in_clean)).write_csv(clean / "sample_submission.csv")
    for study in in_clean:
        _link(dataset / "test_images" / str(study), clean / "test_images" / str(study))

    hostile_series = series
    for study in studies:
        src, dst = dataset / "test_images" / str(study), hostile / "test_images" / str(study)
        if study in plan.healthy:
            _link(src, dst)
            continue
        shutil.copytree(src, dst)
        rows = series.filter(pl.col("study_id") == study)
        for row in rows.iter_rows(named=True):
            folder = dst / str(row["series_id"])
            if study in plan.encoded:
                name = plan.encoded[study][row["series_description"]]
                syntax, lossless = SYNTAXES[name]
                for path in sorted((src / str(row["series_id"])).glob("*.dcm")):
                    reencode(path, folder / path.name, syntax)
                    plan.encoded_files.append((folder / path.name, path, lossless))
            elif row["series_description"] == plan.defects[study].series:
                _damage(plan.defects[study], folder)
        if study in plan.defects:
            defect = plan.defects[study]
            damaged = (pl.col("study_id") == study) & (pl.col("series_description") == defect.series)
            if defect.name == "empty_csv_description":
                hostile_series = hostile_series.with_columns(series_description=pl.when(damaged)
                                                             .then(None).otherwise(pl.col("series_description")))
            elif defect.name == "duplicate_csv_row":
                hostile_series = pl.concat([hostile_series, hostile_series.filter(damaged)])
    hostile_series.write_csv(hostile / "test_series_descriptions.csv")
    sample.write_csv(hostile / "sample_submission.csv")
    return plan
