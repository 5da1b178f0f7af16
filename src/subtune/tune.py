"""Hyperparameters chosen on validation: a small grid per method, test never read.

A method's ``grid`` in the config is a flat mapping from a hyperparameter to
the values to try, for example ``{lr: [0.0003, 0.001, 0.003], rank: [4, 8]}``.
A key is either a training-config key (``lr``, ``weight_decay``, ``epochs``,
...) or one of the method's own parameters (``rank``, ``lp_lr``, ...); the two
sets do not overlap, and any other key is rejected naming the method and the
key. The grid's points are the Cartesian product of the values, keys in
sorted order, values in the order given.

:func:`tune` trains every point on the training split with the selection seed
and scores it by the final-epoch accuracy on the validation split (no early
stopping, no best epoch); the test split is not loaded. The best point wins;
ties go to the earliest point. The final runs (every seed) then train with
the chosen values and read the test split once.

This is the protocol the reviewers of the three seed papers asked for (the
SubTuning, SSF and SAN papers report a fixed recipe per method; the Surgical
paper picks the learning rate on validation). We depart from the Surgical
paper in one point: it picks the (lr, epoch) pair with the best validation
accuracy; we keep the epoch count fixed and pick the lr.
"""

from __future__ import annotations

import itertools
from dataclasses import fields
from typing import Any

from . import SubtuneError
from .train_config import TrainConfig

# the training keys a grid may vary (evaluation batch size changes no result)
TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig)) - {"eval_batch_size"}


def _method_defaults(method: str) -> dict[str, Any]:
    from .methods import method_class

    return method_class(method).defaults


def grid_points(method: str, grid: dict[str, list] | None) -> list[dict[str, dict[str, Any]]]:
    """The grid's points as ``[{"train": {...}, "params": {...}}, ...]`` (one empty point for no grid)."""
    grid = grid or {}
    defaults = _method_defaults(method)
    for key, values in grid.items():
        if key not in TRAIN_KEYS and key not in defaults:
            known = ", ".join(sorted(TRAIN_KEYS | set(defaults)))
            raise SubtuneError(f"methods.{method}.grid: {key!r} is neither a training key nor a parameter of "
                               f"{method!r} (allowed: {known})")
        if not isinstance(values, list) or not values:
            raise SubtuneError(f"methods.{method}.grid.{key}: give a non-empty list of values, not {values!r}")
    keys = sorted(grid)
    points = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        point: dict[str, dict[str, Any]] = {"train": {}, "params": {}}
        for k, v in zip(keys, combo):
            point["train" if k in TRAIN_KEYS else "params"][k] = v
        points.append(point)
    return points


def validate_grid(method: str, grid: dict[str, list] | None, train: dict[str, Any], params: dict[str, Any]) -> None:
    """Every point builds a valid training config and method (raises naming the method and the key)."""
    from .methods import get_method
    for p in grid_points(method, grid):
        TrainConfig.from_dict({**train, **p["train"]}, f"methods.{method}.grid")
        try:
            get_method(method, **{**params, **p["params"]})
        except SubtuneError as e:
            raise SubtuneError(f"methods.{method}.grid point {point_label(p)}: {e}") from None


def choose(results: list[dict[str, Any]]) -> int:
    """Index of the best validation accuracy; ties go to the earliest point."""
    if not results:
        raise SubtuneError("no grid point was trained")
    return max(range(len(results)), key=lambda i: (results[i]["val_acc"], -i))


def point_label(point: dict[str, dict[str, Any]]) -> str:
    items = {**point.get("train", {}), **point.get("params", {})}
    return ", ".join(f"{k}={v}" for k, v in sorted(items.items())) or "defaults"
