"""The workflow context of this process: what every run it creates is tagged with (the rule,
the git commit) and nested under (the root run of its configuration), and the datasets it
logs as inputs. A rule's script sets it with :func:`workflow_context` before it creates
runs; the run code reads it with :func:`current_context`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[2]
CONFIG_HASH_TAG = "spinepipe.config_hash"
RULE_TAG = "snakemake.rule"
RUN_KEY_TAG = "spinepipe.run_key"


@dataclass(frozen=True)
class WorkflowContext:
    """What every run this process creates is tagged with and nested under."""

    rule: str | None = None
    config_hash: str | None = None           # the root run's key; None: runs stand alone
    datasets: dict[str, Any] | None = None   # split -> record (tracking_datasets)
    contexts: dict[str, str] | None = None   # split -> "training" | "evaluation"


_current = WorkflowContext()


def current_context() -> WorkflowContext:
    """The context set by the last :func:`workflow_context` (an empty one before any; set
    it only through :func:`workflow_context`, ``workflow_context(None)`` clears it)."""
    return _current


def config_hash(config: Mapping[str, Any]) -> str:
    """16 hex digits identifying a whole pipeline configuration."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def workflow_context(rule: str | None, config: Mapping[str, Any] | None = None,
                     datasets_file: str | Path | Iterable[str | Path] | None = None,
                     contexts: Mapping[str, str] | None = None) -> None:
    """Called by a rule's script before it creates runs: the runs name the rule as their
    source (``mlflow.source.name``, tag ``snakemake.rule``); unless given another parent,
    they nest under the root run of ``config`` (the whole ``snakemake.config``; see
    :func:`~spinepipe.tracking.election.root_run_id`); and they log the splits of
    ``datasets_file`` (one or more of rule ``dataset_record``'s per-split files) named in
    ``contexts`` (split -> ``training`` / ``evaluation``) as their MLflow dataset inputs.
    The config is read at run time, never a rule's param: a config change reruns only the
    stages that use the changed part, and those attach to the new configuration's root."""
    import json

    global _current
    datasets = None
    if datasets_file is not None:
        files = [datasets_file] if isinstance(datasets_file, str | Path) else list(datasets_file)
        datasets = {split: record for f in files
                    for split, record in json.loads(Path(f).read_text()).items()}
    _current = WorkflowContext(rule=rule, config_hash=None if config is None else config_hash(config),
                               datasets=datasets, contexts=dict(contexts or {}))


def git_commit(repo: Path = REPO_DIR) -> str | None:
    """The pipeline checkout's commit, for MLflow's standard ``mlflow.source.git.commit``
    (None outside a git checkout)."""
    import subprocess

    try:
        result = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags for a run created by a pipeline rule: the rule as the
    source name (not the temporary script Snakemake runs), type JOB, the git commit."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

    rule = _current.rule
    tags = {MLFLOW_SOURCE_TYPE: "JOB"}
    if rule:
        tags[MLFLOW_SOURCE_NAME] = f"snakemake rule {rule}"
        tags[RULE_TAG] = rule
    commit = git_commit()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags
