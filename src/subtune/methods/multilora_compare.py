"""Multi-LoRA against K separate LoRA runs on equal terms: the baseline's runs and the comparison.

:func:`compare` trains both sides in one job with the same backbone, data, training config, rank and grid
(:func:`subtune.methods.multilora.train_multilora` for Multi-LoRA, :func:`train_separate_lora` for the
baseline); with ``tuned`` (the comparison on the tuning seed) each side trains only at the point it chose
there, as every method of the main table does. Kept apart from :mod:`subtune.methods.multilora` (the model
and its training loop) so that each module stays readable.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn as nn

from .. import SubtuneError
from .multilora import Task, _check_cfgs, _check_tasks, _counting_steps, _mean, _point_cfg, train_multilora


def train_separate_lora(backbone: nn.Module, tasks: Sequence[Task], pre, cfg, seed: int = 0, rank: int = 8,
                        alpha: float = 8, target: list[str] | None = None, device=None,
                        progress: bool | None = False, grid: dict[str, list] | None = None,
                        task_grids: dict[str, dict[str, list]] | None = None) -> dict[str, Any]:
    """The baseline: K separate peft-LoRA runs (method ``lora``, ``fit``), each choosing its own grid point.

    Every task trains at every grid point from its own copy of ``backbone``
    and keeps the point with the best final-epoch validation accuracy on its
    own validation split (ties: the earliest); only that model reads the
    task's test split. ``optimizer_steps`` are counted (every optimizer step
    taken inside the task's chosen ``fit``). ``task_grids``: a task's own grid
    in place of ``grid`` (the point it chose on the tuning seed: :func:`compare`'s ``tuned``).
    """
    from ..train import evaluate, fit, pick_device
    from ..tune import choose, multilora_grid_points, point_label
    from .base import get_method

    _check_tasks(tasks, cfg)
    grids = {t.name: (task_grids or {}).get(t.name, grid) for t in tasks}
    task_points = {n: multilora_grid_points(g) for n, g in grids.items()}
    task_cfgs = {n: [_point_cfg(cfg, p) for p in pts] for n, pts in task_points.items()}  # all checked first
    for n, cfgs in task_cfgs.items():
        _check_cfgs(cfgs, grids[n])  # the baseline refuses what Multi-LoRA refuses: both sides train alike
    dev = pick_device(device if isinstance(device, str) or device is None else str(device))
    per_task: dict[str, dict[str, Any]] = {}
    grid_results: dict[str, list[dict[str, Any]]] = {}
    adapter = heads = 0
    wall = wall_chosen = 0.0
    for i, task in enumerate(tasks):
        points, cfgs = task_points[task.name], task_cfgs[task.name]
        results: list[dict[str, Any]] = []
        best_model = best_tr = None
        for point, pcfg in zip(points, cfgs):
            model = copy.deepcopy(backbone)
            with torch.random.fork_rng():
                torch.manual_seed(seed + i)
                model.reset_classifier(task.num_classes)
                method = get_method("lora", rank=int(point["params"].get("rank", rank)),
                                    alpha=point["params"].get("alpha", alpha), target=target)
                model = method.wrap(model)
            tr = method.trainable(model)
            label = point_label(point)
            with _counting_steps() as n:
                m = fit(model, tr, pre, task.train, {"val": task.val}, pcfg, seed, device, progress=progress,
                        desc=f"lora {task.name} [{label}]")
            results.append({**point, "label": label, "val_acc": m["val_acc"], "val_loss": m["val_loss"],
                            "optimizer_steps": n[0], "wall_time_s": m["wall_time_s"],
                            "trainable_params": m["trainable_params"], "history": m["history"]})
            if best_model is None or m["val_acc"] > max(x["val_acc"] for x in results[:-1]):
                best_model, best_tr = model, tr
            del model
        best = choose(results)
        r = results[best]
        per_task[task.name] = {"val_acc": r["val_acc"], "val_loss": r["val_loss"],
                               "optimizer_steps": r["optimizer_steps"], "chosen": r["label"],
                               "chosen_index": best, "train": cfgs[best].to_dict(), "params": points[best]["params"]}
        if task.test is not None:  # read once, by the chosen model only
            e = evaluate(best_model, pre, *task.test, cfg.eval_batch_size, dev)
            per_task[task.name].update(test_acc=e["acc"], test_loss=e["loss"])
        head = sum(p.numel() for n_, p in best_tr.params if ".modules_to_save." in n_)
        heads += head
        adapter += r["trainable_params"] - head
        wall += sum(x["wall_time_s"] for x in results)
        wall_chosen += r["wall_time_s"]
        grid_results[task.name] = results
        del best_model, best_tr
    has_test = all("test_acc" in v for v in per_task.values())
    return {"method": "separate_lora", "rank": rank, "alpha": alpha, "per_task": per_task,
            "mean_val_acc": _mean(v["val_acc"] for v in per_task.values()),
            **({"mean_test_acc": _mean(v["test_acc"] for v in per_task.values())} if has_test else {}),
            "optimizer_steps": {t: v["optimizer_steps"] for t, v in per_task.items()}, "grid_results": grid_results,
            "heads": heads, "adapter_trained": adapter, "adapter_stored": adapter,
            "params_trained": adapter + heads, "params_stored": adapter + heads,
            "wall_time_s": wall, "wall_time_chosen_s": wall_chosen}


def _point_grid(point: dict[str, Any], keys) -> dict[str, list]:
    """A chosen grid point as a grid of one value per key (``keys``: the tuning grid's)."""
    values = {**point.get("train", {}), **point.get("params", {})}
    return {k: [values[k]] for k in keys if k in values}


def check_tuned(tuned: Any, tasks: Sequence[Task], grid: dict[str, list] | None, compared: bool,
                where: str = "--tuned") -> None:
    """A tuning seed's result fits this job: the same tasks and grid, and both sides when ``compared``."""
    if not isinstance(tuned, dict) or not isinstance((tuned.get("multilora") or {}).get("chosen"), dict):
        raise SubtuneError(f"{where}: not a multilora result (no multilora.chosen)")
    if compared and not isinstance((tuned.get("separate_lora") or {}).get("per_task"), dict):
        raise SubtuneError(f"{where}: not a multilora --compare result (no separate_lora)")
    names = [t.name for t in tasks]
    if list(tuned.get("tasks") or []) != names:
        raise SubtuneError(f"{where}: the tuned comparison's tasks {tuned.get('tasks')} differ from {names}")
    if dict(tuned.get("grid") or {}) != dict(grid or {}):
        raise SubtuneError(f"{where}: tuned on the grid {tuned.get('grid')}, not on this job's {dict(grid or {})}")


def tuned_grids(tuned: dict[str, Any], tasks: Sequence[Task]) -> tuple[dict[str, list], dict[str, dict[str, list]]]:
    """From a :func:`compare` result on the tuning seed: Multi-LoRA's chosen point and each separate LoRA
    run's own chosen point, as one-point grids (the main table's protocol: tune on one seed, train the rest at
    the chosen values)."""
    keys = list((tuned.get("grid") or {}))
    ml = _point_grid(tuned["multilora"]["chosen"], keys)
    sep = {n: _point_grid({"train": {k: v for k, v in tuned["separate_lora"]["per_task"][n]["train"].items()
                                     if k in keys},
                           "params": tuned["separate_lora"]["per_task"][n].get("params") or {}}, keys)
           for n in (t.name for t in tasks)}
    return ml, sep


def tuned_grid(tuned: dict[str, Any]) -> dict[str, list]:
    """Multi-LoRA's chosen point on the tuning seed as a one-point grid (Multi-LoRA alone: the ablations)."""
    return _point_grid(tuned["multilora"]["chosen"], list(tuned.get("grid") or {}))


def compare(backbone: nn.Module, tasks: Sequence[Task], pre, cfg, seed: int = 0, rank: int = 8, alpha: float = 8,
            target: list[str] | None = None, device=None, progress: bool | None = False,
            grid: dict[str, list] | None = None, tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Multi-LoRA against K separate LoRA runs: same backbone, data, training config, rank and grid.

    ``tuned``: the comparison's result on the tuning seed; then each side trains only at the point it chose
    there (Multi-LoRA its point, each separate run its own), as every method of the main table does.
    """
    if tuned:
        check_tuned(tuned, tasks, grid, compared=True)
    ml_grid, sep_grids = tuned_grids(tuned, tasks) if tuned else (grid, None)
    sep = train_separate_lora(backbone, tasks, pre, cfg, seed, rank, alpha, target, device, progress,
                              grid if not tuned else None, sep_grids)
    ml = train_multilora(backbone, tasks, pre, cfg, seed, rank, alpha, target, device, progress, ml_grid)
    ml.pop("model")
    return {"multilora": ml, "separate_lora": sep, "tasks": [t.name for t in tasks], "grid": dict(grid or {}),
            **({"tuned_on_seed": int(tuned["seed"])} if tuned and "seed" in tuned else {})}
