# Lookups shared by the rules/*.smk files. The plan of this config (subtune.plan: paths, job lists, params,
# unit tested) and the few input functions that need Snakemake itself (checkpoints, a job's named inputs).
import json
import shlex
import sys
from types import SimpleNamespace

from subtune.plan import (
    Plan,
    cache_flags,
    cv_flags,
    decision_config,
    dumps,
    final_flags,
    method_grid,
    method_params,
    method_train,
    multilora_ablations,
    multilora_grid,
    multilora_train,
    scoring_config,
    scoring_flags,
    sel_regime,
    selection_budget,
    selection_train,
    target_head,
    tune_extend,
)

# The interpreter running Snakemake (the project venv) runs the stages, whatever PATH says.
# snakemake --lint: "Shell command directly uses variable PY" is accepted: which interpreter runs a
# stage changes no result, and as a param its path would rerun every job when the venv moves.
PY = f"{shlex.quote(sys.executable)} -m subtune"
PLAN = Plan(config)
DATA = PLAN.data
CKPT = PLAN.ckpt
RES = PLAN.res
SEL_SEED = PLAN.sel_seed
REFS = PLAN.refs  # published numbers beside ours
# The tuning run of the chosen grid point is the selection seed's final run when the final runs train on
# the training split too (subtune.reuse): tune saves it, train checks its inputs' key, loads it and
# evaluates the test split only.
REUSE_TUNE = PLAN.reuse_tune


def method_args(w, input):
    """The train/tune flags of the job's stage inputs (selection, surgical scores, tuned values, reuse)."""
    return PLAN.method_args(input)


def state_flag(w, input):
    return f"--state {input.state}" if input.state else ""


# ---- greedy selection rounds: each decision (a checkpoint) tells whether another round is needed
def previous_state(w):
    return PLAN.previous_state(w.target, w.sizedir, w.seed, w.round)


def final_state(w):
    """Unroll the rounds: each decision tells whether another round is needed."""
    r = 1
    while True:
        path = checkpoints.decide.get(target=w.target, sizedir=w.sizedir, seed=w.seed, round=r).output[0]
        with open(path) as fh:
            if json.load(fh)["done"]:
                return path
        r += 1


# ---- epsilon sensitivity (selection.epsilons): the walks' final states, every epsilon's set, their runs
def walk_state(target, seed):
    return final_state(SimpleNamespace(target=target, sizedir="", seed=str(seed)))


def load_walk(target, seed):
    with open(walk_state(target, seed)) as fh:
        return json.load(fh)


def epsilon_states(w=None):
    """The walks' final states (one per target, per target and seed with per_seed)."""
    return [walk_state(t, s) for t, s in PLAN.epsilon_walks()]


def epsilon_runs_of(target):
    """One named input function per target (see epsilon_inputs): a target's train_epsilon jobs start as soon
    as its own walk is done, not when every target's is; and while a selection checkpoint is incomplete
    Snakemake keeps a function's input name."""

    def runs(w=None):
        return PLAN.epsilon_runs(target, lambda seed: load_walk(target, seed))

    return runs


def epsilon_inputs():
    """report_epsilon's run inputs: runs_<i> for the i-th target."""
    return {f"runs_{i}": epsilon_runs_of(t) for i, t in enumerate(PLAN.targets)}


def epsilon_run_files(w, input):
    return " ".join(f for i in range(len(PLAN.targets)) for f in input[f"runs_{i}"])
