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
    assert r["tags.mlflow.runName"] == "final/subtuning/fmnist/r2/s0"  # from its tags (method etc. from metrics)
    assert (r["tags.method"], r["tags.target"], r["tags.seed"]) == ("subtuning", "fmnist", "0")
    assert client_kind(uri, "demo") == track.EXPERIMENT_KIND[1]  # the UI's "Machine learning" kind

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


def client_kind(uri: str, experiment: str) -> str | None:
    return mlflow.MlflowClient(uri).get_experiment_by_name(experiment).tags.get(track.EXPERIMENT_KIND[0])


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


# ---------------------------------------------------------------- finding a run: names, tags, grid points, parents
def job(stage: str, method: str = "ft", target: str = "digits", seed: str = "1", **kw: str) -> dict[str, str]:
    return {"stage": stage, "method": method, "target": target, "seed": seed, **kw}


# One invocation's jobs whose method, target and seed collide: what the workflow's rules and stages tag them with.
COLLIDING = [
    job("final", train_data="train"), job("sweep", train_size="100"), job("sweep", train_size="250"),
    job("tune", grid_point="lr=0.01", chosen="lr=0.01"), job("epsilon", "subtuning", blockset="lp"),
    job("epsilon", "subtuning", blockset="layer3.1+layer4.0"),
    job("select", "subtuning", round="1", shard="0", shards="2", sets="greedy"),
    job("select", "subtuning", round="1", shard="1", shards="2", sets="greedy"),
    job("select", "subtuning", round="2", shard="0", shards="1", sets="greedy"),
    job("select", "subtuning", round="1", shard="0", shards="2", sets="greedy", train_size="60"),
    job("surgical", "surgical", shard="0", shards="1", sets="surgical"),
    job("pairs", "subtuning", shard="0", shards="1", sets="pairs"),
    job("multilora", "multilora", "fmnist-new+digits"),
    job("multilora", "multilora", "fmnist-new+digits", ablation="rank4"),
    job("multilora", "multilora", "fmnist-new+digits", ablation="train_a"),
]


def test_run_names_from_tags():
    names = [track.run_name_for(t) for t in COLLIDING]
    assert len(set(names)) == len(names), names
    assert names[:4] == ["final/ft/digits/s1", "sweep/ft/digits/n100/s1", "sweep/ft/digits/n250/s1",
                         "tune/ft/digits/s1"]
    assert names[4:10] == ["epsilon/subtuning/digits/lp/s1", "epsilon/subtuning/digits/layer3.1+layer4.0/s1",
                           "select/subtuning/digits/r1/shard0/s1", "select/subtuning/digits/r1/shard1/s1",
                           "select/subtuning/digits/r2/s1", "select/subtuning/digits/n60/r1/shard0/s1"]
    assert names[-2] == "multilora/ablation-rank4/fmnist-new+digits/s1"
    assert track.run_name_for({"stage": "workflow", "invocation": "host-12-1700000000", "seed": "3"}) == \
        "workflow/host-12-1700000000"
    # no '/' inside a part, nothing a search filter would have to quote; empty tags are no part
    assert track.run_name_for({"stage": "final", "method": "a/b", "target": "it's", "seed": "", "round": None}) == \
        "final/a_b/it_s"
    assert track.run_name_for({}) is None and track.run_name_for({"train_data": "train"}) is None


def test_names_unique_in_the_experiment_and_every_dimension_a_tag(template_db, tmp_path, monkeypatch):
    uri = fresh_db(template_db, tmp_path / "store")
    ids = []
    for i, t in enumerate(COLLIDING):
        f = write_metrics(tmp_path / "jobs" / f"{i}.json", metrics(seed=1, val_acc=0.5 + i / 100))
        ids.append(track.log_run(json.loads(f.read_text()), tracking_uri=uri, experiment="names", tags=t, artifact=f))
    df = runs_df(monkeypatch, uri, "names").set_index("run_id")
    assert [df.loc[i, "tags.mlflow.runName"] for i in ids] == [track.run_name_for(t) for t in COLLIDING]
    for i, t in zip(ids, COLLIDING):
        assert {k: df.loc[i, f"tags.{k}"] for k in t} == t
    # found by its tags
    def search(query: str) -> list[str]:
        return list(mlflow.search_runs(experiment_names=["names"], filter_string=query)["run_id"])

    assert search("tags.stage = 'sweep' and tags.train_size = '250'") == [ids[2]]
    assert search("attributes.run_name = 'select/subtuning/digits/r2/s1'") == [ids[8]]
    assert sorted(search("tags.stage = 'select' and tags.round = '1'")) == sorted([ids[6], ids[7], ids[9]])
    # the same job logged again (a later invocation; its metrics file changed): the name's next number
    again = []
    for n in (2, 3):
        f = write_metrics(tmp_path / "again" / f"{n}.json", metrics(seed=1, val_acc=0.9 + n / 100))
        again.append(track.log_run(json.loads(f.read_text()), tracking_uri=uri, experiment="names", tags=COLLIDING[0],
                                   artifact=f))
    client = mlflow.MlflowClient(uri)
    assert [client.get_run(r).info.run_name for r in again] == ["final/ft/digits/s1#2", "final/ft/digits/s1#3"]
    # a name given by the caller is numbered too
    assert client.get_run(track.log_run(metrics(seed=7), tracking_uri=uri, experiment="names", tags={}, artifact=None,
                                        run_name="final/ft/digits/s1")).info.run_name == "final/ft/digits/s1#4"


def test_grid_points_logged_as_metrics(template_db, tmp_path, monkeypatch):
    grid = {"lr=0.003": 0.61, "lr=0.01": 0.66, "lr=0.01, rank=4": 0.64, "defaults": 0.5}
    m = {"method": "lora", "target": "digits", "seed": 0, "val_acc": 0.66, "grid_scores": grid}
    got = {x.key: x.value for x in track.run_metrics(m, 0)}
    assert got == {"val_acc": 0.66, "grid/lr:0.003/val_acc": 0.61, "grid/lr:0.01/val_acc": 0.66,
                   "grid/lr:0.01 rank:4/val_acc": 0.64, "grid/defaults/val_acc": 0.5}
    uri = fresh_db(template_db, tmp_path / "store")
    rid = track.log_run(m, tracking_uri=uri, experiment="grid", tags={"stage": "tune", "grid_point": "lr=0.01"},
                        artifact=None)  # MLflow accepts every name
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    hit = mlflow.search_runs(experiment_names=["grid"], filter_string="metrics.`grid/lr:0.01 rank:4/val_acc` > 0.6")
    assert list(hit["run_id"]) == [rid] and hit.iloc[0]["tags.grid_point"] == "lr=0.01"
    assert hit.iloc[0]["tags.mlflow.runName"] == "tune/lora/digits/s0"


def test_experiment_kind_set_once(template_db, tmp_path):
    uri = fresh_db(template_db, tmp_path / "store")
    client = mlflow.MlflowClient(uri)
    old = client.create_experiment("older")  # made without the kind: init_store adds it
    track.init_store(uri, "older")
    assert client_kind(uri, "older") == track.EXPERIMENT_KIND[1]
    client.set_experiment_tag(old, track.EXPERIMENT_KIND[0], "genai_development")  # a user's choice stays
    track.init_store(uri, "older")
    assert client_kind(uri, "older") == "genai_development"
    assert track.runs_url(uri, "4") == "http://127.0.0.1:5000/#/experiments/4/runs?workflowType=machine_learning"
    assert track.runs_url("http://mlflow.example:5000/", "4").startswith("http://mlflow.example:5000/#/experiments/4/")


def test_parent_run_failures_are_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SUBTUNE_MLFLOW_RETRY_S", "0.5")
    monkeypatch.setenv(track.PARENT_ENV, "another-invocations")
    assert track.workflow_started() is None and track.PARENT_ENV not in os.environ
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("WARNING: MLflow parent run in http://127.0.0.1:") and \
        "unreachable" in err[0] and "without a parent" in err[0]
    track.workflow_ended("FINISHED")  # no parent: nothing to do
    assert capsys.readouterr().err == ""
    # its end not marked: one line, the end queued for `log --pending`
    monkeypatch.setenv("SUBTUNE_MLFLOW_PENDING", str(tmp_path / "pending"))
    monkeypatch.setenv(track.PARENT_ENV, "0123abc")
    track.workflow_ended("FAILED")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("WARNING: MLflow parent run 0123abc") and "FAILED" in err[0]
    assert "log --pending" in err[0]
    (entry,) = track.pending_runs()
    assert json.loads((entry / "run.json").read_text())["status"] == "FAILED"


def test_log_pending_marks_a_queued_parent_end(template_db, tmp_path, monkeypatch, capsys):
    uri = fresh_db(template_db, tmp_path / "store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SUBTUNE_INVOCATION", "inv-9")
    pending = tmp_path / "pending"
    parent = track.start_parent(uri, "queued", tags={"invocation": "inv-9"})
    f = write_metrics(tmp_path / "seed0.json", metrics())
    track.queue_run(metrics(), tracking_uri=uri, experiment="queued", tags={"stage": "final", track.PARENT_TAG: parent},
                    artifact=f, pending=pending)
    track.queue_end(parent, "FINISHED", tracking_uri=uri, pending=pending)
    track.queue_end("no-such-run", "FAILED", tracking_uri=uri, pending=pending)
    assert track.flush_pending(pending) == (1, 0)
    out = capsys.readouterr().out
    assert f"marked MLflow parent run {parent} FINISHED" in out and "no-such-run is not in" in out
    client = mlflow.MlflowClient(uri)
    assert client.get_run(parent).info.status == "FINISHED" and client.get_run(parent).info.run_name == "workflow/inv-9"
    (child,) = client.search_runs([client.get_experiment_by_name("queued").experiment_id], "tags.stage = 'final'")
    assert child.data.tags[track.PARENT_TAG] == parent and child.info.run_name == "final/subtuning/fmnist/s0"


MINI_SNAKEFILE = textwrap.dedent("""
    import sys

    PY = sys.executable


    onstart:
        from subtune.track import workflow_started

        workflow_started()


    onsuccess:
        from subtune.track import workflow_ended

        workflow_ended("FINISHED")


    onerror:
        from subtune.track import workflow_ended

        workflow_ended("FAILED")


    rule all:
        input:
            expand("out/{i}.json", i=range(4)),


    rule job:
        output:
            "out/{i}.json",
        shell:
            "{PY} job.py {wildcards.i} {output}"


    rule broken:
        output:
            "out/broken.json",
        shell:
            "exit 1"
""")
MINI_JOB = textwrap.dedent("""
    import argparse, json, sys, time
    from pathlib import Path
    from subtune.stages._common import track
    i, out = int(sys.argv[1]), Path(sys.argv[2])
    m = {"method": "ft", "target": "digits", "seed": i, "val_acc": 0.5}
    out.write_text(json.dumps(m))
    t = time.monotonic()
    while len(list(out.parent.glob("*.json"))) < 4 and time.monotonic() - t < 60:
        time.sleep(0.05)  # the four jobs log at once
    track(argparse.Namespace(track=True, tag=["stage=final"]), m, str(out), {"seed": str(i)})
""")


@pytest.mark.slow  # Snakemake runs four jobs at once, each importing MLflow
def test_one_parent_run_per_invocation_its_jobs_children(tmp_path):
    """The Snakefile's handlers (the workflow's own, in a small Snakefile): one parent per invocation, made in the
    main process before the jobs start, whatever the number of jobs at once; none for a dry run, --report or an
    invocation with nothing to do; FAILED when a job fails."""
    wd = tmp_path / "wf"
    wd.mkdir()
    (wd / "Snakefile").write_text(MINI_SNAKEFILE)
    (wd / "job.py").write_text(MINI_JOB)
    db = wd / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SUBTUNE_"))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{db}", SUBTUNE_MLFLOW_EXPERIMENT="mini", SUBTUNE_INVOCATION="inv-1",
               SUBTUNE_EXPERIMENT="test", PYTHONPATH=os.pathsep.join([str(Path(subtune.__file__).parents[1]),
                                                                       os.environ.get("PYTHONPATH", "")]))
    smk = str(Path(sys.executable).with_name("snakemake"))

    def run(*args: str, ok: bool = True) -> str:
        p = subprocess.run([smk, "--cores", "4", *args], cwd=wd, env=env, capture_output=True, text=True)
        assert (p.returncode == 0) == ok, (p.stdout + p.stderr)[-4000:]
        return p.stdout + p.stderr

    run("-n")
    assert not db.exists()  # a dry run logs nothing, not even the store
    out = run()
    assert "WARNING" not in out, out[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("mini").experiment_id

    def runs(query: str = "") -> list:
        return client.search_runs([exp], filter_string=query)

    (parent,) = runs("tags.stage = 'workflow'")
    children = runs("tags.stage = 'final'")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "workflow/inv-1"
    assert parent.data.tags["invocation"] == "inv-1" and parent.data.tags["experiment"] == "test"
    assert len(children) == 4 and {r.data.tags[track.PARENT_TAG] for r in children} == {parent.info.run_id}
    assert {r.data.tags["invocation"] for r in children} == {"inv-1"}
    assert sorted(r.info.run_name for r in children) == [f"final/ft/digits/s{i}" for i in range(4)]
    assert runs(f"tags.`{track.PARENT_TAG}` = '{parent.info.run_id}'") and len(runs()) == 5
    run("--report", "report.html")
    run()  # nothing to be done
    assert len(runs()) == 5
    run("out/broken.json", ok=False)
    (failed,) = [r for r in runs("tags.stage = 'workflow'") if r.info.run_id != parent.info.run_id]
    assert failed.info.status == "FAILED" and failed.info.run_name == "workflow/inv-1#2"
