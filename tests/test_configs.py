"""The paper configs: each validates and dry-runs to the DAG its config implies; every GPU stage asks for a GPU.

No data or checkpoint is fetched: a dry run plans the downloads and the hub fetch. A dry run cannot see past
the greedy-selection checkpoint (`decide`), so the counts are those of the first round. The paper configs are
every file in configs/ but those tests/helpers/configs.py names as not a paper's; the dry runs are `slow`.
"""

import contextlib
import re

import pytest
import yaml

from subtune.config import validate
from subtune.data.targets import raw_dataset
from subtune.methods import method_needs

from helpers.configs import COMPANIONS, PAPER
from helpers.workflow import ROOT, job_stats, smk, workdir

# the whole first-round DAG of each config (the test recomputes the main counts from the config below)
TOTAL = {"subtuning-vtab": 316, "subtuning-vtab-vit": 312, "subtuning-profiles-r18": 74, "subtuning-datasize": 118,
         "cifar10c": 349, "peft-vtab": 541, "peft-vtab-dinov2": 465, "multilora": 33}
# stages that train a network (the CLI stages a GPU job runs)
TRAINING_STAGES = {"pretrain", "score", "tune", "train", "multilora"}


def load(name: str) -> dict:
    with contextlib.chdir(ROOT):  # references/ paths are relative to the working directory
        return validate(yaml.safe_load((ROOT / f"configs/{name}.yaml").read_text()), ROOT / "schemas/config.schema.yaml")


def expected(cfg: dict) -> dict[str, int]:
    seeds, targets, methods = cfg["seeds"], list(cfg["targets"]), cfg["methods"]
    sel = cfg["selection"]
    per = sel["per_seed"]

    def sel_seeds(t):  # selection.per_seed: true, false or a list of targets
        return len(seeds) if (t in per if isinstance(per, list) else per) else 1

    pretrain_source = [cfg["source"]["dataset"]] if cfg["backbone"]["checkpoint"] == "pretrain" else []
    needs = {method_needs(m) for m in [*methods, *cfg.get("sweep", {}).get("methods", [])]}
    out = {
        "train": len(methods) * len(targets) * len(seeds),
        "prepare": len(targets) + len(pretrain_source) + len(cfg.get("sweep", {}).get("sizes", [])),
        "download": len({raw_dataset(t) for t in [*targets, *pretrain_source]} - {None}),
        "tune": sum(1 for m in methods.values() if m.get("grid")) * len(targets),
    }
    if cfg["data"].get("split_per_seed"):  # each target prepared once per seed (rule prepare_seed)
        out["prepare"] -= len(targets)
        out["prepare_seed"] = len(targets) * len(seeds)
    if out["tune"]:
        out["report_grid"] = 1  # the validation curves of every tuned grid (tables/grid.*)
    out["report_claims"] = 1  # every config: tables/claims.* (claims whose results are missing say "not run")
    if "selection" in needs:
        out["report_selection"] = 1  # the block sets each seed's selection picked (tables/selection.*)
    if "selection" in needs or sel.get("profile", True):
        out["score_round"] = sum(sel_seeds(t) for t in targets) * sel["shards"]
    if "surgical" in needs:
        out["score_surgical"] = sum(sel_seeds(t) for t in targets)
    if "multilora" in cfg:
        out["multilora"] = len(seeds)
    if "pairs" in cfg:
        out["score_pairs"] = cfg["pairs"]["shards"]
    if "sweep" in cfg:
        out["train_sweep"] = 0  # waits on the selection checkpoint for SubTuning; checked below
        sw = cfg["sweep"]
        if any(method_needs(m) == "selection" for m in sw["methods"]):
            # a selection per size on that size's data (a size equal to the 1k regime's reuses its selection)
            own = (cfg["targets"][sw["target"]].get("params") or {}).get("train_size")
            extra = sum(1 for n in sw["sizes"] if n != own) * sel_seeds(sw["target"]) * sel["shards"]
            out["score_round"] = out.get("score_round", 0) + extra
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_paper_config_dry_run(tmp_path, name):
    cfg = load(name)
    wd = workdir(tmp_path)
    p = smk(wd, "--dry-run", config=f"configs/{name}.yaml")
    stats = job_stats(p.stdout + p.stderr)
    for rule, n in expected(cfg).items():
        if rule == "train_sweep":
            continue
        assert stats.get(rule, 0) == n, (rule, stats)
    assert stats.get("pretrain", 0) + stats.get("fetch", 0) == 1
    assert sum(stats.values()) + 1 == TOTAL[name], stats  # + rule all


@pytest.mark.slow
def test_peft_vtab_plans_ssf_twice(tmp_path):
    """peft-vtab.yaml runs SSF twice: ``ssf`` with the authors' per-task values (no tuning job) and the variant
    ``ssf-val-tuned`` under its own name, tuned on val200 on every task, then trained on every task and seed."""
    cfg = load("peft-vtab")
    wd = workdir(tmp_path)
    out = smk(wd, "--dry-run", "-p", config="configs/peft-vtab.yaml").stdout
    tune = re.findall(r"subtune tune .*?--method (\S+) .*?--grid '(\S+)'", out)
    train = re.findall(r"subtune train .*?--method (\S+) ", out)
    n_targets, n_seeds = len(cfg["targets"]), len(cfg["seeds"])
    assert [g for m, g in tune if m == "ssf-val-tuned"] == ['{"lr":[0.002,0.005,0.01,0.02]}'] * n_targets
    assert "ssf" not in {m for m, _ in tune}  # the authors' values: no grid
    assert train.count("ssf-val-tuned") == train.count("ssf") == n_targets * n_seeds
    assert re.search(r"subtune train .*--method ssf-val-tuned .*--tuned results/peft-vtab/tune/vtab-\S+/"
                     r"ssf-val-tuned\.json", out)


@pytest.mark.slow
@pytest.mark.parametrize("config", COMPANIONS)
def test_the_default_and_its_companions_dry_run(tmp_path, config):
    """The embedded default (packaged ImageNet weights, per-seed selection on the targets it names) and the two
    configs beside it plan their whole first-round DAG; the packaged weights are fetched, never pretrained."""
    with contextlib.chdir(ROOT):
        cfg = validate(yaml.safe_load((ROOT / config).read_text()), ROOT / "schemas/config.schema.yaml")
    wd = workdir(tmp_path)
    p = smk(wd, "--dry-run", "-p", config=config)
    out = p.stdout + p.stderr
    stats = job_stats(out)
    for rule, n in expected(cfg).items():
        if rule != "train_sweep":
            assert stats.get(rule, 0) == n, (rule, stats)
    if cfg["backbone"]["checkpoint"] == "package":
        assert stats.get("fetch") == 1 and "pretrain" not in stats
        assert f"--package {cfg['backbone']['package']}" in out


def test_the_mobilenetv2_config_is_the_default_on_another_network():
    """configs/mobilenetv2.yaml reads each claim on a second architecture: everything but the backbone, the
    experiment's name and its MLflow experiment is the default's."""
    default, mnv2 = (yaml.safe_load((ROOT / c).read_text()) for c in ("config.yaml", "configs/mobilenetv2.yaml"))
    assert mnv2["backbone"] == {"arch": "mobilenetv2_100", "checkpoint": "package", "package": "mobilenetv2-tv"}
    for c in (default, mnv2):
        for key in ("backbone", "experiment", "tracking"):
            c.pop(key)
    assert mnv2 == default


def _rule_stages() -> dict[str, str]:
    """rule name -> the subtune CLI stage its shell command runs."""
    out = {}
    for f in sorted((ROOT / "rules").glob("*.smk")):
        text = f.read_text()
        for m in re.finditer(r"^\s*(?:rule|checkpoint) (\w+):(.*?)(?=^\s*(?:rule|checkpoint) \w+:|\Z)", text, re.S | re.M):
            stage = re.search(r'"\{PY\} ([\w-]+)', m.group(2))
            if stage:
                out[m.group(1)] = stage.group(1)
    return out


def test_every_gpu_stage_asks_for_a_gpu_in_the_slurm_profile():
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    res = profile.get("set-resources") or {}
    stages = _rule_stages()
    assert {"train", "tune", "score_round", "multilora", "download", "report_main"} <= set(stages)
    for rule, stage in stages.items():
        r = {**(profile.get("default-resources") or {}), **(res.get(rule) or {})}
        gpus = int(r.get("gpu", 0) or 0) + ("gpu" in str(r.get("gres", "")))
        if stage in TRAINING_STAGES:
            assert gpus >= 1, f"rule {rule} runs `{stage}` but asks for no GPU"
        else:
            assert gpus == 0, f"rule {rule} runs `{stage}` (CPU only) but asks for a GPU"


def test_validating_a_config_imports_no_torch():
    """Snakemake validates the config on every invocation (dry runs, each cluster job step): in full
    (methods, parameters, grids, datasets) and without importing torch, timm or peft for it."""
    import subprocess
    import sys

    code = (
        "import sys, yaml\n"
        "from subtune import SubtuneError\n"
        "from subtune.config import validate\n"
        "for c in ('config.yaml', 'configs/test.yaml', 'configs/peft-vtab.yaml', 'configs/multilora.yaml'):\n"
        "    validate(yaml.safe_load(open(c)), 'schemas/config.schema.yaml')\n"
        "bad = yaml.safe_load(open('configs/test.yaml'))\n"
        "bad['methods']['lora']['params']['rank'] = 0\n"
        "try:\n"
        "    validate(bad, 'schemas/config.schema.yaml')\n"
        "except SubtuneError as e:\n"
        "    print('error:', e)\n"
        "print(sorted(m for m in ('torch', 'timm', 'peft') if m in sys.modules))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("error: ") and "rank" in lines[0], p.stdout
    assert lines[-1] == "[]", p.stdout
