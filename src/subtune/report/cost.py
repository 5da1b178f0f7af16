"""The cost of every method: the selection stage's candidates, wall time and its equivalent in plain full
fine-tunes, the main table's *Cost* section, the accuracy-against-cost plot and the accuracy-against-parameters
plot."""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Sequence

import pandas as pd

from .. import SubtuneError
from ..methods import method_label, method_needs, method_order
from .format import (PathLike, figure, fmt_params, fmt_seconds, fmt_times, legend_outside, log_ticks, md_table,
                     method_styles, panels, save_png)
from .load import as_list, load_json, load_state, target_seed

COST_COLUMNS = ["selection_candidates", "selection_wall_time_s", "selection_ft_equiv_flops", "ft_wall_time_s",
                "selection_ft_units", "selection_ft_basis", "total_time_s"]


def selection_costs(selected_files: Sequence[PathLike] | None,
                    surgical_files: Sequence[PathLike] | None) -> dict[tuple[str, str], dict[str, float]]:
    """(needs, target) -> the selection stage's cost, mean over selection seeds: candidates trained, wall time
    (s) and FLOPs-estimated plain full fine-tunes (NaN where the files recorded none).

    ``selection``: the greedy rounds of a final selection state (each round's ``scores`` and recorded
    ``cost``); ``surgical``: a Surgical group score file (its ``results`` and ``cost``).
    """
    per: dict[tuple[str, str], list[dict[str, float]]] = {}

    def num(c: Any, k: str) -> float:
        return float(c[k]) if isinstance(c, dict) and isinstance(c.get(k), (int, float)) else math.nan

    for f in as_list(selected_files or []):
        d = load_state(f)
        t, _ = target_seed(d, f)
        rs = d["rounds"]
        costs = [r.get("cost") for r in rs]
        per.setdefault(("selection", t), []).append({
            "candidates": float(sum(len(r.get("scores") or {}) for r in rs)),
            "wall_time_s": sum(num(c, "wall_time_s") for c in costs) if rs else math.nan,
            "ft_equiv": sum(num(c, "ft_equiv") for c in costs) if rs else math.nan})
    for f in as_list(surgical_files or []):
        d = load_json(f)
        if d.get("kind") != "surgical" or not isinstance(d.get("results"), list):
            raise SubtuneError(f"{f}: not a Surgical score file")
        t = str(d.get("target") or target_seed(d, f)[0])
        c = d.get("cost")
        wall = num(c, "wall_time_s")
        if math.isnan(wall):  # older files: the candidates' own training times
            wall = sum(float(r.get("wall_time_s") or 0.0) for r in d["results"])
        per.setdefault(("surgical", t), []).append({"candidates": float(len(d["results"])), "wall_time_s": wall,
                                                    "ft_equiv": num(c, "ft_equiv")})
    return {k: {m: statistics.fmean(x[m] for x in v) for m in ("candidates", "wall_time_s", "ft_equiv")}
            for k, v in per.items()}


def attach_costs(summ: pd.DataFrame, costs: dict[tuple[str, str], dict[str, float]]) -> pd.DataFrame:
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


def cost_md(summ: pd.DataFrame, targets: list[str]) -> list[str]:
    """The main table's *Cost* section: training, selection and total cost per method and target."""
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
            md_table(["method", "target", "trainable", "training (s)", "selection candidates", "selection (s)",
                      "selection (FT units)", "total (s)", "test acc (%)"], rows,
                     ["l", "l", "r", "r", "r", "r", "r", "r", "r"])]


def seconds_per_ft(summ: pd.DataFrame, target: str) -> tuple[float, str]:
    """One plain full fine-tune on ``target`` in seconds, and what it rests on: the FT method's final run (mean
    wall time over seeds) where FT ran, else the FLOPs estimate a selection recorded (its wall time over its
    FT units; the median over the selecting methods); NaN and '' where neither is known."""
    rows = summ[summ["target"] == target]
    ft = pd.to_numeric(rows["ft_wall_time_s"], errors="coerce").dropna()
    if len(ft) and ft.iloc[0] > 0:
        return float(ft.iloc[0]), "FT's final run"
    est = [w / u for w, u, b in zip(rows["selection_wall_time_s"], rows["selection_ft_units"],
                                    rows["selection_ft_basis"])
           if b == "FLOPs" and not pd.isna(w) and not pd.isna(u) and u > 0 and w > 0]
    return (statistics.median(est), "FLOPs estimate") if est else (math.nan, "")


def _style_panel(ax, k: int, target: str, xlabel: str, fmt: Callable[[float], str]) -> None:
    """Style panel ``k`` (of target ``target``) of an accuracy-against-cost figure: a log x axis with plain-number
    ticks (``fmt``), the y label on the first panel of each row of four, grids and the target as title.

    One helper so that the cost and the parameters plots keep looking alike.
    """
    ax.set_xscale("log")
    log_ticks(ax.xaxis, fmt)
    ax.set_xlabel(xlabel)
    if k % 4 == 0:
        ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.set_title(target, fontsize=10)


def cost_plot(summ: pd.DataFrame, targets: list[str], out_png: PathLike):
    """Test accuracy (mean ± std over seeds) against cost, a panel per target; the Figure.

    Bottom axis: wall time in seconds (log); top axis: the same in plain full fine-tunes (:func:`seconds_per_ft`;
    absent where neither FT nor a FLOPs estimate gives one). Each method has its own colour and marker
    (:func:`~subtune.report.format.method_style`): a filled point at one final run plus, for methods that need a
    selection, the selection; for those a hollow point at the final run alone, joined by a dotted line.
    """
    from matplotlib.lines import Line2D

    methods = method_order(summ["method"])
    style = method_styles(methods)
    n = len(targets)
    fig = figure(min(4, n) * 3.9 + 1.9, 3.9 * math.ceil(n / 4))
    for k, (ax, t) in enumerate(zip(panels(fig, n), targets)):
        for m in methods:
            sub = summ[(summ["method"] == m) & (summ["target"] == t)]
            if sub.empty or pd.isna(sub["total_time_s"].iloc[0]):
                continue
            r = sub.iloc[0]
            col, mk = style[m]
            ax.errorbar([r["total_time_s"]], [r["test_acc_mean"]], yerr=[r["test_acc_std"]], marker=mk, capsize=3,
                        color=col, linestyle="none", label=method_label(m))
            if not pd.isna(r["selection_wall_time_s"]):  # the final run alone, joined to the total
                ax.plot([r["wall_time_s_mean"], r["total_time_s"]], [r["test_acc_mean"]] * 2, color=col, alpha=0.6,
                        linestyle=":")
                ax.plot([r["wall_time_s_mean"]], [r["test_acc_mean"]], linestyle="none", marker=mk, color=col,
                        markerfacecolor="white", markeredgecolor=col)
        _style_panel(ax, k, t, "wall time (s)", fmt_seconds)
        per, basis = seconds_per_ft(summ, t)
        if per > 0:
            top = ax.secondary_xaxis("top", functions=(lambda x, p=per: x / p, lambda x, p=per: x * p))
            log_ticks(top.xaxis, fmt_times)
            top.set_xlabel(f"plain full fine-tunes ({basis})", fontsize=8)
    handles = [Line2D([], [], color=style[m][0], marker=style[m][1], linestyle="none", label=method_label(m))
               for m in methods if ((summ["method"] == m) & summ["total_time_s"].notna()).any()]
    if any(summ["selection_wall_time_s"].notna()):
        handles += [Line2D([], [], color="gray", marker="o", linestyle="none", label="final run + selection"),
                    Line2D([], [], color="gray", marker="o", markerfacecolor="white", linestyle=":",
                           label="final run alone")]
    legend_outside(fig, handles)
    fig.suptitle("Test accuracy against cost (filled: final run + selection; grid tuning not counted)", fontsize=10)
    save_png(fig, out_png)
    return fig


def params_plot(summ: pd.DataFrame, targets: list[str], out_png: PathLike):
    """Test accuracy (mean ± std over seeds) against trainable parameters (log), a point per method, a panel per
    target (SubTuning's accuracy-against-parameters comparison); the Figure.

    Where the seeds trained different numbers of parameters (per-seed selections: SubTuning's blocks, Surgical's
    group) the point sits at their mean and a horizontal bar spans their range. Each method has its own colour and
    marker.
    """
    from matplotlib.lines import Line2D

    methods = method_order(summ["method"])
    style = method_styles(methods)
    n = len(targets)
    fig = figure(min(4, n) * 3.9 + 1.9, 3.7 * math.ceil(n / 4))
    for k, (ax, t) in enumerate(zip(panels(fig, n), targets)):
        for m in methods:
            sub = summ[(summ["method"] == m) & (summ["target"] == t)]
            if sub.empty or pd.isna(sub["trainable_params"].iloc[0]) or sub["trainable_params"].iloc[0] <= 0:
                continue
            r = sub.iloc[0]
            col, mk = style[m]
            lo, hi = r.get("trainable_params_min", r["trainable_params"]), r.get("trainable_params_max",
                                                                                 r["trainable_params"])
            xerr = None if pd.isna(lo) or lo == hi else [[r["trainable_params"] - lo], [hi - r["trainable_params"]]]
            ax.errorbar([r["trainable_params"]], [r["test_acc_mean"]], yerr=[r["test_acc_std"]], xerr=xerr,
                        marker=mk, capsize=3, color=col, linestyle="none", label=method_label(m))
        _style_panel(ax, k, t, "trainable parameters", fmt_params)
    legend_outside(fig, [Line2D([], [], color=style[m][0], marker=style[m][1], linestyle="none",
                                label=method_label(m)) for m in methods])
    fig.suptitle("Test accuracy against trainable parameters (mean ± std over seeds)", fontsize=10)
    save_png(fig, out_png)
    return fig
