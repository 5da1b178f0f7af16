# Paths and small input functions shared by the rule files.
import json
import shlex
import sys
from types import SimpleNamespace

from subtune.config import (
    dataset_params,
    decision_config,
    dumps,
    cache_flags,
    cv_flags,
    final_flags,
    method_grid,
    method_params,
    method_train,
    multilora_ablations,
    multilora_grid,
    multilora_train,
    scoring_flags,
    scoring_config,
    selection_budget,
    selection_epsilons,
    selection_train,
    selects_per_seed,
    target_head,
    target_shifts,
    tune_extend,
)
from subtune.data.targets import raw_dataset
from subtune.methods import method_needs  # the method registry (no torch)
from subtune.select import epsilon_sets, key as set_key, replay

# The interpreter running Snakemake (the project venv) runs the stages, whatever PATH says.
# snakemake --lint: "Shell command directly uses variable PY" is accepted: which interpreter runs a
# stage changes no result, and as a param its path would rerun every job when the venv moves.
PY = f"{shlex.quote(sys.executable)} -m subtune"
DATA = f"data/prepared/{EXP}"
CKPT = f"checkpoints/{EXP}/backbone.safetensors"
RES = f"results/{EXP}"
SEL_SEED = SEEDS[0]
REFS = list(config.get("references") or [])  # published numbers beside ours


def prepared(target, regime="1k"):
    return {
        "data": f"{DATA}/{target}/{regime}.safetensors",
        "manifest": f"{DATA}/{target}/{regime}.json",
    }


def selection_seed(seed, target):
    """Selection runs once (first seed) unless selection.per_seed names the target (or is true)."""
    return int(seed) if selects_per_seed(config, target) else SEL_SEED


def selection_seeds(target):
    return SEEDS if selects_per_seed(config, target) else [SEL_SEED]


def sel_dir(target, seed, regime="1k"):
    """A selection's directory: select/<target>/seed<S> (the 1k regime: every method's selection),
    select/<target>/n<size>/seed<S> (a data-size sweep's regime; the 1k one when the sizes agree)."""
    if regime != "1k" and sweep_reuses_1k(target, regime):
        regime = "1k"
    sizedir = "" if regime == "1k" else f"{regime}/"
    return f"{RES}/select/{target}/{sizedir}seed{seed}"


def sweep_reuses_1k(target, regime):
    """n<size> is the 1k regime's data when the target's train_size is that size (same build parameters)."""
    return dataset_params(config, target, regime_train_size(regime)) == dataset_params(config, target)


def sel_regime(w):
    """The prepared regime a selection job runs on: its {sizedir} wildcard ('' or 'n<size>/')."""
    return w.sizedir[:-1] if w.sizedir else "1k"


def regime_train_size(regime):
    return "regime" if regime in ("1k", "source") else int(regime[1:])


def sweep_sizes():
    return config["sweep"]["sizes"] if "sweep" in config else []


def all_outputs():
    out = [f"{RES}/tables/main.csv", f"{RES}/tables/main.md", f"{RES}/plots/cost.png"]
    selecting = [*config["methods"], *config.get("sweep", {}).get("methods", [])]
    if any(method_needs(m) == "selection" for m in selecting):
        out += [f"{RES}/tables/rounds.csv", f"{RES}/tables/selection.csv", f"{RES}/tables/selection.md"]
    if config["selection"].get("profile", True):
        out += expand(f"{RES}/tables/profile_{{target}}.csv", target=TARGETS)
        out += expand(f"{RES}/plots/profile_{{target}}.png", target=TARGETS)
    if "pairs" in config:
        t = config["pairs"]["target"]
        out += [f"{RES}/tables/pairs_{t}.csv", f"{RES}/plots/pairs_{t}.png"]
    if "sweep" in config:
        out += [f"{RES}/tables/sweep.csv", f"{RES}/plots/sweep.png"]
    if "multilora" in config:
        out += [f"{RES}/tables/multilora.csv", f"{RES}/tables/multilora.md"]
    if EPSILONS:
        out += [f"{RES}/tables/epsilon.csv", f"{RES}/tables/epsilon.md"]
    out += [f"{RES}/tables/claims.csv", f"{RES}/tables/claims.md"]
    if tune_files():
        out += [f"{RES}/tables/grid.csv", f"{RES}/tables/grid.md", f"{RES}/plots/grid.png"]
    return out


# ---- input functions of rules/data.smk: the raw files a prepared dataset needs
def raw_input(w):
    raw = raw_dataset(w.dataset)
    return [f"data/raw/{raw}/MANIFEST.json"] if raw else []


def raw_dir(w):
    raw = raw_dataset(w.dataset)
    return f"--raw data/raw/{raw}" if raw else ""


# ---- input functions of rules/select.smk: greedy selection rounds
def previous_state(w):
    r = int(w.round)
    return [f"{RES}/select/{w.target}/{w.sizedir}seed{w.seed}/state{r - 1}.json"] if r > 1 else []


def final_state(w):
    """Unroll the rounds: each decision tells whether another round is needed."""
    r = 1
    while True:
        path = checkpoints.decide.get(target=w.target, sizedir=w.sizedir, seed=w.seed, round=r).output[0]
        with open(path) as fh:
            if json.load(fh)["done"]:
                return path
        r += 1


# ---- epsilon sensitivity (selection.epsilons): the walk's final states, every epsilon's set, their runs
EPSILONS = selection_epsilons(config)


def blockset_dir(blocks):
    """A block set as a path component: the blocks joined by '+', 'lp' for the empty set."""
    return set_key(blocks) or "lp"


def walk_state(target, seed):
    return final_state(SimpleNamespace(target=target, sizedir="", seed=str(seed)))


def epsilon_states(w=None):
    """The walks' final states (one per target, per target and seed with per_seed)."""
    return list(dict.fromkeys(walk_state(t, selection_seed(seed, t)) for t in TARGETS for seed in SEEDS))


def epsilon_runs_of(target):
    """One target's runs of every epsilon's set, per seed: the main selection's set is its final runs (not
    trained twice), every other set is trained by train_epsilon. One named input function per target (see
    epsilon_inputs): a target's train_epsilon jobs start as soon as its own walk is done, not when every
    target's is; and while a selection checkpoint is incomplete Snakemake keeps a function's input name."""

    def runs(w=None):
        out = []
        for seed in SEEDS:
            with open(walk_state(target, selection_seed(seed, target))) as fh:
                walk = json.load(fh)
            main = replay(walk, config["selection"]["epsilon"])["selected"]
            for e in epsilon_sets(walk, EPSILONS):
                run = (f"{RES}/runs/{target}/subtuning/seed{seed}.json" if e["selected"] == main
                       else f"{RES}/epsilon/{target}/{blockset_dir(e['selected'])}/seed{seed}.json")
                if run not in out:
                    out.append(run)
        return out

    return runs


def epsilon_inputs():
    """report_epsilon's run inputs: runs_<i> for the i-th target."""
    return {f"runs_{i}": epsilon_runs_of(t) for i, t in enumerate(TARGETS)}


def epsilon_run_files(w, input):
    return " ".join(f for i in range(len(TARGETS)) for f in input[f"runs_{i}"])


# ---- input functions of rules/train.smk: what a method's jobs need from the selection and tuning stages
def stage_inputs(method, target, seed):
    """What a method needs from the selection stage (SubTuning's blocks, Surgical's group scores)."""
    needs = method_needs(method)
    sel = sel_dir(target, selection_seed(seed, target))
    if needs == "selection":
        return {"selection": f"{sel}/selected.json"}
    if needs == "surgical":
        return {"surgical": f"{sel}/surgical.json"}
    return {}


def tuned_input(method, target):
    """The values chosen on validation, when the method has a grid."""
    return {"tuned": f"{RES}/tune/{target}/{method}.json"} if method_grid(config, method, target) else {}


# The tuning run of the chosen grid point is the selection seed's final run when the final runs train on
# the training split too (subtune.reuse): tune saves it, train checks its inputs' key, loads it and
# evaluates the test split only.
REUSE_TUNE = config.get("final_data", "train") == "train"


def chosen_file(target, method):
    return f"{RES}/tune/{target}/{method}.chosen.safetensors"


def tune_outputs(target="{target}", method="{method}"):
    return {"chosen": chosen_file(target, method)} if REUSE_TUNE else {}


def reuse_input(method, target, seed):
    if REUSE_TUNE and int(seed) == SEL_SEED and method_grid(config, method, target):
        return {"reuse": chosen_file(target, method)}
    return {}


def method_args(w, input):
    args = []
    if "selection" in input.keys():
        args.append(f"--selection-state {input.selection}")
    if "surgical" in input.keys():
        args.append(f"--surgical-scores {input.surgical}")
    if "tuned" in input.keys():
        args.append(f"--tuned {input.tuned}")
    if "reuse" in input.keys():
        args.append(f"--reuse-tuned {input.reuse}")
    return " ".join(args)


def sweep_inputs(w):
    # SubTuning in the sweep uses the blocks selected on that size's training data (the
    # same val split), and every method the values its grid chose in the 1k regime.
    # The sweep trains on the train split whatever final_data says: its x axis is the size.
    sel = sel_dir(w.target, selection_seed(w.seed, w.target), f"n{w.size}")
    needs = method_needs(w.method)
    out = {"selection": f"{sel}/selected.json"} if needs == "selection" else {}
    return out | tuned_input(w.method, w.target)


# ---- input functions of rules/report.smk: the files each table is made from
def final_runs(w=None):
    return expand(f"{RES}/runs/{{target}}/{{method}}/seed{{seed}}.json", target=TARGETS, method=METHODS, seed=SEEDS)


def tune_files(w=None):
    """Every tuning result (each method with a grid on each target): the validation curves of tables/grid.*."""
    return [f"{RES}/tune/{t}/{m}.json" for m in METHODS for t in TARGETS if method_grid(config, m, t)]


def selected_files(w=None):
    needs = any(method_needs(m) == "selection" for m in METHODS)
    sweep_needs = any(method_needs(m) == "selection" for m in config.get("sweep", {}).get("methods", []))
    if not (needs or sweep_needs):
        return []
    return [f"{RES}/select/{t}/seed{s}/selected.json" for t in TARGETS for s in selection_seeds(t)]


def surgical_files(w=None):
    """Surgical's group scores (its selection cost in tables/main.md)."""
    if not any(method_needs(m) == "surgical" for m in METHODS):
        return []
    return [f"{RES}/select/{t}/seed{s}/surgical.json" for t in TARGETS for s in selection_seeds(t)]


def claims_profiles(w=None):
    """Round 1 of every target's selection, each selection seed (the fine-tuning profiles of tables/claims.md)."""
    selecting = any(method_needs(m) == "selection" for m in METHODS)
    if not (selecting or config["selection"].get("profile", True)):
        return []
    shards = range(config["selection"]["shards"])
    return [f"{RES}/select/{t}/seed{s}/round1_shard{i}.json" for t in TARGETS for s in selection_seeds(t) for i in shards]


def claims_sweep(w=None):
    return sweep_runs() if "sweep" in config else []


def claims_multilora(w=None):
    return expand(f"{RES}/multilora/seed{{seed}}.json", seed=SEEDS) if "multilora" in config else []


def sweep_runs(w=None):
    s = config["sweep"]
    return expand(
        f"{RES}/sweep/{s['target']}/n{{size}}/{{method}}/seed{{seed}}.json",
        size=s["sizes"], method=s["methods"], seed=SEEDS,
    )
