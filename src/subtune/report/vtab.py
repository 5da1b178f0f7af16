"""VTAB-1k's averages: the two conventions published tables use, of ours and of the published numbers, for the
main table's last columns and its *VTAB-1k averages* section."""

from __future__ import annotations

import math
import statistics

import pandas as pd

from ..methods import method_label, method_order
from .format import md_table

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


def vtab_count(counts: dict[str, int]) -> str:
    """How many VTAB-1k tasks, and of each group: ``4 of 19 (Natural 2/7, Specialized 1/4, Structured 1/8)``."""
    n = sum(counts.values())
    return (f"{n} of {len(VTAB_GROUP_OF)} (" + ", ".join(f"{g} {counts.get(g, 0)}/{len(ts)}"
                                                        for g, ts in VTAB_GROUPS.items()) + ")")


def vtab_rows(summ: pd.DataFrame) -> pd.DataFrame:
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
                         "tasks": vtab_count(counts), "published": round(pub_v, 4) if complete else math.nan,
                         "diff": round(ours_v - pub_v, 4) if complete else math.nan,
                         "published_source": (f"mean over the same tasks of: {sources}" if complete else "")})
    return pd.DataFrame(rows)


def vtab_md(vt: pd.DataFrame) -> list[str]:
    """The main table's *VTAB-1k averages* section (nothing without VTAB-1k rows)."""
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
            md_table(["method", "tasks", "mean of tasks", "mean of group means", "published: mean of tasks",
                      "published: mean of group means", "Δ tasks", "Δ group means"], rows,
                     ["l", "l", "r", "r", "r", "r", "r", "r"])]
