"""Provenance: the code and data a job records in its metrics file, the config's hash, the MLflow runs of result
files, and ``python -m subtune status`` comparing a results table with the installed code and the config.

Real git repositories, a real MLflow SQLite store, a real ``train`` job on a tiny network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from subtune import provenance as prov
from subtune import report
from subtune.cli import main
from subtune.config import validate

from helpers.reports import run_json, write_json

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas/config.schema.yaml"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git repository holding a two-module package under src/pkg (committed), and that package's path."""
    pkg = tmp_path / "repo" / "src" / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "sub" / "mod.py").write_text("def f():\n    return 2\n")
    (tmp_path / "repo" / "README").write_text("a\n")
    git(tmp_path / "repo", "init", "-q")
    git(tmp_path / "repo", "add", ".")
    git(tmp_path / "repo", "commit", "-qm", "one")
    return pkg


# ------------------------------------------------------------------ the code version
def test_code_version_is_the_commit_and_dirty_only_for_the_packages_own_changes(repo):
    top = repo.parents[1]
    commit = git(top, "rev-parse", "HEAD")
    assert prov.code_version(repo) == commit[:12]
    (top / "README").write_text("b\n")  # outside the package: the code is unchanged
    assert prov.code_version(repo) == commit[:12]
    (repo / "sub" / "mod.py").write_text("def f():\n    return 3\n")
    assert prov.code_version(repo) == commit[:12] + "+dirty"
    git(top, "commit", "-qam", "two")
    assert prov.code_version(repo) == git(top, "rev-parse", "HEAD")[:12]
    (repo / "new.py").write_text("Y = 1\n")  # a module dropped in (e.g. a new method) is a change too
    assert prov.code_version(repo).endswith("+dirty")


def test_outside_git_the_version_is_the_sources_digest(repo, tmp_path, monkeypatch):
    copy = tmp_path / "site-packages" / "pkg"
    shutil.copytree(repo, copy)
    digest = prov.sources_sha256(copy)
    assert digest == prov.sources_sha256(repo)  # the same files wherever they are installed
    assert prov.code_version(copy) == f"pkg-{digest[:12]}"
    (copy / "sub" / "mod.py").write_text("def f():\n    return 3\n")
    assert prov.sources_sha256(copy) != digest
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no git at all: the digest, no error
    assert prov.code_version(repo) == f"pkg-{digest[:12]}"


def test_a_process_computes_its_code_once_and_records_the_data():
    assert prov.code() is prov.code()
    p = prov.provenance("ab" * 32)
    assert p == {**prov.code(), "data_digest": "ab" * 32}
    assert p["sources_sha256"] == prov.sources_sha256()
    assert prov.provenance({"a": "1", "b": "2"})["data_digest"] == {"a": "1", "b": "2"}


def test_config_hash_is_canonical_and_leaves_out_where_runs_are_logged():
    cfg = validate(yaml.safe_load((ROOT / "configs/test.yaml").read_text()), SCHEMA)
    h = prov.config_hash(cfg)
    assert len(h) == 12 and int(h, 16) >= 0
    assert prov.config_hash(dict(reversed(list(cfg.items())))) == h
    assert prov.config_hash({**cfg, "tracking": {"uri": "sqlite:///elsewhere.db", "experiment": "x"}}) == h
    assert prov.config_hash({**cfg, "selection": {**cfg["selection"], "epsilon": 0.05}}) != h


# ------------------------------------------------------------------ a job records it
def test_the_train_job_records_its_code_and_data(ckpt, tmp_path):
    params = json.dumps({"train_size": 48, "val_size": 16, "test_size": 32})
    data, manifest = tmp_path / "d.safetensors", tmp_path / "d.json"
    assert main(["prepare", "--target", "digits", "--params", params, "--out", str(data),
                 "--manifest", str(manifest)]) == 0  # fmt: skip
    out = tmp_path / "run.json"
    assert main(["train", "--method", "lp", "--data", str(data), "--manifest", str(manifest), "--checkpoint", ckpt,
                 "--train", json.dumps({"epochs": 1, "batch_size": 16}), "--out", str(out)]) == 0
    recorded = json.loads(out.read_text())["provenance"]
    assert recorded == {**prov.code(), "data_digest": json.loads(manifest.read_text())["sha256"]}


# ------------------------------------------------------------------ MLflow runs of result files
def test_mlflow_run_ids_of_logged_files_never_fail(tmp_path):
    from subtune import track

    logged, queued = tmp_path / "a.json", tmp_path / "b.json"
    for f, seed in ((logged, 0), (queued, 1)):
        f.write_text(json.dumps(run_json("lp", "fmnist", seed, 0.8, 10)))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = track.log_run(json.loads(logged.read_text()), tracking_uri=uri, experiment="e", artifact=logged)
    assert prov.mlflow_run_ids([logged, queued], uri, "e") == {str(logged): run_id}
    assert prov.mlflow_run_ids([logged], uri, "another") == {}
    missing = tmp_path / "none.db"
    assert prov.mlflow_run_ids([logged], f"sqlite:///{missing}", "e") == {} and not missing.exists()
    assert prov.mlflow_run_ids([logged], "http://127.0.0.1:9", "e") == {}  # nothing listens: left out
    cols = prov.columns([logged, queued], {str(logged): run_id}, "cfg")
    assert cols == {"mlflow_run_ids": run_id, "config_hash": "cfg", "code_version": "", "data_digest": ""}


# ------------------------------------------------------------------ tables and `subtune status`
def _results(tmp_path: Path, code: dict[str, str], config: str) -> Path:
    """results/<exp>/ with two methods' final runs (two seeds) recorded by ``code``, and its main table."""
    res = tmp_path / "results" / "test"
    files = []
    for m, acc in (("lp", 0.8), ("ft", 0.9)):
        for s in (0, 1):
            files.append(write_json(res / "runs" / "digits" / m / f"seed{s}.json",
                                    run_json(m, "digits", s, acc, 10, provenance={**code, "data_digest": "d" * 64})))
    report.main_table(files, res / "tables" / "main.csv", res / "tables" / "main.md", config_hash=config)
    return res


def _status(res: Path, configfile: Path, capsys) -> tuple[int, str]:
    code = main(["status", "--configfile", str(configfile), "--results", str(res), "--schema", str(SCHEMA)])
    return code, capsys.readouterr().out


def test_status_flags_rows_of_other_code_or_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the config's relative paths (references) are the workflow's
    configfile = ROOT / "configs/test.yaml"
    now = prov.config_hash(validate(yaml.safe_load(configfile.read_text()), SCHEMA))
    res = _results(tmp_path, prov.code(), now)
    df = pd.read_csv(res / "tables" / "main.csv", dtype=str, keep_default_na=False)
    assert list(df.columns[-4:]) == list(prov.COLUMNS)
    assert set(df["code_version"]) == {prov.code()["code_version"]} and set(df["config_hash"]) == {now}
    assert set(df["data_digest"]) == {"d" * 64} and set(df["mlflow_run_ids"]) == {""}  # no store here
    assert f"Made by code {prov.code()['code_version']} with config {now}" in (res / "tables/main.md").read_text()
    code, out = _status(res, configfile, capsys)
    assert code == 0 and "all 2 rows were made by the installed code" in out

    # one seed of FT trained by other code: its row is stale, named with the code that made it
    f = res / "runs" / "digits" / "ft" / "seed1.json"
    d = json.loads(f.read_text())
    d["provenance"].update(code_version="0123456789ab", sources_sha256="0" * 64)
    f.write_text(json.dumps(d))
    code, out = _status(res, configfile, capsys)
    assert code == 1 and "1 of 2 rows" in out
    stale = [line for line in out.splitlines() if line.startswith("ft ")]
    assert len(stale) == 1 and "0123456789ab" in stale[0] and stale[0].rstrip().endswith("code")
    assert "--forcerun train" in out and not any(line.startswith("lp ") for line in out.splitlines())

    # another config: every row is stale by its config
    other = tmp_path / "other.yaml"
    cfg = yaml.safe_load(configfile.read_text())
    cfg["selection"]["epsilon"] = 0.05
    other.write_text(yaml.safe_dump(cfg))
    code, out = _status(_results(tmp_path, prov.code(), now), other, capsys)
    assert code == 1 and "2 of 2 rows" in out and out.count(now) == 2 and "with this config" in out


def test_status_needs_a_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = main(["status", "--configfile", str(ROOT / "configs/test.yaml"), "--results", str(tmp_path),
                 "--schema", str(SCHEMA)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("subtune status: error: missing results table") and err.count("\n") == 1
