"""A bundle as one MLflow model: logged with the bundle folder as its artifact, registered,
and graded through ``mlflow.pyfunc``. Its input is DICOM: a table with a ``data_dir`` column,
each a folder of studies in the competition's layout (``test_images/``,
``test_series_descriptions.csv``, optional ``sample_submission.csv``); its output the
submission rows of those studies. So

    mlflow.pyfunc.load_model("models:/<name>/<version>").predict(pd.DataFrame({"data_dir": [folder]}))

grades a folder of studies with a registered bundle, and ``predict.bundle:
models:/<name>/<version>`` grades one with the workflow (``spinepipe.bundle.manifest``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

ARTIFACT = "bundle"  # the artifact key: the folder lies at artifacts/bundle of the model
INPUT_COLUMN = "data_dir"


class BundleGrader:
    """Wrapped as an ``mlflow.pyfunc.PythonModel`` by :func:`python_model` (so importing this
    module does not import MLflow)."""

    def load(self, bundle_dir: str | Path, runtime: str = "torch", threads: int = 1) -> None:
        from spinepipe.bundle.manifest import read_bundle

        self.bundle = read_bundle(Path(bundle_dir))  # refused here if altered
        self.runtime, self.threads = runtime, threads

    def predict(self, model_input: pd.DataFrame) -> pd.DataFrame:
        from spinepipe.grade import grade_folder

        if INPUT_COLUMN not in model_input.columns:
            raise ValueError(f"input lacks a {INPUT_COLUMN!r} column (folders of studies to grade)")
        frames = []
        for folder in model_input[INPUT_COLUMN].tolist():
            with tempfile.TemporaryDirectory(prefix="spinepipe-grade-") as work:
                submission, _ = grade_folder(self.bundle, Path(folder), Path(work), runtime=self.runtime,
                                             threads=self.threads)
            frames.append(submission.to_pandas())
        return pd.concat(frames, ignore_index=True)


def python_model():
    """The MLflow pyfunc class around :class:`BundleGrader`."""
    import mlflow.pyfunc

    class BundleModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context) -> None:
            config = context.model_config or {}
            self.grader = BundleGrader()
            self.grader.load(context.artifacts[ARTIFACT], config.get("runtime", "torch"),
                             int(config.get("threads", 1)))

        def predict(self, context, model_input, params=None):
            return self.grader.predict(model_input)

    return BundleModel()


def signature():
    """Input: one folder per row; output: the submission's columns."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from spinepipe.constants import SUBMISSION_COLUMNS

    return ModelSignature(inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
                          outputs=Schema([ColSpec("string", "row_id"),
                                          *[ColSpec("double", c) for c in SUBMISSION_COLUMNS]]))


def log_bundle(run_id: str, tracking_uri: str, bundle_dir: Path, registered_name: str | None = None) -> Any:
    """Log (and with ``registered_name`` register) the bundle folder as an MLflow model of run
    ``run_id``. Returns MLflow's ModelInfo."""
    import mlflow

    import spinepipe
    from spinepipe.classify.mlflow_model import pipeline_requirements

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(
            name=ARTIFACT, python_model=python_model(), artifacts={ARTIFACT: str(bundle_dir)},
            model_config={"runtime": "torch", "threads": 1}, signature=signature(),
            code_paths=[str(Path(spinepipe.__file__).parent)], pip_requirements=pipeline_requirements(),
            registered_model_name=registered_name)

