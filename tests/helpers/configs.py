"""Which files in configs/ are paper configs: every one but those :data:`NOT_PAPER` names.

A new file in configs/ is a paper config unless it is added to :data:`NOT_PAPER`, so it cannot go untested:
tests/test_configs.py dry-runs every paper config (its whole first-round DAG: a new one needs its count in
``TOTAL`` there) and every config of :data:`COMPANIONS`; tests/test_paper_configs.py runs every paper config
end to end at tiny scale; configs/test.yaml is the config the workflow tests run (tests/test_workflow.py).

The unit tests that vary configs/test.yaml without Snakemake (tests/test_plan.py, tests/test_variants.py) start
from :func:`base_config` and validate against :data:`SCHEMA`.
"""

import copy

import yaml

from helpers.workflow import ROOT

SCHEMA = ROOT / "schemas/config.schema.yaml"
_TEST_CONFIG = yaml.safe_load((ROOT / "configs/test.yaml").read_text())


def base_config() -> dict:
    """configs/test.yaml as read, unvalidated; a fresh copy each call, since ``validate`` fills defaults in place."""
    return copy.deepcopy(_TEST_CONFIG)

# configs/*.yaml that do not reproduce a paper's protocol, and why
NOT_PAPER = {
    "quick": "a quick look on a backbone pretrained here; its tables say nothing about the papers' claims",
    "extended": "the embedded default with the rows and analyses that do not fit its time budget",
    "mobilenetv2": "the embedded default's experiment on a second architecture",
    "test": "the small config the workflow tests run end to end",
}
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
PAPER = [name for name in CONFIGS if name not in NOT_PAPER]
# the embedded default and the configs beside it, dry-run in full (configs/test.yaml runs in tests/test_workflow.py)
COMPANIONS = ["config.yaml", *(f"configs/{name}.yaml" for name in NOT_PAPER if name != "test")]
