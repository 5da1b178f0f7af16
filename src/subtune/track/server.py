"""Tracking servers: is one up (probed before logging), and MLflow's HTTP retries cut short while logging to one."""

from __future__ import annotations

import contextlib
import os
import random
import time
from typing import Iterator

from .retry import until

SERVER_WAIT_S = 10.0  # longest wait for an unreachable tracking server (within retry_s)
# MLflow's HTTP client defaults (7 retries, backoff factor 2, 120 s timeout) hang minutes on a dead server.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def is_server(uri: str) -> bool:
    """True for a tracking server (``http://``/``https://``), whose availability we check before logging."""
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, wait_s: float = SERVER_WAIT_S) -> None:
    """Raise :class:`ConnectionError` if the tracking server at ``uri`` does not answer within ``wait_s``.

    Probes ``GET <uri>/health`` (short timeouts, jittered backoff). Any HTTP
    answer, even an error status, counts as reachable; only connection-level
    failures (refused, timed out, unknown host) count as unreachable.
    """
    deadline = time.monotonic() + max(0.0, wait_s)
    url = uri.rstrip("/") + "/health"

    def pause(n: int) -> float:  # 0.2 s doubling up to 2 s, times a jitter in [0.5, 1.5)
        return min(0.2 * 2 ** (n - 1), 2.0) * (0.5 + random.random())

    # _probe turns every connection-level error into its own ConnectionError: those (only) are retried
    until(deadline, pause, lambda exc: isinstance(exc, ConnectionError))(_probe, uri, url, min(5.0, max(1.0, wait_s)))


def _probe(uri: str, url: str, timeout_s: float) -> None:
    """One ``GET /health``: returns if the server answered at all, else raises :class:`ConnectionError`."""
    import ssl
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return  # it answered; TLS settings are MLflow's business (MLFLOW_TRACKING_INSECURE_TLS, ...)
        raise ConnectionError(f"tracking server {uri} unreachable ({reason})") from None


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
