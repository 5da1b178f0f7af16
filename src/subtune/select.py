"""Greedy block selection (SubTuning), pure: it only sees a scorer.

The fine-tuning profile is round 1 of forward selection: every block alone
(plus the head), and the empty set (the linear probe) as the baseline. Each
later round tries adding every remaining block to the current set and keeps
the best. The selection state is plain JSON so that the workflow can run one
round per job (``subtune score`` then ``subtune decide``) and spread a
round's candidates over several jobs.

Two strategies, as in the authors' ``GreedySubsetSearch``
(src/greedy_subset_selection.py of github.com/talswisa/SubTuning):
``forward`` starts from the empty set (their ``greedy_start: non``) and each
round adds the block whose addition scores best; ``backward`` starts from
every block, i.e. full fine-tuning (their ``all``, the start of their only
ViT greedy script), and each round removes the block whose removal scores
best. Backward elimination may end at the empty set, the linear probe (their
loop runs as many rounds as there are blocks).

Stopping rules (``stop_rule``); ``best`` is the best score of the sets the
walk has accepted so far (the start set included):

- ``code``, what the authors' ``search`` does, the same for both strategies:
  follow the round's best move while its score is at least ``best -
  epsilon``; stop at the first move more than ``epsilon`` below ``best``.
  The answer is the best-scoring set seen (a later set replaces it only when
  strictly better). Departure: the authors' code has no ``k``; ours still
  stops forward selection at ``k`` blocks (``k: null`` for no limit).
- ``paper`` (default), forward: accept the round's best addition only if it
  improves the current score by at least ``epsilon`` (the current set is
  then also the best, so this is the same as comparing with ``best``);
  otherwise stop with the current set. Also stop at ``k`` blocks.
- ``paper``, backward: accept the round's best removal while its score is at
  least ``best - epsilon`` -- compared with the best so far, not with the
  previous round, so a chain of small losses cannot walk far below the best
  (12 removals each costing 0.009 with epsilon 0.01 stop after the first);
  the answer is the last accepted, i.e. smallest, set: the fewest blocks
  within ``epsilon`` of the best. ``k`` is not used.

The remaining difference between the two rules under ``backward`` is only
the answer: ``code`` returns the best-scoring set on the path (often the full
set, when no removal strictly improves), ``paper`` the smallest set on it
within ``epsilon`` of that best. The walk and the stop are the same.

Epsilon enters only the accept test, never the choice of a round's move
(the best-scoring candidate, ties by network order) nor the scores. So two
selections that differ only in epsilon walk the same path until one of them
stops, and one walk gives the answer for every epsilon that stops no later
(:func:`replay`, :func:`epsilon_sets`). Which epsilon walks furthest depends
on the rule (:func:`walk_epsilon`): under ``paper`` forward a move is accepted
when ``gain >= epsilon``, so the **smallest** epsilon walks furthest; under
``code`` (both strategies) and ``paper`` backward when ``score >= best -
epsilon``, so the **largest** does. ``k`` stops every epsilon at the same
round. This is exact (the same floating-point gains and comparisons), also
under a selection budget: halving (:mod:`subtune.halving`) drops candidates
by their rung scores, which do not depend on epsilon either.

Ties are broken by network order (the earliest block wins), so a selection
is a function of the scores alone. Scores are accuracies as fractions
(epsilon 0.01 = one point), computed on validation data only: a held-out
validation split or k-fold cross-validation on the training split. The test
split is not an input of anything here.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

from . import SubtuneError, dataclass_from_dict

BlockSet = tuple[str, ...]
Scorer = Callable[[list[BlockSet]], dict[BlockSet, float]]

#: Scores are accuracies, fractions of a count of correct images (or means of such fractions over folds), so
#: two scores closer than this are the same score seen through floating-point rounding: 1e-9 is far below one
#: image of any split (1/200 = 0.005 on VTAB-1k's val200). Every comparison of scores, and of a score's gain
#: with epsilon, goes through it: 0.945 - 0.935 is 0.009999999999999898 in floats, a gain of exactly two images
#: on 200, and the paper rule accepts it against epsilon 0.01.
TOL = 1e-9


def at_least(a: float, b: float) -> bool:
    """``a >= b`` for scores (equal within :data:`TOL`)."""
    return a >= b - TOL


def above(a: float, b: float) -> bool:
    """``a > b`` for scores (more than :data:`TOL` above)."""
    return a > b + TOL


@dataclass
class SelectionConfig:
    strategy: str = "forward"
    stop_rule: str = "paper"
    k: int | None = 3
    epsilon: float = 0.01
    scoring: str = "val"
    folds: int = 5

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "selection") -> "SelectionConfig":
        cfg = dataclass_from_dict(cls, d, where)
        if cfg.strategy not in ("forward", "backward"):
            raise SubtuneError(f"{where}.strategy must be forward or backward, not {cfg.strategy!r}")
        if cfg.stop_rule not in ("paper", "code"):
            raise SubtuneError(f"{where}.stop_rule must be paper or code, not {cfg.stop_rule!r}")
        if cfg.scoring not in ("val", "cv"):
            raise SubtuneError(f"{where}.scoring must be val or cv, not {cfg.scoring!r}")
        if cfg.k is not None and cfg.k < 1:
            raise SubtuneError(f"{where}.k must be at least 1")
        if cfg.scoring == "cv" and cfg.folds < 2:
            raise SubtuneError(f"{where}.folds must be at least 2")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def key(blocks: Iterable[str]) -> str:
    """JSON key of a block set ("" is the empty set, the linear probe)."""
    return "+".join(blocks)


def unkey(s: str) -> BlockSet:
    return tuple(s.split("+")) if s else ()


def initial_state(blocks: Sequence[str], cfg: SelectionConfig) -> dict[str, Any]:
    if not blocks:
        raise SubtuneError("no candidate blocks to select from")
    start = [] if cfg.strategy == "forward" else list(blocks)
    return {
        "config": cfg.to_dict(),
        "blocks": list(blocks),
        "current": start,
        "current_score": None,
        "selected": start,
        "score": None,
        "rounds": [],
        "done": False,
        "stop_reason": None,
    }


def _ordered(blocks: Sequence[str], s: Iterable[str]) -> BlockSet:
    pos = {b: i for i, b in enumerate(blocks)}
    return tuple(sorted(s, key=pos.__getitem__))


def candidates(state: dict[str, Any]) -> list[BlockSet]:
    """The block sets this round scores (the base set first when its score is unknown)."""
    if state["done"]:
        return []
    blocks = state["blocks"]
    cur = set(state["current"])
    base = _ordered(blocks, cur)
    out: list[BlockSet] = [base] if state["current_score"] is None else []
    if state["config"]["strategy"] == "forward":
        out += [_ordered(blocks, cur | {b}) for b in blocks if b not in cur]
    else:
        out += [_ordered(blocks, cur - {b}) for b in blocks if b in cur]  # down to the empty set (LP)
    return out


def reference(state: dict[str, Any]) -> list[BlockSet]:
    """The round's reference set (scored, never chosen): the base set when its score is unknown."""
    if state["done"] or state["current_score"] is not None:
        return []
    return [_ordered(state["blocks"], state["current"])]


def decide(state: dict[str, Any], scores: dict[BlockSet, float],
           dropped: dict[BlockSet, int] | None = None) -> dict[str, Any]:
    """Apply one round's scores; return the next state (the input is not modified).

    ``dropped``: candidates a selection budget stopped early (set -> the epoch
    they stopped at, :mod:`subtune.halving`). Their scores are recorded but
    they are never chosen: a score after fewer epochs must not beat a
    full-schedule one.
    """
    dropped = dict(dropped or {})
    cfg = SelectionConfig(**state["config"])
    blocks = state["blocks"]
    cands = candidates(state)
    missing = [key(c) or "(empty)" for c in cands if c not in scores]
    if missing:
        raise SubtuneError(f"round {len(state['rounds']) + 1}: no score for candidate(s) {', '.join(missing)}")
    new = {**state, "rounds": list(state["rounds"])}
    base = _ordered(blocks, state["current"])
    base_score = state["current_score"] if state["current_score"] is not None else scores[base]
    if state["score"] is None:
        new["selected"], new["score"] = list(base), base_score
    # the best score of the accepted sets (each accepted set is the base of the round after it)
    best_so_far = max([base_score, *(r["base_score"] for r in state["rounds"])])
    if base in dropped and base in cands:
        raise SubtuneError(f"round {len(state['rounds']) + 1}: the reference set {key(base) or '(empty)'} was "
                           "stopped early")
    moves = [c for c in cands if c != base and c not in dropped]
    if not moves and any(c != base for c in cands):
        raise SubtuneError(f"round {len(state['rounds']) + 1}: every candidate was stopped early")
    rnd: dict[str, Any] = {
        "round": len(state["rounds"]) + 1,
        "base": list(base),
        "base_score": base_score,
        "scores": {key(c): scores[c] for c in cands},
    }
    if dropped:
        rnd["dropped"] = {key(c): int(e) for c, e in dropped.items() if c in cands}
    if not moves:
        new.update(done=True, stop_reason="no candidates left", current_score=base_score)
        rnd.update(chosen=None, accepted=False)
        new["rounds"].append(rnd)
        return new

    def changed(c: BlockSet) -> str:
        (b,) = set(c) ^ set(base)
        return b

    order = {b: i for i, b in enumerate(blocks)}
    top = max(scores[c] for c in moves)  # the best score; ties (within TOL) go to the earliest block
    best = min((c for c in moves if at_least(scores[c], top)), key=lambda c: order[changed(c)])
    s = scores[best]
    gain = s - base_score
    rnd.update(chosen=changed(best), chosen_score=s, gain=gain)
    forward = cfg.strategy == "forward"
    if cfg.stop_rule == "paper" and forward:
        accepted = at_least(gain, cfg.epsilon)
    else:  # code (both strategies) and paper backward: within epsilon of the best so far
        accepted = at_least(s, best_so_far - cfg.epsilon)
    rnd.update(accepted=accepted, below_best=s - best_so_far)
    if accepted:
        new["current"], new["current_score"] = list(best), s
        if cfg.stop_rule == "paper" or above(s, best_so_far):
            new["selected"], new["score"] = list(best), s
        if forward and cfg.k is not None and len(best) >= cfg.k:
            new.update(done=True, stop_reason=f"reached k={cfg.k} blocks")
        elif not candidates({**new, "current_score": s}):
            new.update(done=True, stop_reason="no candidates left")
    else:
        new["current_score"] = base_score
        if cfg.stop_rule == "paper" and forward:
            new.update(done=True, stop_reason=f"gain below epsilon ({gain:+.4f}, epsilon {cfg.epsilon})")
        else:
            new.update(done=True, stop_reason=f"more than epsilon below the best so far "
                                              f"({s - best_so_far:+.4f}, epsilon {cfg.epsilon})")
    new["rounds"].append(rnd)
    return new


def walk_epsilon(cfg: SelectionConfig | dict[str, Any], epsilons: Iterable[float]) -> float:
    """The epsilon whose walk reaches every stop of ``epsilons`` (see the module docstring).

    ``paper`` forward: the smallest; ``code`` and ``paper`` backward: the largest.
    """
    c = cfg if isinstance(cfg, SelectionConfig) else SelectionConfig(**cfg)
    eps = [float(e) for e in epsilons]
    if not eps:
        raise SubtuneError("walk_epsilon: no epsilon given")
    return min(eps) if (c.stop_rule == "paper" and c.strategy == "forward") else max(eps)


def replay(state: dict[str, Any], epsilon: float) -> dict[str, Any]:
    """The final state a selection with ``epsilon`` reaches, from the recorded rounds of ``state``.

    ``state`` is a finished selection that walked at least as far as one
    with ``epsilon`` would (its epsilon is :func:`walk_epsilon` of both).
    Each recorded round's scores (and candidates a budget dropped) are fed
    to :func:`decide` with ``epsilon`` until it stops; each round's recorded
    ``cost`` is kept. The result equals what running the selection with
    ``epsilon`` writes (tests/test_select.py). An error when the walk ends
    before this epsilon's selection does, or a round's base differs (the
    walks diverged: never for a ``state`` walked with :func:`walk_epsilon`).
    """
    if not state.get("done"):
        raise SubtuneError("replay: the selection has not finished")
    cfg = {**state["config"], "epsilon": float(epsilon)}
    st = initial_state(state["blocks"], SelectionConfig(**cfg))
    for rec in state["rounds"]:
        if st["done"]:
            break
        scores = {unkey(k): v for k, v in rec["scores"].items()}
        dropped = {unkey(k): e for k, e in (rec.get("dropped") or {}).items()}
        st = decide(st, scores, dropped)
        got = st["rounds"][-1]
        if got["base"] != rec["base"]:
            raise SubtuneError(f"replay: round {rec['round']} starts from {key(rec['base']) or '(empty)'} in the "
                               f"recorded walk, from {key(got['base']) or '(empty)'} with epsilon {epsilon}")
        if "cost" in rec:
            got["cost"] = rec["cost"]
    if not st["done"]:
        raise SubtuneError(f"replay: the recorded walk (epsilon {state['config']['epsilon']}) stops before a "
                           f"selection with epsilon {epsilon} does (walk with walk_epsilon)")
    return st


def epsilon_sets(state: dict[str, Any], epsilons: Iterable[float]) -> list[dict[str, Any]]:
    """Per epsilon (in the order given): the set a selection with it selects, from one walk (:func:`replay`).

    Each entry: ``epsilon``, ``selected`` (block list), ``score`` (its
    validation score), ``rounds``, ``candidates`` (candidate trainings that
    selection runs: every round's scored sets), ``wall_time_s`` and
    ``ft_equiv`` (the rounds' recorded cost, None where not recorded),
    ``stop_reason``.
    """
    out = []
    for eps in epsilons:
        st = replay(state, eps)
        costs = [r.get("cost") for r in st["rounds"]]
        have = all(isinstance(c, dict) for c in costs) and costs

        def total(k: str) -> float | None:
            return sum(float(c.get(k) or 0.0) for c in costs) if have else None

        out.append({"epsilon": float(eps), "selected": list(st["selected"]), "score": st["score"],
                    "rounds": len(st["rounds"]), "candidates": sum(len(r["scores"]) for r in st["rounds"]),
                    "wall_time_s": total("wall_time_s"), "ft_equiv": total("ft_equiv"),
                    "stop_reason": st["stop_reason"]})
    return out


def greedy(blocks: Sequence[str], scorer: Scorer, cfg: SelectionConfig) -> dict[str, Any]:
    """Run selection to the end with ``scorer`` (a function of a list of block sets)."""
    state = initial_state(blocks, cfg)
    while not state["done"]:
        cands = candidates(state)
        state = decide(state, scorer(cands))
    return state


def profile_sets(blocks: Sequence[str]) -> list[BlockSet]:
    """The fine-tuning profile: the empty set (LP) and each block alone."""
    return [(), *((b,) for b in blocks)]


def pair_sets(blocks: Sequence[str]) -> list[BlockSet]:
    """Every pair of blocks (the SubTuning paper's Figure 3), plus each block alone."""
    return [*((b,) for b in blocks), *itertools.combinations(blocks, 2)]


def shard(items: Sequence[Any], index: int, count: int) -> list[Any]:
    """The ``index``-th of ``count`` round-robin shards (stable across runs)."""
    if not 0 <= index < count:
        raise SubtuneError(f"shard index {index} out of range for {count} shard(s)")
    return list(items[index::count])
