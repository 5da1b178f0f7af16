"""The pair grid: every pair of blocks fine-tuned together, a heatmap (SubTuning Fig. 3)."""

from __future__ import annotations

import argparse
import math
from typing import Sequence

import pandas as pd

from ... import SubtuneError
from ..format import PathLike, figure, save_png, write_csv
from ..load import load_scores, members
from ..registry import add_outputs, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", nargs="+", required=True, help="score files (all shards)")
    add_outputs(p, "csv", "png")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return pairs(a.scores, a.out_csv, a.out_png)


@table("pairs", arguments=add_arguments, run=run)
def pairs(score_files: PathLike | Sequence[PathLike], out_csv: PathLike, out_png: PathLike) -> pd.DataFrame:
    """The pair grid: every pair of blocks (and each block alone, the diagonal) as a heatmap.

    CSV: block_a, block_b (network order, a <= b; a == b is the block alone),
    trainable_params, val_acc (%). PNG: symmetric block x block heatmap with values.
    """
    head, results, blocks = load_scores(score_files, ("pairs",))
    pos = {b: i for i, b in enumerate(blocks)}
    table = []
    for r in results:
        mem = members(r)
        if not 1 <= len(mem) <= 2 or any(b not in pos for b in mem):
            raise SubtuneError(f"{head['file']}: block set {r['key']!r} is not a single block or a pair of known "
                               "blocks")
        a, b = sorted(mem, key=pos.__getitem__) if len(mem) == 2 else (mem[0], mem[0])
        table.append({"block_a": a, "block_b": b, "trainable_params": r.get("trainable_params"),
                      "val_acc": round(100 * r["score"], 4)})
    df = pd.DataFrame(table).sort_values(["block_a", "block_b"], key=lambda s: s.map(pos)).reset_index(drop=True)
    write_csv(df, out_csv)

    used = sorted(set(df["block_a"]) | set(df["block_b"]), key=pos.__getitem__)
    grid = pd.DataFrame(math.nan, index=used, columns=used)
    for a, b, v in zip(df["block_a"], df["block_b"], df["val_acc"]):
        grid.loc[a, b] = grid.loc[b, a] = v
    import numpy as np

    vals = grid.to_numpy(dtype=float)
    n = len(used)
    fig = figure(max(4.5, 0.6 * n + 2.5), max(4.0, 0.6 * n + 1.5))
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
    save_png(fig, out_png)
    return df
