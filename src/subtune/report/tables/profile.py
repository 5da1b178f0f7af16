"""The fine-tuning profile: each block fine-tuned alone, round 1 (SubTuning Figs 1-2)."""

from __future__ import annotations

import argparse
import math
from typing import Sequence

import pandas as pd

from ... import SubtuneError
from ..format import LP_LABEL, PathLike, figure, fmt_params, method_style, save_png, write_csv
from ..load import load_scores, members
from ..registry import add_outputs, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", nargs="+", required=True, help="score files (all shards)")
    add_outputs(p, "csv", "png")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return profile(a.scores, a.out_csv, a.out_png)


@table("profile", arguments=add_arguments, run=run)
def profile(score_files: PathLike | Sequence[PathLike], out_csv: PathLike, out_png: PathLike) -> pd.DataFrame:
    """The fine-tuning profile: each block alone (plus the head) and LP (the empty set).

    ``score_files``: round-1 greedy or ``profile`` score files (all shards of one
    target and seed). CSV: block (``(lp)`` for the linear probe), index (network
    order; -1 for LP), trainable_params, val_acc (%), delta_vs_lp (points). PNG:
    :func:`profile_plot`.
    """
    head, results, blocks = load_scores(score_files, ("greedy", "profile"))
    pos = {b: i for i, b in enumerate(blocks)}
    lp = None
    rows = []
    for r in results:
        mem = members(r)
        if not mem:
            lp = r
        elif len(mem) == 1:
            if mem[0] not in pos:
                raise SubtuneError(f"{head['file']}: block {mem[0]!r} not among the file's blocks")
            rows.append(r)
    if not rows:
        raise SubtuneError(f"{head['file']}: no single-block scores (not a fine-tuning profile)")
    rows.sort(key=lambda r: pos[members(r)[0]])
    lp_acc = 100 * lp["score"] if lp else math.nan
    table = [{"block": LP_LABEL, "index": -1, "trainable_params": lp.get("trainable_params"),
              "val_acc": round(lp_acc, 4), "delta_vs_lp": 0.0}] if lp else []
    for r in rows:
        acc = 100 * r["score"]
        table.append({"block": members(r)[0], "index": pos[members(r)[0]],
                      "trainable_params": r.get("trainable_params"), "val_acc": round(acc, 4),
                      "delta_vs_lp": round(acc - lp_acc, 4) if lp else math.nan})
    df = pd.DataFrame(table, columns=["block", "index", "trainable_params", "val_acc", "delta_vs_lp"])
    write_csv(df, out_csv)

    profile_plot(df, f"{head.get('target', '?')} (seed {head.get('seed', '?')})", out_png)
    return df


def profile_plot(df: pd.DataFrame, title: str, out_png: PathLike):
    """:func:`profile`'s bars (validation accuracy per block fine-tuned alone, in SubTuning's colour, each
    annotated with its trainable parameters) and LP as a horizontal line in LP's colour
    (:func:`~subtune.report.format.method_style`); the legend below the axes, off the bars. The Figure."""
    bars = df[df["index"] >= 0]
    lp = df[df["index"] < 0]
    lp_acc = float(lp["val_acc"].iloc[0]) if len(lp) else math.nan
    fig = figure(max(5.0, 0.55 * len(bars) + 2), 4.3)
    ax = fig.add_subplot()
    x = range(len(bars))
    ax.bar(x, bars["val_acc"], color=method_style("subtuning")[0], alpha=0.5, label="fine-tune one block + head")
    for xi, (acc, n) in enumerate(zip(bars["val_acc"], bars["trainable_params"])):
        ax.annotate(fmt_params(n), (xi, acc), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7, rotation=90)
    if len(lp):
        ax.axhline(lp_acc, color=method_style("lp")[0], linestyle="--", label=f"LP {lp_acc:.2f}%")
    vals = list(bars["val_acc"]) + ([lp_acc] if len(lp) else [])
    lo, hi = min(vals), max(vals)
    pad = max(1.0, 0.15 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + 2.5 * pad))
    ax.set_xticks(list(x), list(bars["block"]), rotation=45, ha="right")
    ax.set_xlabel("fine-tuned block (trainable parameters above the bar)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Fine-tuning profile: {title}")
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    save_png(fig, out_png)
    return fig
