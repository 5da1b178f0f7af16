"""Reading the inputs of the tables: run metrics, selection states, score shards, tune results, Multi-LoRA results.

Every reader checks its files before anything is computed and names the culprit in a one-line
:class:`~subtune.SubtuneError` (a missing key, a key of the wrong type, an accuracy outside [0, 1]), so that a
bad file fails the report stage before it writes half its outputs. Accuracies stay fractions here; the tables
turn them into percentages.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .. import SubtuneError
from ..io import read_json
from .format import LP_LABEL, PathLike, edge_mark

RUN_COLUMNS = ["file", "method", "target", "seed", "test_acc", "val_acc", "trainable_params",
               "total_params", "train_size", "wall_time_s", "blocks", "group", "tuned", "grid", "extended",
               "train_data", "best_epoch"]


# ---------------------------------------------------------------- JSON objects and their keys
def as_list(files: PathLike | Sequence[PathLike]) -> list[Path]:
    """One path or several, as a list of paths."""
    if isinstance(files, (str, os.PathLike)):
        return [Path(files)]
    return [Path(f) for f in files]


def load_json(path: Path) -> dict[str, Any]:
    """A JSON object (a file holding anything else is refused)."""
    d = read_json(path)
    if not isinstance(d, dict):
        raise SubtuneError(f"{path}: expected a JSON object")
    return d


def need(d: dict, key: str, path: Path, kind: type | tuple = (int, float)) -> Any:
    """``d[key]``, present and of type ``kind`` (a bool is not a number)."""
    if key not in d or d[key] is None:
        raise SubtuneError(f"{path}: missing key {key!r}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, kind):
        raise SubtuneError(f"{path}: key {key!r} has type {type(v).__name__}")
    return v


def frac(d: dict, key: str, path: Path, required: bool = True) -> float:
    """An accuracy fraction in [0, 1] (NaN when absent and not ``required``)."""
    if not required and d.get(key) is None:
        return math.nan
    v = float(need(d, key, path))
    if not 0.0 <= v <= 1.0:
        raise SubtuneError(f"{path}: {key} = {v} is not an accuracy fraction in [0, 1]")
    return v


# ---------------------------------------------------------------- final runs
def load_runs(run_files: Sequence[PathLike], *, need_train_size: bool = False) -> pd.DataFrame:
    """One row per final-training metrics file (accuracies as fractions); checks every file first."""
    rows = []
    for f in as_list(run_files):
        d = load_json(f)
        mp = d.get("method_params") or {}
        if not isinstance(mp, dict):
            raise SubtuneError(f"{f}: method_params must be an object")
        train_data = d.get("train_data") or "train"
        if train_data not in ("train", "train+val"):
            raise SubtuneError(f"{f}: train_data is {train_data!r} (train or train+val)")
        best = d.get("best_epoch")
        if best is not None and (isinstance(best, bool) or not isinstance(best, int)):
            raise SubtuneError(f"{f}: key 'best_epoch' has type {type(best).__name__}")
        row = {
            "file": str(f),
            "method": need(d, "method", f, str),
            "target": str(need(d, "target", f, str)),
            "seed": int(need(d, "seed", f, int)),
            "test_acc": frac(d, "test_acc", f),
            # trained on the validation split too: its accuracy there is not a validation accuracy
            "val_acc": math.nan if train_data == "train+val" else frac(d, "val_acc", f, required=False),
            "trainable_params": float(need(d, "trainable_params", f)),
            "total_params": float(d["total_params"]) if isinstance(d.get("total_params"), (int, float)) else math.nan,
            "train_size": math.nan,
            "wall_time_s": float(d["wall_time_s"]) if isinstance(d.get("wall_time_s"), (int, float)) else math.nan,
            "blocks": "+".join(mp["blocks"]) if isinstance(mp.get("blocks"), list) else None,
            "group": int(mp["group"]) if isinstance(mp.get("group"), int) else None,
            "tuned": _tuned_label(d.get("tuned")),
            "grid": _grid_label(d.get("tuned")),
            "extended": _extended_label(d.get("tuned")),
            "train_data": train_data,
            "best_epoch": math.nan if best is None else best,
        }
        if need_train_size:
            row["train_size"] = int(need(d, "train_size", f, int))
        elif isinstance(d.get("train_size"), int):
            row["train_size"] = d["train_size"]
        rows.append(row)
    if not rows:
        raise SubtuneError("no run files given")
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    keys = ["method", "target", "seed"] + (["train_size"] if need_train_size else [])
    dup = df[df.duplicated(keys, keep=False)]
    if len(dup):
        raise SubtuneError(f"two run files for the same {'/'.join(keys)}: {', '.join(dup['file'][:2])}")
    return df


def _tuned_label(t: Any) -> str | None:
    """The values chosen on validation, ``lr=0.001, rank=8`` (None when the run had no grid); a value still on an
    edge of the values tried is flagged, ``lr=0.03 ↑edge`` (:func:`~subtune.report.format.edge_mark`)."""
    if not isinstance(t, dict):
        return None
    items, edge = {**(t.get("train") or {}), **(t.get("params") or {})}, t.get("edge") or {}
    return ", ".join(f"{k}={v}{edge_mark(edge.get(k))}" for k, v in sorted(items.items())) or "defaults"


def _grid_label(t: Any) -> str | None:
    """The grid a run's values were chosen from, ``lr ∈ {0.001, 0.01}; rank ∈ {4, 8}`` (None without a grid)."""
    if not isinstance(t, dict):
        return None
    grid = t.get("grid") or {}
    return "; ".join(f"{k} ∈ {{{', '.join(str(v) for v in vals)}}}" for k, vals in sorted(grid.items())) or None


def _extended_label(t: Any) -> str | None:
    """The values tried beyond the configured grid (``tuning.extend``), ``lr: 0.00333, 0.0111`` (None: none)."""
    if not isinstance(t, dict):
        return None
    grid, explored = t.get("grid") or {}, t.get("explored") or {}
    extra = {k: [v for v in vals if v not in (grid.get(k) or [])] for k, vals in explored.items()}
    return "; ".join(f"{k}: {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vals)}"
                     for k, vals in sorted(extra.items()) if vals) or None


# ---------------------------------------------------------------- selection states and score shards
def target_seed(d: dict, path: Path) -> tuple[str, int | None]:
    """Target and seed of a state file: its own keys, else the path (.../<target>/seed<S>/<file>)."""
    target, seed = d.get("target"), d.get("seed")
    if target is None or seed is None:
        m = re.fullmatch(r"seed(\d+)", path.parent.name)
        if seed is None and m:
            seed = int(m.group(1))
        if target is None:
            target = path.parent.parent.name if m else path.parent.name
    return str(target), (int(seed) if seed is not None else None)


def load_state(path: Path) -> dict:
    """A selection state file (``selected`` and ``rounds`` lists)."""
    d = load_json(path)
    for k in ("selected", "rounds"):
        if not isinstance(d.get(k), list):
            raise SubtuneError(f"{path}: missing key {k!r} (not a selection state file)")
    return d


def load_scores(score_files: PathLike | Sequence[PathLike],
                kinds: tuple[str, ...]) -> tuple[dict, list[dict], list[str]]:
    """Merge score shards: (first file's header, results, blocks); one target and seed, no duplicate keys."""
    files = as_list(score_files)
    if not files:
        raise SubtuneError("no score files given")
    head: dict | None = None
    results: dict[str, dict] = {}
    for f in files:
        d = load_json(f)
        kind = d.get("kind")
        if kind not in kinds:
            raise SubtuneError(f"{f}: score file of kind {kind!r}, expected {' or '.join(kinds)}")
        if kind == "greedy" and d.get("round") != 1:
            raise SubtuneError(f"{f}: greedy round {d.get('round')} scores (the profile is round 1)")
        if not isinstance(d.get("results"), list) or not isinstance(d.get("blocks"), list):
            raise SubtuneError(f"{f}: missing key 'results' or 'blocks'")
        if head is None:
            head = {**d, "file": str(f)}
        elif (d.get("target"), d.get("seed")) != (head.get("target"), head.get("seed")):
            raise SubtuneError(f"{f}: target/seed {d.get('target')}/{d.get('seed')} differ from "
                               f"{head['file']} ({head.get('target')}/{head.get('seed')})")
        for i, r in enumerate(d["results"]):
            if not isinstance(r, dict) or "key" not in r or not isinstance(r.get("score"), (int, float)):
                raise SubtuneError(f"{f}: results[{i}] needs 'key' and a numeric 'score'")
            if r["key"] in results:
                raise SubtuneError(f"{f}: block set {r['key'] or LP_LABEL!r} scored twice")
            results[r["key"]] = r
    assert head is not None
    if not results:
        raise SubtuneError(f"{files[0]}: no results")
    return head, list(results.values()), list(head["blocks"])


def members(r: dict) -> list[str]:
    """The blocks of a score result (its ``blocks`` list, else its ``+``-joined key; [] for LP)."""
    b = r.get("blocks")
    return list(b) if isinstance(b, list) else ([x for x in r["key"].split("+")] if r["key"] else [])


def load_profiles(score_files: Sequence[PathLike]) -> list[dict[str, Any]]:
    """Round-1 score files (every shard of every target and selection seed) as profiles, one per target and seed:
    {target, seed, blocks (network order), scores (block -> val acc fraction, single blocks only), files}.

    Shards are grouped by directory (``select/<target>/seed<S>/``); :func:`load_scores` checks them (kind,
    round 1, one target and seed, no duplicate block set). Candidates a selection budget
    (``selection.budget``) stopped early (results with ``dropped_at``) are left out, in ``stopped``: a rung's
    score is not comparable with full-schedule scores (:func:`subtune.select.decide` never chooses them
    either), so such a profile lacks those blocks and :func:`subtune.claims.complete` calls it unusable.
    """
    groups: dict[Path, list[Path]] = {}
    for f in score_files:
        groups.setdefault(Path(f).parent, []).append(Path(f))
    out = []
    for files in groups.values():
        head, results, blocks = load_scores(files, ("greedy", "profile"))
        target, seed = target_seed(head, files[0])
        if seed is None:
            raise SubtuneError(f"{files[0]}: no seed (neither a 'seed' key nor a seed<S> directory)")
        scores, stopped = {}, []
        for r in results:
            mem = members(r)
            if len(mem) == 1:
                if mem[0] not in blocks:
                    raise SubtuneError(f"{files[0]}: block {mem[0]!r} not among the file's blocks")
                if "dropped_at" in r:
                    stopped.append(mem[0])
                else:
                    scores[mem[0]] = float(r["score"])
        out.append({"target": target, "seed": int(seed), "blocks": list(blocks), "scores": scores,
                    "stopped": stopped, "files": [str(f) for f in files]})
    keys = [(p["target"], p["seed"]) for p in out]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise SubtuneError(f"two fine-tuning profiles of target {dup[0]}, seed {dup[1]}")
    return out


# ---------------------------------------------------------------- tune and Multi-LoRA results
def load_tune(path: Path) -> dict[str, Any]:
    """A ``tune`` result file: method, target, a non-empty ``results`` list and its ``chosen_index``."""
    d = load_json(path)
    need(d, "method", path, str)
    need(d, "target", path, str)
    res = d.get("results")
    if not isinstance(res, list) or not res:
        raise SubtuneError(f"{path}: not a tune file (no 'results' list)")
    best = need(d, "chosen_index", path, int)
    if not 0 <= best < len(res):
        raise SubtuneError(f"{path}: chosen_index {best} is outside its {len(res)} results")
    for i, r in enumerate(res):
        if not isinstance(r, dict):
            raise SubtuneError(f"{path}: results[{i}] is not an object")
        frac(r, "val_acc", path)
    return d


def load_multilora(files: Sequence[PathLike]) -> pd.DataFrame:
    """``multilora --compare`` results, one row per kind (multilora | separate_lora), seed and task:
    test_acc (fraction) and params_trained (the kind's, all tasks).

    Both kinds of a file must have the same tasks, and every file the first file's tasks: the claims table
    compares means over tasks, which mean nothing over different tasks (a SubtuneError names the file).
    """
    rows, first = [], None
    for f in [Path(x) for x in files]:
        d = load_json(f)
        seed = int(need(d, "seed", f, int))
        for kind in ("multilora", "separate_lora"):
            r = d.get(kind)
            if not isinstance(r, dict) or not isinstance(r.get("per_task"), dict) or not r["per_task"]:
                raise SubtuneError(f"{f}: no {kind!r} result (run `multilora --compare`)")
        ml, sep = sorted(map(str, d["multilora"]["per_task"])), sorted(map(str, d["separate_lora"]["per_task"]))
        if ml != sep:
            raise SubtuneError(f"{f}: multilora and separate_lora have different tasks ({', '.join(ml)} vs "
                               f"{', '.join(sep)})")
        if first is not None and ml != first[1]:
            raise SubtuneError(f"{f}: tasks {', '.join(ml)} differ from {first[0]}'s ({', '.join(first[1])})")
        first = first or (f, ml)
        for kind in ("multilora", "separate_lora"):
            r = d[kind]
            for t, v in r["per_task"].items():
                rows.append({"kind": kind, "seed": seed, "task": str(t), "test_acc": frac(v, "test_acc", f),
                             "params_trained": float(need(r, "params_trained", f))})
    df = pd.DataFrame(rows, columns=["kind", "seed", "task", "test_acc", "params_trained"])
    dup = df[df.duplicated(["kind", "seed", "task"], keep=False)]
    if len(dup):
        raise SubtuneError(f"two Multi-LoRA results for seed {int(dup['seed'].iloc[0])}")
    return df
