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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from . import SubtuneError, __version__

# MLflow 3 sends usage telemetry to its vendor from every process that logs (a network attempt per job, offline
# on a laptop or a cluster node); off unless the user's environment says otherwise (MLFLOW_DISABLE_TELEMETRY=false).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_RETRY_S = 60.0
SERVER_WAIT_S = 10.0  # longest wait for an unreachable tracking server (within retry_s)
DEFAULT_PENDING = "logs/mlflow-pending"
KEY_TAG = "subtune.metrics_sha256"
# MLflow's HTTP client defaults (7 retries, backoff factor 2, 120 s timeout) hang minutes on a dead server.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
HISTORY_KEYS = ("val_acc", "val_loss", "train_loss", "lr")
FINAL_KEYS = (
    "val_acc", "val_loss", "test_acc", "test_loss", "trainable_params", "total_params",
    "wall_time_s", "train_size", "epochs",
)
# MLflow's limits (mlflow.utils.validation): entities per log_batch call, param length.
_MAX_BATCH = 1000
_MAX_PARAMS_TAGS = 100
_MAX_PARAM_LEN = 6000
_BAD_NAME = re.compile(r"[^\w\-. /:]")

T = TypeVar("T")


class TrackingError(SubtuneError):
    """MLflow logging failed (after retries); the metrics file on disk is intact."""


# ---------------------------------------------------------------- URIs and locks
def resolve_uri(tracking_uri: str | None = None) -> str:
    """The tracking URI to use: argument, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.

    A relative SQLite path is made absolute against the current directory.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        uri = "sqlite:///" + str(Path.cwd() / path)
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    if rest in ("", ":memory:"):
        return None
    return Path(rest)


def is_server(uri: str) -> bool:
    """True for a tracking server (``http://``/``https://``), whose availability we check before logging."""
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, wait_s: float = SERVER_WAIT_S) -> None:
    """Raise :class:`ConnectionError` if the tracking server at ``uri`` does not answer within ``wait_s``.

    Probes ``GET <uri>/health`` (short timeouts, jittered backoff). Any HTTP
    answer, even an error status, counts as reachable; only connection-level
    failures (refused, timed out, unknown host) count as unreachable.
    """
    import ssl
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    deadline = time.monotonic() + max(0.0, wait_s)
    delay = 0.2
    while True:
        try:
            with urllib.request.urlopen(url, timeout=min(5.0, max(1.0, wait_s))):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLError):
                return  # it answered; TLS settings are MLflow's business (MLFLOW_TRACKING_INSECURE_TLS, ...)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionError(f"tracking server {uri} unreachable ({reason})") from None
            time.sleep(min(left, delay * (0.5 + random.random())))
            delay = min(delay * 2, 2.0)


@contextlib.contextmanager
def _http_limits(uri: str) -> Iterator[None]:
    """Short MLflow HTTP retries/timeouts for this call (unless set in the environment)."""
    if not is_server(uri):
        yield
        return
    added = [k for k in HTTP_DEFAULTS if k not in os.environ]
    for k in added:
        os.environ[k] = HTTP_DEFAULTS[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _store_lock(uri: str, timeout_s: float) -> Iterator[None]:
    """Exclusive advisory lock on ``<db>.lock`` for a SQLite store (no-op otherwise).

    Serialises subtune's own writers; if the lock cannot be had in ``timeout_s``
    (or the filesystem does not support locks) it goes on without it and relies
    on SQLite's busy timeout and our retries.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    locked = False
    try:
        deadline = time.monotonic() + timeout_s
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)
            except OSError:  # ENOLCK etc.: no locking here
                break
        yield
    finally:
        if locked:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---------------------------------------------------------------- retries
_TRANSIENT = (
    "database is locked",
    "database table is locked",
    "database schema has changed",
    "unable to open database file",
    "disk i/o error",
    "operationalerror",
    "temporarily_unavailable",
)
# A schema migration that lost a race leaves the database half-migrated; retrying cannot fix it.
_PERMANENT = ("already exists", "duplicate column", "alembic", "migration", "out-of-date database schema")


def _is_transient(exc: BaseException) -> bool:
    """Lock/operational database errors worth retrying (looks through the cause chain)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).lower()
        if any(t in text for t in _PERMANENT):
            return False
        if type(e).__name__ == "OperationalError" or getattr(e, "error_code", None) == "TEMPORARILY_UNAVAILABLE":
            return True
        if any(t in text for t in _TRANSIENT):
            return True
        e = e.__cause__ or e.__context__
    return False


class _Retrier:
    """Call functions with jittered exponential backoff on transient errors, within one deadline."""

    def __init__(self, budget_s: float, base_s: float = 0.05, cap_s: float = 2.0):
        self.deadline = time.monotonic() + budget_s
        self.base_s, self.cap_s = base_s, cap_s
        self.retries = 0

    def __call__(self, fn: Callable[[], T], what: str) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise
                # "full jitter": uniform in [0, min(cap, base * 2^attempt)]
                pause = min(left, random.uniform(0, min(self.cap_s, self.base_s * 2 ** attempt)))
                attempt += 1
                self.retries += 1
                print(f"subtune track: {what}: {_one_line(exc)}; retry {attempt} in {pause:.2f}s",
                      file=sys.stderr)
                time.sleep(pause)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _budget(retry_s: float | None) -> float:
    if retry_s is not None:
        return float(retry_s)
    env = os.environ.get("SUBTUNE_MLFLOW_RETRY_S")
    try:
        return float(env) if env else DEFAULT_RETRY_S
    except ValueError:
        raise SubtuneError(f"SUBTUNE_MLFLOW_RETRY_S must be a number of seconds, not {env!r}") from None


# ---------------------------------------------------------------- store and experiment
def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str, experiment: str) -> str | None:
    """For SQLite stores: ``mlruns/<experiment>`` next to the database (None: MLflow's default)."""
    path = sqlite_path(uri)
    if path is None:
        return None
    slug = _BAD_NAME.sub("_", experiment).replace("/", "_").replace(" ", "_").strip("._") or "experiment"
    return (path.parent / "mlruns" / slug).resolve().as_uri()


def _get_or_create_experiment(client, uri: str, experiment: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment))
    except MlflowException as exc:  # created by someone else in the meantime
        if "already exists" not in str(exc).lower() and getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


def init_store(tracking_uri: str | None = None, experiment: str = "subtune", *, retry_s: float | None = None) -> str:
    """Create the tracking database (schema) and the experiment once; return the experiment id.

    Idempotent and safe to call from several processes at once (SQLite: under
    the ``<db>.lock`` file lock). The workflow runs it in one job before the
    training fan-out.
    """
    if not experiment:
        raise SubtuneError("MLflow experiment name is empty")
    uri = resolve_uri(tracking_uri)
    budget = _budget(retry_s)
    try:
        with _http_limits(uri), _store_lock(uri, budget):
            if is_server(uri):
                check_server(uri, min(budget, SERVER_WAIT_S))
            retry = _Retrier(budget)
            client = retry(lambda: _client(uri), "open store")  # migrates an empty database
            return retry(lambda: _get_or_create_experiment(client, uri, experiment), "experiment")
    except SubtuneError:
        raise
    except Exception as exc:
        raise TrackingError(f"MLflow store {uri}: could not create experiment {experiment!r} ({_one_line(exc)})") from exc


# ---------------------------------------------------------------- what a run logs
def _flatten(d: Mapping[str, Any], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = _param_value(v)
    return out


def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        s = ",".join(_param_value(x) for x in v)
    elif v is None:
        s = "None"
    else:
        s = str(v)
    return s[:_MAX_PARAM_LEN]


def _name(key: str) -> str:
    """A valid MLflow param/metric/tag name (letters, digits, _ - . space / :)."""
    return _BAD_NAME.sub("_", str(key))[:250]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def run_params(metrics: Mapping[str, Any]) -> dict[str, str]:
    """The params of a run: method, target, seed, blocks, train.*, method_params.*."""
    params: dict[str, str] = {}
    for k in ("method", "target", "seed"):
        if metrics.get(k) is not None:
            params[k] = _param_value(metrics[k])
    mp = metrics.get("method_params") or {}
    if isinstance(mp, Mapping) and "blocks" in mp:
        params["blocks"] = _param_value(mp["blocks"] or [])
    if isinstance(metrics.get("train"), Mapping):
        params.update(_flatten(metrics["train"], "train"))
    if isinstance(mp, Mapping):
        params.update(_flatten(mp, "method_params"))
    for k in ("device", "checkpoint"):
        if metrics.get(k) is not None:
            params[k] = _param_value(metrics[k])
    return {_name(k): v for k, v in params.items()}


def run_metrics(metrics: Mapping[str, Any], timestamp_ms: int) -> list:
    """Per-epoch history (step = epoch) and final values (at the last epoch's step, later timestamp)."""
    from mlflow.entities import Metric

    out: list = []
    seen: dict[tuple[str, int], float] = {}
    last_step = 0
    for i, row in enumerate(metrics.get("history") or []):
        if not isinstance(row, Mapping):
            continue
        step = int(row.get("epoch", i + 1))
        last_step = max(last_step, step)
        for k in HISTORY_KEYS:
            v = _number(row.get(k))
            if v is not None:
                out.append(Metric(k, v, timestamp_ms, step))
                seen[(k, step)] = v
    for k in FINAL_KEYS:
        v = _number(metrics.get(k))
        if v is None or seen.get((k, last_step)) == v:
            continue  # the final value is the last epoch's: already logged
        out.append(Metric(k, v, timestamp_ms + 1, last_step))
    # Scoring jobs: one score per candidate block set ("" / "(lp)" = linear probe).
    for key, v in (metrics.get("candidate_scores") or {}).items():
        v = _number(v)
        if v is not None:
            label = key.strip("()") or "lp"
            out.append(Metric(_name(f"score/{label}"), v, timestamp_ms, 0))
    return out


def _chunks(params: list, metrics: list, tags: list) -> Iterator[tuple[list, list, list]]:
    """Split into log_batch calls within MLflow's limits (each call is one transaction)."""
    params, metrics, tags = list(params), list(metrics), list(tags)
    while params or metrics or tags:
        p, params = params[:_MAX_PARAMS_TAGS], params[_MAX_PARAMS_TAGS:]
        t, tags = tags[:_MAX_PARAMS_TAGS], tags[_MAX_PARAMS_TAGS:]
        n = _MAX_BATCH - len(p) - len(t)
        m, metrics = metrics[:n], metrics[n:]
        yield p, m, t


def run_key(metrics: Mapping[str, Any], artifact: Path | str | None = None) -> str:
    """A run's identity: the SHA-256 of its metrics file (else of its metrics, as canonical JSON).

    Logged as the tag ``subtune.metrics_sha256``: a file that is already logged is not logged again.
    """
    if artifact is not None:
        h = hashlib.sha256()
        with open(artifact, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    text = json.dumps(metrics, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _existing_runs(client, exp_id: str, key: str) -> list:
    from mlflow.entities import ViewType

    return list(client.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                                   run_view_type=ViewType.ACTIVE_ONLY, max_results=100))


def log_run(
    metrics: Mapping[str, Any],
    *,
    tracking_uri: str | None = None,
    experiment: str = "subtune",
    tags: Mapping[str, str] | None = None,
    artifact: Path | str | None = None,
    run_name: str | None = None,
    retry_s: float | None = None,
    key: str | None = None,
) -> str:
    """Log one training job as one MLflow run; return its run id.

    Params: method, target, seed, blocks (comma-joined), ``train.*`` and
    ``method_params.*`` (flattened), device, checkpoint. Metrics: per-epoch
    ``val_acc``/``val_loss``/``train_loss``/``lr`` (step = epoch) and the final
    ``val_acc``, ``test_acc``, losses, ``trainable_params``, ``total_params``,
    ``wall_time_s``, ``train_size``. Tags: ``tags`` plus ``subtune.version``
    and ``subtune.metrics_sha256`` (``key``, default :func:`run_key`). The
    metrics JSON (``artifact``) is attached as an artifact.

    Idempotent: if the experiment already has a finished run with the same
    key, its id is returned and nothing is logged; unfinished runs with the
    key (an attempt that died half-way) are deleted first.

    Transient SQLite failures ("database is locked" and other operational
    errors) are retried with jittered backoff for up to ``retry_s`` seconds
    (after waiting for the store's file lock); a tracking server is waited
    for at most ``min(retry_s, 10 s)``; then :class:`TrackingError` is raised
    (the metrics file is kept).
    """
    return _log_run(metrics, tracking_uri=tracking_uri, experiment=experiment, tags=tags, artifact=artifact,
                    run_name=run_name, retry_s=retry_s, key=key)[0]


def _log_run(
    metrics: Mapping[str, Any],
    *,
    tracking_uri: str | None,
    experiment: str,
    tags: Mapping[str, str] | None,
    artifact: Path | str | None,
    run_name: str | None,
    retry_s: float | None,
    key: str | None,
) -> tuple[str, bool]:
    """:func:`log_run`, also saying whether the run was already logged (``(run_id, True)``)."""
    from mlflow.entities import Param, RunTag

    uri = resolve_uri(tracking_uri)
    if artifact is not None and not Path(artifact).is_file():
        raise SubtuneError(f"missing artifact file: {artifact}")
    budget = _budget(retry_s)
    retry = _Retrier(0)
    key = key or run_key(metrics, artifact)
    now_ms = int(time.time() * 1000)
    params = [Param(k, v) for k, v in run_params(metrics).items()]
    mets = run_metrics(metrics, now_ms)
    all_tags = {**{_name(k): str(v) for k, v in (tags or {}).items()}, "subtune.version": __version__,
                KEY_TAG: key}
    tag_list = [RunTag(k, v) for k, v in all_tags.items()]
    if run_name is None:
        parts = [str(metrics[k]) for k in ("method", "target") if metrics.get(k) is not None]
        if metrics.get("seed") is not None:
            parts.append(f"seed{metrics['seed']}")
        run_name = "-".join(parts) or None
    where = f" ({artifact})" if artifact is not None else ""
    run_id: str | None = None
    client = None
    try:
        with _http_limits(uri), _store_lock(uri, budget):
            if is_server(uri):
                check_server(uri, min(budget, SERVER_WAIT_S))
            retry = _Retrier(budget)
            client = retry(lambda: _client(uri), "open store")
            exp_id = retry(lambda: _get_or_create_experiment(client, uri, experiment), "experiment")
            for old in retry(lambda: _existing_runs(client, exp_id, key), "find run"):
                if old.info.status == "FINISHED":
                    return old.info.run_id, True
                retry(lambda old=old: client.delete_run(old.info.run_id), "delete unfinished run")
            run = retry(lambda: client.create_run(exp_id, start_time=now_ms, run_name=run_name), "create run")
            run_id = run.info.run_id
            for p, m, t in _chunks(params, mets, tag_list):
                retry(lambda p=p, m=m, t=t: client.log_batch(run_id, metrics=m, params=p, tags=t), "log batch")
            if artifact is not None:
                retry(lambda: client.log_artifact(run_id, str(artifact)), "log artifact")
            retry(lambda: client.set_terminated(run_id, "FINISHED"), "finish run")
        return run_id, False
    except Exception as exc:
        if run_id is not None and client is not None:
            with contextlib.suppress(Exception), _http_limits(uri):
                client.set_terminated(run_id, "FAILED")
        raise TrackingError(
            f"MLflow logging to {uri} failed after {retry.retries} retries ({_one_line(exc)}); "
            f"the metrics file is kept{where}"
        ) from exc


# ---------------------------------------------------------------- runs that could not be logged
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
    root = pending_dir(pending)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / key
    if dest.is_dir():
        return dest
    record = {
        "format": 1, "key": key, "tracking_uri": tracking_uri, "experiment": experiment,
        "tags": {str(k): str(v) for k, v in tags.items()}, "run_name": run_name, "metrics": metrics,
        "artifact": Path(artifact).name if artifact is not None else None,
        "source": str(Path(artifact).absolute()) if artifact is not None else None,
        "queued_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "error": error,
    }
    tmp = root / f".{key}.{os.getpid()}.part"
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
    """Exclusive non-blocking lock on ``path`` (False: another process holds it)."""
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
    removed without logging it again. Stops at the first failure (the server is
    probably still down): the rest stays queued. Returns (logged, still queued).
    """
    out = out or sys.stdout
    entries = pending_runs(pending)
    done = 0
    for n, entry in enumerate(entries):
        with _claim(entry / "run.json") as mine:
            if not mine or not (entry / "run.json").is_file():
                continue  # another `log --pending` has it
            rec = json.loads((entry / "run.json").read_text())
            artifact = entry / rec["artifact"] if rec.get("artifact") else None
            try:
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
