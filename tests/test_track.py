"""MLflow tracking into a real SQLite store: round trip, URI resolution, retries, parallel processes."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import subtune
from subtune import SubtuneError
from subtune import track

mlflow = pytest.importorskip("mlflow")

TRAIN = {"epochs": 3, "lr": 0.01, "weight_decay": 0.0005, "batch_size": 32, "optimizer": "sgd",
         "schedule": "cosine", "warmup_epochs": 1, "augment": True, "label_smoothing": 0.1,
         "eval_batch_size": 256}
HISTORY = [
    {"epoch": 1, "train_loss": 1.5, "lr": 0.01, "val_acc": 0.50, "val_loss": 1.4},
    {"epoch": 2, "train_loss": 1.1, "lr": 0.005, "val_acc": 0.60, "val_loss": 1.2},
    {"epoch": 3, "train_loss": 0.9, "lr": 0.0, "val_acc": 0.65, "val_loss": 1.1},
]


def metrics(seed=0, **kw):
    return {"method": "subtuning", "method_params": {"blocks": ["layer3.1", "layer4.0"]}, "target": "fmnist",
            "seed": seed, "train": TRAIN, "history": HISTORY, "val_acc": 0.65, "val_loss": 1.1,
            "test_acc": 0.62, "test_loss": 1.15, "trainable_params": 4_200_000, "total_params": 11_000_000,
            "wall_time_s": 12.5, "device": "cpu", "epochs": 3, "train_size": 800,
            "checkpoint": "checkpoints/x/backbone.safetensors", "notes": {}, **kw}


def write_metrics(path: Path, m: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(m, indent=2))
    return path


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """A database with MLflow's schema, made once (the migrations take seconds): tests copy it."""
    d = tmp_path_factory.mktemp("template")
    track.init_store(f"sqlite:///{d}/mlflow.db", "template")
    return d / "mlflow.db"


def fresh_db(template_db: Path, where: Path) -> str:
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(template_db, where / "mlflow.db")
    return f"sqlite:///{where}/mlflow.db"


def runs_df(monkeypatch, uri: str, experiment: str):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return mlflow.search_runs(experiment_names=[experiment])


def test_log_run_roundtrip(template_db, tmp_path, monkeypatch):
    uri = fresh_db(template_db, tmp_path / "store")
    exp_id = track.init_store(uri, "demo")
    assert track.init_store(uri, "demo") == exp_id  # idempotent
    f = write_metrics(tmp_path / "results" / "seed0.json", metrics())
    tags = {"stage": "final", "round": "2", "experiment": "paper", "invocation": "abc123"}
    run_id = track.log_run(json.loads(f.read_text()), tracking_uri=uri, experiment="demo", tags=tags, artifact=f)

    df = runs_df(monkeypatch, uri, "demo")
    assert list(df["run_id"]) == [run_id]
    r = df.iloc[0]
    assert r["status"] == "FINISHED"
    assert r["params.method"] == "subtuning" and r["params.target"] == "fmnist" and r["params.seed"] == "0"
    assert r["params.blocks"] == "layer3.1,layer4.0"
    assert r["params.method_params.blocks"] == "layer3.1,layer4.0"
    for k, v in TRAIN.items():
        assert r[f"params.train.{k}"] == str(v)
    assert r["metrics.val_acc"] == pytest.approx(0.65)
    assert r["metrics.test_acc"] == pytest.approx(0.62)
    assert r["metrics.trainable_params"] == 4_200_000
    assert r["metrics.wall_time_s"] == pytest.approx(12.5)
    for k, v in tags.items():
        assert r[f"tags.{k}"] == v
    assert r["tags.subtune.version"] == subtune.__version__
    assert r["tags.mlflow.runName"] == "subtuning-fmnist-seed0"

    client = mlflow.MlflowClient(uri)
    for key in ("val_acc", "val_loss", "train_loss"):
        hist = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert hist == [(h["epoch"], pytest.approx(h[key])) for h in HISTORY]
    assert [m.step for m in client.get_metric_history(run_id, "test_acc")] == [3]
    # the metrics file is an artifact, stored next to the database (not in the working directory)
    assert [a.path for a in client.list_artifacts(run_id)] == ["seed0.json"]
    art = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "seed0.json"
    assert art.read_text() == f.read_text()
    assert (tmp_path / "store" / "mlruns") in art.parents


def test_uri_resolution(template_db, tmp_path, monkeypatch):
    # $MLFLOW_TRACKING_URI is honoured when no URI is passed
    env_uri = fresh_db(template_db, tmp_path / "env")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    assert track.resolve_uri(None) == env_uri
    assert track.resolve_uri("sqlite:////elsewhere/x.db") == "sqlite:////elsewhere/x.db"
    rid = track.log_run(metrics(seed=1), tracking_uri=None, experiment="viaenv", tags={}, artifact=None)
    assert list(mlflow.search_runs(experiment_names=["viaenv"])["run_id"]) == [rid]

    # neither: sqlite:///mlflow.db in the working directory, made absolute
    cwd = tmp_path / "cwd"
    fresh_db(template_db, cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(cwd)
    assert track.resolve_uri(None) == f"sqlite:///{cwd}/mlflow.db"
    rid2 = track.log_run(metrics(seed=2), tracking_uri=None, experiment="default", tags={}, artifact=None)
    df = runs_df(monkeypatch, f"sqlite:///{cwd}/mlflow.db", "default")
    assert list(df["run_id"]) == [rid2] and df.iloc[0]["params.seed"] == "2"
    assert track.sqlite_path("sqlite:///:memory:") is None and track.sqlite_path("http://h:5000") is None


def test_scoring_metrics_and_odd_values():
    m = {"method": "score-greedy", "target": "t", "seed": 0, "train": {"lr": 0.1},
         "method_params": {"candidates": 2, "shard": 0, "shards": 1}, "val_acc": None,
         "candidate_scores": {"(lp)": 0.5, "layer1.0+layer2.1": 0.7}, "history": []}
    names = {x.key: x.value for x in track.run_metrics(m, 0)}
    assert names == {"score/lp": 0.5, "score/layer1.0_layer2.1": 0.7}
    p = track.run_params(m)
    assert p["method_params.shards"] == "1" and "blocks" not in p and p["train.lr"] == "0.1"
    assert track.run_params({"method_params": {"blocks": []}})["blocks"] == ""


def test_retries_then_succeeds(template_db, tmp_path, monkeypatch):
    uri = fresh_db(template_db, tmp_path / "store")
    real, calls = track.store._client, []

    def flaky(u):
        calls.append(u)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real(u)

    monkeypatch.setattr(track.store, "_client", flaky)
    rid = track.log_run(metrics(), tracking_uri=uri, experiment="flaky", tags={}, artifact=None, retry_s=30)
    assert len(calls) == 3
    assert mlflow.MlflowClient(uri).get_run(rid).info.status == "FINISHED"


def test_gives_up_with_tracking_error(tmp_path, monkeypatch):
    f = write_metrics(tmp_path / "m.json", metrics())

    def locked(u):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(track.store, "_client", locked)
    t0 = time.monotonic()
    with pytest.raises(track.TrackingError, match=r"logging .* failed .*metrics file is kept \(.*m\.json\)") as ei:
        track.log_run(metrics(), tracking_uri=f"sqlite:///{tmp_path}/x.db", experiment="e", tags={},
                      artifact=f, retry_s=0.5)
    assert time.monotonic() - t0 < 5
    assert isinstance(ei.value, SubtuneError)

    # a non-transient error is not retried
    calls = []

    def broken(u):
        calls.append(u)
        raise ValueError("bad")

    monkeypatch.setattr(track.store, "_client", broken)
    with pytest.raises(track.TrackingError, match="after 0 retries"):
        track.log_run(metrics(), tracking_uri=f"sqlite:///{tmp_path}/x.db", experiment="e", tags={}, artifact=None)
    assert len(calls) == 1
    with pytest.raises(SubtuneError, match="missing artifact file"):
        track.log_run(metrics(), tracking_uri=None, experiment="e", tags={}, artifact=tmp_path / "nope.json")


CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from subtune import track
    uri, i, d = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    m = json.loads((d / "base.json").read_text()); m["seed"] = i
    f = d / f"seed{i}.json"
    f.write_text(json.dumps(m))
    (d / f"ready{i}").touch()
    t = time.monotonic()
    while not (d / "go").exists():            # start together
        if time.monotonic() - t > 120:
            sys.exit("no go")
        time.sleep(0.01)
    print(track.log_run(m, tracking_uri=uri, experiment="parallel", tags={"proc": str(i)}, artifact=f))
""")


def _parallel(uri: str, d: Path, n: int) -> list[str]:
    write_metrics(d / "base.json", metrics())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(subtune.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTEST_CURRENT_TEST", None)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, uri, str(i), str(d)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    t = time.monotonic()
    while not all((d / f"ready{i}").exists() for i in range(n)):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
        assert time.monotonic() - t < 120
        time.sleep(0.02)
    (d / "go").touch()
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    return [out.strip().splitlines()[-1] for out, _ in outs]


N_PROCS = 6


@pytest.mark.slow  # N_PROCS Python processes importing MLflow at once (tens of seconds on 2 cores)
def test_parallel_processes_after_init(template_db, tmp_path, monkeypatch):
    uri = fresh_db(template_db, tmp_path / "store")
    track.init_store(uri, "parallel")  # the workflow's one init job, before the fan-out
    ids = _parallel(uri, tmp_path / "jobs", N_PROCS)
    df = runs_df(monkeypatch, uri, "parallel")
    assert sorted(df["run_id"]) == sorted(ids) and len(set(ids)) == N_PROCS
    assert sorted(df["params.seed"].astype(int)) == list(range(N_PROCS))
    assert set(df["status"]) == {"FINISHED"}
    client = mlflow.MlflowClient(uri)
    for rid, seed in zip(df["run_id"], df["params.seed"]):
        assert [a.path for a in client.list_artifacts(rid)] == [f"seed{seed}.json"]
        assert len(client.get_metric_history(rid, "val_acc")) == len(HISTORY)


@pytest.mark.slow  # N_PROCS Python processes importing MLflow at once (tens of seconds on 2 cores)
def test_parallel_processes_create_the_store(tmp_path, monkeypatch):
    """Without the init job: the file lock lets one process migrate a fresh database, the others wait."""
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    ids = _parallel(uri, tmp_path / "jobs", N_PROCS)
    df = runs_df(monkeypatch, uri, "parallel")
    assert sorted(df["run_id"]) == sorted(ids) and len(set(ids)) == N_PROCS


# ---------------------------------------------------------------- no run twice; unreachable server; the queue
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_logging_the_same_file_twice_logs_one_run(template_db, tmp_path, monkeypatch):
    uri = fresh_db(template_db, tmp_path / "store")
    f = write_metrics(tmp_path / "seed0.json", metrics())
    rid = track.log_run(metrics(), tracking_uri=uri, experiment="once", tags={}, artifact=f)
    assert track.log_run(metrics(), tracking_uri=uri, experiment="once", tags={}, artifact=f) == rid
    df = runs_df(monkeypatch, uri, "once")
    assert list(df["run_id"]) == [rid] and df.iloc[0][f"tags.{track.KEY_TAG}"] == track.run_key({}, f)
    # an attempt that died half-way (run left RUNNING) is replaced, not kept next to the new one
    client = mlflow.MlflowClient(uri)
    g = write_metrics(tmp_path / "seed1.json", metrics(seed=1))
    exp_id = client.get_experiment_by_name("once").experiment_id
    half = client.create_run(exp_id, tags={track.KEY_TAG: track.run_key({}, g)}).info.run_id
    rid1 = track.log_run(metrics(seed=1), tracking_uri=uri, experiment="once", tags={}, artifact=g)
    df = runs_df(monkeypatch, uri, "once")
    assert sorted(df["run_id"]) == sorted([rid, rid1]) and half not in set(df["run_id"])
    assert set(df["status"]) == {"FINISHED"}


def test_unreachable_server_queues_the_run_fast_and_log_pending_logs_it_once(template_db, tmp_path, monkeypatch,
                                                                             capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="unreachable"):
        track.check_server(dead, 0.5)
    pending = tmp_path / "pending"
    f = write_metrics(tmp_path / "results" / "seed0.json", metrics())
    rid = track.log_or_queue(metrics(), tracking_uri=dead, experiment="later", tags={"stage": "final"},
                             artifact=f, retry_s=1, pending=pending)
    assert rid is None and time.monotonic() - t0 < 15
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("WARNING: MLflow logging to " + dead) and "seed0.json kept" in err[0]
    assert "log --pending" in err[0] and "unreachable" in err[0]
    (entry,) = track.pending_runs(pending)
    assert (entry / "seed0.json").read_bytes() == f.read_bytes() and f.is_file()
    rec = json.loads((entry / "run.json").read_text())
    assert rec["tracking_uri"] == dead and rec["experiment"] == "later" and rec["tags"] == {"stage": "final"}
    # queuing the same run again keeps one entry
    track.queue_run(metrics(), tracking_uri=dead, experiment="later", tags={}, artifact=f, pending=pending)
    assert track.pending_runs(pending) == [entry]

    # still down: `log --pending` fails quickly and keeps the queue
    from subtune.cli import main

    monkeypatch.setenv("SUBTUNE_MLFLOW_RETRY_S", "1")
    assert main(["log", "--pending", str(pending)]) == 2
    assert track.pending_runs(pending) == [entry]
    capsys.readouterr()

    # back (here: another store): logged once, with its tags and its metrics file; the entry is gone
    uri = fresh_db(template_db, tmp_path / "store")
    assert main(["log", "--pending", str(pending), "--uri", uri]) == 0
    assert "logged 1 queued MLflow run" in capsys.readouterr().out
    assert track.pending_runs(pending) == []
    df = runs_df(monkeypatch, uri, "later")
    assert len(df) == 1 and df.iloc[0]["tags.stage"] == "final" and df.iloc[0]["metrics.test_acc"] == pytest.approx(0.62)
    client = mlflow.MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(df.iloc[0]["run_id"])] == ["seed0.json"]
    # the metrics file itself: already logged, not logged again
    assert main(["log", "--metrics", str(f), "--uri", uri, "--experiment", "later"]) == 0
    assert "already logged" in capsys.readouterr().out
    assert len(runs_df(monkeypatch, uri, "later")) == 1
