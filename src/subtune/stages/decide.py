"""``decide``: one greedy round's scores applied to the selection state (:func:`subtune.select.decide`)."""

from __future__ import annotations

import argparse

from .. import SubtuneError
from . import Stage
from ._common import existing, json_arg


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--state", help="state after the previous round (absent for round 1)")
    s.add_argument("--scores", nargs="+", required=True, help="score files of this round (all shards)")
    s.add_argument("--selection", type=json_arg, default={})
    s.add_argument("--out", required=True)


def run(a: argparse.Namespace) -> None:
    from .. import select
    from ..io import read_json, write_json

    sel_cfg = select.SelectionConfig.from_dict(a.selection)
    shards = [read_json(existing(p)) for p in a.scores]
    if a.state:
        state = read_json(existing(a.state))
        if state["config"] != sel_cfg.to_dict():
            raise SubtuneError(f"{a.state}: selection config differs from --selection (rerun from round 1)")
    else:
        state = select.initial_state(shards[0]["blocks"], sel_cfg)
    scores = {select.unkey(r["key"]): r["score"] for sh in shards for r in sh["results"]}
    # Candidates a selection budget stopped early: recorded, never chosen (subtune.halving).
    dropped = {select.unkey(r["key"]): r["dropped_at"] for sh in shards for r in sh["results"] if "dropped_at" in r}
    if not state["done"]:
        state = select.decide(state, scores, dropped)
        costs = [sh["cost"] for sh in shards if isinstance(sh.get("cost"), dict)]
        if costs:
            state["rounds"][-1]["cost"] = _round_cost(costs)
    write_json(a.out, state)
    last = state["rounds"][-1] if state["rounds"] else {}
    print(
        f"round {last.get('round')}: chose {last.get('chosen')} (gain {last.get('gain', 0):+.4f}, "
        f"accepted {last.get('accepted')}); selected {state['selected']}; done {state['done']}"
    )


def _round_cost(costs: list[dict]) -> dict:
    """The round's cost over its shards: the candidates each rung dropped, the epochs, time and FT equivalents."""
    cost = {**costs[0], "dropped": {}}
    for c in costs:
        for rung, keys in (c.get("dropped") or {}).items():
            cost["dropped"].setdefault(rung, []).extend(keys)
    for k in ("candidate_epochs", "exact_candidate_epochs", "wall_time_s", "ft_equiv"):
        cost[k] = sum(c.get(k) or 0 for c in costs)
    return cost


STAGE = Stage("decide", "apply one greedy round's scores and write the next selection state", add_arguments, run,
              order=70, heavy=False)
