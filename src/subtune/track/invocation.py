"""One parent run per workflow invocation, the jobs' runs its children (MLflow's ``mlflow.parentRunId`` tag).

One run of ``make reproduce`` logs hundreds of runs; grouped under one parent row, an invocation is one row to
open in the UI. The Snakefile's ``onstart:`` handler calls :func:`workflow_started` once, in Snakemake's main
process, before any job starts: it creates the parent run and exports its id as ``$SUBTUNE_MLFLOW_PARENT``, which
every job inherits (a local job; a job run by a warm server, which runs it in its client's environment; a SLURM
job, which ``sbatch`` gives the submitting environment). A job's run carries the id as its ``mlflow.parentRunId``
tag (:func:`subtune.stages._common.track`). ``onsuccess:`` and ``onerror:`` call :func:`workflow_ended` (the
parent FINISHED or FAILED). Creating and ending the run: :func:`subtune.track.runs.start_parent` and
:func:`~subtune.track.runs.end_parent`.

Only the main process creates the parent, so concurrent jobs never make two. Snakemake runs no handler for a
dry run, ``--report``, an invocation with nothing to do, or inside a job: none of them creates a parent. A
tracking failure never fails the workflow: one ``WARNING:`` line, and the jobs log their runs without a parent.
"""

from __future__ import annotations

import os
import shlex
import sys

from .queue import queue_end
from .retry import _one_line
from .runs import end_parent, start_parent
from .store import TrackingError, resolve_uri

PARENT_ENV = "SUBTUNE_MLFLOW_PARENT"


def workflow_started() -> str | None:
    """The ``onstart:`` handler: the parent run of this invocation, its id exported as ``$SUBTUNE_MLFLOW_PARENT``.

    Where and under which experiment: as the jobs log (``$MLFLOW_TRACKING_URI``,
    ``$SUBTUNE_MLFLOW_EXPERIMENT``; the Snakefile sets both). Returns the id, or None after one ``WARNING:``
    line (the jobs then log without a parent; the workflow goes on).
    """
    os.environ.pop(PARENT_ENV, None)  # never a parent of another invocation
    experiment = os.environ.get("SUBTUNE_MLFLOW_EXPERIMENT") or "subtune"
    tags = {"invocation": os.environ.get("SUBTUNE_INVOCATION", ""),
            "experiment": os.environ.get("SUBTUNE_EXPERIMENT", ""), "command": shlex.join(sys.argv)}
    try:
        run_id = start_parent(None, experiment, tags=tags)
    except Exception as exc:  # TrackingError, or anything else: tracking never fails the workflow
        print(f"WARNING: {exc if isinstance(exc, TrackingError) else _one_line(exc)}; "
              f"the jobs' runs are logged without a parent", file=sys.stderr, flush=True)
        return None
    os.environ[PARENT_ENV] = run_id
    print(f"MLflow parent run {run_id} (experiment {experiment!r}): this invocation's runs are its children",
          file=sys.stderr, flush=True)
    return run_id


def workflow_ended(status: str) -> None:
    """The ``onsuccess:``/``onerror:`` handler: the parent run marked ``status`` (FINISHED or FAILED).

    If that fails (the server went away during the run): one ``WARNING:`` line, and the end is queued beside the
    jobs' queued runs, for ``python -m subtune log --pending``.
    """
    run_id = os.environ.get(PARENT_ENV)
    if not run_id:
        return
    try:
        end_parent(run_id, status)
    except Exception as exc:
        why = str(exc) if isinstance(exc, TrackingError) else _one_line(exc)
        try:
            entry = queue_end(run_id, status, tracking_uri=resolve_uri(), error=why)
            later = f"queued in {entry}; mark it later with `python -m subtune log --pending`"
        except OSError as qexc:
            later = f"could not queue it ({_one_line(qexc)})"
        print(f"WARNING: {why}; {later}", file=sys.stderr, flush=True)
