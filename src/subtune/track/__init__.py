"""MLflow tracking: one run per training job.

Every final-training (and scoring) job writes its metrics JSON first and then
calls :func:`log_run`, so a tracking failure never loses a computed result.

Where runs go: the ``tracking_uri`` argument, else ``$MLFLOW_TRACKING_URI``,
else ``sqlite:///mlflow.db`` in the working directory (MLflow's own default
since 3.7; the file store is gone). Relative SQLite paths are made absolute
against the working directory. For a SQLite store the experiment's artifacts
go to ``mlruns/`` next to the database file (not wherever a job happens to
run).

Many workflow jobs logging into one SQLite file at once is the case to get
right. What goes wrong without care, and what this module does about it:

- Several processes opening a fresh database each run the schema migrations
  (MLflow's store constructor checks "do all tables exist?" and then migrates,
  with no lock), and the losers fail with "table already exists" or a broken
  alembic version, and the half-migrated database stays broken (retrying
  cannot fix it). :func:`init_store` creates the schema and the experiment
  once; the workflow runs it in one job before the fan-out. :func:`log_run`
  also opens the store and finds/creates the experiment under an exclusive
  file lock (``<db>.lock``), so even without the init job only one process
  migrates.
- Concurrent writers get ``sqlite3.OperationalError: database is locked``
  when one waits longer than MLflow's ``busy_timeout`` (20 s). Each job's
  writes are short, so :func:`log_run` takes the same file lock around its
  database writes (serialising subtune's own writers on one machine) and
  retries every store call with jittered exponential backoff on
  lock/operational errors, within a budget (``retry_s``, default 60 s, or
  ``$SUBTUNE_MLFLOW_RETRY_S``). Worst case a call waits up to ``retry_s`` for
  the file lock (then goes on without it) and retries for up to ``retry_s``
  more, plus one SQLite busy wait in flight (5 s opening the store, 20 s in
  MLflow's sessions).
- If logging still fails, :class:`TrackingError` says so and that the metrics
  file is kept.

SQLite locking (and ``flock``) is unreliable on network filesystems
(NFS/Lustre): on a cluster point ``MLFLOW_TRACKING_URI`` at an
``mlflow server`` (``http://host:port``); then no file lock is taken. A
server is probed (``GET /health``) before logging and waited for at most
``min(retry_s, 10 s)``, and MLflow's own HTTP retries (7 retries with
backoff factor 2 by default: minutes when the server is down) are cut to 2
retries, backoff factor 1 and a 30 s request timeout unless the
``MLFLOW_HTTP_REQUEST_*`` variables say otherwise: a job never hangs for
minutes on a dead server.

Nothing computed is lost when logging fails: :func:`log_or_queue` (what the
training and scoring jobs call) writes the run it could not log to a queue
(``logs/mlflow-pending/<key>/``, or ``$SUBTUNE_MLFLOW_PENDING``: the run's
metrics, tags, experiment, URI and a copy of its metrics file), prints one
``WARNING:`` line, and returns; the job succeeds (Snakemake would delete a
failed job's outputs: the result would be lost). ``python -m subtune log
--pending`` (:func:`flush_pending`) logs the queue later. Every run carries
the tag ``subtune.metrics_sha256`` (the SHA-256 of its metrics file): logging
the same file again finds the finished run and logs nothing (a run that a
dying server left unfinished is deleted and logged again), so no run is
logged twice.

Finding a run among hundreds: every run is named from its tags
(:func:`run_name_for`: ``final/ft/digits/s1``, ``sweep/ft/digits/n250/s1``,
...), unique within the experiment, and carries a tag for each of those
dimensions; a workflow invocation's runs are the children of one parent run
(:mod:`.invocation`); tuning runs log every grid point's validation accuracy.

The package's parts: :mod:`.store` (URIs, the store's file lock, opening the
store and the experiment), :mod:`.server` (tracking servers), :mod:`.retry`
(which errors are retried, and how long), :mod:`.runs` (what a run logs, its
name, and logging it), :mod:`.queue` (runs that could not be logged) and
:mod:`.invocation` (the parent run of a workflow invocation).
"""

from __future__ import annotations

import os

from .invocation import PARENT_ENV, workflow_ended, workflow_started
from .queue import DEFAULT_PENDING, flush_pending, log_or_queue, pending_dir, pending_runs, queue_end, queue_run
from .retry import DEFAULT_RETRY_S
from .runs import (
    FINAL_KEYS, HISTORY_KEYS, KEY_TAG, PARENT_TAG, _log_run, end_parent, grid_metric, identity_tags, log_run,
    run_key, run_metrics, run_name_for, run_params, start_parent,
)  # fmt: skip
from .server import HTTP_DEFAULTS, SERVER_WAIT_S, check_server, is_server
from .store import DEFAULT_TRACKING_URI, EXPERIMENT_KIND, TrackingError, init_store, resolve_uri, runs_url, sqlite_path

# MLflow 3 sends usage telemetry to its vendor from every process that logs (a network attempt per job, offline
# on a laptop or a cluster node); off unless the user's environment says otherwise (MLFLOW_DISABLE_TELEMETRY=false).
# Set before anything imports MLflow: the modules here import it only when they log.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = [
    "DEFAULT_PENDING", "DEFAULT_RETRY_S", "DEFAULT_TRACKING_URI", "EXPERIMENT_KIND", "FINAL_KEYS", "HISTORY_KEYS",
    "HTTP_DEFAULTS", "KEY_TAG", "PARENT_ENV", "PARENT_TAG", "SERVER_WAIT_S", "TrackingError", "check_server",
    "end_parent", "flush_pending", "grid_metric", "identity_tags", "init_store", "is_server", "log_or_queue",
    "log_run", "pending_dir", "pending_runs", "queue_end", "queue_run", "resolve_uri", "run_key", "run_metrics",
    "run_name_for", "run_params", "runs_url", "sqlite_path", "start_parent", "workflow_ended", "workflow_started",
]  # fmt: skip
