"""Runs that could not be logged: a queue on disk (``logs/mlflow-pending/<key>/``), logged later, each once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from .retry import _one_line
from .runs import _log_run, end_parent, log_run, run_key
from .store import TrackingError, resolve_uri

DEFAULT_PENDING = "logs/mlflow-pending"


def pending_dir(path: Path | str | None = None) -> Path:
    """The queue of runs not yet logged: ``path``, else ``$SUBTUNE_MLFLOW_PENDING``, else ``logs/mlflow-pending``."""
    return Path(path or os.environ.get("SUBTUNE_MLFLOW_PENDING") or DEFAULT_PENDING).absolute()


def queue_run(
    metrics: Mapping[str, Any],
    *,
    tracking_uri: str,
    experiment: str,
    tags: Mapping[str, str],
    artifact: Path | str | None,
    run_name: str | None = None,
    error: str = "",
    pending: Path | str | None = None,
) -> Path:
    """Queue a run that could not be logged: ``<pending>/<key>/run.json`` plus a copy of its metrics file.

    Written atomically (a temporary directory renamed into place); queuing the
    same run twice keeps one entry. Returns the entry's directory.
    """
    key = run_key(metrics, artifact)
    record = {
        "format": 1, "key": key, "tracking_uri": tracking_uri, "experiment": experiment,
        "tags": {str(k): str(v) for k, v in tags.items()}, "run_name": run_name, "metrics": metrics,
        "artifact": Path(artifact).name if artifact is not None else None,
        "source": str(Path(artifact).absolute()) if artifact is not None else None,
        "queued_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "error": error,
    }
    return _write_entry(pending_dir(pending), key, record, artifact)


def queue_end(
    run_id: str, status: str, *, tracking_uri: str, error: str = "", pending: Path | str | None = None
) -> Path:
    """Queue the end of a workflow's parent run that could not be marked (``<pending>/end-<run id>/run.json``).

    ``log --pending`` marks it after the queued runs before it (the jobs' runs, queued while the workflow ran).
    """
    record = {"format": 1, "kind": "end", "run_id": run_id, "status": status, "tracking_uri": tracking_uri,
              "queued_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "error": error}
    return _write_entry(pending_dir(pending), f"end-{run_id}", record, None)


def _write_entry(root: Path, name: str, record: Mapping[str, Any], artifact: Path | str | None) -> Path:
    """``root/name/run.json`` (and a copy of ``artifact``), written atomically; an existing entry is kept."""
    root.mkdir(parents=True, exist_ok=True)
    dest = root / name
    if dest.is_dir():
        return dest
    tmp = root / f".{name}.{os.getpid()}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if artifact is not None:
            shutil.copyfile(artifact, tmp / Path(artifact).name)
        (tmp / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        try:
            os.rename(tmp, dest)
        except OSError:  # queued meanwhile by someone else
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def log_or_queue(
    metrics: Mapping[str, Any],
    *,
    experiment: str,
    tags: Mapping[str, str],
    artifact: Path | str | None,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    retry_s: float | None = None,
    pending: Path | str | None = None,
) -> str | None:
    """Log one job's run; if that fails, queue it, print one ``WARNING:`` line and return None.

    What the workflow's jobs call after writing their metrics file: a tracking
    failure never fails the job (Snakemake would delete its outputs) and never
    loses the run (``python -m subtune log --pending`` logs the queue).
    """
    uri = resolve_uri(tracking_uri)
    try:
        return log_run(metrics, tracking_uri=uri, experiment=experiment, tags=tags, artifact=artifact,
                       run_name=run_name, retry_s=retry_s)
    except TrackingError as exc:
        cause = _one_line(exc.__cause__) if exc.__cause__ is not None else str(exc)
        try:
            entry = queue_run(metrics, tracking_uri=uri, experiment=experiment, tags=tags, artifact=artifact,
                              run_name=run_name, error=cause, pending=pending)
            queued = f"queued in {entry}; log it later with `python -m subtune log --pending`"
        except OSError as qexc:
            queued = f"could not queue it ({_one_line(qexc)}); log it later with `python -m subtune log --metrics FILE`"
        kept = f"metrics file {artifact} kept" if artifact is not None else "metrics not logged"
        print(f"WARNING: MLflow logging to {uri} failed ({cause}); {kept}; run {queued}", file=sys.stderr, flush=True)
        return None


def pending_runs(pending: Path | str | None = None) -> list[Path]:
    """The queued runs' directories, oldest first."""
    root = pending_dir(pending)
    if not root.is_dir():
        return []
    entries = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / "run.json").is_file()]
    return sorted(entries, key=lambda d: ((d / "run.json").stat().st_mtime, d.name))


@contextlib.contextmanager
def _claim(path: Path) -> Iterator[bool]:
    """Exclusive non-blocking lock on ``path`` (False: another process holds it).

    ``path`` is the entry's own ``run.json``, locked in place with ``flock``: filelock would open it for writing
    and create it if another ``log --pending`` had just removed the entry, leaving an empty, unreadable one.
    """
    try:
        import fcntl
    except ImportError:
        yield True
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:
            yield True
            return
        yield True
    finally:
        os.close(fd)


def _end(rec: Mapping[str, Any], tracking_uri: str | None, retry_s: float | None) -> str:
    """Mark a queued parent-run end; what was done, in words (a parent not in the store: nothing to mark)."""
    uri = tracking_uri or rec["tracking_uri"]
    try:
        end_parent(rec["run_id"], rec["status"], uri, retry_s=retry_s)
    except TrackingError as exc:
        cause = exc.__cause__
        if getattr(cause, "error_code", "") != "RESOURCE_DOES_NOT_EXIST" and "not found" not in str(cause).lower():
            raise
        return f"MLflow parent run {rec['run_id']} is not in {resolve_uri(uri)}: not marked {rec['status']}"
    return f"marked MLflow parent run {rec['run_id']} {rec['status']}"


def flush_pending(
    pending: Path | str | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    retry_s: float | None = None,
    out=None,
) -> tuple[int, int]:
    """Log the queued runs (each where it was meant to go, unless ``tracking_uri``/``experiment`` say otherwise).

    A logged entry is removed; one already in the store (same metrics file) is
    removed without logging it again; a queued parent-run end is marked. Stops
    at the first failure (the server is probably still down): the rest stays
    queued. Returns (runs logged, entries still queued).
    """
    out = out or sys.stdout
    entries = sorted(pending_runs(pending), key=lambda d: d.name.startswith("end-"))  # a parent ends after its runs
    done = 0
    for n, entry in enumerate(entries):
        with _claim(entry / "run.json") as mine:
            if not mine or not (entry / "run.json").is_file():
                continue  # another `log --pending` has it
            rec = json.loads((entry / "run.json").read_text())
            artifact = entry / rec["artifact"] if rec.get("artifact") else None
            try:
                if rec.get("kind") == "end":
                    print(_end(rec, tracking_uri, retry_s), file=out, flush=True)
                    shutil.rmtree(entry, ignore_errors=True)
                    continue
                run_id, already = _log_run(
                    rec["metrics"], tracking_uri=tracking_uri or rec["tracking_uri"],
                    experiment=experiment or rec["experiment"], tags=rec.get("tags") or {}, artifact=artifact,
                    run_name=rec.get("run_name"), retry_s=retry_s, key=rec["key"],
                )
            except TrackingError as exc:
                left = len(entries) - n
                print(f"WARNING: {exc}; {left} run{'s' if left != 1 else ''} still queued in {pending_dir(pending)}",
                      file=sys.stderr, flush=True)
                return done, left
            what = rec.get("source") or entry.name
            print(f"{'already logged' if already else 'logged'} MLflow run {run_id}: {what}", file=out, flush=True)
            shutil.rmtree(entry, ignore_errors=True)
            done += 0 if already else 1
    return done, len(pending_runs(pending))
