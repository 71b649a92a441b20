"""MLflow tracking: runs, flattened config params, per-epoch metrics.

**One job, one run.** Every run is created and terminated by the same job: FINISHED when
its block ends, FAILED when the block raises or the job is sent SIGTERM (a Slurm time limit,
a cancelled workflow), before the job exits. No job writes metrics, params, tags or
artifacts into a run another job created; runs of later jobs only point at an earlier run
as their parent (the tag ``mlflow.parentRunId``, set on themselves). A parent is therefore
a finished container before its children exist: the configuration's root run ``pipeline``
(:func:`root_run_id`) is created already terminated, a training seed's run
(:func:`create_parent_run`) right after its params are written.

Every call that writes to the tracking store goes through :func:`call_with_retry`, which
retries what a busy store answers (a SQLite database locked by a parallel job, a connection
refused or timed out, a 5xx from a server) with exponential backoff:
``mlflow.retry_attempts`` tries spread over about ``mlflow.retry_seconds``. Retries never
duplicate: a metric's timestamp is taken once, so a repeated write is the same entry; a run
is created with a key (tag ``spinepipe.run_key``), so a retry after a creation that reached
the store but whose answer was lost finds that run instead of creating a second one (which
nobody would ever close); parallel creators of a root agree on one.

What happens when the store still fails:

* must succeed (raise :class:`TrackingError` naming the URI): :func:`init_tracking` (the
  ``tracking_init`` rule, before any training job; :func:`check_store` first makes sure an
  HTTP store answers within ``mlflow.request_timeout_s`` and a SQLite file can be written,
  so a bad store fails in seconds) and :func:`create_parent_run` (a small job before
  training; the training runs hang under it);
* best effort (a warning naming the URI, and the job goes on and writes its outputs; only
  the tracked figures are lost): everything inside :func:`mlflow_run` (creating the run,
  params, per-epoch metrics, artifacts, closing it). Training never stops for the tracking
  store. Once a call has used up its retries, the next calls of the same run try once each
  (a dead store costs each epoch one try, not the whole budget) until one succeeds again.

The modules (import each name from the module that defines it; this package's
``__init__`` imports nothing, so a rule's code inputs, the static import closure of its
script, hold only the modules the script uses):

* :mod:`spinepipe.tracking.context`: the workflow context a rule's script sets
  (:func:`workflow_context`: rule, configuration, dataset records), :func:`config_hash`,
  :func:`git_commit`, :func:`source_tags` and the tag names;
* :mod:`spinepipe.tracking.retry`: :class:`RetryPolicy`, :func:`is_transient`,
  :func:`call_with_retry`;
* :mod:`spinepipe.tracking.store`: :class:`TrackingError`, the store checks
  (:func:`check_reachable`, :func:`check_store`), the client set-up (:func:`configure`,
  :func:`mlflow_client`, :func:`experiment_id`) and :func:`init_tracking`;
* :mod:`spinepipe.tracking.election`: the root run of a configuration
  (:func:`root_run_id`, elected without a lock by parallel jobs);
* :mod:`spinepipe.tracking.runs`: the runs a job creates and writes to
  (:func:`mlflow_run`, :class:`RunLogger`, :func:`log_artifact`, :func:`create_parent_run`,
  :func:`flatten`), closed as FAILED on SIGTERM (:class:`Terminated`).
"""
