"""DVC versions the workflow's artifacts: dvc.yaml's stages run Snakemake, push/pull round trip.

One small run of the `test` experiment through `dvc repro results@test` (Snakemake does the
work); then `dvc push` to the default remote (a directory next to the checkout), delete the
artifacts, the DVC cache and Snakemake's metadata (a fresh clone), `make pull`: the files come
back byte-identical, `dvc metrics show` prints the main table, and `snakemake --cores all` runs
no job while a changed parameter still reruns exactly its jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers.workflow import FMNIST, ROOT, SNAKEMAKE, job_stats, workdir

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
VENV = BIN.parent
# The artifacts dvc.yaml versions for the test experiment (and the raw download it shares).
ARTIFACTS = ["data/raw/fashion-mnist", "data/prepared/test", "checkpoints/test", "results/test"]

pytestmark = [
    pytest.mark.skipif(not FMNIST.exists(),
                       reason="Fashion-MNIST mirror missing: apt-get install dataset-fashion-mnist (make test does)"),
    pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None, reason="needs make and git"),
]


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_dvc_yaml_covers_the_experiments():
    """Each versioned experiment: its config names it, its main.json is a metric, its profile/sweep CSVs plots."""
    d = dvc_yaml()
    exps = d["vars"][0]["experiments"]
    assert exps["default"] == "config.yaml" and exps["test"] == "configs/test.yaml"
    plots = {next(iter(p)) if isinstance(p, dict) else p for p in d["plots"]}
    for name, cfg_file in exps.items():
        cfg = yaml.safe_load((ROOT / cfg_file).read_text())
        assert cfg["experiment"] == name, f"dvc.yaml: {cfg_file} is experiment {cfg['experiment']!r}, not {name!r}"
        assert f"results/{name}/tables/main.json" in d["metrics"]
        want = {f"results/{name}/tables/profile_{t}.csv" for t in cfg["targets"]} | {f"results/{name}/plots"}
        if "sweep" in cfg:
            want.add(f"results/{name}/tables/sweep.csv")
        assert want <= plots, f"dvc.yaml plots miss {sorted(want - plots)}"
    # commands are Snakemake targets; outputs persist (DVC must not delete them: Snakemake decides)
    for stage in d["stages"].values():
        assert stage["do"]["cmd"].startswith("snakemake ") and "--cores all" in stage["do"]["cmd"]
        for out in stage["do"]["outs"]:
            assert next(iter(out.values()))["persist"] is True
    config = (ROOT / ".dvc/config").read_text()
    assert "remote = storage" in config and "url = ../../subtune-dvc-remote" in config


def small_config(wd: Path) -> None:
    """configs/test.yaml, smaller: one seed, two methods (no grid), one greedy round, one sweep size, no pair grid or Multi-LoRA."""
    path = wd / "configs/test.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["seeds"] = [0]
    cfg["source"]["params"].update(train_size=300, val_size=100)
    cfg["backbone"]["pretrain"]["train"]["epochs"] = 1
    cfg["methods"] = {m: cfg["methods"][m] for m in ("lp", "subtuning")}
    cfg["methods"]["lp"].pop("grid", None)
    cfg["selection"]["k"] = 1
    cfg["sweep"].update(sizes=[60], methods=["lp", "subtuning"])
    for key in ("pairs", "multilora"):
        cfg.pop(key, None)
    path.write_text(yaml.safe_dump(cfg))


def digests(wd: Path) -> dict[str, str]:
    out = {}
    for a in ARTIFACTS:
        for f in sorted((wd / a).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(wd))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def run(wd: Path, env: dict, *cmd: str, stdout_only: bool = False) -> str:
    p = subprocess.run(list(cmd), cwd=wd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p.stdout if stdout_only else p.stdout + p.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a whole run of the small config, then push, pull and reruns
def test_push_delete_pull_is_byte_identical_and_snakemake_runs_nothing(tmp_path):
    wd = tmp_path / "repo"
    wd.mkdir()
    workdir(wd)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "Makefile"):
        shutil.copy(ROOT / name, wd / name)
    (wd / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, wd / ".dvc" / name)
    small_config(wd)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SUBTUNE_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1")
    run(wd, env, "git", "init", "-q")
    # a per-machine setting goes to the git-ignored config.local (here: DVC's site cache, in tmp)
    run(wd, env, DVC, "config", "--local", "core.site_cache_dir", str(tmp_path / "dvc-site-cache"))

    # dvc repro hands the work to Snakemake, stage by stage
    out = run(wd, env, DVC, "repro", "results@test")
    for stage in ("download@fashion-mnist", "prepare@test", "backbone@test", "results@test"):
        assert f"Running stage '{stage}'" in out
    lock = yaml.safe_load((wd / "dvc.lock").read_text())["stages"]
    assert {"download@fashion-mnist", "prepare@test", "backbone@test", "results@test"} <= set(lock)
    # ... and both tools agree that everything is up to date
    assert "didn't change, skipping" in run(wd, env, DVC, "repro", "results@test")
    p = run(wd, env, SNAKEMAKE, "--cores", "2", "--configfile", "configs/test.yaml", "--dry-run")
    assert job_stats(p) == {}

    # metrics: the main table's numbers
    main = pd.read_csv(wd / "results/test/tables/main.csv")
    shown = json.loads(run(wd, env, DVC, "metrics", "show", "--json", stdout_only=True))
    metrics = shown[""]["data"]["results/test/tables/main.json"]["data"]
    for _, r in main.iterrows():
        assert metrics[r["method"]][r["target"]]["test_acc_mean"] == pytest.approx(r["test_acc_mean"], abs=1e-3)
    table = run(wd, env, DVC, "metrics", "show", "results/test/tables/main.json")
    assert "lp.digits.test_acc_mean" in table
    assert f"{metrics['lp']['digits']['test_acc_mean']:g}" in table
    # plots: the profiles and the sweep
    plots = json.loads(run(wd, env, DVC, "plots", "show", "--json", stdout_only=True))["data"]
    for name in ("profile_digits.csv", "profile_fmnist-new.csv", "sweep.csv"):
        assert plots[f"results/test/tables/{name}"], name

    # push to the default remote: a directory next to the checkout
    run(wd, env, DVC, "push")
    assert any((tmp_path / "subtune-dvc-remote").rglob("*"))
    before = digests(wd)
    assert len(before) > 20 and any(k.startswith("checkpoints/test/") for k in before)

    # a fresh clone: no artifacts, no DVC cache, no Snakemake metadata
    for d in ("data", "checkpoints", "results", ".dvc/cache", ".snakemake"):
        shutil.rmtree(wd / d)
    out = run(wd, env, "make", "-o", str(VENV / ".installed"), "pull", f"VENV={VENV}")
    assert "test: pulled artifacts match configs/test.yaml" in out
    assert digests(wd) == before

    # snakemake after the pull runs no job, and DVC agrees
    out = run(wd, env, SNAKEMAKE, "--cores", "all", "--configfile", "configs/test.yaml")
    assert "Nothing to be done" in out and job_stats(out) == {}, out[-3000:]
    assert "up to date" in run(wd, env, DVC, "status", "results@test")
    # the metadata is back: a changed parameter reruns exactly its jobs
    cfg = yaml.safe_load((wd / "configs/test.yaml").read_text())
    cfg["methods"]["lp"]["train"]["lr"] = 0.05
    (wd / "configs/lr.yaml").write_text(yaml.safe_dump(cfg))
    stats = job_stats(run(wd, env, SNAKEMAKE, "--cores", "1", "--configfile", "configs/lr.yaml", "--dry-run"))
    assert stats.get("train") == 2 and stats.get("train_sweep") == 1 and stats.get("report_main") == 1, stats
    assert not {"download", "prepare", "pretrain", "score_round", "decide", "selected"} & set(stats), stats
