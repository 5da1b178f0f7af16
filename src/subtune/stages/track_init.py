"""``track-init``: the MLflow store and experiment created once, before parallel jobs log to them."""

from __future__ import annotations

import argparse

from . import Stage


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--uri", help="tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    s.add_argument("--experiment", help="MLflow experiment (default $SUBTUNE_MLFLOW_EXPERIMENT)")
    s.add_argument("--out", required=True, help="marker file the training jobs depend on")


def run(a: argparse.Namespace) -> None:
    import os

    from ..io import write_json
    from ..track import init_store, pending_dir, pending_runs, resolve_uri, runs_url

    uri = resolve_uri(a.uri)
    experiment = a.experiment or os.environ.get("SUBTUNE_MLFLOW_EXPERIMENT", "subtune")
    exp_id = init_store(uri, experiment)
    write_json(a.out, {"tracking_uri": uri, "experiment": experiment, "experiment_id": exp_id})
    print(f"MLflow store ready: {uri}, experiment {experiment!r} ({exp_id}); its runs in the UI: "
          f"{runs_url(uri, exp_id)}")
    queued = len(pending_runs())
    if queued:
        print(f"NOTE: {queued} earlier run{'s' if queued != 1 else ''} could not be logged and "
              f"{'are' if queued != 1 else 'is'} queued in {pending_dir()}: python -m subtune log --pending")


STAGE = Stage("track-init", "create the MLflow store and experiment once, before parallel jobs log", add_arguments,
              run, order=120)
