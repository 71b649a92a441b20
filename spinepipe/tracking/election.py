"""The root run of a configuration: one run ``pipeline`` per configuration (tag
``spinepipe.config_hash``), created by the first job that needs it, already terminated, and
agreed on by parallel jobs without a lock (each keeps the oldest root it sees, and deletes
its own if it lost). A process remembers the roots it found: :func:`forget_root_runs` makes
it look again, as a new job would."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from spinepipe.tracking.context import CONFIG_HASH_TAG, RUN_KEY_TAG, source_tags
from spinepipe.tracking.store import experiment_id, mlflow_client

log = logging.getLogger("spinepipe.tracking")  # the package's logger, one for all its modules

_PROCESS_KEY = uuid.uuid4().hex
# how long a job that created a root waits before choosing among the roots it sees
ROOT_SETTLE_SECONDS = 1.0
_root_run_ids: dict[str, str] = {}  # "uri key" -> the root run found, for this process


def forget_root_runs() -> None:
    """Forget the root runs this process has found: the next :func:`root_run_id` looks them
    up in the store again."""
    _root_run_ids.clear()


def _roots(uri: str, exp_id: str, key: str) -> list[Any]:
    runs = mlflow_client(uri).search_runs(
        [exp_id], filter_string=f"tags.`{CONFIG_HASH_TAG}` = '{key}' and tags.`stage` = 'pipeline'",
        max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def root_run_id(uri: str, experiment: str, key: str) -> str:
    """The root run of configuration ``key`` (tag ``spinepipe.config_hash``), created on
    first use, already terminated (FINISHED, its end time its start time): a container that
    nobody writes to. Parallel jobs may all find none and create one each: after creating, a
    job looks again and keeps the oldest root (start time, then id), deleting its own if it
    lost, so every job of the configuration attaches to the same root without a lock. A
    retry of this (a store that failed half-way) finds its own root by its key (process and
    thread) and closes or deletes it, so no root is left RUNNING or twice."""
    from mlflow.tracking.context import registry
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    cached = _root_run_ids.get(f"{uri} {key}")
    if cached:
        return cached
    exp_id = experiment_id(uri, experiment)
    client = mlflow_client(uri)
    mine = f"root-{key}-{_PROCESS_KEY}-{threading.get_ident()}"
    found = _roots(uri, exp_id, key)
    created = None
    if not found:
        tags = {**registry.resolve_tags({MLFLOW_RUN_NAME: "pipeline", CONFIG_HASH_TAG: key,
                                         "stage": "pipeline", RUN_KEY_TAG: mine}), **source_tags()}
        created = client.create_run(exp_id, run_name="pipeline", tags=tags)
        # a parallel creator stamps its start time before its insert commits, so its root
        # can sort first yet be invisible for a moment: look once the inserts have landed
        time.sleep(ROOT_SETTLE_SECONDS)
        found = _roots(uri, exp_id, key) or [created]
    own = [r for r in found if r.data.tags.get(RUN_KEY_TAG) == mine]
    for run in own:  # a container: terminated at once, children may still attach
        if run.info.status != "FINISHED":
            client.set_terminated(run.info.run_id, "FINISHED", end_time=run.info.start_time)
    for run in own:
        if run.info.run_id != found[0].info.run_id:
            client.delete_run(run.info.run_id)
            log.info("root run %s of configuration %s created beside %s: deleted", run.info.run_id,
                     key, found[0].info.run_id)
    _root_run_ids[f"{uri} {key}"] = found[0].info.run_id
    return found[0].info.run_id
