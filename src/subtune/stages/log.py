"""``log``: runs that were computed but not logged to MLflow (the server was down, ...), never one twice."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import SubtuneError
from . import Stage
from ._common import existing, tags


def add_arguments(s: argparse.ArgumentParser) -> None:
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--pending", nargs="?", const="", metavar="DIR",
                      help="log the queued runs (default $SUBTUNE_MLFLOW_PENDING, else logs/mlflow-pending), "
                           "each to its own URI and experiment unless --uri/--experiment")
    what.add_argument("--metrics", nargs="+", metavar="FILE", help="metrics JSON files, one run each")
    s.add_argument("--uri", help="tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    s.add_argument("--experiment", help="MLflow experiment (default $SUBTUNE_MLFLOW_EXPERIMENT)")
    s.add_argument("--tag", action="append", help="MLflow tag KEY=VALUE (repeatable)")


def run(a: argparse.Namespace) -> None:
    """Log runs that were computed but not logged (e.g. the tracking server was down); never one twice."""
    import os

    from ..io import read_json
    from ..track import _log_run, flush_pending, pending_dir

    if a.pending is not None:
        logged, left = flush_pending(a.pending or None, tracking_uri=a.uri, experiment=a.experiment)
        print(f"logged {logged} queued MLflow run{'s' if logged != 1 else ''}; {left} still queued "
              f"in {pending_dir(a.pending or None)}")
        if left:
            raise SubtuneError(f"{left} run{'s' if left != 1 else ''} could not be logged (still queued)")
        return
    experiment = a.experiment or os.environ.get("SUBTUNE_MLFLOW_EXPERIMENT", "subtune")
    for f in a.metrics:
        m = read_json(existing(f))
        run_id, already = _log_run(m, tracking_uri=a.uri, experiment=experiment, tags=tags(a.tag),
                                   artifact=Path(f), run_name=None, retry_s=None, key=None)
        print(f"{'already logged' if already else 'logged'} MLflow run {run_id}: {f}")


STAGE = Stage("log", "log runs that could not be logged at the time (queued runs, or metrics files)", add_arguments,
              run, order=130)
