"""Tables and plots of an experiment (pandas + matplotlib, no pyplot state).

Each function takes explicit input files and writes explicit outputs
atomically (:func:`subtune.io.atomic_path`). Accuracies in the inputs are
fractions; in every table and plot written here they are **percentages**
(and gains are percentage points). Standard deviations are sample standard
deviations over seeds (``ddof=1``), 0 when there is one seed.

- :func:`main_table`: method x target test accuracy (mean ± std over seeds),
  trainable parameters, seeds; plus the source checkpoint's accuracy, the
  blocks each run fine-tuned, the epoch chosen on validation
  (``epoch_select: best_val``) and, when the targets include VTAB-1k tasks,
  the two VTAB-1k averages (:func:`vtab_means`).
- :func:`profile`: the fine-tuning profile of one target (SubTuning Figs 1-2).
- :func:`rounds`: the greedy selection rounds of every target and seed.
- :func:`pairs`: the pair grid (SubTuning Fig. 3).
- :func:`sweep`: accuracy against training-set size (SubTuning Fig. 4), with
  the blocks SubTuning selected at each size.

Runs trained on train+val (``train_data: "train+val"``, ``final_data``) have
no validation accuracy: none is shown for them (a validation accuracy of a
model trained on the validation split would be contaminated).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from . import SubtuneError
from .io import atomic_path, read_json
from .methods import method_label, method_needs, method_order

PathLike = str | os.PathLike
LP_LABEL = "(lp)"  # the empty block set in tables
# the Multi-LoRA table's rows (`multilora --compare` results), in table order: not single-task methods
MULTILORA_KINDS = {"separate_lora": "separate LoRA", "multilora": "Multi-LoRA"}


# ---------------------------------------------------------------- small helpers
# A method's table label and its place among the rows are its class's (``label``, ``order``; the method
# registry, subtune.methods): method_label(m) / method_order(ms), re-exported here.


def fmt_params(n: float | None) -> str:
    """Parameter count, 3 significant digits: 512, 5.13K, 11.2M."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "n/a"
    n = float(n)
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}" if n == int(n) else f"{n:.3g}"


def _std(x: pd.Series) -> float:
    """Sample std (ddof=1); 0.0 for a single value."""
    return float(x.std(ddof=1)) if len(x) > 1 else 0.0


def _as_list(files: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(files, (str, os.PathLike)):
        return [Path(files)]
    return [Path(f) for f in files]


def _load(path: Path) -> dict[str, Any]:
    d = read_json(path)
    if not isinstance(d, dict):
        raise SubtuneError(f"{path}: expected a JSON object")
    return d


def _need(d: dict, key: str, path: Path, kind: type | tuple = (int, float)) -> Any:
    if key not in d or d[key] is None:
        raise SubtuneError(f"{path}: missing key {key!r}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, kind):
        raise SubtuneError(f"{path}: key {key!r} has type {type(v).__name__}")
    return v


def _frac(d: dict, key: str, path: Path, required: bool = True) -> float:
    if not required and d.get(key) is None:
        return math.nan
    v = float(_need(d, key, path))
    if not 0.0 <= v <= 1.0:
        raise SubtuneError(f"{path}: {key} = {v} is not an accuracy fraction in [0, 1]")
    return v


def _write_csv(df: pd.DataFrame, out: PathLike) -> None:
    """CSV; counts (parameters, sizes) that are whole numbers are written as integers."""
    df = df.copy()
    for c in df.columns:
        col = df[c]
        countlike = "params" in c or c in ("train_size", "n_seeds", "index", "seed") or c.endswith("candidates")
        if countlike and pd.api.types.is_float_dtype(col):
            df[c] = pd.Series([v if pd.isna(v) else int(v) if v == int(v) else round(v, 2) for v in col],
                              index=df.index, dtype=object)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def _write_text(text: str, out: PathLike) -> None:
    with atomic_path(out) as tmp:
        tmp.write_text(text)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _save_png(fig, out: PathLike) -> None:
    # Agg via the Figure's own canvas: no pyplot, no global backend switch; no
    # "Software" metadata, so the bytes depend on the data, not the version.
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def _md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- runs
RUN_COLUMNS = ["file", "method", "target", "seed", "test_acc", "val_acc", "trainable_params",
               "total_params", "train_size", "wall_time_s", "blocks", "group", "tuned", "grid", "train_data",
               "best_epoch"]


def load_runs(run_files: Sequence[PathLike], *, need_train_size: bool = False) -> pd.DataFrame:
    """One row per final-training metrics file (accuracies as fractions); checks every file first."""
    rows = []
    for f in _as_list(run_files):
        d = _load(f)
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
            "method": _need(d, "method", f, str),
            "target": str(_need(d, "target", f, str)),
            "seed": int(_need(d, "seed", f, int)),
            "test_acc": _frac(d, "test_acc", f),
            # trained on the validation split too: its accuracy there is not a validation accuracy
            "val_acc": math.nan if train_data == "train+val" else _frac(d, "val_acc", f, required=False),
            "trainable_params": float(_need(d, "trainable_params", f)),
            "total_params": float(d["total_params"]) if isinstance(d.get("total_params"), (int, float)) else math.nan,
            "train_size": math.nan,
            "wall_time_s": float(d["wall_time_s"]) if isinstance(d.get("wall_time_s"), (int, float)) else math.nan,
            "blocks": "+".join(mp["blocks"]) if isinstance(mp.get("blocks"), list) else None,
            "group": int(mp["group"]) if isinstance(mp.get("group"), int) else None,
            "tuned": _tuned_label(d.get("tuned")),
            "grid": _grid_label(d.get("tuned")),
            "train_data": train_data,
            "best_epoch": math.nan if best is None else best,
        }
        if need_train_size:
            row["train_size"] = int(_need(d, "train_size", f, int))
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
    edge of the values tried is flagged, ``lr=0.03 ↑edge`` (:func:`_edge_mark`)."""
    if not isinstance(t, dict):
        return None
    items, edge = {**(t.get("train") or {}), **(t.get("params") or {})}, t.get("edge") or {}
    return ", ".join(f"{k}={v}{_edge_mark(edge.get(k))}" for k, v in sorted(items.items())) or "defaults"


def _grid_label(t: Any) -> str | None:
    if not isinstance(t, dict):
        return None
    grid = t.get("grid") or {}
    return "; ".join(f"{k} ∈ {{{', '.join(str(v) for v in vals)}}}" for k, vals in sorted(grid.items())) or None


def _summary(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    g = df.groupby(by, sort=False)
    out = g.agg(
        n_seeds=("seed", "size"),
        seeds=("seed", lambda s: ",".join(str(x) for x in sorted(s))),
        test_acc_mean=("test_acc", "mean"),
        test_acc_std=("test_acc", _std),
        val_acc_mean=("val_acc", "mean"),
        val_acc_std=("val_acc", _std),
        trainable_params=("trainable_params", "mean"),
        trainable_params_min=("trainable_params", "min"),
        trainable_params_max=("trainable_params", "max"),
        total_params=("total_params", "mean"),
        wall_time_s_mean=("wall_time_s", "mean"),
    ).reset_index()
    for c in ("test_acc_mean", "test_acc_std", "val_acc_mean", "val_acc_std"):
        out[c] = (out[c] * 100).round(4)
    out["trainable_pct"] = (100 * out["trainable_params"] / out["total_params"]).round(4)
    out["wall_time_s_mean"] = out["wall_time_s_mean"].round(2)
    return out


def _ordered(df: pd.DataFrame, targets: list[str]) -> pd.DataFrame:
    morder = {m: i for i, m in enumerate(method_order(df["method"]))}
    torder = {t: i for i, t in enumerate(targets)}
    return (df.assign(_m=df["method"].map(morder), _t=df["target"].map(torder))
              .sort_values(["_m", "_t"]).drop(columns=["_m", "_t"]).reset_index(drop=True))


def _cell(r: pd.Series) -> str:
    params = fmt_params(r["trainable_params"])
    if r["trainable_params_min"] != r["trainable_params_max"]:
        params += " mean"
    seeds = "" if r["n_seeds"] == r["_n_max"] else f", n={r['n_seeds']}"
    return f"{r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f} ({params}{seeds})"


# VTAB-1k's three groups (Zhai et al. 2019), our target names (subtune.data.vtab.TASKS with a vtab- prefix)
VTAB_GROUPS = {
    "Natural": ("cifar100", "caltech101", "dtd", "flowers102", "pets", "svhn", "sun397"),
    "Specialized": ("camelyon", "eurosat", "resisc45", "retinopathy"),
    "Structured": ("clevr-count", "clevr-dist", "dmlab", "kitti", "dsprites-loc", "dsprites-ori", "smallnorb-azi",
                   "smallnorb-ele"),
}
VTAB_GROUP_OF = {f"vtab-{t}": g for g, ts in VTAB_GROUPS.items() for t in ts}
VTAB_MEAN_TASKS, VTAB_MEAN_GROUPS = "VTAB-1k mean of tasks", "VTAB-1k mean of group means"


def vtab_means(values: dict[str, float]) -> tuple[float, float, dict[str, int]]:
    """(mean of tasks, mean of group means, tasks per group) over the VTAB-1k tasks in ``values``.

    Published VTAB-1k tables use both: the plain mean of the tasks (V-PETL
    Bench, SSF's abstract: SSF 73.10 over the 19) and the mean of the Natural,
    Specialized and Structured means (SSF 75.69). Both are taken over the
    tasks given (other keys and NaN values are ignored); a group with no task
    drops out of the mean of group means. NaN, NaN, {} when there is no task.
    """
    vals = {t: float(v) for t, v in values.items() if t in VTAB_GROUP_OF and not pd.isna(v)}
    if not vals:
        return math.nan, math.nan, {}
    by: dict[str, list[float]] = {}
    for t, v in vals.items():
        by.setdefault(VTAB_GROUP_OF[t], []).append(v)
    groups = [statistics.fmean(by[g]) for g in VTAB_GROUPS if g in by]
    return statistics.fmean(vals.values()), statistics.fmean(groups), {g: len(by.get(g, [])) for g in VTAB_GROUPS}


def _vtab_count(counts: dict[str, int]) -> str:
    n = sum(counts.values())
    return (f"{n} of {len(VTAB_GROUP_OF)} (" + ", ".join(f"{g} {counts.get(g, 0)}/{len(ts)}"
                                                        for g, ts in VTAB_GROUPS.items()) + ")")


def _vtab_rows(summ: pd.DataFrame) -> pd.DataFrame:
    """Per method with VTAB-1k runs: both averages of ours and, over the same tasks, of the published numbers.

    A published average is given only when every task of ours has a published number (an average over other
    tasks would not compare).
    """
    rows = []
    for m in method_order(summ["method"]):
        sub = summ[(summ["method"] == m) & summ["target"].isin(list(VTAB_GROUP_OF))]
        if sub.empty:
            continue
        ours = dict(zip(sub["target"], sub["test_acc_mean"]))
        tasks, groups, counts = vtab_means(ours)
        pub = dict(zip(sub["target"], sub["published"])) if "published" in sub else {}
        complete = bool(pub) and all(not pd.isna(v) for v in pub.values())
        p_tasks, p_groups, _ = vtab_means(pub) if complete else (math.nan, math.nan, {})
        sources = "; ".join(dict.fromkeys(s for s in sub.get("published_source", []) if s)) if complete else ""
        for label, ours_v, pub_v in ((VTAB_MEAN_TASKS, tasks, p_tasks), (VTAB_MEAN_GROUPS, groups, p_groups)):
            rows.append({"method": m, "target": label, "n_seeds": int(sub["n_seeds"].min()),
                         "test_acc_mean": round(ours_v, 4), "n_tasks": sum(counts.values()),
                         "tasks": _vtab_count(counts), "published": round(pub_v, 4) if complete else math.nan,
                         "diff": round(ours_v - pub_v, 4) if complete else math.nan,
                         "published_source": (f"mean over the same tasks of: {sources}" if complete else "")})
    return pd.DataFrame(rows)


def _vtab_md(vt: pd.DataFrame) -> list[str]:
    if vt.empty:
        return []
    rows = []
    for m in dict.fromkeys(vt["method"]):
        a = vt[(vt["method"] == m) & (vt["target"] == VTAB_MEAN_TASKS)].iloc[0]
        b = vt[(vt["method"] == m) & (vt["target"] == VTAB_MEAN_GROUPS)].iloc[0]
        f = (lambda v: "–" if pd.isna(v) else f"{v:.2f}")
        d = (lambda v: "–" if pd.isna(v) else f"{v:+.2f}")
        rows.append([method_label(m), a["tasks"], f(a["test_acc_mean"]), f(b["test_acc_mean"]), f(a["published"]),
                     f(b["published"]), d(a["diff"]), d(b["diff"])])
    return ["", "## VTAB-1k averages", "",
            "Test accuracy (%) averaged over the VTAB-1k tasks present here (the number per group is given; with "
            "fewer than 19 these are not the published 19-task averages). Two conventions: **mean of tasks** (the "
            "plain mean of the tasks; V-PETL Bench, SSF's abstract) and **mean of group means** (the mean of the "
            "Natural, Specialized and Structured means). Published: the same averages of the published per-task "
            "numbers (`references/*.csv`) over the same tasks, given only when every task has one.", "",
            _md_table(["method", "tasks", "mean of tasks", "mean of group means", "published: mean of tasks",
                       "published: mean of group means", "Δ tasks", "Δ group means"], rows,
                      ["l", "l", "r", "r", "r", "r", "r", "r"])]


def _best_epoch_md(runs: pd.DataFrame, targets: list[str]) -> list[str]:
    """The epoch chosen on validation (train metrics' ``best_epoch``, epoch_select: best_val) per method and target."""
    be = runs.dropna(subset=["best_epoch"])
    if be.empty:
        return []
    rows = []
    for m in method_order(be["method"]):
        cells = []
        for t in targets:
            sub = be[(be["method"] == m) & (be["target"] == t)].sort_values("seed")
            eps = [int(e) for e in sub["best_epoch"]]
            cells.append("–" if not eps else f"{statistics.fmean(eps):.3g} ({', '.join(map(str, eps))})")
        rows.append([method_label(m), *cells])
    return ["", "## Epoch chosen on validation (epoch_select: best_val)", "",
            "The epoch whose weights the final run kept (best validation accuracy): mean over seeds, then each "
            "seed's in seed order.", "", _md_table(["method", *targets], rows)]


def _per_pair(runs: pd.DataFrame, summ: pd.DataFrame, col: str, fn) -> list:
    got = runs.dropna(subset=[col]).groupby(["method", "target"], sort=False)[col].agg(fn)
    return [got.get((m, t), "") for m, t in zip(summ["method"], summ["target"])]


# ---------------------------------------------------------------- cost
COST_COLUMNS = ["selection_candidates", "selection_wall_time_s", "selection_ft_equiv_flops", "ft_wall_time_s",
                "selection_ft_units", "selection_ft_basis", "total_time_s"]


def _selection_costs(selected_files: Sequence[PathLike] | None,
                     surgical_files: Sequence[PathLike] | None) -> dict[tuple[str, str], dict[str, float]]:
    """(needs, target) -> the selection stage's cost, mean over selection seeds: candidates trained, wall time
    (s) and FLOPs-estimated plain full fine-tunes (NaN where the files recorded none).

    ``selection``: the greedy rounds of a final selection state (each round's ``scores`` and recorded
    ``cost``); ``surgical``: a Surgical group score file (its ``results`` and ``cost``).
    """
    per: dict[tuple[str, str], list[dict[str, float]]] = {}

    def num(c: Any, k: str) -> float:
        return float(c[k]) if isinstance(c, dict) and isinstance(c.get(k), (int, float)) else math.nan

    for f in _as_list(selected_files or []):
        d = _load_state(f)
        t, _ = _target_seed(d, f)
        rs = d["rounds"]
        costs = [r.get("cost") for r in rs]
        per.setdefault(("selection", t), []).append({
            "candidates": float(sum(len(r.get("scores") or {}) for r in rs)),
            "wall_time_s": sum(num(c, "wall_time_s") for c in costs) if rs else math.nan,
            "ft_equiv": sum(num(c, "ft_equiv") for c in costs) if rs else math.nan})
    for f in _as_list(surgical_files or []):
        d = _load(f)
        if d.get("kind") != "surgical" or not isinstance(d.get("results"), list):
            raise SubtuneError(f"{f}: not a Surgical score file")
        t = str(d.get("target") or _target_seed(d, f)[0])
        c = d.get("cost")
        wall = num(c, "wall_time_s")
        if math.isnan(wall):  # older files: the candidates' own training times
            wall = sum(float(r.get("wall_time_s") or 0.0) for r in d["results"])
        per.setdefault(("surgical", t), []).append({"candidates": float(len(d["results"])), "wall_time_s": wall,
                                                    "ft_equiv": num(c, "ft_equiv")})
    return {k: {m: statistics.fmean(x[m] for x in v) for m in ("candidates", "wall_time_s", "ft_equiv")}
            for k, v in per.items()}


def _attach_costs(summ: pd.DataFrame, costs: dict[tuple[str, str], dict[str, float]]) -> pd.DataFrame:
    """Each row's selection cost (methods that need a selection or Surgical's scores), in plain full fine-tunes:
    the FT method's final-run wall time on that target when FT ran (basis ``ft wall time``), else the FLOPs
    estimate the selection recorded (basis ``FLOPs``); total_time_s = one final run + the selection."""
    out = summ.copy()
    ft = {t: w for m, t, w in zip(summ["method"], summ["target"], summ["wall_time_s_mean"]) if m == "ft"}
    cols: dict[str, list] = {c: [] for c in COST_COLUMNS}
    for m, t, w in zip(summ["method"], summ["target"], summ["wall_time_s_mean"]):
        c = costs.get((method_needs(m) or "", t))
        if c is None:
            vals = [math.nan, math.nan, math.nan, ft.get(t, math.nan), math.nan, "", w]
        else:
            ftw = ft.get(t, math.nan)
            if not pd.isna(ftw) and ftw > 0 and not math.isnan(c["wall_time_s"]):
                units, basis = c["wall_time_s"] / ftw, "ft wall time"
            elif not math.isnan(c["ft_equiv"]):
                units, basis = c["ft_equiv"], "FLOPs"
            else:
                units, basis = math.nan, ""
            vals = [c["candidates"], round(c["wall_time_s"], 2), round(c["ft_equiv"], 3), ftw,
                    round(units, 3), basis, w + (0.0 if math.isnan(c["wall_time_s"]) else c["wall_time_s"])]
        for col, v in zip(COST_COLUMNS, vals):
            cols[col].append(v)
    for col, v in cols.items():
        out[col] = v
    out["total_time_s"] = pd.to_numeric(out["total_time_s"]).round(2)
    return out


def _cost_md(summ: pd.DataFrame, targets: list[str]) -> list[str]:
    f = (lambda v, nd=1: "–" if pd.isna(v) else f"{v:.{nd}f}")  # noqa: E731
    rows = []
    for m in method_order(summ["method"]):
        for t in targets:
            sub = summ[(summ["method"] == m) & (summ["target"] == t)]
            if sub.empty:
                continue
            r = sub.iloc[0]
            sel = not pd.isna(r["selection_candidates"])
            rows.append([method_label(m), t, fmt_params(r["trainable_params"]), f(r["wall_time_s_mean"]),
                         f"{r['selection_candidates']:g}" if sel else "–", f(r["selection_wall_time_s"]),
                         (f"{r['selection_ft_units']:.2f} ({r['selection_ft_basis']})"
                          if sel and not pd.isna(r["selection_ft_units"]) else "–"),
                         f(r["total_time_s"]), f"{r['test_acc_mean']:.2f}"])
    if not rows:
        return []
    bases = set(summ["selection_ft_basis"]) - {""}
    basis = ("one plain full fine-tune = the FT method's final run on that target (mean wall time over seeds)"
             if bases == {"ft wall time"} else
             "one plain full fine-tune estimated from FLOPs (forward and backward of every parameter, the "
             "selection's epochs and data; FT is not one of the methods)" if bases == {"FLOPs"} else
             "per row: the FT method's final-run wall time where FT ran, else a FLOPs estimate")
    return ["", "## Cost", "",
            "Trainable parameters; training: the wall time of one final run (mean over seeds); selection (SubTuning's "
            "greedy rounds, Surgical's group scores; run once and shared by every seed unless per_seed): candidate "
            "trainings, wall time, and that time in plain full fine-tunes of the same network (" + basis + "); "
            "total: one final run plus the selection. Grid tuning (every method with a grid) is not counted.", "",
            _md_table(["method", "target", "trainable", "training (s)", "selection candidates", "selection (s)",
                       "selection (FT units)", "total (s)", "test acc (%)"], rows,
                      ["l", "l", "r", "r", "r", "r", "r", "r", "r"])]


def cost_plot(summ: pd.DataFrame, targets: list[str], out_png: PathLike) -> None:
    """Test accuracy against total cost (one final run + selection, seconds, log x), a panel per target."""
    n = len(targets)
    fig = _figure(4.2 * n, 3.8)
    axes = fig.subplots(1, n, squeeze=False)[0]
    methods = method_order(summ["method"])
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, t in zip(axes, targets):
        for m in methods:
            sub = summ[(summ["method"] == m) & (summ["target"] == t)]
            if sub.empty or pd.isna(sub["total_time_s"].iloc[0]):
                continue
            r = sub.iloc[0]
            ax.errorbar([r["total_time_s"]], [r["test_acc_mean"]], yerr=[r["test_acc_std"]], marker="o",
                        capsize=3, color=colors[m], label=method_label(m), linestyle="none")
            if not pd.isna(r["selection_wall_time_s"]):  # the final run alone, joined to the total
                ax.plot([r["wall_time_s_mean"], r["total_time_s"]], [r["test_acc_mean"]] * 2, color=colors[m],
                        alpha=0.5, linestyle=":", marker="|")
        ax.set_xscale("log")
        ax.set_xlabel("total cost: final run + selection (s)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(t, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8)
    _save_png(fig, out_png)


def main_table(
    run_files: Sequence[PathLike],
    out_csv: PathLike,
    out_md: PathLike,
    checkpoint_json: PathLike | None = None,
    selected_files: Sequence[PathLike] | None = None,
    references: Sequence[PathLike] | None = None,
    backbone: str | None = None,
    out_json: PathLike | None = None,
    surgical_files: Sequence[PathLike] | None = None,
    out_cost_png: PathLike | None = None,
) -> pd.DataFrame:
    """Method x target test accuracy (percent, mean ± sample std over seeds), params, seeds.

    CSV (tidy, one row per method and target): method, target, n_seeds, seeds,
    test_acc_mean, test_acc_std, val_acc_mean, val_acc_std, trainable_params
    (mean over seeds), trainable_params_min/max, total_params, trainable_pct,
    wall_time_s_mean, blocks (the distinct block sets, SubTuning), tuned (the
    values chosen on validation, when the method had a grid), train_data
    (train or train+val), best_epochs (the epochs chosen on validation, seed
    order), published, diff and published_source (``references``: published
    numbers for ``backbone``, :func:`attach_published`). With VTAB-1k targets,
    two more rows per method, target ``VTAB-1k mean of tasks`` and ``VTAB-1k
    mean of group means`` (n_tasks, tasks: how many per group; published: the
    same average of the published numbers, :func:`vtab_means`). Markdown: the
    pivot (cells ``mean ± std (params)``), the source checkpoint's accuracy,
    the selected blocks per target and seed, the hyperparameters chosen on
    validation, the epochs chosen on validation, the VTAB-1k averages, the cost
    of every method and the greedy selections (``selected_files``: selection
    state files) when given. Cost columns (:func:`_attach_costs`):
    selection_candidates, selection_wall_time_s, selection_ft_equiv_flops,
    ft_wall_time_s, selection_ft_units (the selection in plain full
    fine-tunes), selection_ft_basis (``ft wall time`` or ``FLOPs``),
    total_time_s (one final run + the selection), for methods that need a
    selection (``selected_files``) or Surgical's scores (``surgical_files``).
    ``out_cost_png``: accuracy against total cost (:func:`cost_plot`).
    """
    runs = load_runs(run_files)
    targets = list(dict.fromkeys(runs["target"]))
    summ = _ordered(_summary(runs, ["method", "target"]), targets)
    blocks = (runs.dropna(subset=["blocks"]).groupby(["method", "target"], sort=False)["blocks"]
                  .agg(lambda s: " | ".join(dict.fromkeys(b or LP_LABEL for b in s))))
    summ["blocks"] = [blocks.get((m, t), "") for m, t in zip(summ["method"], summ["target"])]
    chosen = (runs.dropna(subset=["tuned"]).groupby(["method", "target"], sort=False)["tuned"]
                  .agg(lambda s: " | ".join(dict.fromkeys(s))))
    summ["tuned"] = [chosen.get((m, t), "") for m, t in zip(summ["method"], summ["target"])]
    summ["train_data"] = _per_pair(runs, summ, "train_data", lambda s: " | ".join(dict.fromkeys(s)))
    summ["best_epochs"] = _per_pair(runs.sort_values("seed"), summ, "best_epoch",
                                    lambda s: ",".join(str(int(e)) for e in s))
    summ = attach_published(summ, load_references(references), backbone)
    summ = _attach_costs(summ, _selection_costs(selected_files, surgical_files))
    vtab = _vtab_rows(summ)
    _write_csv(pd.concat([summ, vtab], ignore_index=True) if len(vtab) else summ, out_csv)

    # Markdown
    n_max = int(summ["n_seeds"].max())
    summ["_n_max"] = n_max
    cells = {(r["method"], r["target"]): _cell(r) for _, r in summ.iterrows()}
    means = ([VTAB_MEAN_TASKS, VTAB_MEAN_GROUPS] if len(vtab) else [])
    for _, r in vtab.iterrows():
        cells[(r["method"], r["target"])] = f"{r['test_acc_mean']:.2f}"
    methods = method_order(summ["method"])
    rows = [[method_label(m)] + [cells.get((m, t), "–") for t in [*targets, *means]] for m in methods]
    header = ["method", *targets, *(["mean of tasks", "mean of group means"] if means else [])]
    parts = [
        "# Test accuracy (%)",
        "",
        f"Mean ± sample standard deviation over seeds ({n_max} seed{'s' if n_max != 1 else ''} unless "
        "marked n=...); trainable parameters in parentheses (mean over seeds where they differ)."
        + (" The last two columns average the VTAB-1k tasks (see VTAB-1k averages)." if means else ""),
        "",
        _md_table(header, rows),
    ]
    tv = runs[runs["train_data"] == "train+val"]
    if len(tv):
        which = ", ".join(method_label(m) for m in method_order(tv["method"]))
        parts += ["", f"Final runs trained on train+val (final_data): {which}. They have no validation accuracy "
                  "(the validation split was training data); hyperparameters were still chosen on train/val."]
    if checkpoint_json is not None:
        parts += ["", _checkpoint_line(Path(checkpoint_json))]
    parts += _published_md(summ)
    parts += _vtab_md(vtab)
    sel = _selection_rows(runs, targets)
    if sel:
        has_sub = any(r[2] for r in sel)
        has_sur = any(r[3] for r in sel)
        header = ["target", "seed"] + (["SubTuning blocks"] if has_sub else []) + (["Surgical group"] if has_sur else [])
        rows2 = [[t, s] + ([b or "–"] if has_sub else []) + ([g or "–"] if has_sur else []) for t, s, b, g in sel]
        parts += ["", "## Selected blocks per target and seed", "", _md_table(header, rows2, ["l"] * len(header))]
    tuned = runs.dropna(subset=["tuned"])
    if len(tuned):
        trows = []
        for m in method_order(tuned["method"]):
            sub = tuned[tuned["method"] == m]
            chosen = [" | ".join(dict.fromkeys(sub[sub["target"] == t]["tuned"])) or "–" for t in targets]
            trows.append([method_label(m), " | ".join(dict.fromkeys(sub["grid"].dropna())) or "–", *chosen])
        parts += ["", "## Hyperparameters chosen on validation", "",
                  "Each grid point trained on the training split with the selection seed and scored by final-epoch "
                  "validation accuracy (ties: the first point); test accuracy was read once, for the chosen values. "
                  "Methods without a grid use the config's values.", "",
                  _md_table(["method", "grid", *targets], trows, ["l"] * (2 + len(targets)))] + _edge_note(tuned)
    parts += _cost_md(summ, targets)
    parts += _best_epoch_md(runs, targets)
    if out_cost_png is not None:
        cost_plot(summ, targets, out_cost_png)
    if selected_files:
        st = _states_table(selected_files)
        rows3 = [[r["target"], str(r["seed"]), r["selected"] or LP_LABEL,
                  "n/a" if pd.isna(r["score"]) else f"{r['score']:.2f}", str(r["rounds"]), r["stop_reason"] or ""]
                 for _, r in st.iterrows()]
        parts += ["", "## Greedy selection (validation)", "",
                  _md_table(["target", "selection seed", "selected", "val acc (%)", "rounds", "stop reason"], rows3,
                            ["l", "l", "l", "r", "r", "l"])]
    _write_text("\n".join(parts) + "\n", out_md)
    summ = summ.drop(columns=["_n_max"])
    if len(vtab):
        summ = pd.concat([summ, vtab], ignore_index=True)
    if out_json is not None:  # DVC metrics
        with atomic_path(out_json) as tmp:
            tmp.write_text(json.dumps(main_metrics(summ), indent=2, sort_keys=True) + "\n")
    return summ


def main_metrics(summ: pd.DataFrame) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """The main table as nested numbers, method -> target -> {test_acc_mean, ...}: DVC metrics (main.json)."""
    def num(key: str, v: Any) -> float | int | None:
        if v is None or pd.isna(v):
            return None  # e.g. the std of one seed
        f = float(v)
        if key in ("trainable_params", "n_seeds"):
            return int(f) if f.is_integer() else round(f, 2)
        return round(f, 4)

    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for _, r in summ.iterrows():
        out.setdefault(str(r["method"]), {})[str(r["target"])] = {
            k: num(k, r[k]) for k in ("test_acc_mean", "test_acc_std", "val_acc_mean", "val_acc_std",
                                      "trainable_params", "n_seeds") if k in r
        }
    return out


def _checkpoint_line(path: Path) -> str:
    d = _load(path)
    origin = d.get("origin") or {}
    arch = d.get("arch", "?")
    kind = origin.get("kind", "?")
    if kind == "pretrained":
        src = origin.get("source", "?")
        acc = origin.get("source_test_acc")
        val = origin.get("source_val_acc")
        acc_s = f"{100 * acc:.2f}%" if isinstance(acc, (int, float)) else "n/a"
        val_s = f" (val {100 * val:.2f}%)" if isinstance(val, (int, float)) else ""
        return f"Source checkpoint: `{arch}` pretrained here on {src}; source test accuracy {acc_s}{val_s}."
    name = origin.get("name") or arch
    return f"Source checkpoint: `{name}` ({kind}); source test accuracy not measured here."


def _selection_rows(runs: pd.DataFrame, targets: list[str]) -> list[tuple[str, str, str, str]]:
    sub = runs[runs["method"] == "subtuning"]
    sur = runs[runs["method"] == "surgical"]
    keys = sorted({(t, s) for t, s in zip(sub["target"], sub["seed"])} | {(t, s) for t, s in zip(sur["target"], sur["seed"])},
                  key=lambda k: (targets.index(k[0]), k[1]))
    out = []
    for t, s in keys:
        b = sub[(sub["target"] == t) & (sub["seed"] == s)]["blocks"]
        g = sur[(sur["target"] == t) & (sur["seed"] == s)]["group"]
        bs = "" if b.empty or b.iloc[0] is None else (b.iloc[0].replace("+", ", ") or LP_LABEL)
        gs = "" if g.empty or g.iloc[0] is None or pd.isna(g.iloc[0]) else str(int(g.iloc[0]))
        out.append((t, str(s), bs, gs))
    return out


# ---------------------------------------------------------------- selection states
def _target_seed(d: dict, path: Path) -> tuple[str, int | None]:
    """Target and seed of a state file: its own keys, else the path (.../<target>/seed<S>/<file>)."""
    target, seed = d.get("target"), d.get("seed")
    if target is None or seed is None:
        m = re.fullmatch(r"seed(\d+)", path.parent.name)
        if seed is None and m:
            seed = int(m.group(1))
        if target is None:
            target = path.parent.parent.name if m else path.parent.name
    return str(target), (int(seed) if seed is not None else None)


def _load_state(path: Path) -> dict:
    d = _load(path)
    for k in ("selected", "rounds"):
        if not isinstance(d.get(k), list):
            raise SubtuneError(f"{path}: missing key {k!r} (not a selection state file)")
    return d


def _states_table(state_files: Sequence[PathLike]) -> pd.DataFrame:
    rows = []
    for f in _as_list(state_files):
        d = _load_state(f)
        t, s = _target_seed(d, f)
        score = d.get("score")
        rows.append({"target": t, "seed": s, "selected": "+".join(d["selected"]),
                     "score": 100 * score if isinstance(score, (int, float)) else math.nan,
                     "rounds": len(d["rounds"]), "stop_reason": d.get("stop_reason") or ""})
    return pd.DataFrame(rows)


def rounds(state_files: Sequence[PathLike], out_csv: PathLike) -> pd.DataFrame:
    """The greedy rounds of each target and seed, one row per round.

    Columns: target, seed, round, base, base_score, n_candidates, chosen,
    chosen_score, gain (points), accepted, selected (the selection after the
    last round), done, stop_reason (on the last round's row). Scores in percent.
    The round's cost (:mod:`subtune.halving`; empty for states written before
    costs were recorded): dropped (candidates a selection budget stopped
    early, ``epochs:key,key`` per rung, ``;``-separated), n_dropped,
    candidate_epochs (trained), exact_candidate_epochs (what exact selection
    trains), wall_time_s, ft_equiv (training cost in plain full fine-tunes,
    estimated from FLOPs).
    """
    rows = []
    for f in _as_list(state_files):
        d = _load_state(f)
        t, s = _target_seed(d, f)
        rs = d["rounds"]
        for i, r in enumerate(rs):
            if not isinstance(r, dict) or "round" not in r:
                raise SubtuneError(f"{f}: rounds[{i}] has no 'round'")
            last = i == len(rs) - 1

            def pct(v):
                return round(100 * v, 4) if isinstance(v, (int, float)) else math.nan

            rows.append({
                "target": t, "seed": s, "round": int(r["round"]),
                "base": "+".join(r.get("base") or []) or LP_LABEL,
                "base_score": pct(r.get("base_score")),
                "n_candidates": len(r.get("scores") or {}),
                "chosen": r.get("chosen") or "",
                "chosen_score": pct(r.get("chosen_score")),
                "gain": pct(r.get("gain")),
                "accepted": bool(r.get("accepted")),
                "selected": ("+".join(d["selected"]) or LP_LABEL) if last else "",
                "done": bool(d.get("done")) if last else "",
                "stop_reason": (d.get("stop_reason") or "") if last else "",
                **_round_cost(r),
            })
    cols = ["target", "seed", "round", "base", "base_score", "n_candidates", "chosen", "chosen_score",
            "gain", "accepted", "selected", "done", "stop_reason", "dropped", "n_dropped", "candidate_epochs",
            "exact_candidate_epochs", "wall_time_s", "ft_equiv"]
    df = pd.DataFrame(rows, columns=cols)
    _write_csv(df, out_csv)
    return df


def _round_cost(r: dict) -> dict:
    """The rounds table's cost columns of one round record (NaN / empty where not recorded)."""
    cost = r.get("cost") if isinstance(r.get("cost"), dict) else {}
    by_rung: dict[int, list[str]] = {}
    for k, e in (r.get("dropped") or {}).items():
        by_rung.setdefault(int(e), []).append(k or LP_LABEL)
    num = (lambda v, nd: round(float(v), nd) if isinstance(v, (int, float)) else math.nan)  # noqa: E731
    return {
        "dropped": ";".join(f"{e}:{','.join(ks)}" for e, ks in sorted(by_rung.items())),
        "n_dropped": sum(len(ks) for ks in by_rung.values()),
        "candidate_epochs": num(cost.get("candidate_epochs"), 0),
        "exact_candidate_epochs": num(cost.get("exact_candidate_epochs"), 0),
        "wall_time_s": num(cost.get("wall_time_s"), 2),
        "ft_equiv": num(cost.get("ft_equiv"), 3),
    }


# ---------------------------------------------------------------- epsilon sensitivity
def epsilon(state_files: Sequence[PathLike], run_files: Sequence[PathLike], epsilons: Sequence[float],
            selection_epsilon: float, out_csv: PathLike, out_md: PathLike) -> pd.DataFrame:
    """The set each epsilon selects (replayed from one greedy walk, :func:`subtune.select.epsilon_sets`) and its runs.

    ``state_files``: the walks' final states, one per target (per target and
    seed with ``per_seed`` selection); ``run_files``: SubTuning final runs of
    every set (matched on target, seed and blocks). CSV, one row per target
    and epsilon: target, epsilon, main (the main selection's epsilon),
    blocks, n_blocks, rounds, candidates (candidate trainings a selection
    with that epsilon runs), selection_wall_time_s, ft_equiv (its recorded
    cost), val_score (the set's selection score), n_seeds, test_acc_mean,
    test_acc_std, val_acc_mean (final runs), wall_time_s_mean (final runs),
    trained_for (``main``: the main selection's runs were reused; ``epsilon``:
    trained for this analysis) (percent).
    """
    from .select import epsilon_sets, key, replay

    eps = sorted({float(e) for e in epsilons} | {float(selection_epsilon)})
    runs = [load_runs([f]).iloc[0] for f in _as_list(run_files)]
    by_run: dict[tuple[str, int, str], pd.Series] = {}
    for r in runs:
        by_run[(r["target"], int(r["seed"]), r["blocks"] or "")] = r
    states: dict[str, dict[int | None, dict]] = {}
    walks: dict[str, list[str]] = {}
    for f in _as_list(state_files):
        d = _load_state(f)
        t, s = _target_seed(d, f)
        states.setdefault(t, {})[s] = d
        walks.setdefault(t, []).append(f"epsilon {d['config']['epsilon']:g}, "
                                       f"{sum(len(r['scores']) for r in d['rounds'])} candidates")
    rows = []
    for t, per in states.items():
        per_seed = len(per) > 1
        derived = {s: epsilon_sets(d, eps) for s, d in per.items()}
        main = {s: key(replay(d, selection_epsilon)["selected"]) for s, d in per.items()}
        seeds = sorted({int(r["seed"]) for r in runs if r["target"] == t})
        for i, e in enumerate(eps):
            got, sets, trained = [], [], []
            for seed in seeds:
                s = seed if per_seed else next(iter(per))
                if s not in per:
                    continue
                k = key(derived[s][i]["selected"])
                r = by_run.get((t, seed, k))
                if r is None:
                    raise SubtuneError(f"epsilon {e:g} on {t}: no run of blocks {k or LP_LABEL!r} for seed {seed}")
                got.append(r)
                sets.append(k)
                trained.append("main" if k == main[s] else "epsilon")
            if not got:
                raise SubtuneError(f"epsilon {e:g} on {t}: no runs")
            ds = [derived[s][i] for s in per]
            g = pd.DataFrame(got)

            def mean(xs):
                xs = [x for x in xs if x is not None]
                return statistics.fmean(xs) if xs else math.nan

            rows.append({
                "target": t, "epsilon": e, "main": e == float(selection_epsilon),
                "blocks": " | ".join(dict.fromkeys(b or LP_LABEL for b in sets)),
                "n_blocks": mean(len(d["selected"]) for d in ds), "rounds": mean(d["rounds"] for d in ds),
                "candidates": mean(d["candidates"] for d in ds),
                "selection_wall_time_s": round(mean(d["wall_time_s"] for d in ds), 2),
                "ft_equiv": round(mean(d["ft_equiv"] for d in ds), 3),
                "val_score": round(100 * mean(d["score"] for d in ds), 4),
                "n_seeds": len(g), "test_acc_mean": round(100 * g["test_acc"].mean(), 4),
                "test_acc_std": round(100 * _std(g["test_acc"]), 4),
                "val_acc_mean": round(100 * g["val_acc"].mean(), 4),
                "wall_time_s_mean": round(g["wall_time_s"].mean(), 2),
                "trained_for": " | ".join(dict.fromkeys(trained)),
            })
    df = pd.DataFrame(rows)
    _write_csv(df, out_csv)
    f2 = (lambda v: "n/a" if pd.isna(v) else f"{v:.2f}")  # noqa: E731
    fn = (lambda v: "n/a" if pd.isna(v) else f"{v:g}")  # noqa: E731
    md = [[r["target"], f"{r['epsilon']:g}" + (" (main)" if r["main"] else ""), r["blocks"].replace("+", ", "),
           fn(r["rounds"]), fn(r["candidates"]), f2(r["selection_wall_time_s"]), f2(r["val_score"]),
           f"{r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f}" + ("" if r["n_seeds"] == df["n_seeds"].max()
                                                                    else f" (n={r['n_seeds']})"),
           f2(r["val_acc_mean"]), r["trained_for"]] for _, r in df.iterrows()]
    n = int(df["n_seeds"].max())
    text = "\n".join([
        "# Epsilon sensitivity of greedy SubTuning selection",
        "",
        "The set each epsilon selects, replayed from one greedy walk per target (epsilon enters only the accept "
        "test, so the walk that goes furthest gives every epsilon's stop: src/subtune/select.py), each set trained "
        f"with SubTuning's training config and chosen hyperparameters, mean ± sample std over {n} "
        f"seed{'s' if n != 1 else ''}. Rounds, candidates and selection time: what a selection with that epsilon "
        "alone trains (the rounds' recorded cost). Val (selection): the set's validation score in the walk; val "
        "(runs): the final runs' (n/a when trained on train+val). Trained: main = the main selection's final "
        "runs, reused; epsilon = trained for this table.",
        "",
        _md_table(["target", "epsilon", "blocks", "rounds", "candidates", "selection time (s)", "val (selection)",
                   "test", "val (runs)", "trained"], md, ["l", "l", "l", "r", "r", "r", "r", "r", "r", "l"]),
        "",
        "The walks: " + "; ".join(f"{t}: {', '.join(w)}" for t, w in walks.items()) + ".",
        "",
    ])
    _write_text(text, out_md)
    return df


# ---------------------------------------------------------------- score files
def _load_scores(score_files: PathLike | Sequence[PathLike], kinds: tuple[str, ...]) -> tuple[dict, list[dict], list[str]]:
    """Merge score shards: (first file's header, results, blocks); one target and seed, no duplicate keys."""
    files = _as_list(score_files)
    if not files:
        raise SubtuneError("no score files given")
    head: dict | None = None
    results: dict[str, dict] = {}
    for f in files:
        d = _load(f)
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


def _members(r: dict) -> list[str]:
    b = r.get("blocks")
    return list(b) if isinstance(b, list) else ([x for x in r["key"].split("+")] if r["key"] else [])


def profile(score_files: PathLike | Sequence[PathLike], out_csv: PathLike, out_png: PathLike) -> pd.DataFrame:
    """The fine-tuning profile: each block alone (plus the head) and LP (the empty set).

    ``score_files``: round-1 greedy or ``profile`` score files (all shards of one
    target and seed). CSV: block (``(lp)`` for the linear probe), index (network
    order; -1 for LP), trainable_params, val_acc (%), delta_vs_lp (points). PNG:
    bars per block annotated with parameter counts, LP as a horizontal line.
    """
    head, results, blocks = _load_scores(score_files, ("greedy", "profile"))
    pos = {b: i for i, b in enumerate(blocks)}
    lp = None
    rows = []
    for r in results:
        mem = _members(r)
        if not mem:
            lp = r
        elif len(mem) == 1:
            if mem[0] not in pos:
                raise SubtuneError(f"{head['file']}: block {mem[0]!r} not among the file's blocks")
            rows.append(r)
    if not rows:
        raise SubtuneError(f"{head['file']}: no single-block scores (not a fine-tuning profile)")
    rows.sort(key=lambda r: pos[_members(r)[0]])
    lp_acc = 100 * lp["score"] if lp else math.nan
    table = [{"block": LP_LABEL, "index": -1, "trainable_params": lp.get("trainable_params"),
              "val_acc": round(lp_acc, 4), "delta_vs_lp": 0.0}] if lp else []
    for r in rows:
        acc = 100 * r["score"]
        table.append({"block": _members(r)[0], "index": pos[_members(r)[0]],
                      "trainable_params": r.get("trainable_params"), "val_acc": round(acc, 4),
                      "delta_vs_lp": round(acc - lp_acc, 4) if lp else math.nan})
    df = pd.DataFrame(table, columns=["block", "index", "trainable_params", "val_acc", "delta_vs_lp"])
    _write_csv(df, out_csv)

    bars = df[df["index"] >= 0]
    fig = _figure(max(5.0, 0.55 * len(bars) + 2), 4.0)
    ax = fig.add_subplot()
    x = range(len(bars))
    ax.bar(x, bars["val_acc"], color="tab:blue", label="fine-tune one block + head")
    for xi, (acc, n) in enumerate(zip(bars["val_acc"], bars["trainable_params"])):
        ax.annotate(fmt_params(n), (xi, acc), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7, rotation=90)
    if lp:
        ax.axhline(lp_acc, color="tab:red", linestyle="--", label=f"LP {lp_acc:.2f}%")
    vals = list(bars["val_acc"]) + ([lp_acc] if lp else [])
    lo, hi = min(vals), max(vals)
    pad = max(1.0, 0.15 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + 2.5 * pad))
    ax.set_xticks(list(x), list(bars["block"]), rotation=45, ha="right")
    ax.set_xlabel("fine-tuned block (trainable parameters above the bar)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Fine-tuning profile: {head.get('target', '?')} (seed {head.get('seed', '?')})")
    ax.legend(loc="best", fontsize=8)
    _save_png(fig, out_png)
    return df


def pairs(score_files: PathLike | Sequence[PathLike], out_csv: PathLike, out_png: PathLike) -> pd.DataFrame:
    """The pair grid: every pair of blocks (and each block alone, the diagonal) as a heatmap.

    CSV: block_a, block_b (network order, a <= b; a == b is the block alone),
    trainable_params, val_acc (%). PNG: symmetric block x block heatmap with values.
    """
    head, results, blocks = _load_scores(score_files, ("pairs",))
    pos = {b: i for i, b in enumerate(blocks)}
    table = []
    for r in results:
        mem = _members(r)
        if not 1 <= len(mem) <= 2 or any(b not in pos for b in mem):
            raise SubtuneError(f"{head['file']}: block set {r['key']!r} is not a single block or a pair of known blocks")
        a, b = sorted(mem, key=pos.__getitem__) if len(mem) == 2 else (mem[0], mem[0])
        table.append({"block_a": a, "block_b": b, "trainable_params": r.get("trainable_params"),
                      "val_acc": round(100 * r["score"], 4)})
    df = pd.DataFrame(table).sort_values(["block_a", "block_b"], key=lambda s: s.map(pos)).reset_index(drop=True)
    _write_csv(df, out_csv)

    used = sorted(set(df["block_a"]) | set(df["block_b"]), key=pos.__getitem__)
    grid = pd.DataFrame(math.nan, index=used, columns=used)
    for a, b, v in zip(df["block_a"], df["block_b"], df["val_acc"]):
        grid.loc[a, b] = grid.loc[b, a] = v
    import numpy as np

    vals = grid.to_numpy(dtype=float)
    n = len(used)
    fig = _figure(max(4.5, 0.6 * n + 2.5), max(4.0, 0.6 * n + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(vals), cmap="viridis")
    fig.colorbar(im, ax=ax, label="validation accuracy (%)")
    finite = vals[np.isfinite(vals)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(n):
        for j in range(n):
            if np.isfinite(vals[i, j]):
                ax.text(j, i, f"{vals[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="black" if vals[i, j] > mid else "white",
                        fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(n), used, rotation=45, ha="right")
    ax.set_yticks(range(n), used)
    ax.set_title(f"Fine-tuned block pairs: {head.get('target', '?')}\n(validation accuracy %; diagonal: one block)",
                 fontsize=10)
    _save_png(fig, out_png)
    return df


# ---------------------------------------------------------------- data-size sweep
def sweep(run_files: Sequence[PathLike], out_csv: PathLike, out_png: PathLike,
          references: Sequence[PathLike] | None = None, backbone: str | None = None) -> pd.DataFrame:
    """Test accuracy against training-set size, per method (mean ± sample std over seeds).

    CSV: method, target, train_size, n_seeds, seeds, test_acc_mean, test_acc_std,
    val_acc_mean, val_acc_std, trainable_params, ..., blocks (the distinct
    block sets the runs fine-tuned, SubTuning: selected at that size; empty for
    other methods) (percent). PNG: error bars, log x axis, one line per method
    (per method and target when there are several), each SubTuning point
    annotated with its blocks.
    """
    runs = load_runs(run_files, need_train_size=True)
    summ = _summary(runs, ["method", "target", "train_size"])
    got = (runs.dropna(subset=["blocks"]).groupby(["method", "target", "train_size"], sort=False)["blocks"]
               .agg(lambda s: " | ".join(dict.fromkeys(b or LP_LABEL for b in s))))
    summ["blocks"] = [got.get(k, "") for k in zip(summ["method"], summ["target"], summ["train_size"])]
    targets = list(dict.fromkeys(runs["target"]))
    morder = {m: i for i, m in enumerate(method_order(summ["method"]))}
    summ = (summ.assign(_m=summ["method"].map(morder), _t=summ["target"].map(targets.index))
                .sort_values(["_m", "_t", "train_size"]).drop(columns=["_m", "_t"]).reset_index(drop=True))
    summ["train_size"] = summ["train_size"].astype(int)
    summ = attach_published(summ, load_references(references), backbone)
    _write_csv(summ, out_csv)

    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot()
    for (m, t), g in summ.groupby(["method", "target"], sort=False):
        label = method_label(m) + (f" ({t})" if len(targets) > 1 else "")
        line = ax.errorbar(g["train_size"], g["test_acc_mean"], yerr=g["test_acc_std"], marker="o", capsize=3,
                           label=label)
        for n, acc, b in zip(g["train_size"], g["test_acc_mean"], g["blocks"]):
            if b:  # the blocks selected at this size
                ax.annotate(b.replace("+", ", "), (n, acc), xytext=(4, -10), textcoords="offset points", fontsize=6,
                            color=line[0].get_color())
        pub = g.dropna(subset=["published"])
        if len(pub):
            ax.plot(pub["train_size"], pub["published"], linestyle="none", marker="x", markersize=8,
                    color=line[0].get_color(), label=f"{label}, published")
    ax.set_xscale("log")
    sizes = sorted(set(summ["train_size"]))
    if len(sizes) <= 12:
        from matplotlib.ticker import NullFormatter

        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training examples")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against training-set size" + (f": {targets[0]}" if len(targets) == 1 else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save_png(fig, out_png)
    return summ


# ---------------------------------------------------------------- published numbers
REFERENCE_COLUMNS = ["backbone", "target", "method", "train_size", "metric", "value", "paper", "table", "arxiv", "note"]


def load_references(files: Sequence[PathLike] | None) -> pd.DataFrame:
    """Published numbers (``references/*.csv``): one row per backbone, target, method (and training size).

    Columns: backbone (the timm model name the paper's backbone corresponds to),
    target (our dataset name), method (ours), train_size (empty: the config's
    regime), metric (``test_acc``), value (percent), paper, table, arxiv
    (identifier and version) and note. Every row must name its source.
    """
    frames = []
    for f in _as_list(files or []):
        if not f.is_file():
            raise SubtuneError(f"missing references file: {f}")
        df = pd.read_csv(f, comment="#", dtype={"train_size": "Int64"})
        missing = [c for c in REFERENCE_COLUMNS if c not in df.columns]
        if missing:
            raise SubtuneError(f"{f}: missing column {missing[0]!r} (columns: {', '.join(REFERENCE_COLUMNS)})")
        bad = df[df[["paper", "table", "arxiv"]].isna().any(axis=1)]
        if len(bad):
            raise SubtuneError(f"{f}: row {int(bad.index[0]) + 2} has no source (paper, table, arxiv)")
        frames.append(df.assign(file=str(f)))
    if not frames:
        return pd.DataFrame(columns=[*REFERENCE_COLUMNS, "file"])
    return pd.concat(frames, ignore_index=True)


def attach_published(summ: pd.DataFrame, refs: pd.DataFrame, backbone: str | None) -> pd.DataFrame:
    """Add ``published`` (percent), ``diff`` (ours - published, points) and ``published_source`` columns.

    A published number is matched on the backbone (the config's timm name, with
    or without its pretrained tag), the target, the method and, where the
    reference gives one, the training-set size. No match: empty cells.
    """
    out = summ.copy()
    out["published"], out["diff"], out["published_source"] = math.nan, math.nan, ""
    if refs.empty or not backbone:
        return out
    base = backbone.split(".")[0]
    refs = refs[(refs["metric"] == "test_acc") & refs["backbone"].isin([backbone, base])]
    for i, r in out.iterrows():
        m = refs[(refs["target"] == r["target"]) & (refs["method"] == r["method"])]
        if "train_size" in out.columns:
            m = m[m["train_size"].isna() | (m["train_size"] == r["train_size"])]
        else:
            m = m[m["train_size"].isna()]
        if len(m):
            ref = m.iloc[0]
            out.at[i, "published"] = float(ref["value"])
            out.at[i, "diff"] = round(float(r["test_acc_mean"]) - float(ref["value"]), 4)
            out.at[i, "published_source"] = f"{ref['paper']}, {ref['table']}, arXiv:{ref['arxiv']}"
    return out


def _published_md(summ: pd.DataFrame) -> list[str]:
    pub = summ.dropna(subset=["published"])
    if pub.empty:
        return []
    rows = [[method_label(r["method"]), r["target"], f"{r['test_acc_mean']:.2f}", f"{r['published']:.2f}",
             f"{r['diff']:+.2f}", r["published_source"]] for _, r in pub.iterrows()]
    return ["", "## Published numbers beside ours", "",
            "Test accuracy (%); Δ = ours − published, in points. Published numbers are matched on backbone, "
            "target and method (`references/*.csv`).", "",
            _md_table(["method", "target", "ours", "published", "Δ", "source"], rows,
                      ["l", "l", "r", "r", "r", "l"])]


# ---------------------------------------------------------------- Multi-LoRA
def _ml_number(d: dict, key: str, path: Path) -> float:
    """A non-negative number, or NaN when the key is absent (older Multi-LoRA result files)."""
    if d.get(key) is None:
        return math.nan
    v = float(_need(d, key, path))
    if v < 0:
        raise SubtuneError(f"{path}: {key} = {v} is negative")
    return v


def _ablation_label(name: str) -> str:
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
        row = {"ablation": name, "seed": int(_need(d, "seed", f, int)),
               "rank": int(_need(r, "rank", f, int)), "train_a": bool(r.get("train_a")),
               "sequential": bool(r.get("sequential")),
               "params_trained": float(_need(r, "params_trained", f)),
               "params_stored": float(_need(r, "params_stored", f)),
               "wall_time_s": _ml_number(r, "wall_time_s", f),
               "wall_time_chosen_s": _ml_number(r, "wall_time_chosen_s", f)}
        for t, v in r["per_task"].items():
            row[f"{t}_test_acc"] = _frac(v, "test_acc", f)
        row["mean_test_acc"] = statistics.fmean(row[f"{t}_test_acc"] for t in tasks)
        rows.append(row)

    for f in _as_list(ablation_files):
        d = _load(f)
        add(str(_need(d, "ablation", f, str)), f, d)
    for f in _as_list(main_files):
        d = _load(f)
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
        agg[c.replace("_test_acc", "") + "_std"] = (c, _std)
    out = df.groupby("ablation", sort=False).agg(**agg).reset_index()
    for c in out.columns:
        if c.endswith(("_mean", "_std")):
            out[c] = (100 * out[c]).round(4)
    order = {"train_a": 0, "sequential": 1}
    out = out.assign(_o=[order.get(a, 2) for a in out["ablation"]]).sort_values(["_o", "rank"]).drop(columns="_o")
    return out.reset_index(drop=True)


def multilora(run_files: Sequence[PathLike], out_csv: PathLike, out_md: PathLike,
              references: Sequence[PathLike] | None = None, backbone: str | None = None,
              ablation_files: Sequence[PathLike] | None = None, ranks: Sequence[int] | None = None,
              out_ablations_csv: PathLike | None = None) -> pd.DataFrame:
    """Multi-LoRA against K separate LoRA runs (``multilora --compare`` outputs, one per seed).

    CSV (tidy): kind (multilora | separate_lora), task (a target, or ``mean``),
    n_seeds, test_acc_mean, test_acc_std, val_acc_mean (percent),
    params_trained, params_stored, optimizer_steps (the chosen point's
    optimizer steps on the task; on ``mean`` rows the mean over tasks),
    wall_time_s (the kind's whole grid, all tasks) and wall_time_chosen_s
    (the chosen points' training only), each a mean over seeds. Markdown:
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
    rows = []
    tasks: list[str] | None = None
    tuned_on: set[int] = set()
    for f in _as_list(run_files):
        d = _load(f)
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
                rows.append({"kind": kind, "task": t, "seed": int(_need(d, "seed", f, int)),
                             "test_acc": _frac(v, "test_acc", f), "val_acc": _frac(v, "val_acc", f),
                             "params_trained": float(_need(r, "params_trained", f)),
                             "params_stored": float(_need(r, "params_stored", f)),
                             "optimizer_steps": _ml_number(v, "optimizer_steps", f),
                             "wall_time_s": _ml_number(r, "wall_time_s", f),
                             "wall_time_chosen_s": _ml_number(r, "wall_time_chosen_s", f)})
    if not rows:
        raise SubtuneError("no Multi-LoRA result files given")
    df = pd.DataFrame(rows)
    dup = df[df.duplicated(["kind", "task", "seed"], keep=False)]
    if len(dup):
        raise SubtuneError(f"two Multi-LoRA results for seed {int(dup['seed'].iloc[0])}")
    mean = df.groupby(["kind", "seed"], sort=False).agg(
        test_acc=("test_acc", "mean"), val_acc=("val_acc", "mean"),
        params_trained=("params_trained", "first"), params_stored=("params_stored", "first"),
        optimizer_steps=("optimizer_steps", "mean"), wall_time_s=("wall_time_s", "first"),
        wall_time_chosen_s=("wall_time_chosen_s", "first")).reset_index()
    df = pd.concat([df, mean.assign(task="mean")], ignore_index=True)
    g = df.groupby(["kind", "task"], sort=False)
    out = g.agg(n_seeds=("seed", "size"), test_acc_mean=("test_acc", "mean"), test_acc_std=("test_acc", _std),
                val_acc_mean=("val_acc", "mean"), params_trained=("params_trained", "mean"),
                params_stored=("params_stored", "mean"), optimizer_steps=("optimizer_steps", "mean"),
                wall_time_s=("wall_time_s", "mean"), wall_time_chosen_s=("wall_time_chosen_s", "mean")).reset_index()
    for c in ("test_acc_mean", "test_acc_std", "val_acc_mean"):
        out[c] = (out[c] * 100).round(4)
    refs = load_references(references)
    out = attach_published(out.assign(method=out["kind"], target=out["task"]), refs, backbone).drop(
        columns=["method", "target"])
    _write_csv(out, out_csv)

    cols = [*(tasks or []), "mean"]
    n = int(out["n_seeds"].max())
    md_rows = []
    for kind, label in MULTILORA_KINDS.items():
        sub = out[out["kind"] == kind].set_index("task")
        cells = [f"{sub.loc[t, 'test_acc_mean']:.2f} ± {sub.loc[t, 'test_acc_std']:.2f}" for t in cols]
        steps = [sub.loc[t, "optimizer_steps"] for t in tasks or []]
        if any(math.isnan(x) for x in steps):
            steps_cell = "n/a"
        else:
            steps_cell = f"{steps[0]:g}" if len(set(steps)) == 1 else " / ".join(f"{x:g}" for x in steps)
        wall = sub.loc["mean", "wall_time_s"]
        md_rows.append([label, *cells, fmt_params(sub.loc["mean", "params_trained"]),
                        fmt_params(sub.loc["mean", "params_stored"]), steps_cell,
                        "n/a" if math.isnan(wall) else f"{wall:.0f}"])
    k = len(tasks or [])
    text = "\n".join([
        "# Multi-LoRA against separate LoRA: test accuracy (%)",
        "",
        f"{k} tasks trained together on one backbone (one shared frozen A per adapted layer, a B and a head per "
        f"task) against {k} separate LoRA runs with the same rank, training config and grid; each side chooses "
        f"its grid point on validation (Multi-LoRA: the best mean over tasks; each separate run: the best on its "
        f"own task)"
        + (f" on seed {', '.join(map(str, sorted(tuned_on)))}, and the other seeds train each side at the point "
           f"it chose there" if tuned_on else "")
        + f". Mean ± sample standard deviation over {n} seed{'s' if n != 1 else ''}; parameters for all "
        f"{k} tasks, heads included. Steps: optimizer updates of each task's parameters at the chosen point (in "
        f"task order where they differ); wall time: training "
        + ("the grid on the tuning seed and the chosen points on the others" if tuned_on else "the whole grid")
        + ", all tasks (mean over seeds).",
        "",
        _md_table(["method", *cols, "params trained", "params stored", "steps per task", "wall time (s)"],
                  md_rows),
    ])
    pub = out.dropna(subset=["published"])
    if len(pub):
        rows = [[MULTILORA_KINDS[r["kind"]], r["task"], f"{r['test_acc_mean']:.2f}", f"{r['published']:.2f}",
                 f"{r['diff']:+.2f}", r["published_source"]] for _, r in pub.iterrows()]
        text += "\n\n## Published numbers beside ours\n\n" + _md_table(
            ["method", "task", "ours", "published", "Δ", "source"], rows, ["l", "l", "r", "r", "r", "l"])
    ab = _ablation_rows(ablation_files or [], run_files, list(ranks or []), tasks or [])
    if out_ablations_csv is not None:
        _write_csv(ab if len(ab) else pd.DataFrame(columns=["ablation", "n_seeds", "rank"]), out_ablations_csv)
    if len(ab):
        ml = out[(out["kind"] == "multilora") & (out["task"] == "mean")].iloc[0]
        rows = []
        for _, r in ab.iterrows():
            cells = [f"{r[t + '_mean']:.2f} ± {r[t + '_std']:.2f}" for t in cols]
            wall = r["wall_time_s"]
            rows.append([_ablation_label(r["ablation"]), f"{r['rank']:d}", *cells, fmt_params(r["params_trained"]),
                         fmt_params(r["params_stored"]), "n/a" if math.isnan(wall) else f"{wall:.0f}"])
        wall = ml["wall_time_s"]
        rows.insert(0, ["Multi-LoRA (the row above)", f"{int(_load(_as_list(run_files)[0])['multilora']['rank'])}",
                        *[f"{out[(out['kind'] == 'multilora') & (out['task'] == t)].iloc[0]['test_acc_mean']:.2f} ± "
                          f"{out[(out['kind'] == 'multilora') & (out['task'] == t)].iloc[0]['test_acc_std']:.2f}"
                          for t in cols], fmt_params(ml["params_trained"]), fmt_params(ml["params_stored"]),
                        "n/a" if math.isnan(wall) else f"{wall:.0f}"])
        text += ("\n\n## Ablations\n\nMulti-LoRA alone (no separate-LoRA side), the same tasks, training config and "
                 "grid, chosen on validation as above: **A trained** (the shared A trained by every task's loss, its "
                 "own optimizer; stored A counted as trained), **tasks one after another** (K stages, each a task's "
                 "whole schedule, A frozen and shared; with A frozen the tasks do not interact, so this differs from "
                 "training together only in floating point and in time), and other **ranks** (alpha kept, so the "
                 "scaling alpha / r changes with r). Test accuracy (%), mean ± std over seeds; parameters for all "
                 "tasks, heads included; wall time: the whole grid, all tasks.\n\n"
                 + _md_table(["variant", "rank", *cols, "params trained", "params stored", "wall time (s)"], rows))
    other = refs[refs["method"].isin(list(MULTILORA_KINDS))] if not refs.empty else refs
    other = other[~other["backbone"].isin([backbone or "", (backbone or "").split(".")[0]])] if len(other) else other
    if len(other):
        rows = [[MULTILORA_KINDS[r["method"]], str(r["backbone"]), str(r["target"]), f"{float(r['value']):.1f}",
                 str(r.get("note", "") if isinstance(r.get("note"), str) else ""),
                 f"{r['paper']}, {r['table']}, arXiv:{r['arxiv']}"] for _, r in other.iterrows()]
        text += ("\n\n## Published by the Multi-LoRA paper (other backbones and tasks: not comparable)\n\n"
                 + _md_table(["method", "backbone", "tasks", "published", "note", "source"], rows,
                             ["l", "l", "l", "r", "l", "l"]))
    text += "\n"
    _write_text(text, out_md)
    return out


# ---------------------------------------------------------------- validation curves of the tuned grids
# Edge flags (the tune file's ``edge``: the final choice is still the largest/smallest value tried, after the
# grid was extended by up to tuning.extend values beyond it): shown beside the chosen value in tables/main.md.
EDGE_MARKS = {"upper": "↑edge", "lower": "↓edge"}
# 15 methods: each a distinct (colour, marker) pair; the first ten colours are tab20's dark ones
GRID_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">", "p", "d", "H", "8"]


def _edge_mark(direction: Any) -> str:
    """`` ↑edge``/`` ↓edge`` for a value still on the upper/lower edge of the values tried ('' otherwise)."""
    return f" {EDGE_MARKS[direction]}" if direction in EDGE_MARKS else ""


def _edge_note(tuned: pd.DataFrame) -> list[str]:
    """The sentence explaining the edge flags of tables/main.md's chosen values (nothing when none is flagged)."""
    if not tuned["tuned"].astype(str).str.contains("edge").any():
        return []
    return ["", "↑edge / ↓edge: the chosen value is the largest / smallest value tried, after any extension of "
            "the grid (config tuning.extend; an extension stops when its budget is spent or the next value is "
            "refused), so the optimum may lie outside the values tried; widen that method's grid (tables/grid.md "
            "and plots/grid.png show the validation curve)."]


def _load_tune(path: Path) -> dict[str, Any]:
    d = _load(path)
    _need(d, "method", path, str)
    _need(d, "target", path, str)
    res = d.get("results")
    if not isinstance(res, list) or not res:
        raise SubtuneError(f"{path}: not a tune file (no 'results' list)")
    best = _need(d, "chosen_index", path, int)
    if not 0 <= best < len(res):
        raise SubtuneError(f"{path}: chosen_index {best} is outside its {len(res)} results")
    for i, r in enumerate(res):
        if not isinstance(r, dict):
            raise SubtuneError(f"{path}: results[{i}] is not an object")
        _frac(r, "val_acc", path)
    return d


def _point_values(r: dict) -> dict[str, Any]:
    return {**(r.get("train") or {}), **(r.get("params") or {})}


def grid_rows(tune_files: Sequence[PathLike]) -> pd.DataFrame:
    """One row per (method, target, point tried) of ``tune`` result files (:func:`grid_table`'s CSV)."""
    rows, keys = [], []
    for f in _as_list(tune_files):
        d = _load_tune(f)
        edge = d.get("edge") or {}
        for i, r in enumerate(d["results"]):
            vals = _point_values(r)
            keys += [k for k in vals if k not in keys]
            rows.append({"method": d["method"], "target": d["target"], "index": i,
                         "point": r.get("label") or ", ".join(f"{k}={v}" for k, v in sorted(vals.items())),
                         **{f"value_{k}": v for k, v in vals.items()},
                         "val_acc": round(100 * float(r["val_acc"]), 4),
                         "chosen": i == d["chosen_index"], "source": r.get("source", "grid"),
                         "edge": "; ".join(f"{k} {v}" for k, v in sorted(edge.items())) if i == d["chosen_index"]
                         else ""})
    if not rows:
        raise SubtuneError("no tune files given")
    cols = ["method", "target", "index", "point", *[f"value_{k}" for k in sorted(keys)], "val_acc", "chosen",
            "source", "edge"]
    df = pd.DataFrame(rows).reindex(columns=cols)
    targets = list(dict.fromkeys(df["target"]))
    morder = {m: i for i, m in enumerate(method_order(df["method"]))}
    df = (df.assign(_m=df["method"].map(morder), _t=df["target"].map(targets.index))
            .sort_values(["_m", "_t", "index"]).drop(columns=["_m", "_t"]).reset_index(drop=True))
    dup = df[df.duplicated(["method", "target", "index"])]
    if len(dup):
        raise SubtuneError(f"two tune files for {dup['method'].iloc[0]} on {dup['target'].iloc[0]}")
    return df


def _log_axis(key: str, values: Sequence[float]) -> bool:
    """A log x axis for learning-rate-like keys (``lr``, ``lp_lr``, ...) and for positive values spanning 10x."""
    vals = [float(v) for v in values]
    return all(v > 0 for v in vals) and (key.endswith("lr") or max(vals) >= 10 * min(vals))


def _curve_keys(df: pd.DataFrame) -> list[str]:
    """The keys worth a validation curve: numeric values, at least two distinct ones for some method and target."""
    out = []
    for c in [c for c in df.columns if c.startswith("value_")]:
        num = pd.to_numeric(df[c], errors="coerce")
        if df[c].notna().any() and num[df[c].notna()].notna().all() and (
                df.assign(_v=num).groupby(["method", "target"])["_v"].nunique() >= 2).any():
            out.append(c[len("value_"):])
    return out


def _curve(sub: pd.DataFrame, key: str) -> pd.DataFrame:
    """The points of one method and target along ``key``, the other keys at the chosen point's values."""
    chosen = sub[sub["chosen"]].iloc[0]
    others = [c for c in sub.columns if c.startswith("value_") and c != f"value_{key}" and pd.notna(chosen[c])]
    keep = sub
    for c in others:
        keep = keep[keep[c] == chosen[c]]
    return keep.dropna(subset=[f"value_{key}"]).sort_values(f"value_{key}")


def grid_plot(df: pd.DataFrame, out_png: PathLike) -> None:
    """Validation accuracy against each tuned value: a column per target, a row per key, a line per method.

    Each method has its own colour and marker; extension points are hollow, the chosen point is ringed.
    """
    from matplotlib.lines import Line2D
    from matplotlib import colormaps

    targets, keys = list(dict.fromkeys(df["target"])), _curve_keys(df)
    methods = method_order(df["method"])
    tab = colormaps["tab20"]
    style = {m: (tab((2 * i) % 20 + (2 * i) // 20), GRID_MARKERS[i % len(GRID_MARKERS)]) for i, m in enumerate(methods)}
    rows = max(1, len(keys))
    fig = _figure(3.6 * len(targets) + 1.8, 2.9 * rows)
    axes = fig.subplots(rows, len(targets), squeeze=False)
    for r, key in enumerate(keys or [None]):
        for c, t in enumerate(targets):
            ax = axes[r][c]
            if key is None:
                ax.text(0.5, 0.5, "no numeric grid key", ha="center", va="center", transform=ax.transAxes)
                continue
            for m in methods:
                sub = df[(df["method"] == m) & (df["target"] == t)]
                if sub.empty or sub[f"value_{key}"].isna().all():
                    continue
                cur = _curve(sub, key)
                x, y = cur[f"value_{key}"].astype(float), cur["val_acc"]
                col, mk = style[m]
                ax.plot(x, y, color=col, marker=mk, markersize=5, linewidth=1.2)
                ext = cur[cur["source"] == "extension"]
                ax.plot(ext[f"value_{key}"].astype(float), ext["val_acc"], linestyle="none", marker=mk, markersize=5,
                        markerfacecolor="white", markeredgecolor=col)
                ch = cur[cur["chosen"]]
                ax.plot(ch[f"value_{key}"].astype(float), ch["val_acc"], linestyle="none", marker="o", markersize=11,
                        markerfacecolor="none", markeredgecolor="black", markeredgewidth=1.2)
            vals = df[df["target"] == t][f"value_{key}"].dropna().astype(float)
            if not len(vals):
                ax.text(0.5, 0.5, f"no method tunes {key} here", ha="center", va="center", transform=ax.transAxes)
            elif _log_axis(key, vals):
                ax.set_xscale("log")
            ax.set_xlabel(key)
            ax.set_ylabel("validation accuracy (%)")
            ax.set_title(t, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=style[m][0], marker=style[m][1], label=method_label(m)) for m in methods]
    handles += [Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="gray",
                       label="extension point"),
                Line2D([], [], linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                       markeredgecolor="black", label="chosen")]
    fig.legend(handles=handles, loc="outside right center", fontsize=7)
    fig.suptitle("Validation accuracy of each value tried (other keys at the chosen values)", fontsize=10)
    _save_png(fig, out_png)


def grid_table(tune_files: Sequence[PathLike], out_csv: PathLike, out_md: PathLike, out_png: PathLike) -> pd.DataFrame:
    """The validation curves of the tuned grids: every point ``tune`` tried, per method and target.

    CSV (one row per method, target and point, in the order tried): method, target, index, point (its
    label), value_<key> (each key's value; empty where the method's grid has no such key), val_acc
    (percent), chosen, source (grid, or extension: tried beyond an edge of the grid, :mod:`subtune.tune`),
    edge (on the chosen row: the keys whose chosen value is still on an edge of the values tried).
    Markdown: the same as a table, and the list of choices still on an edge. PNG: :func:`grid_plot`.
    """
    df = grid_rows(tune_files)
    _write_csv(df, out_csv)
    vcols = [c for c in df.columns if c.startswith("value_")]
    rows = [[method_label(r["method"]), r["target"], r["point"], f"{r['val_acc']:.2f}",
             "✓" if r["chosen"] else "", r["source"], r["edge"]] for _, r in df.iterrows()]
    parts = ["# Validation curves of the tuned hyperparameters", "",
             "Every point each method's tuning trained on the training split (selection seed) and scored on the "
             "validation split, in the order tried: the grid's points, then the extension points (a choice on the "
             "smallest or largest value of a numeric key tries the next value beyond it, while the choice stays "
             "there, up to tuning.extend values per key and direction). The chosen point (✓) has the best "
             "validation accuracy (ties: the first point).", "",
             _md_table(["method", "target", "point", "val acc (%)", "chosen", "source", "still on an edge"], rows,
                       ["l", "l", "l", "r", "l", "l", "l"])]
    edges = df[df["chosen"] & (df["edge"] != "")]
    parts += ["", "## Choices still on an edge", ""]
    parts += ([f"- {method_label(r['method'])} on {r['target']}: {r['point']} ({r['edge']}): the optimum may lie "
               "beyond the values tried." for _, r in edges.iterrows()] if len(edges) else
              ["None: every choice lies inside the values tried."])
    _write_text("\n".join(parts) + "\n", out_md)
    grid_plot(df.drop(columns=[c for c in vcols if df[c].isna().all()]), out_png)
    return df


# ---------------------------------------------------------------- claims
def claims_table(run_files: Sequence[PathLike], out_csv: PathLike, out_md: PathLike, *,
                 sweep_files: Sequence[PathLike] = (), profile_files: Sequence[PathLike] = (),
                 multilora_files: Sequence[PathLike] = (), shifts: dict[str, str] | None = None,
                 experiment: str = "") -> pd.DataFrame:
    """The claims table (:mod:`subtune.claims`): which of the papers' claims this experiment's results support.

    ``run_files``: final runs; ``sweep_files``: the data-size sweep's runs; ``profile_files``: round-1 score
    files of every target and selection seed; ``multilora_files``: ``multilora --compare`` results; ``shifts``:
    target -> input | output | domain (``targets.<t>.shift``). A claim whose inputs are not given says
    ``not run``. Every input is loaded and checked before anything is computed or written.
    """
    from . import claims

    runs = load_runs(run_files) if run_files else None
    sweep = load_runs(sweep_files, need_train_size=True) if sweep_files else None
    profiles = claims.load_profiles(profile_files)
    ml = claims.load_multilora(multilora_files) if multilora_files else None
    df = claims.claims(runs, sweep=sweep, profiles=profiles, multilora=ml, shifts=shifts, experiment=experiment)
    claims.write(df, out_csv, out_md)
    return df


# ---------------------------------------------------------------- selection agreement across seeds
SELECTION_COLUMNS = ["target", "seed", "selected", "n_blocks", "val_score", "stop_reason", "n_selections",
                     "n_distinct", "most_common", "most_common_count", "identical_pairs", "mean_jaccard",
                     "block_frequency", "note"]


def jaccard(a: frozenset | set, b: frozenset | set) -> float:
    """Jaccard similarity |a ∩ b| / |a ∪ b| of two block sets; two empty sets (both LP) are identical: 1."""
    union = len(set(a) | set(b))
    return 1.0 if union == 0 else len(set(a) & set(b)) / union


def selection_agreement(sets: Sequence[Sequence[str]], order: Sequence[str] = ()) -> dict[str, Any]:
    """How often the selections of one target (one block set per seed, in seed order) agree.

    Returns n_selections, n_distinct (distinct sets), most_common (the most frequent set, blocks in
    network order; ties: the set of the earliest seed), most_common_count, tied (another set is as
    frequent), identical_pairs (fraction of seed pairs with identical sets) and mean_jaccard (mean
    :func:`jaccard` over seed pairs; both NaN for a single selection), and frequency: block -> the
    number of selections that include it, in network order (``order``; blocks it lacks follow in order
    of appearance), blocks never selected left out.
    """
    fs = [frozenset(s) for s in sets]
    if not fs:
        raise SubtuneError("selection_agreement: no selections")
    pos = {b: i for i, b in enumerate(order)}
    for s in sets:
        for b in s:
            pos.setdefault(b, len(pos))
    counts = {s: fs.count(s) for s in dict.fromkeys(fs)}  # first-seen order: ties go to the earliest seed
    top = max(counts.values())
    mode = next(s for s, c in counts.items() if c == top)
    pairs = [(fs[i], fs[j]) for i in range(len(fs)) for j in range(i + 1, len(fs))]
    freq = {b: sum(b in s for s in fs) for b in sorted({b for s in fs for b in s}, key=pos.__getitem__)}
    return {
        "n_selections": len(fs),
        "n_distinct": len(counts),
        "most_common": sorted(mode, key=pos.__getitem__),
        "most_common_count": top,
        "tied": sum(c == top for c in counts.values()) > 1,
        "identical_pairs": statistics.fmean(a == b for a, b in pairs) if pairs else math.nan,
        "mean_jaccard": statistics.fmean(jaccard(a, b) for a, b in pairs) if pairs else math.nan,
        "frequency": freq,
    }


def _selection_states(state_files: Sequence[PathLike]) -> dict[str, dict[int, tuple[Path, dict]]]:
    """target -> seed -> (file, final selection state), targets in file order, seeds ascending; checks every file."""
    by: dict[str, dict[int, tuple[Path, dict]]] = {}
    for f in _as_list(state_files):
        d = _load_state(f)
        t, s = _target_seed(d, f)
        if s is None:
            raise SubtuneError(f"{f}: no seed (neither a 'seed' key nor a seed<S> directory)")
        if not all(isinstance(b, str) and b for b in d["selected"]):
            raise SubtuneError(f"{f}: 'selected' must be a list of block names")
        _frac(d, "score", f, required=False)  # the set's validation score: a fraction when present
        if s in by.get(t, {}):
            raise SubtuneError(f"{f}: a second selection state of target {t!r}, seed {s} "
                               f"(also {by[t][s][0]})")
        by.setdefault(t, {})[s] = (f, d)
    return {t: dict(sorted(per.items())) for t, per in by.items()}


def selection_rows(state_files: Sequence[PathLike]) -> pd.DataFrame:
    """One row per target and selection seed: the set selected and how the target's selections agree.

    Columns (:data:`SELECTION_COLUMNS`): target, seed, selected (blocks in network order, ``+``-joined;
    :data:`LP_LABEL` for the empty set), n_blocks, val_score (the set's selection score, percent),
    stop_reason, and the target's :func:`selection_agreement`, repeated on each of its rows:
    n_selections, n_distinct, most_common, most_common_count, identical_pairs, mean_jaccard,
    block_frequency (``block: count/n``, ``, ``-joined), note (``selected per seed``, or for a target
    with one selection state ``selected once (seed S), reused by every seed``).
    """
    rows = []
    for t, per in _selection_states(state_files).items():
        order: list[str] = []
        for _, d in per.values():
            order += [b for b in d.get("blocks") or [] if isinstance(b, str) and b not in order]
        pos = {b: i for i, b in enumerate(order)}
        sets = {s: sorted(d["selected"], key=lambda b: pos.get(b, len(pos))) for s, (_, d) in per.items()}
        agree = selection_agreement(list(sets.values()), order)
        n = agree["n_selections"]
        note = "selected per seed" if n > 1 else f"selected once (seed {next(iter(per))}), reused by every seed"
        summary = {
            "n_selections": n, "n_distinct": agree["n_distinct"],
            "most_common": "+".join(agree["most_common"]) or LP_LABEL,
            "most_common_count": agree["most_common_count"],
            "identical_pairs": round(agree["identical_pairs"], 4), "mean_jaccard": round(agree["mean_jaccard"], 4),
            "block_frequency": ", ".join(f"{b}: {c}/{n}" for b, c in agree["frequency"].items()),
            "note": note,
        }
        for s, (_, d) in per.items():
            score = d.get("score")
            rows.append({"target": t, "seed": s, "selected": "+".join(sets[s]) or LP_LABEL,
                         "n_blocks": len(sets[s]),
                         "val_score": round(100 * score, 4) if isinstance(score, (int, float)) else math.nan,
                         "stop_reason": d.get("stop_reason") or "", **summary})
    return pd.DataFrame(rows, columns=SELECTION_COLUMNS)


def _selection_md(df: pd.DataFrame) -> str:
    """tables/selection.md: the per-seed sets, then one agreement row per target."""
    def num(v: float, fmt: str) -> str:
        return "n/a" if pd.isna(v) else format(v, fmt)

    seed_rows = [[r["target"], str(r["seed"]), r["selected"].replace("+", ", "), str(r["n_blocks"]),
                  num(r["val_score"], ".2f"), r["stop_reason"]] for _, r in df.iterrows()]
    agree_rows = []
    for t, g in df.groupby("target", sort=False):
        r = g.iloc[0]
        n, pairs = int(r["n_selections"]), int(r["n_selections"]) * (int(r["n_selections"]) - 1) // 2
        top_sets = g["selected"].value_counts()
        tied = int((top_sets == top_sets.max()).sum()) > 1
        same = r["identical_pairs"]
        identical = "n/a" if pairs == 0 else f"{round(same * pairs)}/{pairs} ({same:.2f})"
        agree_rows.append([t, str(n), str(r["n_distinct"]), r["most_common"].replace("+", ", "),
                           f"{r['most_common_count']} of {n}" + (", tied" if tied else ""), identical,
                           num(r["mean_jaccard"], ".2f"), r["block_frequency"] or "none", r["note"]])
    parts = ["# Block sets selected per seed", "",
             "Greedy selection (SubTuning) per target and selection seed: the blocks selected (network order; "
             f"{LP_LABEL}: no block, the linear probe), their number, the set's validation score (%) and why "
             "the walk stopped.", "",
             _md_table(["target", "seed", "selected blocks", "blocks", "val score (%)", "stop reason"], seed_rows,
                       ["l", "r", "l", "r", "r", "l"]),
             "", "## Agreement between seeds", "",
             "Per target: the selections, the distinct sets among them, the most common set and how many "
             "selections chose it (ties: the earliest seed's set), the seed pairs whose sets are identical, the "
             "mean Jaccard similarity of the sets over seed pairs (blocks in both over blocks in either; two empty "
             "sets: 1) and how "
             "many selections include each block. Selection variance enters the ± of the main table only for "
             "targets selected per seed; a target selected once reuses that set in every seed.", "",
             _md_table(["target", "selections", "distinct sets", "most common set", "chosen by", "identical pairs",
                        "mean Jaccard", "block frequency", "note"], agree_rows,
                       ["l", "r", "r", "l", "r", "r", "r", "l", "l"])]
    if df.empty:
        parts = parts[:2] + ["No greedy selection ran in this experiment."]
    return "\n".join(parts) + "\n"


def selection_table(state_files: Sequence[PathLike], out_csv: PathLike, out_md: PathLike) -> pd.DataFrame:
    """The block sets each seed's greedy selection picked and how often they agree (tables/selection.*).

    ``state_files``: the final selection states (``select/<target>/seed<S>/selected.json``), one per
    target and selection seed; every file is checked before anything is written. CSV:
    :func:`selection_rows`; markdown: :func:`_selection_md`.
    """
    df = selection_rows(state_files)
    _write_csv(df, out_csv)
    _write_text(_selection_md(df), out_md)
    return df
