"""Runs summarised over seeds (mean and sample std, in percent) and put in table order: shared by the main
table and the data-size sweep, so both average and order alike."""

from __future__ import annotations

import pandas as pd

from ..methods import method_order
from .format import sample_std


def summarize(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per ``by`` group of :func:`~subtune.report.load.load_runs` rows: seeds, accuracies (percent),
    parameters, wall time."""
    g = df.groupby(by, sort=False)
    out = g.agg(
        n_seeds=("seed", "size"),
        seeds=("seed", lambda s: ",".join(str(x) for x in sorted(s))),
        test_acc_mean=("test_acc", "mean"),
        test_acc_std=("test_acc", sample_std),
        val_acc_mean=("val_acc", "mean"),
        val_acc_std=("val_acc", sample_std),
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


def ordered(df: pd.DataFrame, targets: list[str]) -> pd.DataFrame:
    """Rows in table order: methods in the registry's order, then targets in ``targets``' order."""
    morder = {m: i for i, m in enumerate(method_order(df["method"]))}
    torder = {t: i for i, t in enumerate(targets)}
    return (df.assign(_m=df["method"].map(morder), _t=df["target"].map(torder))
              .sort_values(["_m", "_t"]).drop(columns=["_m", "_t"]).reset_index(drop=True))
