"""The workflow's plan (subtune.plan): the paths, job lists and params the rule files look up, without Snakemake.

tests/test_workflow.py runs the rules; these pin what each lookup returns for small variations of
configs/test.yaml (selection seeds per target, the sweep's selections, the epsilon runs, reuse of tuned
models, Multi-LoRA's jobs, the tables each config implies).
"""

import json

import pytest

from subtune.config import validate
from subtune.plan import (
    Plan,
    blockset_dir,
    dataset_params,
    decision_config,
    dumps,
    multilora_ablations,
    regime_train_size,
    sel_regime,
    selects_per_seed,
)
from subtune.select import SelectionConfig, greedy

from helpers.configs import SCHEMA, base_config

BASE = base_config()
RES = "results/test"


def config(**over) -> dict:
    """configs/test.yaml (validated: schema defaults filled in) with dotted keys replaced; None drops a key."""
    cfg = base_config()
    for path, value in over.items():
        *keys, last = path.split(".")
        node = cfg
        for k in keys:
            node = node.setdefault(k, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return validate(cfg, SCHEMA)


@pytest.fixture(scope="module")
def plan() -> Plan:
    return Plan(config())


# ------------------------------------------------------------------ selection
@pytest.mark.parametrize("per_seed, digits, fmnist", [
    (False, [0], [0]),
    (["digits"], [0, 1], [0]),
    (True, [0, 1], [0, 1]),
])
def test_a_target_selects_once_unless_per_seed_names_it(per_seed, digits, fmnist):
    p = Plan(config(**{"selection.per_seed": per_seed}))
    assert p.selection_seeds("digits") == digits and p.selection_seeds("fmnist-new") == fmnist
    assert selects_per_seed(p.config, "digits") == (digits == [0, 1])
    # seed 1's runs read their own seed's selection, or the first seed's
    assert p.selection_seed("0", "digits") == 0 and p.selection_seed("1", "digits") == digits[-1]
    assert p.stage_inputs("subtuning", "fmnist-new", 1) == {
        "selection": f"{RES}/select/fmnist-new/seed{fmnist[-1]}/selected.json"}


def test_a_sweep_size_selects_on_its_own_data_unless_it_builds_the_1k_regime(plan):
    # digits trains on 120 images: n120 is the 1k regime's data (same build parameters), n60 is not
    assert plan.sweep_reuses_1k("digits", "n120") and not plan.sweep_reuses_1k("digits", "n60")
    assert plan.sel_dir("digits", 0) == f"{RES}/select/digits/seed0"
    assert plan.sel_dir("digits", 0, "n120") == f"{RES}/select/digits/seed0"
    assert plan.sel_dir("digits", 0, "n60") == f"{RES}/select/digits/n60/seed0"
    assert plan.dataset_build("digits", "n60") == dumps({**BASE["targets"]["digits"]["params"], "image_size": 32,
                                                         "train_size": 60})
    assert json.loads(plan.dataset_build("digits", "1k")) == dataset_params(plan.config, "digits")


def test_sweep_inputs_are_the_sizes_selection_and_the_1k_tuning(plan):
    # SubTuning: the blocks selected on that size's data; LP: the values its grid chose in the 1k regime
    sel = f"{RES}/select/digits"
    assert plan.sweep_inputs("digits", 60, "subtuning", 1) == {"selection": f"{sel}/n60/seed0/selected.json"}
    assert plan.sweep_inputs("digits", 120, "subtuning", 0) == {"selection": f"{sel}/seed0/selected.json"}
    assert plan.sweep_inputs("digits", 60, "lp", 1) == {"tuned": f"{RES}/tune/digits/lp.json"}
    per_seed = Plan(config(**{"selection.per_seed": ["digits"]}))
    assert per_seed.sweep_inputs("digits", 60, "subtuning", 1) == {"selection": f"{sel}/n60/seed1/selected.json"}
    assert plan.sweep_sizes() == [60, 120] and Plan(config(sweep=None)).sweep_sizes() == []
    assert plan.sweep_runs()[:3] == [f"{RES}/sweep/digits/n60/lp/seed0.json", f"{RES}/sweep/digits/n60/lp/seed1.json",
                                     f"{RES}/sweep/digits/n60/subtuning/seed0.json"]
    assert len(plan.sweep_runs()) == 2 * 2 * 2


def test_greedy_rounds_chain_their_states_and_shards(plan):
    assert plan.previous_state("digits", "", "0", "1") == []
    assert plan.previous_state("digits", "n60/", "0", "3") == [f"{RES}/select/digits/n60/seed0/state2.json"]
    sharded = Plan(config(**{"selection.shards": 2}))
    assert sharded.round_scores("digits", "", 1, 2) == [f"{RES}/select/digits/seed1/round2_shard{i}.json"
                                                        for i in (0, 1)]
    assert sharded.profile_scores("digits") == [f"{RES}/select/digits/seed0/round1_shard{i}.json" for i in (0, 1)]
    assert sel_regime("") == "1k" and sel_regime("n60/") == "n60"
    assert regime_train_size("1k") == regime_train_size("source") == "regime" and regime_train_size("n250") == 250


def test_the_sweeps_selection_decides_with_its_own_epsilon(plan):
    # the 1k regime walks with the epsilon that walks furthest (paper forward: the smallest); a sweep size does not
    assert decision_config(plan.config)["epsilon"] == 0.0
    assert decision_config(plan.config, walk=False)["epsilon"] == 0.01
    assert decision_config(config(**{"selection.epsilons": None}))["epsilon"] == 0.01


def test_surgicals_scoring_trains_with_its_own_config(plan):
    assert json.loads(plan.surgical_train("digits"))["lr"] == 0.001
    assert Plan(config(**{"methods.surgical": None})).surgical_train("digits") == "{}"


# ------------------------------------------------------------------ epsilon sensitivity
WEIGHTS = {"b1": 0.05, "b2": 0.005, "b3": 0.0}


def walk(epsilon: float = 0.0) -> dict:
    """A finished walk over three blocks: epsilon 0 selects b1+b2, 0.01 b1, 1 nothing."""
    cfg = SelectionConfig(strategy="forward", stop_rule="paper", k=2, epsilon=epsilon, scoring="val", folds=5)
    return greedy(list(WEIGHTS), lambda sets: {s: 0.5 + sum(WEIGHTS[b] for b in s) for s in sets}, cfg)


def test_epsilon_runs_reuse_the_main_sets_final_run_and_train_each_other_set_once():
    p = Plan(config(**{"selection.epsilons": [0.0, 0.001, 1.0]}))  # 0.0 and 0.001 select the same set
    seen = []

    def walk_of(seed):
        seen.append(seed)
        return walk()

    runs = p.epsilon_runs("digits", walk_of)
    assert seen == [0, 0]  # both seeds retrain the first seed's selection
    assert runs == [f"{RES}/epsilon/digits/b1+b2/seed0.json", f"{RES}/runs/digits/subtuning/seed0.json",
                    f"{RES}/epsilon/digits/lp/seed0.json", f"{RES}/epsilon/digits/b1+b2/seed1.json",
                    f"{RES}/runs/digits/subtuning/seed1.json", f"{RES}/epsilon/digits/lp/seed1.json"]
    assert p.epsilons == [0.0, 0.001, 0.01, 1.0] and p.epsilon_list() == "0 0.001 0.01 1"


def test_epsilon_walks_are_one_per_target_or_per_selection_seed():
    assert Plan(config()).epsilon_walks() == [("fmnist-new", 0), ("digits", 0)]
    p = Plan(config(**{"selection.per_seed": ["digits"]}))
    assert p.epsilon_walks() == [("fmnist-new", 0), ("digits", 0), ("digits", 1)]
    seen = []
    p.epsilon_runs("digits", lambda seed: seen.append(seed) or walk())
    assert seen == [0, 1]
    assert blockset_dir([]) == "lp" and blockset_dir(["b1", "b3"]) == "b1+b3"


# ------------------------------------------------------------------ training and tuning
def test_stage_inputs_follow_what_each_method_needs(plan):
    assert plan.stage_inputs("subtuning", "digits", 0) == {"selection": f"{RES}/select/digits/seed0/selected.json"}
    assert plan.stage_inputs("surgical", "digits", 1) == {"surgical": f"{RES}/select/digits/seed0/surgical.json"}
    assert plan.stage_inputs("lp", "digits", 0) == {} == plan.stage_inputs("lora", "digits", 1)
    assert plan.tuned_input("lp", "digits") == {"tuned": f"{RES}/tune/digits/lp.json"}
    assert plan.tuned_input("ft", "digits") == {}


def test_the_selection_seeds_final_run_reuses_the_tuning_run_of_its_chosen_point(plan):
    chosen = f"{RES}/tune/digits/lp.chosen.safetensors"
    assert plan.reuse_tune and plan.tune_outputs("digits", "lp") == {"chosen": chosen}
    assert plan.tune_outputs() == {"chosen": f"{RES}/tune/{{target}}/{{method}}.chosen.safetensors"}
    assert plan.reuse_input("lp", "digits", "0") == {"reuse": chosen}
    assert plan.reuse_input("lp", "digits", "1") == {}  # another seed trains anew
    assert plan.reuse_input("ft", "digits", "0") == {}  # no grid: no tuning run
    # train+val final runs train on other data than the tuning run: nothing saved, nothing reused
    tv = Plan(config(final_data="train+val"))
    assert not tv.reuse_tune and tv.tune_outputs() == {} and tv.reuse_input("lp", "digits", 0) == {}


def test_method_args_are_the_named_stage_inputs_in_one_order():
    files = {"reuse": "r.safetensors", "data": "d", "tuned": "t.json", "selection": "s.json"}
    assert Plan.method_args(files) == "--selection-state s.json --tuned t.json --reuse-tuned r.safetensors"
    assert Plan.method_args({"surgical": "g.json"}) == "--surgical-scores g.json"
    assert Plan.method_args({}) == ""


def test_tune_files_are_every_method_with_a_grid_on_every_target():
    p = Plan(config(**{"methods.lora.grid": {"lr": [0.001, 0.003]},
                       "targets.digits.methods": {"lp": {"train": {"lr": 0.01}}}}))  # lp's only key fixed on digits
    assert p.tune_files() == [f"{RES}/tune/fmnist-new/lp.json", f"{RES}/tune/fmnist-new/lora.json",
                              f"{RES}/tune/digits/lora.json"]


# ------------------------------------------------------------------ Multi-LoRA
def test_multilora_jobs_and_ablations(plan):
    ab = multilora_ablations(plan.config)
    assert list(ab) == ["train_a", "sequential", "rank2"]  # rank 4 is the configured one: the multilora row
    assert ab["rank2"] == {"params": {"rank": 2, "alpha": 4}, "flags": ""}
    assert ab["train_a"]["flags"] == "--train-a" and ab["sequential"]["params"] == {"rank": 4, "alpha": 4}
    assert plan.multilora_ablation_runs() == [f"{RES}/multilora/{a}/seed{s}.json" for a in ab for s in (0, 1)]
    assert plan.multilora_runs() == [f"{RES}/multilora/seed0.json", f"{RES}/multilora/seed1.json"]
    assert plan.ablation_ranks() == "2 4"
    # the grid is tried on the first seed; the others train at the point it chose
    assert plan.multilora_tuned("0") == [] and plan.multilora_tuned(1) == [f"{RES}/multilora/seed0.json"]
    assert plan.multilora_tuned(0, "rank4") == [] and plan.multilora_tuned(2, "rank4") == [
        f"{RES}/multilora/rank4/seed0.json"]
    files = plan.multilora_inputs()
    assert files["data"] == [f"data/prepared/test/{t}/1k.safetensors" for t in ("fmnist-new", "digits")]
    assert plan.multilora_tasks(files["data"], files["manifests"]) == (
        "--task fmnist-new data/prepared/test/fmnist-new/1k.safetensors data/prepared/test/fmnist-new/1k.json "
        "--task digits data/prepared/test/digits/1k.safetensors data/prepared/test/digits/1k.json")
    none = Plan(config(multilora=None))
    assert multilora_ablations(none.config) == {} and none.claims_multilora() == [] and none.ablation_ranks() == ""


# ------------------------------------------------------------------ data, backbone, reports
def test_data_and_backbone_lookups(plan):
    assert plan.raw_input("fmnist-new") == ["data/raw/fashion-mnist/MANIFEST.json"]
    assert plan.raw_flag("fmnist-new") == "--raw data/raw/fashion-mnist"
    assert plan.raw_input("digits") == [] and plan.raw_flag("digits") == ""  # synthetic: nothing to download
    assert plan.prepared("digits", "n60") == {"data": "data/prepared/test/digits/n60.safetensors",
                                              "manifest": "data/prepared/test/digits/n60.json"}
    mirrors = Plan(config(**{"data.mirrors": ["file:///m1/", "https://m2.example/"]}))
    assert plan.mirror_flags() == "" and mirrors.mirror_flags() == "--mirror file:///m1/ --mirror https://m2.example/"
    assert json.loads(plan.pretrain_train()) == {**plan.config["train"], **BASE["backbone"]["pretrain"]["train"]}
    assert plan.fetch_flags() == {"file": "", "package": ""}
    hub = Plan(config(backbone={"arch": "resnet18", "checkpoint": "file", "file": "bb.safetensors"}))
    assert hub.fetch_flags() == {"file": "--file bb.safetensors", "package": ""}


def test_report_inputs_follow_the_selection_seeds(plan):
    assert plan.final_runs()[:2] == [f"{RES}/runs/fmnist-new/lp/seed0.json", f"{RES}/runs/fmnist-new/lp/seed1.json"]
    assert len(plan.final_runs()) == 2 * 5 * 2
    assert plan.selected_files() == [f"{RES}/select/{t}/seed0/selected.json" for t in ("fmnist-new", "digits")]
    assert plan.surgical_files() == [f"{RES}/select/{t}/seed0/surgical.json" for t in ("fmnist-new", "digits")]
    assert plan.claims_profiles() == [f"{RES}/select/{t}/seed0/round1_shard0.json" for t in ("fmnist-new", "digits")]
    assert plan.pair_scores("digits") == [f"{RES}/pairs/digits/shard0.json"]
    per_seed = Plan(config(**{"selection.per_seed": True}))
    assert per_seed.selected_files() == [f"{RES}/select/{t}/seed{s}/selected.json"
                                         for t in ("fmnist-new", "digits") for s in (0, 1)]
    assert plan.claims_sweep() == plan.sweep_runs() and plan.claims_multilora() == plan.multilora_runs()


def test_no_selection_files_when_no_method_selects():
    methods = {m: BASE["methods"][m] for m in ("lp", "ft", "lora")}
    none = Plan(config(methods=methods, sweep=None, multilora=None, pairs=None, **{"selection.epsilons": None}))
    assert none.selected_files() == [] and none.surgical_files() == []
    assert f"{RES}/tables/rounds.csv" not in none.all_outputs()
    assert none.claims_profiles()  # the fine-tuning profiles are still scored (selection.profile)


def test_all_outputs_are_the_tables_the_config_implies(plan):
    out = plan.all_outputs()
    for table in ("main.csv", "rounds.csv", "selection.md", "profile_digits.csv", "pairs_digits.csv", "sweep.csv",
                  "multilora.md", "epsilon.md", "claims.md", "grid.md"):
        assert f"{RES}/tables/{table}" in out, table
    assert len(out) == len(set(out))
    methods = {m: BASE["methods"][m] for m in ("ft", "lora")}
    bare = Plan(config(methods=methods, sweep=None, multilora=None, pairs=None, **{"selection.epsilons": None,
                                                                                   "selection.profile": False}))
    assert bare.all_outputs() == [f"{RES}/tables/main.csv", f"{RES}/tables/main.md", f"{RES}/plots/cost.png",
                                  f"{RES}/plots/params.png", *bare.metrics_files(), f"{RES}/tables/claims.csv",
                                  f"{RES}/tables/claims.md", f"{RES}/tables/main.html", f"{RES}/tables/claims.html",
                                  f"{RES}/report/start.rst"]
    assert bare.claims_profiles() == [] and bare.tune_files() == []


def test_shifts_are_the_targets_that_set_one():
    p = Plan(config(**{"targets.digits.shift": "domain"}))
    assert p.shift_flags() == "digits=domain" and Plan(config()).shift_flags() == ""
