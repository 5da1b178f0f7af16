"""What several stages share: argument groups and types, input checks, MLflow tracking, the train+val union.

One place for each shared option, so that ``--seed`` or ``--track`` means the same in every stage that takes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .. import SubtuneError


# ---------------------------------------------------------------- argument types and groups
def json_arg(text: str) -> Any:
    """An argument given as JSON (the workflow passes config sections through ``params``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} ({exc})") from None


def tracking(sp: argparse.ArgumentParser) -> None:
    """``--track`` and ``--tag``: one MLflow run per job (:func:`track`)."""
    sp.add_argument("--track", action="store_true",
                    help="log an MLflow run ($MLFLOW_TRACKING_URI, default sqlite:///mlflow.db; "
                         "experiment $SUBTUNE_MLFLOW_EXPERIMENT)")  # fmt: skip
    sp.add_argument("--tag", action="append", help="MLflow tag KEY=VALUE (repeatable)")


def common_train(sp: argparse.ArgumentParser) -> None:
    """The options of every stage that trains: tracking, the training config, seed, CPU threads, device."""
    tracking(sp)
    sp.add_argument("--train", type=json_arg, default={}, help="training config as JSON")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sp.add_argument("--device", default=None, help="cuda, cpu or auto (default)")


def method_help() -> dict[str, str]:
    """Help texts read from the method registry (:mod:`subtune.methods`), the one definition of each method.

    Keys: ``methods`` (their names), ``params`` (each one's parameters), ``head`` (``--head``), ``selection`` and
    ``surgical`` (the methods that need a selection state or Surgical's group scores).
    """
    from ..methods import REGISTRY, method_order
    from ..methods.base import describe_parameters

    order = method_order(REGISTRY)
    own_head = ", ".join(m for m in order if REGISTRY[m].own_head)
    return {
        "methods": f"one of {', '.join(order)}",
        "params": "the method's parameters as JSON; each method's: " + describe_parameters().replace("\n", " | "),
        "head": (f"new: a fresh classifier; keep: the checkpoint's own (same label space), trained only by "
                 f"methods that train it themselves ({own_head})"),
        **{n: ", ".join(m for m in order if REGISTRY[m].needs == n) for n in ("selection", "surgical")},
    }  # fmt: skip


# ---------------------------------------------------------------- checks and helpers of the run functions
def existing(path: str) -> Path:
    """``path`` as a Path, or the one-line error naming it when it does not exist."""
    p = Path(path)
    if not p.exists():
        raise SubtuneError(f"missing input file: {p}")
    return p


def threads(n: int | None) -> None:
    """``--threads``: torch's CPU thread count (imports torch only when set)."""
    if n:
        import torch

        torch.set_num_threads(n)


def tags(pairs: list[str] | None) -> dict[str, str]:
    """``--tag KEY=VALUE`` options as a dict."""
    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise SubtuneError(f"--tag takes KEY=VALUE, not {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def track(a: argparse.Namespace, metrics: dict, out: str, run_tags: dict[str, str]) -> None:
    """Log one MLflow run for this job (after its metrics file is written: nothing is lost if it fails).

    Its tags: the experiment, the workflow invocation and its parent run (``$SUBTUNE_MLFLOW_PARENT``, from the
    Snakefile's ``onstart:``), the stage's ``run_tags`` and the ``--tag`` options (the rule's ``stage``, ...),
    which win. They name the run (:func:`subtune.track.run_name_for`).
    """
    if not getattr(a, "track", False):
        return
    import os
    import time

    from .. import timing
    from ..track import PARENT_ENV, PARENT_TAG, log_or_queue

    run_tags = {
        "experiment": os.environ.get("SUBTUNE_EXPERIMENT", ""),
        "invocation": os.environ.get("SUBTUNE_INVOCATION", ""),
        PARENT_TAG: os.environ.get(PARENT_ENV, ""),
        **run_tags,
        **tags(a.tag),
    }
    # A selection on a data-size sweep's size is told it as its directory (n<size>/; '' in the 1k regime).
    if run_tags.get("train_size"):
        run_tags["train_size"] = str(run_tags["train_size"]).strip("n/")
    # On failure: one WARNING line, the run queued for `log --pending`; the job still succeeds.
    t = time.perf_counter()
    run_id = log_or_queue(
        metrics,
        experiment=os.environ.get("SUBTUNE_MLFLOW_EXPERIMENT", "subtune"),
        tags={k: str(v) for k, v in run_tags.items() if v != ""},
        artifact=Path(out),
    )
    timing.add_mlflow(time.perf_counter() - t)
    if run_id is not None:
        print(f"logged MLflow run {run_id}")


def union_train_val(data: dict, digest: str | None = None) -> tuple[dict, str | None]:
    """``data`` with its train and val splits concatenated into ``train`` (train first, then val) and no val.

    VTAB-1k's train800val200: SubTuning, SSF and SAN choose hyperparameters on
    train800/val200 and then train (and SubTuning cross-validates) on the
    1,000. ``digest`` (the prepared file's SHA-256, the prefix cache's data
    key) gets a suffix: the union is other data than the file's train split.
    """
    import torch

    out = {k: v for k, v in data.items() if not k.startswith("val_")}
    for f in ("x", "y"):
        out[f"train_{f}"] = torch.cat([data[f"train_{f}"], data[f"val_{f}"]])
    return out, (f"{digest}+train+val" if digest else None)
