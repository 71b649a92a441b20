"""Writing synthetic slices as MR Image Storage DICOM files with real geometry tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from spinepipe.geometry import SlicePlane

# Echo/repetition/inversion times (ms) that go with each contrast
SEQUENCE_TIMES = {"T1": (550.0, 10.0, None), "T2": (3500.0, 100.0, None),
                  "STIR": (4000.0, 60.0, 150.0)}


def uid(*parts: object) -> str:
    """Deterministic UID from the given parts (same inputs, same UID)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _ds(value: float) -> str:
    """A DICOM Decimal String of at most 16 characters."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.4e}"


def build_dataset(*, study_id: int, series_id: int, series_number: int, description: str,
                  contrast: str, plane: SlicePlane, instance_number: int,
                  slice_thickness: float, spacing: float, patient_position: str,
                  pixels: NDArray[np.uint16], bits_stored: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid(study_id, series_id, instance_number)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid(study_id)
    ds.SeriesInstanceUID = uid(study_id, series_id)
    ds.FrameOfReferenceUID = uid(study_id, "frame")
    ds.Modality = "MR"
    ds.Manufacturer = "SYNTHETIC"
    ds.PatientID = str(study_id)
    ds.PatientName = f"SYNTH^{study_id}"
    ds.StudyID = str(study_id)[-8:]
    ds.BodyPartExamined = "LSPINE"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = instance_number
    ds.PatientPosition = patient_position
    ds.ScanningSequence = "IR" if contrast == "STIR" else "SE"
    repetition, echo, inversion = SEQUENCE_TIMES[contrast]
    ds.RepetitionTime = _ds(repetition)
    ds.EchoTime = _ds(echo)
    if inversion is not None:
        ds.InversionTime = _ds(inversion)
    ds.MagneticFieldStrength = "1.5"
    ds.ImagePositionPatient = [_ds(v) for v in plane.ipp]
    ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([plane.row_dir, plane.col_dir])]
    ds.PixelSpacing = [_ds(v) for v in plane.pixel_spacing]
    ds.SliceThickness = _ds(slice_thickness)
    ds.SpacingBetweenSlices = _ds(spacing)
    ds.SliceLocation = _ds(float(plane.ipp @ plane.normal))
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    high = float(np.percentile(pixels, 99.5))
    ds.WindowCenter = _ds(high / 2)
    ds.WindowWidth = _ds(max(high, 1.0))
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def write_dataset(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
