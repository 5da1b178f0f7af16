"""Epsilon sensitivity of greedy SubTuning selection: the set each epsilon selects, its accuracy."""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Sequence

import pandas as pd

from ... import SubtuneError
from ..format import LP_LABEL, PathLike, md_table, sample_std, write_csv, write_text
from ..load import as_list, load_runs, load_state, target_seed
from ..registry import add_outputs, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--states", nargs="+", required=True, help="final states of the greedy walks")
    p.add_argument("--runs", nargs="+", required=True, help="final runs of every epsilon's set (SubTuning)")
    p.add_argument("--epsilons", nargs="+", type=float, required=True)
    p.add_argument("--selection-epsilon", type=float, required=True, help="the main selection's epsilon")
    add_outputs(p, "csv", "md")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return epsilon(a.states, a.runs, a.epsilons, a.selection_epsilon, a.out_csv, a.out_md)


@table("epsilon", arguments=add_arguments, run=run)
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
    from ...select import epsilon_sets, key, replay

    eps = sorted({float(e) for e in epsilons} | {float(selection_epsilon)})
    runs = [load_runs([f]).iloc[0] for f in as_list(run_files)]
    by_run: dict[tuple[str, int, str], pd.Series] = {}
    for r in runs:
        by_run[(r["target"], int(r["seed"]), r["blocks"] or "")] = r
    states: dict[str, dict[int | None, dict]] = {}
    walks: dict[str, list[str]] = {}
    for f in as_list(state_files):
        d = load_state(f)
        t, s = target_seed(d, f)
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
                "test_acc_std": round(100 * sample_std(g["test_acc"]), 4),
                "val_acc_mean": round(100 * g["val_acc"].mean(), 4),
                "wall_time_s_mean": round(g["wall_time_s"].mean(), 2),
                "trained_for": " | ".join(dict.fromkeys(trained)),
            })
    df = pd.DataFrame(rows)
    write_csv(df, out_csv)
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
        md_table(["target", "epsilon", "blocks", "rounds", "candidates", "selection time (s)", "val (selection)",
                  "test", "val (runs)", "trained"], md, ["l", "l", "l", "r", "r", "r", "r", "r", "r", "l"]),
        "",
        "The walks: " + "; ".join(f"{t}: {', '.join(w)}" for t, w in walks.items()) + ".",
        "",
    ])
    write_text(text, out_md)
    return df
