"""Where runs go (the tracking URI), the SQLite store's file lock, and opening the store and the experiment."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

from .. import SubtuneError
from .retry import _budget, _one_line, _Retrier
from .server import SERVER_WAIT_S, _http_limits, check_server, is_server

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow's experiment kind ("Machine learning", not "GenAI apps & agents", whose experiments open on Traces).
# MLflow 3.17's UI takes the kind from its own GenAI / Machine learning switch and the URL's ``workflowType``
# instead: :func:`runs_url` is the address that opens the runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_BAD_NAME = re.compile(r"[^\w\-. /:]")


class TrackingError(SubtuneError):
    """MLflow logging failed (after retries); the metrics file on disk is intact."""


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
    """Exclusive lock on ``<db>.lock`` (``filelock``'s ``flock``) for a SQLite store (no-op otherwise).

    Serialises subtune's own writers. If the lock cannot be had in ``timeout_s``,
    or the filesystem does not support ``flock``, it goes on without the lock
    and relies on SQLite's busy timeout and our retries. (filelock's "soft"
    marker-file fallback is off: a marker left by a killed job would make every
    later job wait the whole ``timeout_s``.)
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    lock: FileLock | None = FileLock(f"{path}.lock", timeout=max(0.0, timeout_s), mode=0o666,
                                      fallback_to_soft=False)
    try:
        lock.acquire()
    except (OSError, NotImplementedError):  # filelock.Timeout is a TimeoutError; ENOLCK, ENOSYS: no locks here
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            with contextlib.suppress(OSError):
                lock.release()


@contextlib.contextmanager
def store_session(uri: str, budget: float) -> Iterator[_Retrier]:
    """One session with the store: HTTP limits, the SQLite file lock, a live server, then a retrier of ``budget`` s.

    Every writer opens the store the same way, so they share one lock discipline and one server check. The
    retrier is made only once the lock is held and the server answers: its deadline does not count the wait for
    either. If the server does not answer, the caller's own retrier (if any) is left as it was.
    """
    with _http_limits(uri), _store_lock(uri, budget):
        if is_server(uri):
            check_server(uri, min(budget, SERVER_WAIT_S))
        yield _Retrier(budget)


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
        if EXPERIMENT_KIND[0] not in (exp.tags or {}):  # one made before subtune set the kind; a user's choice stays
            client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        return client.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment),
                                        tags=dict([EXPERIMENT_KIND]))
    except MlflowException as exc:  # created by someone else in the meantime
        if "already exists" not in str(exc).lower() and getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


def runs_url(uri: str, experiment_id: str) -> str:
    """The UI's address of the experiment's runs: the server's own (``http://...``), else ``mlflow ui``'s default.

    The Runs tab, in the UI's "Machine learning" view (``workflowType``): an experiment's bare address opens on the
    GenAI view's Traces tab unless the browser last chose "Machine learning".
    """
    base = uri.rstrip("/") if is_server(uri) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def open_experiment(uri: str, experiment: str, retry: _Retrier) -> tuple[object, str]:
    """An ``MlflowClient`` on ``uri`` and the experiment's id (created if new), each step retried by ``retry``.

    Opening an empty SQLite database migrates it: call this in a :func:`store_session`.
    """
    client = retry(lambda: _client(uri), "open store")
    return client, retry(lambda: _get_or_create_experiment(client, uri, experiment), "experiment")


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
        with store_session(uri, budget) as retry:
            return open_experiment(uri, experiment, retry)[1]
    except SubtuneError:
        raise
    except Exception as exc:
        raise TrackingError(
            f"MLflow store {uri}: could not create experiment {experiment!r} ({_one_line(exc)})"
        ) from exc
