"""The severity fold models as MLflow models, each logged by its training run (the registered
model is the whole bundle: ``spinepipe.bundle.registry``).

``SeverityEnsemble`` is an ``mlflow.pyfunc.PythonModel``: its artifacts are fold
checkpoints (``spinepipe.checkpoints``, read with ``weights_only``), the per-family
temperatures and the training labels (for the prior of rows no view could be cut for); its
input is a crop index (the rows of ``results/crops/{split}/index.parquet`` of the studies to
grade, whose ``array`` paths point at the cached crops), and its output the submission rows
of those studies (``row_id``, ``normal_mild``, ``moderate``, ``severe``), computed exactly as
the pipeline's ``predict_test`` + ``submission`` do. So

    mlflow.pyfunc.load_model("runs:/<fold run>/model").predict(crop_index_rows)

grades studies from their crops with one fold's model.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl

log = logging.getLogger(__name__)

# a fold model's inference settings when logged (override at load time with
# mlflow.pyfunc.load_model(uri, model_config={...})); the registered ensemble takes the run's
FOLD_MODEL_INFERENCE = {"tta": True, "batch_size": 64, "fold_weights": None}
# what the model reads of a crop index row (the rest of the index may come along)
INPUT_COLUMNS = ("study_id", "level", "view", "array", "row", "status", "slice_mask")


def _index_frame(model_input: pd.DataFrame | pl.DataFrame) -> pl.DataFrame:
    frame = model_input if isinstance(model_input, pl.DataFrame) else pl.from_pandas(model_input)
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"crop index input lacks columns {missing} (expected {list(INPUT_COLUMNS)})")
    return frame.with_columns(pl.col("study_id").cast(pl.Int64), pl.col("row").cast(pl.Int64),
                              pl.col("slice_mask").cast(pl.List(pl.Boolean)))


class SeverityEnsemble:
    """Wrapped as an ``mlflow.pyfunc.PythonModel`` by :func:`python_model` (so importing this
    module does not import MLflow)."""

    def load(self, artifacts: Mapping[str, str], inference: Mapping[str, Any]) -> None:
        self.models = sorted(Path(p) for k, p in artifacts.items() if k.startswith("model_"))
        self.temperatures = json.loads(Path(artifacts["temperatures"]).read_text())
        self.labels_path = Path(artifacts["labels"])
        self.inference = dict(inference)

    def predict(self, model_input: pd.DataFrame | pl.DataFrame) -> pd.DataFrame:
        from spinepipe.classify.inference import assemble_submission, ensemble, predict_family
        from spinepipe.dataset import read_labels, submission_rows
        from spinepipe.metric import prior_table

        index = _index_frame(model_input)
        predictions = pl.concat([predict_family(p, index, self.inference["tta"], self.inference["batch_size"])
                                 for p in self.models])
        ensembled = ensemble(predictions, self.temperatures, self.inference.get("fold_weights"))
        studies = sorted(index["study_id"].unique().to_list())
        submission, _ = assemble_submission(submission_rows(studies), ensembled,
                                            prior_table(read_labels(self.labels_path)), index)
        return submission.to_pandas()


def python_model():
    """The MLflow pyfunc class around :class:`SeverityEnsemble`."""
    import mlflow.pyfunc

    class SeverityEnsembleModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context) -> None:
            self.ensemble = SeverityEnsemble()
            self.ensemble.load(context.artifacts, context.model_config or {})

        def predict(self, context, model_input, params=None):
            return self.ensemble.predict(model_input)

    return SeverityEnsembleModel()


def _example(index: pl.DataFrame, n_studies: int = 1) -> pd.DataFrame:
    studies = sorted(index["study_id"].unique().to_list())[:n_studies]
    return index.filter(pl.col("study_id").is_in(studies)).select(INPUT_COLUMNS).to_pandas()


def log_model(run_id: str, tracking_uri: str, name: str, models: Sequence[Path], temperatures: Mapping[str, float],
              labels: Path, inference: Mapping[str, Any], example_index: pl.DataFrame,
              registered_name: str | None = None) -> Any:
    """Log (and with ``registered_name`` register) a :class:`SeverityEnsemble` of ``models``
    to run ``run_id``: artifacts, model config, an input example (one study's crop rows) and
    the signature inferred from it and its output. Returns MLflow's ModelInfo."""
    import mlflow
    from mlflow.models import infer_signature

    import spinepipe

    mlflow.set_tracking_uri(tracking_uri)
    example = _example(example_index)
    ensemble = SeverityEnsemble()
    with tempfile.TemporaryDirectory() as tmp:
        temps = Path(tmp) / "temperatures.json"
        temps.write_text(json.dumps(dict(temperatures)))
        artifacts = {f"model_{Path(p).stem}": str(p) for p in models}
        artifacts |= {"temperatures": str(temps), "labels": str(labels)}
        ensemble.load(artifacts, inference)
        output = ensemble.predict(example)
        signature = infer_signature(example, output)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=name, python_model=python_model(), artifacts=artifacts,
                model_config={k: inference[k] for k in ("tta", "batch_size", "fold_weights")},
                signature=signature, input_example=example,
                code_paths=[str(Path(spinepipe.__file__).parent)],
                pip_requirements=pipeline_requirements(), registered_model_name=registered_name)
    return info


def pipeline_requirements() -> list[str]:
    """The pipeline's own requirements (no inference from the environment: quick and exact)."""
    path = Path(__file__).resolve().parents[2] / "requirements.txt"
    if not path.is_file():
        return ["torch", "timm", "polars", "pandas", "mlflow"]
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]
