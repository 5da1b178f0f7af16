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
``mlflow server``; then no file lock is taken and MLflow's REST client does
its own retries.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from . import SubtuneError, __version__

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_RETRY_S = 60.0
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
        with _store_lock(uri, budget):
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


def log_run(
    metrics: Mapping[str, Any],
    *,
    tracking_uri: str | None = None,
    experiment: str = "subtune",
    tags: Mapping[str, str] | None = None,
    artifact: Path | str | None = None,
    run_name: str | None = None,
    retry_s: float | None = None,
) -> str:
    """Log one training job as one MLflow run; return its run id.

    Params: method, target, seed, blocks (comma-joined), ``train.*`` and
    ``method_params.*`` (flattened), device, checkpoint. Metrics: per-epoch
    ``val_acc``/``val_loss``/``train_loss``/``lr`` (step = epoch) and the final
    ``val_acc``, ``test_acc``, losses, ``trainable_params``, ``total_params``,
    ``wall_time_s``, ``train_size``. Tags: ``tags`` plus ``subtune.version``.
    The metrics JSON (``artifact``) is attached as an artifact.

    Transient SQLite failures ("database is locked" and other operational
    errors) are retried with jittered backoff for up to ``retry_s`` seconds
    (after waiting for the store's file lock); then :class:`TrackingError` is
    raised (the metrics file is kept).
    """
    from mlflow.entities import Param, RunTag

    uri = resolve_uri(tracking_uri)
    if artifact is not None and not Path(artifact).is_file():
        raise SubtuneError(f"missing artifact file: {artifact}")
    budget = _budget(retry_s)
    retry = _Retrier(0)
    now_ms = int(time.time() * 1000)
    params = [Param(k, v) for k, v in run_params(metrics).items()]
    mets = run_metrics(metrics, now_ms)
    all_tags = {**{_name(k): str(v) for k, v in (tags or {}).items()}, "subtune.version": __version__}
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
        with _store_lock(uri, budget):
            retry = _Retrier(budget)
            client = retry(lambda: _client(uri), "open store")
            exp_id = retry(lambda: _get_or_create_experiment(client, uri, experiment), "experiment")
            run = retry(lambda: client.create_run(exp_id, start_time=now_ms, run_name=run_name), "create run")
            run_id = run.info.run_id
            for p, m, t in _chunks(params, mets, tag_list):
                retry(lambda p=p, m=m, t=t: client.log_batch(run_id, metrics=m, params=p, tags=t), "log batch")
            if artifact is not None:
                retry(lambda: client.log_artifact(run_id, str(artifact)), "log artifact")
            retry(lambda: client.set_terminated(run_id, "FINISHED"), "finish run")
        return run_id
    except Exception as exc:
        if run_id is not None and client is not None:
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
        raise TrackingError(
            f"MLflow logging to {uri} failed after {retry.retries} retries ({_one_line(exc)}); "
            f"the metrics file is kept{where}"
        ) from exc
