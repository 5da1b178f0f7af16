"""Hyperparameters chosen on validation: a small grid per method, test never read.

A method's ``grid`` in the config is a flat mapping from a hyperparameter to
the values to try, for example ``{lr: [0.0003, 0.001, 0.003], rank: [4, 8]}``.
A key is either a training-config key (``lr``, ``weight_decay``, ``epochs``,
...) or one of the method's own parameters (``rank``, ``lp_lr``, ...); the two
sets do not overlap, and any other key is rejected naming the method and the
key. The grid's points are the Cartesian product of the values, keys in
sorted order, values in the order given.

:func:`tune_grid` (the ``tune`` stage) trains every point on the training
split with the selection seed and scores it by the final-epoch accuracy on the
validation split (no early stopping, no best epoch); the test split is not
loaded. The best point wins, compared by the number of correctly classified
validation images (:func:`better`); ties go to the earliest point. The final
runs (every seed) then train with the chosen values and read the test split
once.

A choice on the edge of its grid says only that the optimum may lie beyond
it. So when the chosen value of a numeric key is the smallest or the largest
value tried, the grid is extended one step past that edge (the same ratio or
difference as its two outermost values), scored the same way, and extended
again while the choice stays on the edge: at most ``tuning.extend`` steps per
key and direction (config; ``tune --extend``). A choice still on an edge
after that is recorded (``edge`` in the tune file) and flagged in the report.

This is the protocol the reviewers of the three seed papers asked for (the
SubTuning, SSF and SAN papers report a fixed recipe per method; the Surgical
paper picks the learning rate on validation). We depart from the Surgical
paper in one point: it picks the (lr, epoch) pair with the best validation
accuracy; we keep the epoch count fixed and pick the lr.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import fields
from typing import Any, Callable

from . import SubtuneError
from .train_config import TrainConfig

# the training keys a grid may vary (evaluation batch size changes no result)
TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig)) - {"eval_batch_size"}


def _method_defaults(method: str) -> dict[str, Any]:
    from .methods.base import method_class  # the method registry: tune sits above it, below methods.multilora

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


MULTILORA_GRID_PARAMS = ("alpha", "rank")


def multilora_grid_points(grid: dict[str, list] | None) -> list[dict[str, dict[str, Any]]]:
    """``multilora.grid`` as points ``[{"train": {...}, "params": {...}}, ...]`` (one empty point for no grid).

    Keys: training keys (``lr``, ``weight_decay``, ``epochs``, ...) and
    ``rank``/``alpha``, tried on both sides of the comparison; the points are
    the Cartesian product, keys sorted, values in the order given (as
    :func:`grid_points`).
    """
    grid = grid or {}
    for key, values in grid.items():
        if key not in TRAIN_KEYS and key not in MULTILORA_GRID_PARAMS:
            raise SubtuneError(f"multilora.grid: {key!r} is neither a training key nor one of "
                               f"{', '.join(MULTILORA_GRID_PARAMS)} (allowed: "
                               f"{', '.join(sorted(TRAIN_KEYS | set(MULTILORA_GRID_PARAMS)))})")
        if not isinstance(values, list) or not values:
            raise SubtuneError(f"multilora.grid.{key}: give a non-empty list of values, not {values!r}")
    keys = sorted(grid)
    return [{"train": {k: v for k, v in zip(keys, combo) if k in TRAIN_KEYS},
             "params": {k: v for k, v in zip(keys, combo) if k not in TRAIN_KEYS}}
            for combo in itertools.product(*(grid[k] for k in keys))]


def validate_grid(method: str, grid: dict[str, list] | None, train: dict[str, Any], params: dict[str, Any]) -> None:
    """Every point builds a valid training config and method (raises naming the method and the key)."""
    for p in grid_points(method, grid):
        check_point(method, p, train, params)


def check_point(method: str, point: dict[str, dict[str, Any]], train: dict[str, Any], params: dict[str, Any]) -> None:
    """One point builds a valid training config and method (raises naming the method and the key).

    The edge extension (:func:`tune_grid`) asks this of every value beyond the grid before training it.
    """
    from .methods.base import get_method

    TrainConfig.from_dict({**train, **point["train"]}, f"methods.{method}.grid")
    try:
        get_method(method, **{**params, **point["params"]})
    except SubtuneError as e:
        raise SubtuneError(f"methods.{method}.grid point {point_label(point)}: {e}") from None


# Two validation accuracies closer than this are the same number of images (a split has far fewer than 1e9).
ACC_TOL = 1e-9


def better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether result ``a`` scored strictly more validation images than ``b``.

    Compares counts of correct images (``round(val_acc * val_size)``) when both carry ``val_size``, else the
    accuracies with a tolerance far below one image: two points that classify the same number of images
    tie, whatever the last bits of their float accuracies.
    """
    if a.get("val_size") and b.get("val_size"):
        return round(a["val_acc"] * a["val_size"]) > round(b["val_acc"] * b["val_size"])
    return a["val_acc"] > b["val_acc"] + ACC_TOL


def choose(results: list[dict[str, Any]]) -> int:
    """Index of the best validation score (:func:`better`); ties go to the earliest point."""
    if not results:
        raise SubtuneError("no grid point was trained")
    best = 0
    for i in range(1, len(results)):
        if better(results[i], results[best]):
            best = i
    return best


def point_label(point: dict[str, dict[str, Any]]) -> str:
    items = {**point.get("train", {}), **point.get("params", {})}
    return ", ".join(f"{k}={v}" for k, v in sorted(items.items())) or "defaults"


# ---------------------------------------------------------------- edge extension
def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def extendable_keys(grid: dict[str, list] | None) -> list[str]:
    """The grid's keys that can be extended: numeric values, at least two distinct ones (sorted)."""
    return sorted(k for k, vs in (grid or {}).items() if all(_number(v) for v in vs) and len(set(vs)) >= 2)


def next_value(values: list, direction: str, integer: bool, positive: bool) -> int | float | None:
    """The value one step beyond the ``direction`` (``upper``/``lower``) edge of ``values`` (None: none valid).

    The step is the ratio of the two outermost values on that side (geometric) when both are positive,
    else their difference (arithmetic): a grid of 0.001, 0.003, 0.01 continues with 0.0333333 and
    0.000333333. ``integer`` keys round (and give None when the value would not change or falls below 1);
    ``positive`` keys (every grid value > 0, an lr) give None at 0 or below. Floats keep 6 significant
    digits, so that labels stay readable and the JSON stays stable.
    """
    vs = sorted(set(values))
    outer, inner = (vs[-1], vs[-2]) if direction == "upper" else (vs[0], vs[1])
    new = outer * (outer / inner) if outer > 0 and inner > 0 else outer + (outer - inner)
    if integer:
        new = int(math.floor(new + 0.5))
        return None if new == outer or new < 1 else new
    new = float(f"{new:.6g}")
    return None if new == outer or (positive and new <= 0) or not math.isfinite(new) else new


def _values(results: list[dict[str, Any]], key: str) -> list:
    """The distinct values of ``key`` over the points tried (sorted when numeric, else in order)."""
    vals = list(dict.fromkeys(_value(r, key) for r in results))
    return sorted(vals) if all(_number(v) for v in vals) else vals


def _value(point: dict[str, Any], key: str) -> Any:
    return {**point.get("train", {}), **point.get("params", {})}.get(key)


def edge_of(results: list[dict[str, Any]], best: int, key: str) -> str | None:
    """``upper``/``lower`` when the chosen point's ``key`` is the largest/smallest value tried, else None."""
    vals = _values(results, key)
    if len(vals) < 2 or not all(_number(v) for v in vals):
        return None
    v = _value(results[best], key)
    return "upper" if v == vals[-1] else "lower" if v == vals[0] else None


def _with_value(point: dict[str, Any], key: str, value: Any) -> dict[str, dict[str, Any]]:
    section = "train" if key in TRAIN_KEYS else "params"
    new = {"train": dict(point.get("train", {})), "params": dict(point.get("params", {}))}
    new[section][key] = value
    return new


def tune_grid(method: str, grid: dict[str, list] | None, train: dict[str, Any], params: dict[str, Any],
              score: Callable[[dict[str, dict[str, Any]]], dict[str, Any]], extend: int = 0) -> dict[str, Any]:
    """Score the grid, then extend it past an edge the choice sits on; choose by validation (:func:`choose`).

    ``score(point)`` trains one point and returns its validation metrics (``val_acc``, ideally
    ``val_size``); it is called once per point, in the order of ``results``. When the chosen value of
    an :func:`extendable_keys` key is the smallest or largest value tried, the point one step beyond
    that edge (:func:`next_value`), the other keys at the chosen point's values, is checked
    (:func:`check_point`: a refused value ends that direction) and scored; this repeats while the
    choice stays on that edge, at most ``extend`` steps per key and direction, and passes over the keys
    repeat while any point is added (a new choice may put another key on its edge).

    Returns ``results`` (every point: ``train``, ``params``, ``label``, ``source`` = grid | extension,
    and the scorer's metrics), ``chosen_index``, ``explored`` (key -> the values tried), ``edge`` (key ->
    upper | lower where the final choice is still on an edge of the values tried; None when no key is:
    a flagged edge means the optimum may lie outside what was tried) and ``extension`` (key -> direction
    -> steps taken and why the extension stopped: peak, budget, or the refusal).
    """
    if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0:
        raise SubtuneError(f"tune --extend: give an integer >= 0, not {extend!r}")
    results: list[dict[str, Any]] = []

    def run(point: dict[str, dict[str, Any]], source: str) -> None:
        metrics = score(point)
        results.append({"train": dict(point["train"]), "params": dict(point["params"]), "label": point_label(point),
                        "source": source, **metrics})

    for p in grid_points(method, grid):
        run(p, "grid")
    best = choose(results)
    keys = extendable_keys(grid)
    kinds = {k: (all(isinstance(v, int) for v in grid[k]), all(v > 0 for v in grid[k])) for k in keys}
    log: dict[str, dict[str, dict[str, Any]]] = {}
    added = extend > 0
    while added:
        added = False
        for k in keys:
            d = edge_of(results, best, k)
            entry = log.setdefault(k, {}).setdefault(d, {"steps": 0, "stop": None}) if d else None
            while d is not None and entry["stop"] not in ("refused", "no value"):
                if entry["steps"] >= extend:
                    entry["stop"] = "budget"
                    break
                new = next_value(_values(results, k), d, *kinds[k])
                if new is None:
                    entry["stop"], entry["detail"] = "no value", f"no valid {k} beyond {_value(results[best], k)}"
                    break
                point = _with_value(results[best], k, new)
                try:
                    check_point(method, point, train, params)
                except SubtuneError as e:
                    entry["stop"], entry["detail"] = "refused", str(e)
                    break
                run(point, "extension")
                entry["steps"] += 1
                added = True
                best = choose(results)
                if edge_of(results, best, k) != d:
                    entry["stop"] = "peak"
                    break
    edge = {k: e for k in sorted(grid or {}) if (e := edge_of(results, best, k))}
    return {"results": results, "chosen_index": best,
            "explored": {k: _values(results, k) for k in sorted(grid or {})},
            "edge": edge or None, "extension": log}
