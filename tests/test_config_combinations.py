"""Every combination of the selection options that the config check accepts plans and runs; the others are
refused before any job, in one line naming the keys.

The options: strategy (forward, backward) x stop_rule (paper, code) x scoring (val, cv) x budget (none, a
shorter schedule, successive halving, a shortlist) x profile (true, false) x per_seed (false, true, a list) x
shards (1, 2), and k and epsilon at their edges. Three tiers, from configs/test.yaml:

- in process (fast): every combination validated (:func:`subtune.config.validate`) and planned
  (:class:`subtune.plan.Plan`: every table, the profile's score files, the claims' profiles); a refusal is one
  line naming ``selection.<key>``; each edge of k and epsilon walked to its end by :func:`subtune.select.greedy`
  under the config's own decision config, replayed with ``selection.epsilon`` and planned into the epsilon runs;
- dry runs (slow): a pairwise covering array of the accepted combinations (every pair of two options' values
  in at least one config), each planned by ``snakemake --dry-run`` with the first round's job counts checked;
- end to end (slow): three configs at the smallest scale (one target, one seed, 40 images, a 4-block ResNet with
  random weights, SubTuning alone), run concurrently through the real workflow: the backward walk with its
  fine-tuning profile and epsilon table, forward with cross-validation under a shorter schedule at k 1,
  backward with successive halving, its profile and epsilon 0, and forward under a shortlist at k 2.

Each tier prints its figures (combinations validated and refused, dry runs, runs end to end, wall time).
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from subtune import SubtuneError
from subtune.claims import NOT_RUN
from subtune.config import decision_config, validate
from subtune.plan import Plan
from subtune.select import SelectionConfig, epsilon_sets, greedy, replay

from helpers.workflow import ROOT, SNAKEMAKE, job_stats, workdir

SCHEMA = ROOT / "schemas/config.schema.yaml"
BASE = yaml.safe_load((ROOT / "configs/test.yaml").read_text())
RES = f"results/{BASE['experiment']}"

# the selection options and the values tried; budget "epochs": a shorter schedule (1 of test.yaml's 2 epochs)
BUDGETS = {"none": None, "epochs": {"kind": "none", "epochs": 1},
           "halving": {"kind": "halving", "min_epochs": 1, "eta": 2},
           "shortlist": {"kind": "shortlist", "screen_epochs": 1, "keep": 2}}
PER_SEED = {"false": False, "true": True, "list": ["digits"]}
OPTIONS = {
    "strategy": ["forward", "backward"],
    "stop_rule": ["paper", "code"],
    "scoring": ["val", "cv"],
    "budget": list(BUDGETS),
    "profile": [True, False],
    "per_seed": list(PER_SEED),
    "shards": [1, 2],
}
K_EDGES = [1, None, 100]  # one block, no limit, more than the network has
EPSILON_EDGES = [0.0, 0.01, 1.0]  # every tie accepted, a point, nothing gained is enough (forward: the linear probe)
# combinations found failing late (report_profile, after every candidate trained) or refused without need, and
# what the workflow does with them (the figures this file prints)
FIXED = {
    "strategy backward, profile true": "the profile has jobs of its own (rule score_profile): round 1 of a "
                                       "backward walk removes one block from all",
    "strategy backward, budget halving, profile true": "accepted: those profile jobs are exact, never halved",
}
# the combinations refused on purpose, each in one line naming these keys
REFUSED = {
    ("budget", "scoring"): ("selection.budget", "selection.scoring"),
    ("budget", "shards"): ("selection.budget", "selection.shards"),
    ("budget", "profile"): ("selection.budget", "selection.profile"),
}


def refusal(combo: dict) -> tuple[str, str] | None:
    """The rule that refuses ``combo`` (the keys its message names), None when it runs: halving and a
    shortlist need val scoring and one shard (a round's candidates compete in one job), and a forward walk
    under either has no fine-tuning profile (its round 1 is the profile, and a block dropped early keeps a
    shorter run's score; a backward walk's profile has exact jobs of its own)."""
    if combo["budget"] in ("halving", "shortlist"):
        for other, bad in (("scoring", "cv"), ("shards", 2), ("profile", True)):
            if combo[other] == bad and (other != "profile" or combo["strategy"] == "forward"):
                return REFUSED[("budget", other)]
    return None


def selection_config(base: dict, combo: dict, **extra) -> dict:
    """``base`` (a config) with the selection options of ``combo`` (and ``extra`` selection keys), unvalidated."""
    cfg = copy.deepcopy(base)
    sel = cfg["selection"]
    sel.update({k: v for k, v in combo.items() if k not in ("budget", "per_seed")}, **extra)
    sel["budget"] = copy.deepcopy(BUDGETS[combo["budget"]])
    sel["per_seed"] = copy.deepcopy(PER_SEED[combo["per_seed"]])
    return cfg


def all_combinations() -> list[dict]:
    return [dict(zip(OPTIONS, values)) for values in itertools.product(*OPTIONS.values())]


def check_plan(plan: Plan) -> None:
    """What the workflow plans for a config's profile: the tables, their score files, the claims' profiles."""
    sel = plan.config["selection"]
    out = plan.all_outputs()
    assert len(out) == len(set(out))
    name = "round1" if sel["strategy"] == "forward" else "profile"
    for t in plan.targets:
        assert (f"{RES}/tables/profile_{t}.csv" in out) == sel["profile"]
        assert plan.profile_scores(t) == [f"{RES}/select/{t}/seed{plan.sel_seed}/{name}_shard{i}.json"
                                          for i in range(sel["shards"])]
    claims = plan.claims_profiles()
    if sel["strategy"] == "backward" and not sel["profile"]:
        assert claims == []  # round 1 of a backward walk is not a profile: no claim reads it
    else:
        assert claims == [f"{RES}/select/{t}/seed{s}/{name}_shard{i}.json" for t in plan.targets
                          for s in plan.selection_seeds(t) for i in range(sel["shards"])]


# ------------------------------------------------------------------ in process: every combination
def test_every_combination_is_planned_or_refused_in_one_line():
    t0 = time.monotonic()
    accepted = refused = 0
    for combo in all_combinations():
        cfg = selection_config(BASE, combo)
        why = refusal(combo)
        if why is None:
            check_plan(Plan(validate(cfg, SCHEMA)))
            accepted += 1
            continue
        with pytest.raises(SubtuneError) as e:
            validate(cfg, SCHEMA)
        msg = str(e.value)
        assert "\n" not in msg and all(k in msg for k in why), (combo, msg)
        refused += 1
    print(f"selection combinations: {accepted + refused} validated and planned in process, {accepted} accepted, "
          f"{refused} refused ({time.monotonic() - t0:.0f} s); late failures found and fixed: {len(FIXED)}: "
          + "; ".join(f"{k}: {v}" for k, v in FIXED.items()))
    assert accepted == 228 and refused == 156


@pytest.mark.parametrize("over, needle", [
    ({"k": 0}, "selection.k"),
    ({"epsilon": -0.01}, "selection.epsilon"),
    ({"per_seed": []}, "selection.per_seed"),
    ({"per_seed": ["svhn"]}, "selection.per_seed"),
    ({"shards": 0}, "selection.shards"),
    ({"budget": {"kind": "none", "epochs": 3}}, "selection.budget.epochs"),
    ({"budget": {"kind": "halving", "min_epochs": 2, "eta": 2}, "profile": False}, "selection.budget.min_epochs"),
])
def test_values_past_an_edge_are_refused_in_one_line(over, needle):
    cfg = copy.deepcopy(BASE)
    cfg["selection"].update(over)
    with pytest.raises(SubtuneError, match=re.escape(needle)) as e:
        validate(cfg, SCHEMA)
    assert "\n" not in str(e.value)


# the other options of the k and epsilon edges (the decisions read neither)
EDGE_OPTIONS = {"scoring": "val", "budget": "none", "profile": True, "per_seed": "list", "shards": 1}


def _tied(sets):
    return {s: 0.5 for s in sets}  # random weights: every candidate at chance


def _graded(sets):
    return {s: 0.5 + 0.01 * sum(int(b[1]) + 1 for b in s) for s in sets}  # each block helps, later ones more


@pytest.mark.parametrize("strategy, stop_rule", list(itertools.product(OPTIONS["strategy"], OPTIONS["stop_rule"])))
def test_k_and_epsilon_edges_walk_to_an_end_and_plan_their_runs(strategy, stop_rule):
    blocks = ["b0", "b1", "b2", "b3"]
    n = 0
    for k, eps, scorer in itertools.product(K_EDGES, EPSILON_EDGES, (_tied, _graded)):
        combo = {**EDGE_OPTIONS, "strategy": strategy, "stop_rule": stop_rule}
        cfg = validate(selection_config(BASE, combo, k=k, epsilon=eps), SCHEMA)
        walk = greedy(blocks, scorer, SelectionConfig(**decision_config(cfg)))
        assert walk["done"] and len(walk["rounds"]) <= len(blocks) + 1, (k, eps)
        main = replay(walk, eps)
        if strategy == "forward" and k is not None:
            assert len(main["selected"]) <= k
        eps_sets = epsilon_sets(walk, Plan(cfg).epsilons)
        assert main["selected"] in [e["selected"] for e in eps_sets]
        runs = Plan(cfg).epsilon_runs("digits", lambda seed: walk)
        assert f"{RES}/runs/digits/subtuning/seed0.json" in runs  # the main set is SubTuning's run, not retrained
        n += 1
    print(f"{strategy}/{stop_rule}: {n} k and epsilon edges walked, replayed and planned")


# ------------------------------------------------------------------ dry runs: a pairwise covering array
def covering_array(options: dict[str, list], allowed) -> list[dict]:
    """Combinations (``allowed`` ones only) in which every pair of two options' values that some allowed
    combination has appears at least once. Greedy (each step the combination that covers most uncovered pairs,
    ties to the earliest), over the combinations shuffled with seed 0, 1, ... until the array is as small as it
    can be (the two largest numbers of values multiplied) or 300 seeds are tried: the smallest array found, the
    same on every run."""
    combos = [c for c in (dict(zip(options, v)) for v in itertools.product(*options.values())) if allowed(c)]

    def pairs(c):
        return {((a, repr(c[a])), (b, repr(c[b]))) for a, b in itertools.combinations(options, 2)}

    every = set().union(*(pairs(c) for c in combos))
    floor = max(len(options[a]) * len(options[b]) for a, b in itertools.combinations(options, 2))
    best: list[dict] = []
    for seed in range(300):
        order = random.Random(seed).sample(combos, len(combos))
        todo, out = set(every), []
        while todo:
            pick = max(order, key=lambda c: len(pairs(c) & todo))
            out.append(pick)
            todo -= pairs(pick)
        if not best or len(out) < len(best):
            best = out
        if len(best) <= floor:
            break
    return best


def first_round_jobs(cfg: dict) -> dict[str, int]:
    """The greedy rounds' and profiles' first-round jobs of a validated configs/test.yaml variant (every method
    of it selects through SubTuning; its sweep selects on 60 images, reusing the 1k selection at 120)."""
    plan = Plan(cfg)
    sel = cfg["selection"]
    seeds = sum(len(plan.selection_seeds(t)) for t in plan.targets)
    sweep = len(plan.selection_seeds(cfg["sweep"]["target"]))
    out = {"score_round": (seeds + sweep) * sel["shards"], "decide": seeds + sweep,
           "score_surgical": seeds, "report_profile": len(plan.targets) if sel["profile"] else 0}
    out["score_profile"] = seeds * sel["shards"] if sel["strategy"] == "backward" and sel["profile"] else 0
    return out


@pytest.mark.slow
def test_a_pairwise_covering_array_dry_runs(tmp_path):
    """Two dry runs at a time; configs/test.yaml without its multilora section (jobs no selection option
    touches)."""
    t0 = time.monotonic()
    configs = covering_array(OPTIONS, lambda c: refusal(c) is None)
    wd = workdir(tmp_path)
    base = {k: v for k, v in BASE.items() if k != "multilora"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SUBTUNE_"))}
    runs = []
    for i, combo in enumerate(configs):
        cfg = selection_config(base, combo)
        (wd / f"configs/combo{i}.yaml").write_text(yaml.safe_dump(cfg))
        runs.append((combo, first_round_jobs(validate(cfg, SCHEMA)), f"configs/combo{i}.yaml"))
    for batch in (runs[i:i + 2] for i in range(0, len(runs), 2)):
        procs = [(combo, want, subprocess.Popen([SNAKEMAKE, "--cores", "2", "--dry-run", "--configfile", path],
                                                cwd=wd, env=env, text=True, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT))
                 for combo, want, path in batch]
        for combo, want, p in procs:
            out = p.communicate()[0]
            assert p.returncode == 0, (combo, out[-3000:])
            stats = job_stats(out)
            assert {r: stats.get(r, 0) for r in want} == want, (combo, stats)
    print(f"dry runs: {len(configs)} configs cover every pair of selection option values "
          f"({time.monotonic() - t0:.0f} s)")
    assert len(configs) <= 12  # the floor: 4 budgets x 3 per_seed values


# ------------------------------------------------------------------ end to end: the smallest scale
SHRINK = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}  # 4 blocks: layer1.0 .. layer4.0
BLOCKS = ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
# name -> (selection options, extra selection keys, the selection's training epochs)
RUNS = {
    # the walk whose profile is no round of it: profile jobs of its own; the epsilon table replays the walk
    "backward-profile": ({"strategy": "backward", "stop_rule": "paper", "scoring": "val", "budget": "none",
                          "profile": True, "per_seed": "list", "shards": 2},
                         {"k": None, "epsilons": [0.0, 1.0]}, 1),
    # cross-validation under a shorter schedule, stopped at one block
    "forward-cv-epochs": ({"strategy": "forward", "stop_rule": "code", "scoring": "cv", "budget": "epochs",
                           "profile": True, "per_seed": "true", "shards": 2}, {"k": 1, "folds": 2}, 2),
    # successive halving in a backward walk (the full set is the reference, never dropped), its profile exact
    "backward-halving": ({"strategy": "backward", "stop_rule": "code", "scoring": "val", "budget": "halving",
                          "profile": True, "per_seed": "false", "shards": 1}, {"epsilon": 0.0}, 2),
    # a shortlist in a forward walk: every block screened with a 1-epoch schedule, the best 2 trained fully
    "forward-shortlist": ({"strategy": "forward", "stop_rule": "paper", "scoring": "val", "budget": "shortlist",
                           "profile": False, "per_seed": "false", "shards": 1}, {"k": 2, "epsilon": 0.0}, 2),
}


def tiny(name: str, weights: Path) -> dict:
    """configs/test.yaml at the smallest scale with ``name``'s selection options (see :data:`RUNS`)."""
    combo, extra, epochs = RUNS[name]
    cfg = copy.deepcopy(BASE)
    for section in ("source", "sweep", "multilora", "pairs"):
        cfg.pop(section)
    cfg.update(experiment=name, seeds=[0], methods={"subtuning": {"train": {"lr": 0.001}}},
               targets={"digits": {"params": {"train_size": 40, "val_size": 20, "test_size": 20}}},
               backbone={"arch": "resnet18", "model_kwargs": SHRINK, "checkpoint": "file", "file": str(weights)})
    cfg["train"].update(epochs=1, batch_size=20)
    cfg["selection"].pop("epsilons")
    cfg = selection_config(cfg, combo, **extra)
    cfg["selection"]["train"] = {"lr": 0.001, "epochs": epochs}
    return cfg


def failed_jobs(wd: Path, out: str) -> str:
    """Each failed rule of a Snakemake run with its log's last lines (else the run's own last lines)."""
    failed = re.findall(r"Error in rule (\S+):.*?\n\s+log: (\S+)", out, flags=re.S)
    why = [f"{rule}: " + " / ".join((wd / log).read_text().strip().splitlines()[-2:]) for rule, log in failed
           if (wd / log).is_file()]
    return "\n".join(why) or out[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_riskiest_combinations_run_end_to_end(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "weights.safetensors"
    model = timm.create_model("resnet18", pretrained=False, **SHRINK)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SUBTUNE_"))}
    t0 = time.monotonic()
    procs = {}
    # each run in its own copy of the workflow, all at once (a greedy walk is a chain of short jobs)
    for name in RUNS:
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        wd = workdir(d)
        cfg = tiny(name, weights)
        validate(copy.deepcopy(cfg), SCHEMA)
        (wd / "configs/tiny.yaml").write_text(yaml.safe_dump(cfg))
        procs[name] = (wd, subprocess.Popen([SNAKEMAKE, "--cores", "2", "--keep-going", "--configfile",
                                             "configs/tiny.yaml"], cwd=wd, env=env, text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = {name: (wd, p.communicate()[0], p.returncode) for name, (wd, p) in procs.items()}
    took = time.monotonic() - t0
    failed = {name: failed_jobs(wd, out) for name, (wd, out, rc) in outs.items() if rc != 0}
    assert not failed, failed
    for name, (wd, _, _) in outs.items():
        res = wd / "results" / name
        cfg = yaml.safe_load((wd / "configs/tiny.yaml").read_text())
        for rel in ("tables/main.md", "tables/claims.md", "tables/rounds.csv", "tables/selection.md"):
            assert (res / rel).stat().st_size > 0, (name, rel)
        state = json.loads((res / "select/digits/seed0/selected.json").read_text())
        assert set(state["selected"]) <= set(BLOCKS)
        if cfg["selection"]["profile"]:
            with open(res / "tables/profile_digits.csv") as fh:
                assert [r["block"] for r in csv.DictReader(fh)] == ["(lp)", *BLOCKS], name
        if cfg["selection"]["strategy"] == "forward":
            assert len(state["selected"]) <= cfg["selection"]["k"]
        # the claims read every profile (claim 4: one selection, so no verdict, but the profile's numbers); a
        # forward walk's round 1 under a shortlist has blocks without a full-schedule score: left out, named
        with open(res / "tables/claims.csv") as fh:
            claim4 = next(r for r in csv.DictReader(fh) if r["claim_id"] == "4")
        if name == "forward-shortlist":
            assert claim4["verdict"] == NOT_RUN and not claim4["a_mean"], claim4
            assert "incomplete profiles left out" in claim4["note"], claim4
        else:
            assert claim4["target"] == "digits" and claim4["a_mean"] and claim4["verdict"] == "inconclusive", (
                name, claim4)
    # the backward profile: jobs of their own, every block alone and the linear probe
    sel = outs["backward-profile"][0] / "results/backward-profile/select/digits/seed0"
    profile = [json.loads((sel / f"profile_shard{i}.json").read_text()) for i in (0, 1)]
    assert all(p["kind"] == "profile" for p in profile)
    assert sorted(r["key"] for p in profile for r in p["results"]) == sorted(["", *BLOCKS])
    assert (sel.parents[2] / "tables/epsilon.md").stat().st_size > 0
    # halving: the full set (the reference) is scored over the whole schedule, never dropped
    sel = outs["backward-halving"][0] / "results/backward-halving/select/digits/seed0"
    r1 = json.loads((sel / "round1_shard0.json").read_text())
    ref = next(r for r in r1["results"] if r["key"] == "+".join(BLOCKS))
    assert "dropped_at" not in ref and r1["cost"]["rungs"]
    # ... and its profile is scored over the whole schedule: no block stopped early
    assert not any("dropped_at" in r for r in json.loads((sel / "profile_shard0.json").read_text())["results"])
    # the shortlist: round 1 screens the 4 blocks with a complete 1-epoch schedule and trains the best 2 with the
    # whole 2-epoch schedule (the linear probe, the reference, trains it too); the others are recorded, dropped
    wd = outs["forward-shortlist"][0]
    r1 = json.loads((wd / "results/forward-shortlist/select/digits/seed0/round1_shard0.json").read_text())
    comp = [r for r in r1["results"] if r["key"]]
    kept = [r for r in comp if "dropped_at" not in r]
    assert len(comp) == 4 and len(kept) == 2
    assert all(r["epochs"] == 2 and r["screen_epochs"] == 1 and "screen_score" in r for r in kept)
    assert all(r["dropped_at"] == 1 and r["epochs"] == 1 for r in comp if r not in kept)
    assert r1["cost"]["candidate_epochs"] == 2 + 4 * 1 + 2 * 2 and r1["cost"]["exact_candidate_epochs"] == 5 * 2
    state = json.loads((wd / "results/forward-shortlist/select/digits/seed0/selected.json").read_text())
    assert state["rounds"][0]["chosen"] in {r["key"] for r in kept} or not state["rounds"][0]["accepted"]
    with open(wd / "results/forward-shortlist/tables/rounds.csv") as fh:
        row1 = next(r for r in csv.DictReader(fh) if r["round"] == "1")
    assert float(row1["n_dropped"]) == 2 and float(row1["candidate_epochs"]) == 10, row1
    assert float(row1["ft_equiv"]) > 0, row1
    assert sorted(row1["dropped"].split(":", 1)[1].split(",")) == sorted(r["key"] for r in comp if r not in kept)
    print(f"end to end: {len(RUNS)} configs ({', '.join(RUNS)}) ran concurrently in {took:.0f} s")
