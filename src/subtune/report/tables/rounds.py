"""The greedy selection rounds: the block chosen and the gain, per round of every target and seed."""

from __future__ import annotations

import argparse
import math
from typing import Sequence

import pandas as pd

from ... import SubtuneError
from ..format import LP_LABEL, PathLike, write_csv
from ..load import as_list, load_state, target_seed
from ..registry import add_outputs, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--states", nargs="*", default=[], help="final selection states (none: an empty table)")
    add_outputs(p, "csv")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return rounds(a.states, a.out_csv)


@table("rounds", arguments=add_arguments, run=run)
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
    for f in as_list(state_files):
        d = load_state(f)
        t, s = target_seed(d, f)
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
    write_csv(df, out_csv)
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
