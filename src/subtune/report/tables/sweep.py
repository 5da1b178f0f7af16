"""The data-size sweep: test accuracy against training-set size (SubTuning Fig. 4)."""

from __future__ import annotations

import argparse
from typing import Sequence

import pandas as pd

from ...methods import method_label, method_order
from ..format import (LP_LABEL, PathLike, figure, fmt_params, legend_outside, log_ticks, method_styles, save_png,
                      write_csv)
from ..load import load_runs
from ..published import attach_published, load_references
from ..registry import add_outputs, add_references, table
from ..summary import summarize


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True)
    add_references(p)
    add_outputs(p, "csv", "png")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return sweep(a.runs, a.out_csv, a.out_png, references=a.references, backbone=a.backbone)


@table("sweep", arguments=add_arguments, run=run)
def sweep(run_files: Sequence[PathLike], out_csv: PathLike, out_png: PathLike,
          references: Sequence[PathLike] | None = None, backbone: str | None = None) -> pd.DataFrame:
    """Test accuracy against training-set size, per method (mean ± sample std over seeds).

    CSV: method, target, train_size, n_seeds, seeds, test_acc_mean, test_acc_std,
    val_acc_mean, val_acc_std, trainable_params, ..., blocks (the distinct
    block sets the runs fine-tuned, SubTuning: selected at that size; empty for
    other methods) (percent). PNG: :func:`sweep_plot`.
    """
    runs = load_runs(run_files, need_train_size=True)
    summ = summarize(runs, ["method", "target", "train_size"])
    got = (runs.dropna(subset=["blocks"]).groupby(["method", "target", "train_size"], sort=False)["blocks"]
               .agg(lambda s: " | ".join(dict.fromkeys(b or LP_LABEL for b in s))))
    summ["blocks"] = [got.get(k, "") for k in zip(summ["method"], summ["target"], summ["train_size"])]
    targets = list(dict.fromkeys(runs["target"]))
    morder = {m: i for i, m in enumerate(method_order(summ["method"]))}
    summ = (summ.assign(_m=summ["method"].map(morder), _t=summ["target"].map(targets.index))
                .sort_values(["_m", "_t", "train_size"]).drop(columns=["_m", "_t"]).reset_index(drop=True))
    summ["train_size"] = summ["train_size"].astype(int)
    summ = attach_published(summ, load_references(references), backbone)
    write_csv(summ, out_csv)

    sweep_plot(summ, targets, out_png)
    return summ


def sweep_plot(summ: pd.DataFrame, targets: list[str], out_png: PathLike):
    """Test accuracy (mean ± std) against training-set size (log x), a line per method (per method and target
    when there are several: the method's colour and marker, a line style per target); each point with blocks
    annotated with them; published numbers as crosses; the legend beside the axes. The Figure."""
    from matplotlib.lines import Line2D

    style = method_styles(method_order(summ["method"]))
    dashes = ["-", "--", ":", "-."]
    fig = figure(7.6, 4.2)
    ax = fig.add_subplot()
    handles = []
    for (m, t), g in summ.groupby(["method", "target"], sort=False):
        label = method_label(m) + (f" ({t})" if len(targets) > 1 else "")
        col, mk = style[m]
        ls = dashes[targets.index(t) % len(dashes)] if t in targets else "-"
        ax.errorbar(g["train_size"], g["test_acc_mean"], yerr=g["test_acc_std"], marker=mk, capsize=3, color=col,
                    linestyle=ls, label=label)
        handles.append(Line2D([], [], color=col, marker=mk, linestyle=ls, label=label))
        for n, acc, b in zip(g["train_size"], g["test_acc_mean"], g["blocks"]):
            if b:  # the blocks selected at this size
                ax.annotate(b.replace("+", ", "), (n, acc), xytext=(4, -10), textcoords="offset points", fontsize=6,
                            color=col)
        pub = g.dropna(subset=["published"]) if "published" in g else g.iloc[:0]
        if len(pub):
            ax.plot(pub["train_size"], pub["published"], linestyle="none", marker="x", markersize=8, color=col,
                    label=f"{label}, published")
            handles.append(Line2D([], [], color=col, marker="x", markersize=8, linestyle="none",
                                  label=f"{label}, published"))
    ax.set_xscale("log")
    sizes = sorted(set(summ["train_size"]))
    log_ticks(ax.xaxis, fmt_params)
    if len(sizes) <= 12:  # the sizes trained, each labelled
        ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("training examples")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against training-set size" + (f": {targets[0]}" if len(targets) == 1 else ""))
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    legend_outside(fig, handles)
    save_png(fig, out_png)
    return fig
