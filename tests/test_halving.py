"""Selection budget: successive halving inside a greedy round (pure logic, and exact against full training)."""

import pytest

from subtune import SubtuneError
from subtune.config import validate
from subtune.halving import Budget, Halving, keep_count, rungs, simulate, survivors
from subtune.scoring import CandidateScorer
from subtune.select import SelectionConfig, candidates, decide, initial_state, reference
from subtune.train import TrainConfig

from helpers.scoring import quadrant_data


# ------------------------------------------------------------ pure logic
def test_rungs_and_keep():
    assert rungs(6, 1, 2) == [1, 2, 4, 6]
    assert rungs(6, 2, 2) == [2, 4, 6]
    assert rungs(6, 1, 3) == [1, 3, 6]
    assert rungs(4, 4, 2) == [4]
    assert [keep_count(n, 2) for n in (1, 2, 3, 7, 8)] == [1, 1, 1, 3, 4]
    assert keep_count(8, 3) == 2


def test_survivors_keep_the_best_ties_to_the_earlier():
    assert survivors([0.5, 0.9, 0.7, 0.9], 2) == [1, 3]
    assert survivors([0.5, 0.9, 0.9, 0.9], 2) == [1, 2]
    assert survivors([0.3, 0.3, 0.3], 1) == [0]


def test_halving_with_a_fake_scorer():
    # candidate i's score after e epochs; candidate 5 starts slow and ends best, 2 starts best and fades
    curves = {0: [0.1] * 6, 1: [0.5, 0.6, 0.6, 0.61, 0.61, 0.62], 2: [0.9, 0.9, 0.7, 0.6, 0.6, 0.6],
              3: [0.4, 0.5, 0.55, 0.7, 0.7, 0.71], 4: [0.2] * 6, 5: [0.45, 0.65, 0.7, 0.8, 0.85, 0.9],
              6: [0.3] * 6, 7: [0.5, 0.55, 0.5, 0.5, 0.5, 0.5]}
    r = simulate(8, 6, 1, 2, lambda i, e: curves[i][e - 1])
    # rung 1: 8 -> best 4 (2, 1, 7 tie 0.5 with 1: earlier wins, 5) ; rung 2: 4 -> 2 ; rung 4: 2 -> 1
    assert r["dropped"] == {0: 1, 3: 1, 4: 1, 6: 1, 1: 2, 7: 2, 2: 4}
    assert r["epochs"] == {0: 1, 1: 2, 2: 4, 3: 1, 4: 1, 5: 6, 6: 1, 7: 2}
    assert r["candidate_epochs"] == 18
    assert r["scores"][5] == 0.9  # the survivor's full-schedule score
    assert r["scores"][2] == 0.6 and r["scores"][0] == 0.1  # dropped: their last rung's score


def test_halving_ties_go_to_network_order():
    r = simulate(4, 4, 1, 2, lambda i, e: 0.5)
    assert r["dropped"] == {2: 1, 3: 1, 1: 2}
    assert r["epochs"][0] == 4


def test_halving_rejects_a_missing_score():
    h = Halving(3, 4, 1, 2)
    with pytest.raises(SubtuneError, match="no score"):
        h.after_epoch(1, {0: 0.5, 1: 0.4})


def test_decide_never_chooses_a_dropped_candidate():
    blocks = ["a", "b", "c"]
    cfg = SelectionConfig(k=3, epsilon=0.0)
    state = initial_state(blocks, cfg)
    assert reference(state) == [()]
    scores = {(): 0.5, ("a",): 0.95, ("b",): 0.7, ("c",): 0.6}
    state = decide(state, scores, dropped={("a",): 1, ("c",): 1})
    rnd = state["rounds"][-1]
    assert rnd["chosen"] == "b" and state["current"] == ["b"]
    assert rnd["dropped"] == {"a": 1, "c": 1}
    assert rnd["scores"]["a"] == 0.95  # recorded, marked dropped
    assert reference(state) == []
    with pytest.raises(SubtuneError, match="every candidate"):
        decide(state, {c: 0.9 for c in candidates(state)}, dropped={c: 1 for c in candidates(state)})


def test_budget_config_is_validated():
    assert Budget.from_dict(None) is None
    b = Budget.from_dict({"kind": "halving"})
    assert (b.min_epochs, b.eta) == (1, 2)
    with pytest.raises(SubtuneError, match="selection.budget.eta"):
        Budget.from_dict({"kind": "halving", "eta": 1})
    with pytest.raises(SubtuneError, match="need kind: halving"):
        Budget.from_dict({"eta": 3})
    with pytest.raises(SubtuneError, match="selection.budget.kind"):
        Budget.from_dict({"kind": "fast"})
    with pytest.raises(SubtuneError, match="min_epochs"):
        Budget.from_dict({"kind": "halving", "min_epochs": 6}).check(6)
    with pytest.raises(SubtuneError, match="exceeds"):
        Budget.from_dict({"epochs": 8}).check(6)


def default_config():
    """config.yaml (the embedded default) and the schema's path, for the budget's config checks."""
    import pathlib

    import yaml

    root = pathlib.Path(__file__).resolve().parents[1]
    return yaml.safe_load((root / "config.yaml").read_text()), root


def test_config_budget_validation(tmp_path):
    cfg, root = default_config()
    cfg["selection"]["budget"] = {"kind": "halving", "min_epochs": 1, "eta": 2}
    with pytest.raises(SubtuneError, match="selection.profile: false"):
        validate(cfg, root / "schemas/config.schema.yaml")
    cfg["selection"]["profile"] = False
    validate(cfg, root / "schemas/config.schema.yaml")
    cfg["selection"]["budget"] = {"epochs": 3}
    validate(cfg, root / "schemas/config.schema.yaml")
    cfg["selection"]["budget"] = {"epochs": 7}
    with pytest.raises(SubtuneError, match="exceeds"):
        validate(cfg, root / "schemas/config.schema.yaml")
    cfg["selection"]["budget"] = {"kind": "halving", "eta": 2, "rungs": 3}
    with pytest.raises(SubtuneError, match="selection.budget.rungs"):
        validate(cfg, root / "schemas/config.schema.yaml")
    cfg["selection"]["budget"] = {"kind": "halving"}
    cfg["selection"]["shards"] = 2
    with pytest.raises(SubtuneError, match="shards: 1"):
        validate(cfg, root / "schemas/config.schema.yaml")
    cfg["selection"]["shards"] = 1
    cfg["selection"]["scoring"] = "cv"
    with pytest.raises(SubtuneError, match="halving needs selection.scoring: val"):
        validate(cfg, root / "schemas/config.schema.yaml")


# ------------------------------------------------------------ exact against full training
def test_survivors_score_exactly_their_full_schedule(ckpt):
    cfg = TrainConfig(epochs=4, lr=3e-3, batch_size=16)
    sel = SelectionConfig()
    d = quadrant_data()
    sets = [(), ("layer1.0",), ("layer2.1",), ("layer3.0",), ("layer4.1",), ("layer1.0", "layer4.0")]
    exact = CandidateScorer(ckpt, d, 4, cfg, sel, seed=1).score_many(sets)
    cheap, cost = CandidateScorer(ckpt, d, 4, cfg, sel, seed=1).score_round(
        sets, reference=[()], budget=Budget.from_dict({"kind": "halving", "min_epochs": 1, "eta": 2}))
    by = {r["key"]: r for r in exact}
    assert cost["rungs"] == [1, 2, 4]
    # 5 competing: 5 -> 2 after epoch 1 -> 1 after epoch 2; the reference (LP) trains fully
    assert sum(len(v) for v in cost["dropped"].values()) == 4
    assert cost["candidate_epochs"] == 4 + 5 * 1 + 2 * 1 + 1 * 2
    assert cost["exact_candidate_epochs"] == 6 * 4
    assert 0 < cost["ft_equiv"] < 6
    survivors_ = [r for r in cheap if "dropped_at" not in r]
    assert len(survivors_) == 2  # the reference and one competitor
    for r in cheap:
        e = by[r["key"]]
        # every run, survivor or not, is the exact run up to where it stopped: bitwise
        assert r["history"] == e["history"][: r["epochs"]]
        if "dropped_at" in r:
            assert r["epochs"] == r["dropped_at"] < 4
            assert r["score"] == e["history"][r["epochs"] - 1]["val_acc"]
        else:
            assert r["epochs"] == 4 and r["score"] == e["score"]


# ------------------------------------------------------------ the shortlist
def test_shortlist_budget_config():
    b = Budget.from_dict({"kind": "shortlist"})
    assert (b.screen_epochs, b.keep, b.one_job) == (1, 2, True)
    assert not Budget.from_dict({"epochs": 3}).one_job
    with pytest.raises(SubtuneError, match="selection.budget: screen_epochs and keep need kind: shortlist"):
        Budget.from_dict({"kind": "halving", "keep": 2})
    with pytest.raises(SubtuneError, match="selection.budget.keep must be an integer of at least 1"):
        Budget.from_dict({"kind": "shortlist", "keep": 0})
    with pytest.raises(SubtuneError, match="need kind: halving"):
        Budget.from_dict({"kind": "shortlist", "eta": 2})
    with pytest.raises(SubtuneError, match=r"screen_epochs \(4\) must be below the scoring epochs \(4\)"):
        Budget.from_dict({"kind": "shortlist", "screen_epochs": 4, "epochs": 4}).check(6)


def test_config_shortlist_validation():
    cfg, root = default_config()
    cfg["selection"]["budget"] = {"kind": "shortlist", "screen_epochs": 1, "keep": 2}
    with pytest.raises(SubtuneError, match="with shortlist, .*selection.profile: false"):
        validate(cfg, root / "schemas/config.schema.yaml")
    cfg["selection"]["profile"] = False
    validate(cfg, root / "schemas/config.schema.yaml")
    cfg["selection"]["fast"] = False  # a shortlist scores with the ordinary path: the slow one too
    validate(cfg, root / "schemas/config.schema.yaml")
    cfg["selection"]["scoring"] = "cv"
    with pytest.raises(SubtuneError, match="shortlist needs selection.scoring: val"):
        validate(cfg, root / "schemas/config.schema.yaml")


def test_shortlist_scores_the_kept_exactly_and_screens_with_a_complete_short_schedule(ckpt):
    fast = True  # the shortlist scores through score_many, whichever path; the fast one is the default
    cfg = TrainConfig(epochs=4, lr=3e-3, batch_size=16)
    sel = SelectionConfig()
    d = quadrant_data()
    sets = [(), ("layer1.0",), ("layer2.1",), ("layer3.0",), ("layer4.1",), ("layer1.0", "layer4.0")]
    exact = {r["key"]: r for r in CandidateScorer(ckpt, d, 4, cfg, sel, seed=1, fast=fast).score_many(sets)}
    from dataclasses import replace

    short = {r["key"]: r for r in CandidateScorer(ckpt, d, 4, cfg, sel, seed=1, fast=fast).score_many(
        sets[1:], replace(cfg, epochs=1))}
    budget = Budget.from_dict({"kind": "shortlist", "screen_epochs": 1, "keep": 2})
    res, cost = CandidateScorer(ckpt, d, 4, cfg, sel, seed=1, fast=fast).score_round(sets, [()], budget)
    comp = [r for r in res if r["key"]]
    # the screening ranks all five by a complete 1-epoch schedule (its own cosine, not epoch 1 of four)
    want = survivors([short[r["key"]]["score"] for r in comp], 2)
    kept = [r for r in comp if "dropped_at" not in r]
    assert [comp.index(r) for r in kept] == want
    for r in comp:
        if r in kept:  # retrained from the start with the whole schedule: exact selection's run of that set
            assert r["score"] == exact[r["key"]]["score"] and r["history"] == exact[r["key"]]["history"]
            assert r["screen_score"] == short[r["key"]]["score"] and r["screen_epochs"] == 1
        else:
            assert r["dropped_at"] == 1 and r["score"] == short[r["key"]]["score"] and r["epochs"] == 1
    assert res[0]["score"] == exact[""]["score"]  # the reference trains the whole schedule
    assert cost["candidate_epochs"] == 4 + 5 * 1 + 2 * 4 and cost["exact_candidate_epochs"] == 6 * 4
    assert cost["dropped"] == {"1": [r["key"] for r in comp if r not in kept]}
    # a round with no more candidates than the shortlist keeps is exact
    small, c2 = CandidateScorer(ckpt, d, 4, cfg, sel, seed=1, fast=fast).score_round(sets[:3], [()], budget)
    assert [r["score"] for r in small] == [exact[k]["score"] for k in ("", "layer1.0", "layer2.1")]
    assert c2["candidate_epochs"] == 3 * 4 and not c2["dropped"]
