"""Where a job's time goes: fitting and evaluation against everything else.

:func:`counted` marks the functions that do the job's real work (training loops, evaluation); nested calls count
once. ``python -m subtune`` ends every heavy stage's log with one line (:func:`summary`)::

    subtune train: 1.21 s, of which fit and evaluation 0.42 s, MLflow 0.18 s

which ``bench/pipeline.py`` reads to split each job's wall time (Snakemake's benchmark file) into work and
overhead. Plain ``time.perf_counter`` bookkeeping: nothing to gain from a profiler here.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)
_state = {"depth": 0, "work": 0.0, "mlflow": 0.0}
START = time.perf_counter()  # reset by the CLI when a job starts (a warm server's child inherits this module)


def reset() -> None:
    global START
    START = time.perf_counter()
    _state.update(depth=0, work=0.0, mlflow=0.0)


def counted(fn: F) -> F:
    """Count ``fn``'s time as fitting/evaluation (outermost call only)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _state["depth"]:
            return fn(*args, **kwargs)
        _state["depth"] = 1
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _state["work"] += time.perf_counter() - t
            _state["depth"] = 0

    return wrapper  # type: ignore[return-value]


def add_mlflow(seconds: float) -> None:
    _state["mlflow"] += seconds


def summary(stage: str) -> str:
    """The job's closing line: seconds since start, of which fitting/evaluation and MLflow logging."""
    total = time.perf_counter() - START
    return (f"subtune {stage}: {total:.2f} s, of which fit and evaluation {_state['work']:.2f} s, "
            f"MLflow {_state['mlflow']:.2f} s")
