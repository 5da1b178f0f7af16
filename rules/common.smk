# Paths and small input functions shared by the rule files.
import json
import shlex
import sys

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
    multilora_grid,
    multilora_train,
    scoring_flags,
    scoring_config,
    selection_train,
)
from subtune.data.targets import raw_dataset
from subtune.needs import method_needs

# The interpreter running Snakemake (the project venv) runs the stages, whatever PATH says.
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


def selection_seed(seed):
    """Selection runs once (first seed) unless selection.per_seed."""
    return int(seed) if config["selection"]["per_seed"] else SEL_SEED


def selection_seeds():
    return SEEDS if config["selection"]["per_seed"] else [SEL_SEED]


def sel_dir(target, seed, regime="1k"):
    """A selection's directory: select/<target>/seed<S> (the 1k regime: every method's selection),
    select/<target>/n<size>/seed<S> (a data-size sweep's regime; the 1k one when the sizes agree)."""
    if regime != "1k" and sweep_reuses_1k(target, regime):
        regime = "1k"
    return f"{RES}/select/{target}/{'' if regime == '1k' else regime + '/'}seed{seed}"


def sweep_reuses_1k(target, regime):
    """n<size> is the 1k regime's data when the target's train_size is that size (same build parameters)."""
    return dataset_params(config, target, regime_train_size(regime)) == dataset_params(config, target)


def sel_regime(w):
    """The prepared regime a selection job runs on: its {sizedir} wildcard ('' or 'n<size>/')."""
    return w.sizedir.rstrip("/") or "1k"


def regime_train_size(regime):
    return "regime" if regime in ("1k", "source") else int(regime[1:])


def sweep_sizes():
    return config["sweep"]["sizes"] if "sweep" in config else []


def all_outputs():
    out = [f"{RES}/tables/main.csv", f"{RES}/tables/main.md"]
    selecting = [*config["methods"], *config.get("sweep", {}).get("methods", [])]
    if any(method_needs(m) == "selection" for m in selecting):
        out.append(f"{RES}/tables/rounds.csv")
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
    return out
