"""DVC versions the workflow's artifacts: dvc.yaml's stages run Snakemake, `make reproduce` records them, DVC's
views (metrics, experiments, plots) read them, and a push/pull round trip gives them back.

The round trip: one small run through `make reproduce` (the small config stands in for the embedded default, so
that the Makefile's and dvc.yaml's defaults apply as they are); `dvc status` is then clean and DVC's views show
the run; `dvc push` to the default remote (a directory next to the checkout), delete the artifacts, the DVC
cache and Snakemake's metadata (a fresh clone), `make pull`: the files come back byte-identical, and
`snakemake --cores all` runs no job while a changed parameter still reruns exactly its jobs. The views are
checked on a synthetic main table too, without the workflow.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from subtune import SubtuneError
from subtune.report import registry
from subtune.report.tables.metrics import METRICS, metrics

from helpers.workflow import FMNIST, ROOT, SNAKEMAKE, job_stats, workdir

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
VENV = BIN.parent
EXP = "default"
# The artifacts dvc.yaml versions for the default experiment (and the raw download it shares).
ARTIFACTS = ["data/raw/fashion-mnist", f"data/prepared/{EXP}", f"checkpoints/{EXP}", f"results/{EXP}"]
STAGES = ["download@fashion-mnist", f"prepare@{EXP}", f"backbone@{EXP}", f"results@{EXP}"]
# docs/dvc.md's `dvc exp show` column choices: the parameters, and test accuracy of one method / on one target
EXP_SHOW_DROP = r"--drop=.*/|Snakefile|schemas|rules|config\.yaml|Created"
EXP_SHOW_KEEP = [r"--keep=.*/subtuning/.*:test_acc_mean", r"--keep=.*/digits\.json:test_acc_mean"]

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
needs_fmnist = pytest.mark.skipif(
    not FMNIST.exists(), reason="Fashion-MNIST mirror missing: apt-get install dataset-fashion-mnist (make test does)")


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_dvc_yaml_covers_the_experiments():
    """Each versioned experiment's config names it and sets the params `dvc exp show` shows; the default's metrics
    and PNGs are what DVC shows (image plots: no vega template that loads its JavaScript from a CDN)."""
    d = dvc_yaml()
    exps = d["vars"][0]["experiments"]
    assert exps[EXP] == "config.yaml"
    params = d["stages"]["results"]["do"]["params"]
    assert len(params) == 1 and list(params[0]) == ["${item}"]
    keys = params[0]["${item}"]
    assert {"seeds", "backbone.arch", "data.image_size", "train.lr", "selection.epsilon"} <= set(keys)
    for name, cfg_file in exps.items():
        cfg = yaml.safe_load((ROOT / cfg_file).read_text())
        assert cfg["experiment"] == name, f"dvc.yaml: {cfg_file} is experiment {cfg['experiment']!r}, not {name!r}"
        for key in keys:
            value = cfg
            for part in key.split("."):
                assert isinstance(value, dict) and part in value, f"{cfg_file} does not set {key} (dvc.yaml params)"
                value = value[part]
    assert d["metrics"] == [f"results/{EXP}/metrics"]
    assert d["plots"] == [f"results/{EXP}/plots"]
    # commands are Snakemake targets; outputs persist (DVC must not delete them: Snakemake decides)
    for stage in d["stages"].values():
        assert stage["do"]["cmd"].startswith("snakemake ") and "--cores all" in stage["do"]["cmd"]
        for out in stage["do"]["outs"]:
            assert next(iter(out.values()))["persist"] is True
    config = (ROOT / ".dvc/config").read_text()
    assert "remote = storage" in config and "url = ../../subtune-dvc-remote" in config


# ---------------------------------------------------------------- the metrics table
def main_csv(path: Path, rows: list[tuple[str, str, float, float | None, float, int]]) -> Path:
    """A main table with the columns the metrics table reads (and one it does not)."""
    df = pd.DataFrame(rows, columns=["method", "target", *METRICS])
    df.insert(2, "n_seeds", 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


ROWS = [("lp", "digits", 80.25, 1.5, 81.0, 650), ("lp", "fmnist-new", 70.0, None, 71.5, 650),
        ("subtuning", "digits", 90.12345, 0.5, 91.0, 12000), ("subtuning", "fmnist-new", 75.0, 2.0, 74.0, 12000)]


def files_of(out: Path, rows) -> list[Path]:
    """The metrics files of ``rows`` under ``out``, as the workflow's plan names them."""
    return [out / m / f"{t}.json" for m, t, *_ in rows]


def test_metrics_table_writes_a_file_per_method_and_target(tmp_path):
    vtab = ("lp", "VTAB-1k mean of tasks", 60.0, None, 61.0, 100)  # an average row: not a method's run on a target
    out = tmp_path / "metrics"
    for stale in ("gone/digits.json", "lp/old-target.json"):  # a method / target no longer in the config
        (out / stale).parent.mkdir(parents=True, exist_ok=True)
        (out / stale).write_text("{}")
    files = files_of(out, ROWS)
    df = metrics(main_csv(tmp_path / "main.csv", [*ROWS, vtab]), files)
    assert sorted(out.rglob("*.json")) == sorted(files) and not (out / "gone").exists()
    assert list(df["file"]) == [str(f) for f in files] and list(df.columns) == ["method", "target", *METRICS, "file"]
    assert json.loads((out / "subtuning/digits.json").read_text()) == {
        "test_acc_mean": 90.1235, "test_acc_std": 0.5, "val_acc_mean": 91.0, "trainable_params": 12000}
    assert json.loads((out / "lp/fmnist-new.json").read_text())["test_acc_std"] is None  # one seed: no std
    # the report stage's command line, as the workflow's rule calls it
    two = files_of(tmp_path / "m2", ROWS[:2])
    registry.run_table("metrics", ["--main", str(tmp_path / "main.csv"), "--out-json", *map(str, two)])
    assert sorted((tmp_path / "m2").rglob("*.json")) == sorted(two)


def test_metrics_table_refuses_what_is_not_a_main_table(tmp_path):
    out = tmp_path / "m"
    with pytest.raises(SubtuneError, match="missing main table"):
        metrics(tmp_path / "nope.csv", files_of(out, ROWS))
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"method": ["lp"], "target": ["digits"], "test_acc_mean": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(SubtuneError, match="bad.csv: no column test_acc_std, val_acc_mean, trainable_params"):
        metrics(bad, files_of(out, ROWS))
    main = main_csv(tmp_path / "main.csv", ROWS)
    with pytest.raises(SubtuneError, match="no row of method 'ft' on target 'digits'"):
        metrics(main, files_of(out, [*ROWS, ("ft", "digits")]))
    with pytest.raises(SubtuneError, match="not .*/<method>/<target>.json"):
        metrics(main, [out / "lp/digits.json", tmp_path / "elsewhere/lp/fmnist-new.json"])
    assert not out.exists()  # nothing written


# ---------------------------------------------------------------- DVC's views
def run(wd: Path, env: dict, *cmd: str, stdout_only: bool = False) -> str:
    p = subprocess.run(list(cmd), cwd=wd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p.stdout if stdout_only else p.stdout + p.stderr


def dvc_env() -> dict:
    """The caller's environment without MLflow, subtune or DVC settings; this venv's tools first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SUBTUNE_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1", COLUMNS="80")
    return env


def repo(wd: Path, env: dict, site_cache: Path) -> None:
    """``wd`` as a fresh clone: the workflow, dvc.yaml, the Makefile and DVC's config, in a new git repository."""
    workdir(wd)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "Makefile"):
        shutil.copy(ROOT / name, wd / name)
    (wd / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, wd / ".dvc" / name)
    run(wd, env, "git", "init", "-q")
    # a per-machine setting goes to the git-ignored config.local (here: DVC's site cache, in tmp)
    run(wd, env, DVC, "config", "--local", "core.site_cache_dir", str(site_cache))


def commit(wd: Path, env: dict, message: str) -> None:
    run(wd, env, "git", "add", "-A")
    run(wd, env, "git", "-c", "user.name=subtune", "-c", "user.email=subtune@example.org", "commit", "-q", "-m",
        message)


def check_views(wd: Path, env: dict) -> None:
    """DVC's views of the default experiment's results (committed to git, for `dvc exp show`): the metrics, a row
    per method and target of tables/main.csv and no warning; the experiments, with the params and metrics as
    columns, and docs/dvc.md's column choices folding none; the plots, a page that loads nothing from the web."""
    main = pd.read_csv(wd / f"results/{EXP}/tables/main.csv")
    p = subprocess.run([DVC, "metrics", "show"], cwd=wd, env=env, capture_output=True, text=True)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr  # no warning about metrics that are not there
    lines = p.stdout.strip().splitlines()
    # a column per number (one seed has no std: DVC shows no column for a number every file leaves null)
    assert lines[0].split() == ["Path", *(k for k in sorted(METRICS) if main[k].notna().any())]
    want = {f"results/{EXP}/metrics/{m}/{t}.json" for m, t in zip(main["method"], main["target"])}
    assert {ln.split()[0] for ln in lines[1:]} == want and len(lines) == len(want) + 1, p.stdout
    shown = json.loads(run(wd, env, DVC, "metrics", "show", "--json", stdout_only=True))[""]["data"]
    for _, r in main.iterrows():
        got = shown[f"results/{EXP}/metrics/{r['method']}/{r['target']}.json"]["data"]
        for key in METRICS:
            assert (got.get(key) is None and math.isnan(r[key])) or got[key] == pytest.approx(r[key], abs=1e-3), key

    exps = json.loads(run(wd, env, DVC, "exp", "show", "--json", stdout_only=True))
    head = next(e["data"] for e in exps if e["rev"] != "workspace")
    assert {"seeds", "backbone", "data", "train", "selection"} <= set(head["params"]["config.yaml"]["data"])
    assert set(head["metrics"]) == want
    for keep in EXP_SHOW_KEEP:  # as the pager shows it (as wide as it needs), and fitted to a wide terminal
        for cmd in ([DVC, "exp", "show", EXP_SHOW_DROP, keep],
                    [DVC, "exp", "show", "--no-pager", EXP_SHOW_DROP, keep]):
            table = run(wd, {**env, "COLUMNS": "500"}, *cmd, stdout_only=True)
            assert "…" not in table and "!" not in table and "train.lr" in table, table
            assert re.search(r"results/default/metrics/\S+:test_acc_mean", table), table

    run(wd, env, DVC, "plots", "show")
    html = (wd / "dvc_plots/index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html) and "http" not in html.lower(), html[:2000]
    pngs = sorted((wd / f"results/{EXP}/plots").glob("*.png"))
    assert pngs and len(re.findall(r"<img ", html)) == len(pngs)


@needs_git
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_dvc_shows_metrics_experiments_and_plots_of_a_main_table(tmp_path):
    """DVC's views of a synthetic result recorded by `make record` (no workflow run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wd = tmp_path / "repo"
    wd.mkdir()
    env = dvc_env()
    repo(wd, env, tmp_path / "dvc-site-cache")
    res = wd / f"results/{EXP}"
    main = main_csv(res / "tables/main.csv", ROWS)
    run(wd, env, sys.executable, "-m", "subtune", "report", "metrics", "--main", str(main), "--out-json",
        *map(str, files_of(res / "metrics", ROWS)))
    (res / "plots").mkdir()
    for name in ("cost", "sweep"):
        fig = plt.figure(figsize=(2, 2))
        fig.savefig(res / "plots" / f"{name}.png")
        plt.close(fig)
    for d in ARTIFACTS[:-1]:  # the other stages' outputs, for `make record`
        (wd / d).mkdir(parents=True)
        (wd / d / "MANIFEST.json").write_text("{}")
    # git holds dvc.lock, DVC's cache the results: what `dvc exp show` reads for a commit
    out = run(wd, env, "make", "-o", str(VENV / ".installed"), f"VENV={VENV}", "record")
    assert f"dvc commit --force {' '.join(STAGES)}" in out
    assert json.loads(run(wd, env, DVC, "status", "--json", stdout_only=True)) == {}
    commit(wd, env, "results")
    check_views(wd, env)


def small_config(wd: Path) -> None:
    """configs/test.yaml, smaller, as the default experiment (config.yaml, experiment `default`): one seed, two
    methods (no grid), one greedy round, one sweep size, no pair grid or Multi-LoRA."""
    cfg = yaml.safe_load((wd / "configs/test.yaml").read_text())
    cfg["experiment"] = EXP
    cfg["seeds"] = [0]
    cfg["source"]["params"].update(train_size=300, val_size=100)
    cfg["backbone"]["pretrain"]["train"]["epochs"] = 1
    cfg["methods"] = {m: cfg["methods"][m] for m in ("lp", "subtuning")}
    cfg["methods"]["lp"].pop("grid", None)
    cfg["selection"]["k"] = 1
    cfg["sweep"].update(sizes=[60], methods=["lp", "subtuning"])
    for key in ("pairs", "multilora"):
        cfg.pop(key, None)
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))


def digests(wd: Path) -> dict[str, str]:
    out = {}
    for a in ARTIFACTS:
        for f in sorted((wd / a).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(wd))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a whole run of the small config, then push, pull and reruns
@needs_fmnist
@needs_git
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_reproduce_records_dvc_and_push_delete_pull_is_byte_identical(tmp_path):
    wd = tmp_path / "repo"
    wd.mkdir()
    env = dvc_env()
    repo(wd, env, tmp_path / "dvc-site-cache")
    small_config(wd)
    make = ["make", "-o", str(VENV / ".installed"), f"VENV={VENV}"]

    # make reproduce: the workflow, its report, then dvc.lock, written without running a stage
    out = run(wd, env, *make, "reproduce", "CORES=2")
    assert f"dvc commit --force {' '.join(STAGES)}" in out, out[-3000:]
    assert (wd / "report.html").stat().st_size > 10_000
    assert set(STAGES) <= set(yaml.safe_load((wd / "dvc.lock").read_text())["stages"])
    # ... and both tools agree that everything is up to date
    assert "Data and pipelines are up to date." in run(wd, env, DVC, "status")
    assert json.loads(run(wd, env, DVC, "status", "--json", stdout_only=True)) == {}
    assert job_stats(run(wd, env, SNAKEMAKE, "--cores", "2", "--configfile", "config.yaml", "--dry-run")) == {}
    # dvc repro hands a changed stage to Snakemake, which remakes what is missing; the others are skipped
    (wd / f"results/{EXP}/tables/main.md").unlink()
    assert f"results@{EXP}" in json.loads(run(wd, env, DVC, "status", "--json", stdout_only=True))
    out = run(wd, env, DVC, "repro", f"results@{EXP}")
    assert f"Running stage 'results@{EXP}'" in out and f"Stage 'prepare@{EXP}' didn't change, skipping" in out
    assert (wd / f"results/{EXP}/tables/main.md").stat().st_size > 0
    assert json.loads(run(wd, env, DVC, "status", "--json", stdout_only=True)) == {}

    # DVC's views of the run: metrics, experiments, plots
    commit(wd, env, "results")
    check_views(wd, env)

    # push to the default remote: a directory next to the checkout
    run(wd, env, DVC, "push")
    assert any((tmp_path / "subtune-dvc-remote").rglob("*"))
    before = digests(wd)
    assert len(before) > 20 and any(k.startswith(f"checkpoints/{EXP}/") for k in before)
    assert any(k.startswith(f"results/{EXP}/metrics/") for k in before)

    # a fresh clone: no artifacts, no DVC cache, no Snakemake metadata
    for d in ("data", "checkpoints", "results", ".dvc/cache", ".snakemake"):
        shutil.rmtree(wd / d)
    out = run(wd, env, *make, "pull")
    assert f"{EXP}: pulled artifacts match config.yaml" in out
    assert digests(wd) == before

    # snakemake after the pull runs no job, and DVC agrees
    out = run(wd, env, SNAKEMAKE, "--cores", "all", "--configfile", "config.yaml")
    assert "Nothing to be done" in out and job_stats(out) == {}, out[-3000:]
    assert "up to date" in run(wd, env, DVC, "status", f"results@{EXP}")
    # the metadata is back: a changed parameter reruns exactly its jobs
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["methods"]["lp"]["train"]["lr"] = 0.05
    (wd / "configs/lr.yaml").write_text(yaml.safe_dump(cfg))
    stats = job_stats(run(wd, env, SNAKEMAKE, "--cores", "1", "--configfile", "configs/lr.yaml", "--dry-run"))
    assert stats.get("train") == 2 and stats.get("train_sweep") == 1 and stats.get("report_main") == 1, stats
    assert not {"download", "prepare", "pretrain", "score_round", "decide", "selected"} & set(stats), stats
