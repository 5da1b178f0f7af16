"""Which tracking errors are worth retrying, and retrying them within one time budget (tenacity does the looping)."""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any, Callable, TypeVar

from .. import SubtuneError

DEFAULT_RETRY_S = 60.0

T = TypeVar("T")

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


def until(deadline: float, pause: Callable[[int], float], retry_on: Callable[[BaseException], bool],
          before_sleep: Callable[[Any], None] | None = None):
    """A :class:`tenacity.Retrying` that retries errors ``retry_on`` accepts until ``deadline`` (``time.monotonic``).

    ``pause(n)`` is the wait after the ``n``-th failed attempt, cut short so that no wait ends past the deadline;
    once the deadline has passed the last error is raised as it was (not wrapped in tenacity's ``RetryError``).
    One deadline can span several calls (a whole job's logging shares one budget).
    """
    import tenacity  # imports asyncio: only when something is logged

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry_on),
        stop=lambda state: deadline - time.monotonic() <= 0,
        wait=lambda state: max(0.0, min(deadline - time.monotonic(), pause(state.attempt_number))),
        before_sleep=before_sleep,
        reraise=True,
    )


class _Retrier:
    """Call functions with jittered exponential backoff on transient errors, within one deadline.

    The backoff is "full jitter": the wait after a call's ``n``-th failure is uniform in
    ``[0, min(cap_s, base_s * 2 ** (n - 1))]``; each retry prints one line to stderr.
    """

    def __init__(self, budget_s: float, base_s: float = 0.05, cap_s: float = 2.0):
        self.deadline = time.monotonic() + budget_s
        self.base_s, self.cap_s = base_s, cap_s
        self.retries = 0

    def __call__(self, fn: Callable[[], T], what: str) -> T:
        def pause(n: int) -> float:
            return random.uniform(0, min(self.cap_s, self.base_s * 2 ** (n - 1)))

        def say(state) -> None:
            self.retries += 1
            print(f"subtune track: {what}: {_one_line(state.outcome.exception())}; retry {state.attempt_number} "
                  f"in {state.next_action.sleep:.2f}s", file=sys.stderr)

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, Exception) and _is_transient(exc)

        return until(self.deadline, pause, transient, say)(fn)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _budget(retry_s: float | None) -> float:
    """The retry budget in seconds: ``retry_s``, else ``$SUBTUNE_MLFLOW_RETRY_S``, else 60."""
    if retry_s is not None:
        return float(retry_s)
    env = os.environ.get("SUBTUNE_MLFLOW_RETRY_S")
    try:
        return float(env) if env else DEFAULT_RETRY_S
    except ValueError:
        raise SubtuneError(f"SUBTUNE_MLFLOW_RETRY_S must be a number of seconds, not {env!r}") from None
