"""Greedy selection logic on a fake scorer: ties, epsilon stop, k stop, both stop rules, backward."""

import pytest

from subtune import SubtuneError
from subtune.select import (
    SelectionConfig,
    candidates,
    decide,
    greedy,
    initial_state,
    pair_sets,
    profile_sets,
    shard,
)

BLOCKS = ["b0", "b1", "b2", "b3", "b4"]


def additive(values, base=0.5, interactions=None):
    """Scorer: base + sum of per-block values (+ optional pair interactions); logs calls."""
    calls = []

    def scorer(sets):
        calls.append(list(sets))
        out = {}
        for s in sets:
            v = base + sum(values[b] for b in s)
            for pair, extra in (interactions or {}).items():
                if set(pair) <= set(s):
                    v += extra
            out[s] = v
        return out

    scorer.calls = calls
    return scorer


def test_forward_picks_best_each_round_and_stops_at_k():
    sc = additive({"b0": 0.01, "b1": 0.2, "b2": 0.05, "b3": 0.1, "b4": 0.03})
    st = greedy(BLOCKS, sc, SelectionConfig(k=2, epsilon=0.01))
    assert st["selected"] == ["b1", "b3"]
    assert [r["chosen"] for r in st["rounds"]] == ["b1", "b3"]
    assert st["stop_reason"] == "reached k=2 blocks"
    # round 1 is the profile: the empty set (LP) and every block alone
    assert sc.calls[0] == profile_sets(BLOCKS)
    # round 2 never re-scores the base set
    assert () not in sc.calls[1] and ("b1",) not in sc.calls[1]
    assert len(sc.calls[1]) == 4


def test_epsilon_stop_paper_rule_keeps_current_set():
    sc = additive({"b0": 0.001, "b1": 0.2, "b2": 0.005, "b3": 0.009, "b4": 0.0})
    st = greedy(BLOCKS, sc, SelectionConfig(k=5, epsilon=0.01))
    assert st["selected"] == ["b1"]
    assert st["score"] == pytest.approx(0.7)
    assert st["rounds"][-1]["accepted"] is False
    assert "gain below epsilon" in st["stop_reason"]


def test_gain_exactly_epsilon_is_accepted():
    sc = additive({"b0": 0.25, "b1": 0.5, "b2": 0.0, "b3": 0.0, "b4": 0.0}, base=0.0)
    st = greedy(BLOCKS, sc, SelectionConfig(k=5, epsilon=0.25))
    assert st["selected"] == ["b0", "b1"]


def test_first_round_below_epsilon_selects_nothing():
    sc = additive({b: 0.001 for b in BLOCKS})
    st = greedy(BLOCKS, sc, SelectionConfig(epsilon=0.01))
    assert st["selected"] == [] and st["score"] == pytest.approx(0.5)


def test_ties_go_to_the_earliest_block():
    sc = additive({"b0": 0.0, "b1": 0.1, "b2": 0.1, "b3": 0.1, "b4": 0.0})
    st = greedy(BLOCKS, sc, SelectionConfig(k=1))
    assert st["selected"] == ["b1"]
    sc2 = additive({"b0": 0.0, "b1": 0.0, "b2": 0.0, "b3": 0.1, "b4": 0.1})
    assert greedy(list(reversed(BLOCKS)), sc2, SelectionConfig(k=1))["selected"] == ["b4"]


def test_code_rule_follows_path_within_epsilon_and_returns_best_seen():
    # b1 alone is best; adding anything else costs 0.005 (within epsilon 0.01),
    # a third block costs 0.05 (beyond epsilon): the code rule explores one
    # more round than the paper rule and still answers the best set seen.
    vals = {"b0": -0.005, "b1": 0.2, "b2": -0.005, "b3": -0.05, "b4": -0.05}
    inter = {("b0", "b2"): -0.05}
    code = greedy(BLOCKS, additive(vals, interactions=inter), SelectionConfig(k=5, stop_rule="code"))
    paper = greedy(BLOCKS, additive(vals, interactions=inter), SelectionConfig(k=5, stop_rule="paper"))
    assert paper["selected"] == ["b1"] and len(paper["rounds"]) == 2
    assert code["selected"] == ["b1"]
    assert len(code["rounds"]) == 3
    assert code["rounds"][1]["accepted"] is True and code["rounds"][2]["accepted"] is False
    assert "more than epsilon below the best so far" in code["stop_reason"]


def test_code_rule_can_cross_a_dip():
    # pairs: b1+b3 slightly worse than b1, but b1+b3+b4 much better
    vals = {"b0": -0.1, "b1": 0.2, "b2": -0.1, "b3": -0.005, "b4": -0.005}
    inter = {("b3", "b4"): 0.1}
    code = greedy(BLOCKS, additive(vals, interactions=inter), SelectionConfig(k=3, stop_rule="code"))
    paper = greedy(BLOCKS, additive(vals, interactions=inter), SelectionConfig(k=3, stop_rule="paper"))
    assert paper["selected"] == ["b1"]
    assert code["selected"] == ["b1", "b3", "b4"]


def test_backward_elimination_removes_useless_blocks():
    vals = {"b0": 0.0, "b1": 0.2, "b2": 0.001, "b3": 0.1, "b4": 0.0}
    st = greedy(BLOCKS, additive(vals), SelectionConfig(strategy="backward", epsilon=0.01))
    assert st["selected"] == ["b1", "b3"]
    assert st["rounds"][0]["base"] == BLOCKS  # starts from full fine-tuning


def test_one_round_at_a_time_matches_greedy():
    sc = additive({"b0": 0.01, "b1": 0.2, "b2": 0.05, "b3": 0.1, "b4": 0.03})
    cfg = SelectionConfig(k=3)
    st = initial_state(BLOCKS, cfg)
    while not st["done"]:
        cands = candidates(st)
        # spread over two shards, as the workflow may
        scores = {**sc(shard(cands, 0, 2)), **sc(shard(cands, 1, 2))}
        st = decide(st, scores)
    assert st == greedy(BLOCKS, additive({"b0": 0.01, "b1": 0.2, "b2": 0.05, "b3": 0.1, "b4": 0.03}), cfg)


def test_missing_score_is_an_error():
    st = initial_state(BLOCKS, SelectionConfig())
    with pytest.raises(SubtuneError, match="no score for candidate"):
        decide(st, {(): 0.5})


def test_bad_config_keys_are_named():
    with pytest.raises(SubtuneError, match="selection.epsilonn"):
        SelectionConfig.from_dict({"epsilonn": 0.1})
    with pytest.raises(SubtuneError, match="stop_rule"):
        SelectionConfig.from_dict({"stop_rule": "sometimes"})


def test_pairs_and_shards():
    pairs = pair_sets(BLOCKS)
    assert len(pairs) == 5 + 10
    parts = [shard(pairs, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(pairs)


# ------------------------------------------------------------------ backward elimination
TWELVE = [f"blocks.{i}" for i in range(12)]


def test_backward_paper_rule_compares_each_removal_with_the_best_so_far():
    # every block is worth 0.009: each removal alone is within epsilon 0.01 of the previous
    # round, but the second one is 0.018 below the best (the full set): stop after one removal
    sc = additive({b: 0.009 for b in TWELVE}, base=0.4)
    st = greedy(TWELVE, sc, SelectionConfig(strategy="backward", epsilon=0.01))
    assert st["selected"] == TWELVE[1:]  # ties: the earliest block is removed first
    assert st["score"] == pytest.approx(0.4 + 11 * 0.009)
    assert [r["accepted"] for r in st["rounds"]] == [True, False]
    assert st["rounds"][-1]["below_best"] == pytest.approx(-0.018)
    assert "more than epsilon below the best so far" in st["stop_reason"]
    # the code rule walks the same path and answers the best set seen: the full set
    code = greedy(TWELVE, additive({b: 0.009 for b in TWELVE}, base=0.4),
                  SelectionConfig(strategy="backward", stop_rule="code", epsilon=0.01))
    assert code["selected"] == TWELVE and len(code["rounds"]) == 2


def test_backward_paper_rule_stops_where_the_cumulative_loss_passes_epsilon():
    # removals cost 0.004 each: 0.004, 0.008 are within 0.01 of the best, 0.012 is not
    sc = additive({b: 0.004 for b in TWELVE}, base=0.4)
    st = greedy(TWELVE, sc, SelectionConfig(strategy="backward", epsilon=0.01))
    assert st["selected"] == TWELVE[2:]
    assert [r["accepted"] for r in st["rounds"]] == [True, True, False]


@pytest.mark.parametrize("rule", ["paper", "code"])
def test_backward_can_end_at_the_empty_set(rule):
    # every block hurts: the linear probe (no block) is best
    sc = additive({b: -0.02 for b in BLOCKS}, base=0.5)
    st = greedy(BLOCKS, sc, SelectionConfig(strategy="backward", stop_rule=rule, epsilon=0.01))
    assert st["selected"] == [] and st["score"] == pytest.approx(0.5)
    assert st["current"] == [] and st["done"] and st["stop_reason"] == "no candidates left"
    assert sc.calls[-1][-1] == ()  # the last round scored the empty set (the LP)
    assert candidates(st) == []


def test_backward_state_with_an_empty_current_set_is_done():
    st = initial_state(["b0"], SelectionConfig(strategy="backward"))
    assert candidates(st) == [("b0",), ()]
    st = decide(st, {("b0",): 0.5, (): 0.6})
    assert st["current"] == [] and st["selected"] == [] and st["done"]
    assert candidates(st) == [] and candidates({**st, "done": False}) == []


# ---------------------------------------------------------------- epsilon sensitivity: one walk, every epsilon
EPSILONS = [0.0, 0.005, 0.01, 0.02, 0.05, 0.2, 1.0]
RULES = [("forward", "paper"), ("forward", "code"), ("backward", "paper"), ("backward", "code")]


def _scorers():
    # gains that straddle the epsilons, a tie (b0/b4 in round 2), a dip the code rule crosses, interactions
    yield additive({"b0": 0.012, "b1": 0.03, "b2": -0.004, "b3": 0.007, "b4": 0.012})
    yield additive({"b0": 0.0, "b1": 0.2, "b2": 0.001, "b3": 0.1, "b4": 0.0}, interactions={("b1", "b3"): -0.25})
    yield additive({"b0": -0.01, "b1": -0.02, "b2": 0.004, "b3": 0.0, "b4": -0.003},
                   interactions={("b2", "b3"): 0.05, ("b0", "b2", "b3"): 0.03})


@pytest.mark.parametrize("strategy,rule", RULES)
@pytest.mark.parametrize("k", [None, 2])
def test_replay_of_one_walk_equals_running_each_epsilon(strategy, rule, k):
    from subtune.select import epsilon_sets, replay, walk_epsilon

    for sc in _scorers():
        cfg = SelectionConfig(strategy=strategy, stop_rule=rule, k=k)
        walk_eps = walk_epsilon(cfg, EPSILONS)
        assert walk_eps == (min(EPSILONS) if (strategy, rule) == ("forward", "paper") else max(EPSILONS))
        walk = greedy(BLOCKS, sc, SelectionConfig(strategy=strategy, stop_rule=rule, k=k, epsilon=walk_eps))
        for eps in EPSILONS:
            direct = greedy(BLOCKS, sc, SelectionConfig(strategy=strategy, stop_rule=rule, k=k, epsilon=eps))
            assert replay(walk, eps) == direct, (strategy, rule, eps)
        sets = epsilon_sets(walk, EPSILONS)
        for e, eps in zip(sets, EPSILONS):
            direct = greedy(BLOCKS, sc, SelectionConfig(strategy=strategy, stop_rule=rule, k=k, epsilon=eps))
            assert e["epsilon"] == eps and e["selected"] == direct["selected"] and e["score"] == direct["score"]
            assert e["candidates"] == sum(len(r["scores"]) for r in direct["rounds"])
            assert e["rounds"] == len(direct["rounds"]) and e["wall_time_s"] is None


def test_paper_rule_sets_differ_across_epsilons_and_shrink_with_it():
    from subtune.select import epsilon_sets

    sc = additive({"b0": 0.012, "b1": 0.03, "b2": -0.004, "b3": 0.007, "b4": 0.012})
    walk = greedy(BLOCKS, sc, SelectionConfig(k=None, epsilon=0.0))
    got = {e["epsilon"]: e["selected"] for e in epsilon_sets(walk, [0.0, 0.005, 0.01, 0.02, 0.05])}
    # tie b0/b4 in round 2: the earliest (b0) in every walk
    assert got == {0.0: ["b0", "b1", "b3", "b4"], 0.005: ["b0", "b1", "b3", "b4"], 0.01: ["b0", "b1", "b4"],
                   0.02: ["b1"], 0.05: []}


def test_replay_keeps_recorded_costs_and_refuses_a_short_walk():
    from subtune.select import epsilon_sets, replay

    sc = additive({"b0": 0.012, "b1": 0.03, "b2": -0.004, "b3": 0.007, "b4": 0.012})
    st = initial_state(BLOCKS, SelectionConfig(k=None, epsilon=0.0))
    while not st["done"]:
        st = decide(st, sc(candidates(st)))
        st["rounds"][-1]["cost"] = {"wall_time_s": 2.0, "ft_equiv": 0.5}
    assert replay(st, 0.0) == st
    e = epsilon_sets(st, [0.02])[0]
    assert e["rounds"] == 2 and e["wall_time_s"] == 4.0 and e["ft_equiv"] == 1.0
    short = greedy(BLOCKS, sc, SelectionConfig(k=None, epsilon=0.02))
    with pytest.raises(SubtuneError, match="stops before"):
        replay(short, 0.0)


# ------------------------------------------------------------------ decisions on counts, not raw floats
def test_a_gain_of_exactly_epsilon_is_accepted_despite_float_rounding():
    """The default's digits case: 189/200 = 0.945 after 187/200 = 0.935 is a gain of exactly two images,
    0.009999999999999898 in floats; the paper rule (gain >= epsilon 0.01) accepts it, and a walk that
    compared raw floats would stop at one block."""
    assert 0.945 - 0.935 < 0.01  # the float trap this test is about
    table = {(): 0.90, ("b0",): 0.935, ("b1",): 0.92, ("b0", "b1"): 0.945, ("b0", "b2"): 0.94,
             ("b0", "b1", "b2"): 0.95}

    def scorer(sets):
        return {s: table.get(s, 0.5) for s in sets}

    st = greedy(["b0", "b1", "b2"], scorer, SelectionConfig(k=3, epsilon=0.01))
    assert st["rounds"][1]["chosen"] == "b1" and st["rounds"][1]["accepted"]
    assert st["selected"][:2] == ["b0", "b1"]
    # one image less than epsilon (0.005 on 200) is still refused
    table[("b0", "b1")] = 0.94
    table[("b0", "b2")] = 0.935 + 0.005
    st = greedy(["b0", "b1", "b2"], scorer, SelectionConfig(k=3, epsilon=0.01))
    assert st["selected"] == ["b0"] and "gain below epsilon" in st["stop_reason"]


def test_scores_equal_up_to_float_rounding_tie_and_go_to_the_earlier_block():
    """Two candidates with the same count of correct images (here: cross-validation means summed in
    another order) tie; the earlier block in network order wins, as for exactly equal floats."""
    a = (0.1 + 0.2 + 0.3) / 3  # 0.20000000000000004
    b = (0.3 + 0.2 + 0.1) / 3  # 0.19999999999999998
    assert a != b
    st = initial_state(["b0", "b1"], SelectionConfig(k=1))
    st = decide(st, {(): 0.1, ("b0",): b, ("b1",): a})
    assert st["selected"] == ["b0"]


def test_the_code_rule_and_backward_use_the_same_tolerance():
    # code rule on 300 validation images: 149/300 is exactly epsilon 0.01 (three images) below the best
    # 152/300, so it is "within epsilon of the best"; in raw floats it is not
    best, s = 152 / 300, 149 / 300
    assert not s >= best - 0.01
    st = initial_state(["b0", "b1"], SelectionConfig(k=None, epsilon=0.01, stop_rule="code"))
    st = decide(st, {(): best, ("b0",): s, ("b1",): 0.3})
    assert st["rounds"][0]["accepted"]
    st = initial_state(["b0", "b1"], SelectionConfig(strategy="backward", epsilon=0.01))
    st = decide(st, {("b0", "b1"): best, ("b1",): s, ("b0",): 0.3})
    assert st["rounds"][0]["accepted"] and st["selected"] == ["b1"]


def test_halving_keeps_float_ties_in_their_original_order():
    from subtune.halving import survivors

    a = (0.1 + 0.2 + 0.3) / 3
    b = (0.3 + 0.2 + 0.1) / 3
    assert survivors([b, a, 0.1], 1) == [0]
