"""The data a run trained or was evaluated on, as MLflow datasets.

One record per split: a name (the dataset's folder, or "synthetic"), a digest of the
split's competition CSVs and of its DICOM file list (relative paths and sizes), the source
folder, and a profile with the study, series and file counts. Runs log them as inputs
(context ``training`` or ``evaluation``), so the MLflow UI's Dataset column says what a
model saw, and two runs on different data never look alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

SPLIT_CSVS = {
    "train": ("train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv"),
    "test": ("test_series_descriptions.csv",),
}


def split_digest(data_dir: Path, split: str, instances: pl.DataFrame) -> str:
    """sha256 over the split's CSVs (bytes) and its DICOM files (path relative to the data
    folder, size), in a fixed order; 16 hex digits."""
    digest = hashlib.sha256()
    for name in SPLIT_CSVS[split]:
        path = data_dir / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    files = instances.select("path", "file_size").sort("path")
    for path, size in files.iter_rows():
        try:
            relative = str(Path(path).resolve().relative_to(data_dir.resolve()))
        except ValueError:
            relative = str(path)
        digest.update(f"{relative}\t{size}\n".encode())
    return digest.hexdigest()[:16]


def dataset_records(data_dir: Path, name: str, instances: pl.DataFrame, series: pl.DataFrame,
                    splits: tuple[str, ...] = tuple(SPLIT_CSVS)) -> dict[str, dict[str, Any]]:
    """Per split of ``splits``: ``{name, digest, source, split, profile}`` (JSON-ready)."""
    records = {}
    for split in splits:
        files = instances.filter(pl.col("split") == split) if "split" in instances.columns else \
            instances.filter(pl.col("study_id").is_in(series.filter(pl.col("split") == split)["study_id"]))
        split_series = series.filter(pl.col("split") == split)
        records[split] = {
            "name": f"{name}:{split}", "digest": split_digest(data_dir, split, files),
            "source": str(data_dir.resolve()), "split": split,
            "profile": {"studies": split_series["study_id"].n_unique(), "series": split_series.height,
                        "files": files.height}}
    return records


def _mlflow_dataset(record: Mapping[str, Any]):
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class StudyDataset(MetaDataset):
        """A MetaDataset with a profile (MLflow's has none): the study, series, file counts."""

        @property
        def profile(self) -> Any:
            return dict(record["profile"])

        def to_dict(self) -> dict[str, str]:
            return super().to_dict() | {"profile": json.dumps(self.profile)}

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local folders
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(record["source"])
    return StudyDataset(source, name=record["name"],
                        digest=record["digest"])


def log_datasets(uri: str, run_id: str, records: Mapping[str, Mapping[str, Any]],
                 contexts: Mapping[str, str]) -> None:
    """Log ``records[split]`` for each ``split -> context`` (``training``, ``evaluation``)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    inputs = [DatasetInput(_mlflow_dataset(records[split])._to_mlflow_entity(),
                           [InputTag("mlflow.data.context", context), InputTag("split", split)])
              for split, context in contexts.items() if split in records]
    MlflowClient(uri).log_inputs(run_id, datasets=inputs)
