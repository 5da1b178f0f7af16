"""Multi-LoRA against K separate LoRA runs: accuracy per task, parameters, and its ablations."""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Sequence

import pandas as pd

from ... import SubtuneError
from ..format import PathLike, fmt_params, md_table, sample_std, write_csv, write_text
from ..load import as_list, frac, load_json, need
from ..published import attach_published, load_references
from ..registry import add_outputs, add_references, table

# the Multi-LoRA table's rows (`multilora --compare` results), in table order: not single-task methods
MULTILORA_KINDS = {"separate_lora": "separate LoRA", "multilora": "Multi-LoRA"}


def _ml_number(d: dict, key: str, path: Path) -> float:
    """A non-negative number, or NaN when the key is absent (older Multi-LoRA result files)."""
    if d.get(key) is None:
        return math.nan
    v = float(need(d, key, path))
    if v < 0:
        raise SubtuneError(f"{path}: {key} = {v} is negative")
    return v


def _ablation_label(name: str) -> str:
    """An ablation's row label: ``Multi-LoRA, A trained``, ``Multi-LoRA, rank 4``."""
    if name == "train_a":
        return "Multi-LoRA, A trained"
    if name == "sequential":
        return "Multi-LoRA, tasks one after another"
    return f"Multi-LoRA, rank {name[4:]}" if name.startswith("rank") else f"Multi-LoRA, {name}"


def _ablation_rows(ablation_files: Sequence[PathLike], main_files: Sequence[PathLike], ranks: Sequence[int],
                   tasks: list[str]) -> pd.DataFrame:
    """One row per ablation (and per rank; the configured rank's is the Multi-LoRA row), means over seeds."""
    rows = []

    def add(name: str, f: Path, d: dict) -> None:
        r = d.get("multilora")
        if not isinstance(r, dict) or not isinstance(r.get("per_task"), dict):
            raise SubtuneError(f"{f}: no 'multilora' result")
        if list(r["per_task"]) != tasks:
            raise SubtuneError(f"{f}: tasks {list(r['per_task'])} differ from {tasks}")
        row = {"ablation": name, "seed": int(need(d, "seed", f, int)),
               "rank": int(need(r, "rank", f, int)), "train_a": bool(r.get("train_a")),
               "sequential": bool(r.get("sequential")),
               "params_trained": float(need(r, "params_trained", f)),
               "params_stored": float(need(r, "params_stored", f)),
               "wall_time_s": _ml_number(r, "wall_time_s", f),
               "wall_time_chosen_s": _ml_number(r, "wall_time_chosen_s", f)}
        for t, v in r["per_task"].items():
            row[f"{t}_test_acc"] = frac(v, "test_acc", f)
        row["mean_test_acc"] = statistics.fmean(row[f"{t}_test_acc"] for t in tasks)
        rows.append(row)

    for f in as_list(ablation_files):
        d = load_json(f)
        add(str(need(d, "ablation", f, str)), f, d)
    for f in as_list(main_files):
        d = load_json(f)
        rank = d.get("multilora", {}).get("rank")
        if rank in set(ranks):
            add(f"rank{rank}", f, d)
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    dup = df[df.duplicated(["ablation", "seed"], keep=False)]
    if len(dup):
        raise SubtuneError(f"two Multi-LoRA results for ablation {dup['ablation'].iloc[0]}, seed "
                           f"{int(dup['seed'].iloc[0])}")
    acc = [*(f"{t}_test_acc" for t in tasks), "mean_test_acc"]
    agg = {"n_seeds": ("seed", "size"), "rank": ("rank", "first"), "train_a": ("train_a", "first"),
           "sequential": ("sequential", "first"), "params_trained": ("params_trained", "mean"),
           "params_stored": ("params_stored", "mean"), "wall_time_s": ("wall_time_s", "mean"),
           "wall_time_chosen_s": ("wall_time_chosen_s", "mean")}
    for c in acc:
        agg[c.replace("_test_acc", "") + "_mean"] = (c, "mean")
        agg[c.replace("_test_acc", "") + "_std"] = (c, sample_std)
    out = df.groupby("ablation", sort=False).agg(**agg).reset_index()
    for c in out.columns:
        if c.endswith(("_mean", "_std")):
            out[c] = (100 * out[c]).round(4)
    order = {"train_a": 0, "sequential": 1}
    out = out.assign(_o=[order.get(a, 2) for a in out["ablation"]]).sort_values(["_o", "rank"]).drop(columns="_o")
    return out.reset_index(drop=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True, help="multilora --compare outputs (one per seed)")
    p.add_argument("--ablations", nargs="*", default=[], help="multilora --ablation outputs (one per seed each)")
    p.add_argument("--ranks", nargs="*", type=int, default=[],
                   help="the ranks ablation's ranks (the configured rank's row is the Multi-LoRA row)")
    p.add_argument("--out-ablations-csv", help="the ablations' rows as CSV")
    add_references(p)
    add_outputs(p, "csv", "md")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return multilora(a.runs, a.out_csv, a.out_md, references=a.references, backbone=a.backbone,
                     ablation_files=a.ablations, ranks=a.ranks, out_ablations_csv=a.out_ablations_csv)


@table("multilora", arguments=add_arguments, run=run)
def multilora(run_files: Sequence[PathLike], out_csv: PathLike, out_md: PathLike,
              references: Sequence[PathLike] | None = None, backbone: str | None = None,
              ablation_files: Sequence[PathLike] | None = None, ranks: Sequence[int] | None = None,
              out_ablations_csv: PathLike | None = None) -> pd.DataFrame:
    """Multi-LoRA against K separate LoRA runs (``multilora --compare`` outputs, one per seed).

    CSV (tidy): kind (multilora | separate_lora), task (a target, or ``mean``),
    n_seeds, test_acc_mean, test_acc_std, val_acc_mean (percent),
    params_trained, params_stored, optimizer_steps (the chosen point's
    optimizer steps on the task; on ``mean`` rows the mean over tasks),
    wall_time_s (the kind's training runs, all tasks: the whole grid on the tuning
    seed, the chosen points on the others) and wall_time_chosen_s (the chosen
    points' training only), each a mean over seeds. Markdown:
    one row per kind, a column per task and the mean, then the parameters
    trained and stored (the K heads included in both), the optimizer steps
    per task and the wall time (files without steps or times show n/a).

    ``ablation_files`` (``multilora --ablation`` outputs; Multi-LoRA alone)
    and ``ranks``: an *Ablations* section, one row per ablation (A trained,
    sequential, each rank; the configured rank's row is the Multi-LoRA
    row's runs) with the same columns; as CSV in ``out_ablations_csv`` (a
    header-only file when there is none): ablation, n_seeds, rank, train_a,
    sequential, params_trained, params_stored, wall_time_s,
    wall_time_chosen_s, <task>_mean/_std and mean_mean/_std (percent).
    """
    df, tasks, tuned_on = _compare_rows(run_files)
    refs = load_references(references)
    out = _compare_summary(df, refs, backbone)
    write_csv(out, out_csv)
    cols = [*tasks, "mean"]
    grid = _grid_note(run_files)
    text = _compare_md(out, tasks, tuned_on, grid) + _published_md(out)
    ab = _ablation_rows(ablation_files or [], run_files, list(ranks or []), tasks)
    if out_ablations_csv is not None:
        write_csv(ab if len(ab) else pd.DataFrame(columns=["ablation", "n_seeds", "rank"]), out_ablations_csv)
    if len(ab):
        text += _ablations_md(ab, out, cols, run_files, grid)
    text += _other_backbones_md(refs, backbone)
    text += "\n"
    write_text(text, out_md)
    return out


def _compare_rows(run_files: Sequence[PathLike]) -> tuple[pd.DataFrame, list[str], set[int]]:
    """One row per kind, task and seed of the ``--compare`` results; their tasks; the seeds the grids were
    tuned on (``tuned_on_seed``; none when every seed ran the whole grid)."""
    rows = []
    tasks: list[str] | None = None
    tuned_on: set[int] = set()
    for f in as_list(run_files):
        d = load_json(f)
        if "tuned_on_seed" in d:
            tuned_on.add(int(d["tuned_on_seed"]))
        for kind in reversed(MULTILORA_KINDS):  # as before: multilora first (which one a missing file names)
            if kind not in d:
                raise SubtuneError(f"{f}: no {kind!r} result (run `multilora --compare`)")
            r = d[kind]
            per_task = r.get("per_task")
            if not isinstance(per_task, dict) or not per_task:
                raise SubtuneError(f"{f}: {kind}.per_task is missing")
            if tasks is None:
                tasks = list(per_task)
            elif list(per_task) != tasks:
                raise SubtuneError(f"{f}: tasks {list(per_task)} differ from {tasks}")
            for t, v in per_task.items():
                rows.append({"kind": kind, "task": t, "seed": int(need(d, "seed", f, int)),
                             "test_acc": frac(v, "test_acc", f), "val_acc": frac(v, "val_acc", f),
                             "params_trained": float(need(r, "params_trained", f)),
                             "params_stored": float(need(r, "params_stored", f)),
                             "optimizer_steps": _ml_number(v, "optimizer_steps", f),
                             "wall_time_s": _ml_number(r, "wall_time_s", f),
                             "wall_time_chosen_s": _ml_number(r, "wall_time_chosen_s", f)})
    if not rows:
        raise SubtuneError("no Multi-LoRA result files given")
    df = pd.DataFrame(rows)
    dup = df[df.duplicated(["kind", "task", "seed"], keep=False)]
    if len(dup):
        raise SubtuneError(f"two Multi-LoRA results for seed {int(dup['seed'].iloc[0])}")
    return df, tasks or [], tuned_on


def _compare_summary(df: pd.DataFrame, refs: pd.DataFrame, backbone: str | None) -> pd.DataFrame:
    """The CSV: per kind and task (and the mean over tasks), means over seeds, with the published numbers."""
    mean = df.groupby(["kind", "seed"], sort=False).agg(
        test_acc=("test_acc", "mean"), val_acc=("val_acc", "mean"),
        params_trained=("params_trained", "first"), params_stored=("params_stored", "first"),
        optimizer_steps=("optimizer_steps", "mean"), wall_time_s=("wall_time_s", "first"),
        wall_time_chosen_s=("wall_time_chosen_s", "first")).reset_index()
    df = pd.concat([df, mean.assign(task="mean")], ignore_index=True)
    g = df.groupby(["kind", "task"], sort=False)
    out = g.agg(n_seeds=("seed", "size"), test_acc_mean=("test_acc", "mean"), test_acc_std=("test_acc", sample_std),
                val_acc_mean=("val_acc", "mean"), params_trained=("params_trained", "mean"),
                params_stored=("params_stored", "mean"), optimizer_steps=("optimizer_steps", "mean"),
                wall_time_s=("wall_time_s", "mean"), wall_time_chosen_s=("wall_time_chosen_s", "mean")).reset_index()
    for c in ("test_acc_mean", "test_acc_std", "val_acc_mean"):
        out[c] = (out[c] * 100).round(4)
    return attach_published(out.assign(method=out["kind"], target=out["task"]), refs, backbone).drop(
        columns=["method", "target"])


def _grid_note(run_files: Sequence[PathLike]) -> str:
    """'' when the comparison had a grid of several points (the tuning seed's file holds the configured grid, the
    others the point chosen there), else the values both sides trained at (``lr=0.003, rank=4, alpha=4``): the
    tables then say that nothing was chosen on validation."""
    points, d = 1, {}
    for f in as_list(run_files):
        d = load_json(f)
        grid = d.get("grid") or {}
        points = max(points, math.prod(len(v) for v in grid.values()) if isinstance(grid, dict) else 1)
    if points > 1:
        return ""
    ml = d.get("multilora") or {}
    chosen = ml.get("chosen") or {}
    values = {"lr": (d.get("train") or {}).get("lr"), **(chosen.get("train") or {}), "rank": ml.get("rank"),
              "alpha": ml.get("alpha"), **(chosen.get("params") or {})}
    return ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                     for k, v in values.items() if v is not None)


def _compare_md(out: pd.DataFrame, tasks: list[str], tuned_on: set[int], fixed: str = "") -> str:
    """The Markdown's head: one row per kind, a column per task and the mean, parameters, steps, wall time;
    ``fixed``: the values both sides trained at when there was no grid (:func:`_grid_note`)."""
    cols = [*tasks, "mean"]
    n = int(out["n_seeds"].max())
    md_rows = []
    for kind, label in MULTILORA_KINDS.items():
        sub = out[out["kind"] == kind].set_index("task")
        cells = [f"{sub.loc[t, 'test_acc_mean']:.2f} ± {sub.loc[t, 'test_acc_std']:.2f}" for t in cols]
        steps = [sub.loc[t, "optimizer_steps"] for t in tasks]
        if any(math.isnan(x) for x in steps):
            steps_cell = "n/a"
        else:
            steps_cell = f"{steps[0]:g}" if len(set(steps)) == 1 else " / ".join(f"{x:g}" for x in steps)
        wall = sub.loc["mean", "wall_time_s"]
        md_rows.append([label, *cells, fmt_params(sub.loc["mean", "params_trained"]),
                        fmt_params(sub.loc["mean", "params_stored"]), steps_cell,
                        "n/a" if math.isnan(wall) else f"{wall:.0f}"])
    k = len(tasks)
    return "\n".join([
        "# Multi-LoRA against separate LoRA: test accuracy (%)",
        "",
        f"{k} tasks trained together on one backbone (one shared frozen A per adapted layer, a B and a head per "
        + (f"task) against {k} separate LoRA runs with the same rank and training config; no grid: both sides "
           f"train at {fixed}, nothing is chosen on validation" if fixed else
           f"task) against {k} separate LoRA runs with the same rank, training config and grid; each side chooses "
           f"its grid point on validation (Multi-LoRA: the best mean over tasks; each separate run: the best on its "
           f"own task)"
           + (f" on seed {', '.join(map(str, sorted(tuned_on)))}, and the other seeds train each side at the point "
              f"it chose there" if tuned_on else ""))
        + f". Mean ± sample standard deviation over {n} seed{'s' if n != 1 else ''}; parameters for all "
        f"{k} tasks, heads included. Steps: optimizer updates of each task's parameters"
        + ("" if fixed else " at the chosen point")
        + " (in task order where they differ); wall time: training "
        + ("" if fixed else "the grid on the tuning seed and the chosen points on the others, " if tuned_on
           else "the whole grid, ")
        + "all tasks (mean over seeds).",
        "",
        md_table(["method", *cols, "params trained", "params stored", "steps per task", "wall time (s)"],
                 md_rows),
    ])


def _published_md(out: pd.DataFrame) -> str:
    """The published numbers matched to our rows (nothing when none matched)."""
    pub = out.dropna(subset=["published"])
    if not len(pub):
        return ""
    rows = [[MULTILORA_KINDS[r["kind"]], r["task"], f"{r['test_acc_mean']:.2f}", f"{r['published']:.2f}",
             f"{r['diff']:+.2f}", r["published_source"]] for _, r in pub.iterrows()]
    return "\n\n## Published numbers beside ours\n\n" + md_table(
        ["method", "task", "ours", "published", "Δ", "source"], rows, ["l", "l", "r", "r", "r", "l"])


def _ablations_md(ab: pd.DataFrame, out: pd.DataFrame, cols: list[str], run_files: Sequence[PathLike],
                  fixed: str = "") -> str:
    """The *Ablations* section: the Multi-LoRA row's numbers again, then one row per ablation; ``fixed``: as for
    :func:`_compare_md`."""
    ml = out[(out["kind"] == "multilora") & (out["task"] == "mean")].iloc[0]
    rows = []
    for _, r in ab.iterrows():
        cells = [f"{r[t + '_mean']:.2f} ± {r[t + '_std']:.2f}" for t in cols]
        wall = r["wall_time_s"]
        rows.append([_ablation_label(r["ablation"]), f"{r['rank']:d}", *cells, fmt_params(r["params_trained"]),
                     fmt_params(r["params_stored"]), "n/a" if math.isnan(wall) else f"{wall:.0f}"])
    wall = ml["wall_time_s"]
    rows.insert(0, ["Multi-LoRA (the row above)", f"{int(load_json(as_list(run_files)[0])['multilora']['rank'])}",
                    *[f"{out[(out['kind'] == 'multilora') & (out['task'] == t)].iloc[0]['test_acc_mean']:.2f} ± "
                      f"{out[(out['kind'] == 'multilora') & (out['task'] == t)].iloc[0]['test_acc_std']:.2f}"
                      for t in cols], fmt_params(ml["params_trained"]), fmt_params(ml["params_stored"]),
                    "n/a" if math.isnan(wall) else f"{wall:.0f}"])
    return ("\n\n## Ablations\n\nMulti-LoRA alone (no separate-LoRA side), the same tasks, training config and "
            + (f"values ({fixed}, no grid): " if fixed else "grid, chosen on validation as above (the grid on the "
               "first seed, the other seeds at its choice): ")
            + "**A trained** (the shared A trained by every task's loss, its own optimizer; stored A counted as "
            "trained), **tasks one after another** (K stages, each a task's whole schedule, A frozen and shared; "
            "with A frozen the tasks do not interact, so this differs from training together only in floating "
            "point and in time), and other **ranks** (alpha kept, so the scaling alpha / r changes with r). Test "
            "accuracy (%), mean ± std over seeds; parameters for all tasks, heads included; wall time: the training "
            "runs of each seed" + ("" if fixed else " (on the tuning seed, the whole grid)")
            + ", all tasks, mean over seeds.\n\n"
            + md_table(["variant", "rank", *cols, "params trained", "params stored", "wall time (s)"], rows))


def _other_backbones_md(refs: pd.DataFrame, backbone: str | None) -> str:
    """The Multi-LoRA paper's own numbers on other backbones and tasks, listed as not comparable."""
    other = refs[refs["method"].isin(list(MULTILORA_KINDS))] if not refs.empty else refs
    other = other[~other["backbone"].isin([backbone or "", (backbone or "").split(".")[0]])] if len(other) else other
    if not len(other):
        return ""
    rows = [[MULTILORA_KINDS[r["method"]], str(r["backbone"]), str(r["target"]), f"{float(r['value']):.1f}",
             str(r.get("note", "") if isinstance(r.get("note"), str) else ""),
             f"{r['paper']}, {r['table']}, arXiv:{r['arxiv']}"] for _, r in other.iterrows()]
    return ("\n\n## Published by the Multi-LoRA paper (other backbones and tasks: not comparable)\n\n"
            + md_table(["method", "backbone", "tasks", "published", "note", "source"], rows,
                       ["l", "l", "l", "r", "l", "l"]))
