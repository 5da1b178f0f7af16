"""The workflow against a real `mlflow server` (SQLite backend, artifacts in a temporary directory).

One run of the small config's training jobs with 2 parallel jobs logging to the server; the
server is stopped mid-run: the jobs that cannot log keep their metrics files, say so in one
line and queue their runs; after a restart `python -m subtune log --pending` logs exactly the
missing runs (a second call logs nothing), and `mlflow.search_runs` finds every job's run once,
with its metrics and its metrics file as an artifact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from subtune import track

from helpers.mlflow_server import Server
from helpers.workflow import FMNIST, SNAKEMAKE, job_stats, workdir

mlflow = pytest.importorskip("mlflow")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # training jobs through Snakemake against a server stopped and restarted mid-run
    pytest.mark.skipif(not FMNIST.exists(),
                       reason="Fashion-MNIST mirror missing: apt-get install dataset-fashion-mnist (make test does)"),
]

EXPERIMENT = "subtune-test"  # configs/test.yaml's tracking.experiment
# The training jobs of two methods that need no greedy selection (Surgical adds its two scoring jobs).
TARGETS = [f"results/test/runs/{t}/{m}/seed0.json" for t in ("fmnist-new", "digits") for m in ("lp", "surgical")]


def small_config(wd: Path) -> None:
    """configs/test.yaml with one seed, a smaller pretraining set and no lp grid (neither is what this test is about)."""
    path = wd / "configs/test.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["seeds"] = [0]
    cfg["source"]["params"].update(train_size=300, val_size=100)
    cfg["backbone"]["pretrain"]["train"]["epochs"] = 1
    cfg["methods"]["lp"].pop("grid", None)  # no tuning jobs: one final run per target
    path.write_text(yaml.safe_dump(cfg))


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "server")
    s.root.mkdir()
    s.start()
    try:
        yield s
    finally:
        s.stop()


def logged_keys(uri: str, stage: str | None = None) -> set[str]:
    """The metrics-file keys of the experiment's finished job runs (of one stage)."""
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return set()
    query = "attributes.status = 'FINISHED'" + (f" and tags.stage = '{stage}'" if stage else "")
    runs = client.search_runs([exp.experiment_id], filter_string=query)
    return {r.data.tags[track.KEY_TAG] for r in runs if track.KEY_TAG in r.data.tags}  # not the parent run


def test_parallel_jobs_log_to_a_server_that_dies_mid_run(server, tmp_path, monkeypatch):
    (tmp_path / "wf").mkdir()
    wd = workdir(tmp_path / "wf")
    small_config(wd)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SUBTUNE_"))}
    env.update(MLFLOW_TRACKING_URI=server.uri, SUBTUNE_MLFLOW_RETRY_S="3")
    cmd = [SNAKEMAKE, *TARGETS, "--cores", "2", "--configfile", "configs/test.yaml"]
    out = open(tmp_path / "snakemake.log", "w")
    smk = subprocess.Popen(cmd, cwd=wd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # Let some jobs log (2 at a time), then stop the server while the others still train.
        t = time.monotonic()
        while not logged_keys(server.uri, "final"):
            assert smk.poll() is None, (tmp_path / "snakemake.log").read_text()[-4000:]
            assert time.monotonic() - t < 400, "no runs reached the server"
            time.sleep(0.5)
        server.stop()
        smk.wait(600)
    finally:
        if smk.poll() is None:
            smk.kill()
    log = (tmp_path / "snakemake.log").read_text()
    assert smk.returncode == 0, log[-4000:]  # a tracking failure does not fail a job

    # Every job's metrics file is there; the jobs that could not log said so in one line and queued their run.
    res = wd / "results/test"
    files = sorted(res.glob("runs/*/*/seed*.json")) + sorted(res.glob("select/*/*/surgical.json"))
    assert len(files) == len(TARGETS) + 2
    warned = []
    for f in sorted((wd / "logs/test").rglob("*.log")):
        lines = [ln for ln in f.read_text().splitlines() if "WARNING: MLflow logging" in ln]
        assert len(lines) <= 1, f
        if lines:
            assert server.uri in lines[0] and "kept" in lines[0] and "log --pending" in lines[0], lines[0]
            warned.append(f)
    # ... and so did Snakemake, whose parent run of the invocation could not be marked FINISHED: its end is queued
    parent_warnings = [ln for ln in log.splitlines() if "WARNING: MLflow parent run" in ln]
    assert len(parent_warnings) == 1 and "FINISHED" in parent_warnings[0], parent_warnings
    queued = track.pending_runs(wd / "logs/mlflow-pending")
    ends = [q for q in queued if q.name.startswith("end-")]
    queued = [q for q in queued if q not in ends]
    assert warned and len(queued) == len(warned) and len(ends) == 1, (warned, queued)

    # The server comes back (same store): some jobs had logged before it stopped, the others had not.
    server.start()
    live = logged_keys(server.uri)
    mine = {track.run_key({}, f) for f in files}
    assert mine & live and mine - live, (len(mine & live), len(mine - live))
    assert {q.name for q in queued} >= mine - live
    # A later command logs the missing runs, a second one nothing.
    py = [str(Path(sys.executable)), "-m", "subtune", "log", "--pending"]
    p = subprocess.run(py, cwd=wd, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    # a run whose answer was cut off by the stop may have reached the server and been queued too: it is not
    # logged twice, so the command logs exactly the queued runs the server lacks
    missing = {q.name for q in queued} - live
    assert f"logged {len(missing)} queued MLflow run" in p.stdout, p.stdout
    p = subprocess.run(py, cwd=wd, env=env, capture_output=True, text=True)
    assert p.returncode == 0 and "logged 0 queued MLflow runs; 0 still queued" in p.stdout, p.stdout + p.stderr
    # ... and rerunning the workflow runs nothing (the results were never lost).
    dry = subprocess.run(cmd + ["--dry-run"], cwd=wd, env=env, capture_output=True, text=True)
    assert dry.returncode == 0 and job_stats(dry.stdout + dry.stderr) == {}, dry.stdout[-3000:]

    # Every job is one finished run on the server, with its metrics and its metrics file as an artifact;
    # every run is some job's (keyed by its output file's SHA-256), none twice; all are children of the
    # invocation's one parent run, finished by `log --pending`.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    df = mlflow.search_runs(experiment_names=[EXPERIMENT])
    assert set(df["status"]) == {"FINISHED"}
    parent = df[df["tags.stage"] == "workflow"]
    df = df[df["tags.stage"] != "workflow"]
    assert len(parent) == 1 and set(df["tags.mlflow.parentRunId"]) == {parent.iloc[0]["run_id"]}
    assert df["tags.mlflow.runName"].is_unique
    keys = list(df[f"tags.{track.KEY_TAG}"])
    outputs = {track.run_key({}, f) for f in res.rglob("*.json")}
    assert len(set(keys)) == len(keys) and set(keys) <= outputs
    by_key = {r[f"tags.{track.KEY_TAG}"]: r for _, r in df.iterrows()}
    client = mlflow.MlflowClient(server.uri)
    for f in files:
        r = by_key[track.run_key({}, f)]
        m = json.loads(f.read_text())
        assert r["tags.experiment"] == "test"
        if f.name == "surgical.json":
            assert r["tags.stage"] == "surgical" and r["metrics.val_acc"] == pytest.approx(
                max(x["score"] for x in m["results"]))
        else:
            assert r["tags.stage"] == "final" and r["params.method"] == m["method"]
            assert r["metrics.test_acc"] == pytest.approx(m["test_acc"])
            assert r["metrics.val_acc"] == pytest.approx(m["val_acc"])
        assert [a.path for a in client.list_artifacts(r["run_id"])] == [f.name]
        got = Path(client.download_artifacts(r["run_id"], f.name, str(tmp_path / "dl" / r["run_id"])))
        assert got.read_bytes() == f.read_bytes()
