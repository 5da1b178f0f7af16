"""The validation curves of the tuned grids: every point tried, the choice, the edges."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import pandas as pd

from ... import SubtuneError
from ...methods import method_label, method_order
from ..format import (PathLike, figure, fmt_params, legend_outside, log_ticks, md_table, method_styles, save_png,
                      write_csv, write_text)
from ..load import as_list, load_tune
from ..registry import add_outputs, table


def _point_values(r: dict) -> dict[str, Any]:
    """A grid point's values, training and method keys together."""
    return {**(r.get("train") or {}), **(r.get("params") or {})}


def grid_rows(tune_files: Sequence[PathLike]) -> pd.DataFrame:
    """One row per (method, target, point tried) of ``tune`` result files (:func:`grid_table`'s CSV)."""
    rows, keys = [], []
    for f in as_list(tune_files):
        d = load_tune(f)
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


def grid_plot(df: pd.DataFrame, out_png: PathLike):
    """Validation accuracy against each tuned value: a column per target, a row per key, a line per method; the
    Figure.

    Each method has its own colour and marker (:func:`~subtune.report.format.method_style`); extension points are
    hollow, the chosen point is ringed; log axes are labelled in plain numbers.
    """
    from matplotlib.lines import Line2D

    targets, keys = list(dict.fromkeys(df["target"])), _curve_keys(df)
    methods = method_order(df["method"])
    style = method_styles(methods)
    rows = max(1, len(keys))
    fig = figure(3.6 * len(targets) + 1.8, 2.9 * rows)
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
                ax.plot(x, y, color=col, marker=mk, markersize=5, linewidth=1.2, label=method_label(m))
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
                log_ticks(ax.xaxis, fmt_params)
            ax.set_xlabel(key)
            ax.set_ylabel("validation accuracy (%)")
            ax.set_title(t, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=style[m][0], marker=style[m][1], label=method_label(m)) for m in methods]
    handles += [Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="gray",
                       label="extension point"),
                Line2D([], [], linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                       markeredgecolor="black", label="chosen")]
    legend_outside(fig, handles, fontsize=7)
    fig.suptitle("Validation accuracy of each value tried (other keys at the chosen values)", fontsize=10)
    save_png(fig, out_png)
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tunes", nargs="+", required=True, help="tune result files (tune/<target>/<method>.json)")
    add_outputs(p, "csv", "md", "png")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return grid_table(a.tunes, a.out_csv, a.out_md, a.out_png)


@table("grid", arguments=add_arguments, run=run)
def grid_table(tune_files: Sequence[PathLike], out_csv: PathLike, out_md: PathLike, out_png: PathLike) -> pd.DataFrame:
    """The validation curves of the tuned grids: every point ``tune`` tried, per method and target.

    CSV (one row per method, target and point, in the order tried): method, target, index, point (its
    label), value_<key> (each key's value; empty where the method's grid has no such key), val_acc
    (percent), chosen, source (grid, or extension: tried beyond an edge of the grid, :mod:`subtune.tune`),
    edge (on the chosen row: the keys whose chosen value is still on an edge of the values tried).
    Markdown: the same as a table, and the list of choices still on an edge. PNG: :func:`grid_plot`.
    """
    df = grid_rows(tune_files)
    write_csv(df, out_csv)
    vcols = [c for c in df.columns if c.startswith("value_")]
    rows = [[method_label(r["method"]), r["target"], r["point"], f"{r['val_acc']:.2f}",
             "✓" if r["chosen"] else "", r["source"], r["edge"]] for _, r in df.iterrows()]
    parts = ["# Validation curves of the tuned hyperparameters", "",
             "Every point each method's tuning trained on the training split (selection seed) and scored on the "
             "validation split, in the order tried: the grid's points, then the extension points (a choice on the "
             "smallest or largest value of a numeric key tries the next value beyond it, while the choice stays "
             "there, up to tuning.extend values per key and direction). The chosen point (✓) has the best "
             "validation accuracy (ties: the first point).", "",
             md_table(["method", "target", "point", "val acc (%)", "chosen", "source", "still on an edge"], rows,
                      ["l", "l", "l", "r", "l", "l", "l"])]
    edges = df[df["chosen"] & (df["edge"] != "")]
    parts += ["", "## Choices still on an edge", ""]
    parts += ([f"- {method_label(r['method'])} on {r['target']}: {r['point']} ({r['edge']}): the optimum may lie "
               "beyond the values tried." for _, r in edges.iterrows()] if len(edges) else
              ["None: every choice lies inside the values tried."])
    write_text("\n".join(parts) + "\n", out_md)
    grid_plot(df.drop(columns=[c for c in vcols if df[c].isna().all()]), out_png)
    return df
