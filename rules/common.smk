# Paths and small input functions shared by the rule files.
import json
import shlex
import sys

from subtune.config import (
    dataset_params,
    decision_config,
    dumps,
    cache_flags,
    method_grid,
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
