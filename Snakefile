# subtune workflow: wiring only. The stages live in rules/*.smk, the logic in src/subtune.
import copy
import os
import socket
import time

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from subtune import SubtuneError
from subtune.config import validate

min_version("9.19")


configfile: "config.yaml"


report: "report/workflow.rst"  # `snakemake --report`: the description; captions in report/*.rst


# A --configfile names a whole experiment (configs/*.yaml): it replaces the
# embedded default instead of being deep-merged into it (Snakemake's default
# would keep, e.g., the default's targets). --config KEY=VALUE still overrides.
if workflow.overwrite_configfiles:
    config.clear()
    config.update(copy.deepcopy(workflow.config_settings.overwrite_config))


# Checking the config imports no torch, timm or peft (subtune._lazy): cheap here and in every job step.
try:
    validate(config, workflow.source_path("schemas/config.schema.yaml"))
except SubtuneError as exc:
    raise WorkflowError(f"config error: {exc}") from None

EXP = config["experiment"]

# MLflow: MLFLOW_TRACKING_URI wins over tracking.uri. Passed to jobs through
# the environment, not params: where runs are logged does not change results.
os.environ.setdefault("MLFLOW_TRACKING_URI", config["tracking"]["uri"])
os.environ.setdefault("SUBTUNE_MLFLOW_EXPERIMENT", config["tracking"]["experiment"])
os.environ.setdefault("SUBTUNE_INVOCATION", f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}")
os.environ.setdefault("SUBTUNE_EXPERIMENT", EXP)


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
