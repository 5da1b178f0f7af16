# subtune workflow: wiring only. The stages live in rules/*.smk, the logic in src/subtune.
import copy
import os
import socket
import time

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from subtune import SubtuneError
from subtune.config import apply_overrides, validate
from subtune.provenance import config_hash

min_version("9.19")


configfile: "config.yaml"


# `snakemake --report`: the description is the start page that rule report_start writes (report/workflow.rst and the
# results quoted) once it exists, else report/workflow.rst; captions in report/*.rst. The start page's path is made
# absolute because Snakemake reads a relative one beside the Snakefile, which need not be the working directory.
report:
    _start if os.path.exists(_start := os.path.abspath(f"results/{config.get('experiment')}/report/start.rst"))
    else "report/workflow.rst"


# A --configfile names a whole experiment (configs/*.yaml): it replaces the
# embedded default instead of being deep-merged into it (Snakemake's default
# would keep, e.g., the default's targets). --config KEY=VALUE still overrides,
# deep-merged: --config 'selection={epsilon: 0.05}' changes that key only (docs/configuration.md).
if workflow.overwrite_configfiles:
    config.clear()
    config.update(copy.deepcopy(workflow.config_settings.overwrite_config))


# Checking the config imports no torch, timm or peft (subtune._lazy): cheap here and in every job step.
# Snakemake keeps --config's nested values strings: apply_overrides reads them as the config file would.
try:
    apply_overrides(config, getattr(workflow.config_settings, "config_args", None))
    validate(config, workflow.source_path("schemas/config.schema.yaml"))
except SubtuneError as exc:
    raise WorkflowError(f"config error: {exc}") from None
CONFIG_HASH = config_hash(config)  # the validated config's: a column of the main and claims tables

EXP = config["experiment"]

# MLflow: MLFLOW_TRACKING_URI wins over tracking.uri. Passed to jobs through
# the environment, not params: where runs are logged does not change results.
os.environ.setdefault("MLFLOW_TRACKING_URI", config["tracking"]["uri"])
os.environ.setdefault("SUBTUNE_MLFLOW_EXPERIMENT", config["tracking"]["experiment"])
os.environ.setdefault("SUBTUNE_INVOCATION", f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}")
os.environ.setdefault("SUBTUNE_EXPERIMENT", EXP)


# One MLflow parent run per invocation, the jobs' runs its children: made here once, in the main process, before
# any job starts; jobs (local, warm-started, SLURM) inherit its id in $SUBTUNE_MLFLOW_PARENT. Snakemake runs no
# handler for a dry run, --report or nothing to do. A tracking failure is one WARNING line (subtune.track.invocation).
onstart:
    from subtune.track import workflow_started

    workflow_started()


onsuccess:
    from subtune.track import workflow_ended

    workflow_ended("FINISHED")


onerror:
    from subtune.track import workflow_ended

    workflow_ended("FAILED")


wildcard_constraints:
    seed=r"\d+",
    round=r"\d+",
    shard=r"\d+",
    size=r"\d+",
    regime=r"source|1k|n\d+",
    method=r"[a-z0-9_-]+",


# snakemake --lint: "Specify a conda environment or container for each rule" is accepted: one
# environment (environment.yml, the same pins as pyproject.toml) runs Snakemake and every job (the
# stages run Snakemake's own interpreter); per-rule environments would each install torch.
include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/select.smk"
include: "rules/train.smk"
include: "rules/report.smk"


rule all:
    input:
        PLAN.all_outputs(),
    default_target: True
