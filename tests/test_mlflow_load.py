"""Many jobs logging at once into one MLflow store, and the moments a dying server can cut a run off.

Two copies of the small config (seeds 0, 1 and 2, 3: every job's metrics file differs), the data and the
backbone's checkpoint made once, run at the same time at ``--cores 8`` each: 16 training jobs in flight on 2 CPU
cores, after each invocation's parent run (made in Snakemake's main process as it starts: both create the one
MLflow experiment at the same moment) and its ``track-init`` job.

- Against one real ``mlflow server`` (SQLite backend), killed (SIGKILL) once both workflows have logged a run and
  started again on the same port while the other jobs still train or log: after the queued runs are logged (what
  ``python -m subtune log --pending`` does), every job is exactly one FINISHED run (matched by its metrics file's
  SHA-256 tag), none is logged twice, none is left RUNNING, and each invocation has one parent run, FINISHED,
  whose children are exactly its jobs' runs.
- Against one local SQLite database shared by both: the same, with nothing queued, and no tracking error
  ("database is locked", a retry, a warning) in any job's log or in Snakemake's output.
- Through a proxy that fails at a chosen request: a server gone between creating a run and logging its data, and
  an answer to a run's creation lost (MLflow's client sends the request again), leave one run each.

The load tests print their figures (jobs, runs logged, queued and flushed, restarts, runs lost, duplicates).
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from subtune import track

from helpers.mlflow_server import Cut, Server
from helpers.workflow import FMNIST, SNAKEMAKE, workdir

mlflow = pytest.importorskip("mlflow")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # two workflows' training jobs at once, on 2 CPU cores
    pytest.mark.skipif(not FMNIST.exists(),
                       reason="Fashion-MNIST mirror missing: apt-get install dataset-fashion-mnist (make test does)"),
]

EXPERIMENT = "subtune-test"  # configs/test.yaml's tracking.experiment: both workflows log into it
WORKFLOWS = {"a": (0, 1), "b": (2, 3)}  # each workflow's seeds
TARGETS, METHODS = ("fmnist-new", "digits"), ("lp", "ft")
CORES = 8
WEIGHTS = "weights.safetensors"  # the backbone's weights (random, seeded): `fetch` makes the checkpoint of them
PREPARED = ["checkpoints/test/backbone.safetensors", *(f"data/prepared/test/{t}/1k.safetensors" for t in TARGETS)]
# What a job's log or Snakemake's output shows when tracking went wrong: a lock error, a retry, a queued run.
TRACKING_TROUBLE = re.compile(r"database is locked|OperationalError|TrackingError|WARNING: MLflow|subtune track:"
                              r"|MlflowException|Traceback")


def tiny(cfg: dict, seeds) -> None:
    """configs/test.yaml at its smallest: one epoch on 64 images per target, a backbone from a file (no pretraining)."""
    cfg["seeds"] = list(seeds)
    cfg["backbone"].update(checkpoint="file", file=WEIGHTS)
    cfg["backbone"].pop("pretrain", None)
    for target in cfg["targets"].values():
        target["params"].update(train_size=64, val_size=32, test_size=100)
    cfg["train"]["epochs"] = 1
    cfg["methods"]["lp"].pop("grid", None)  # no tuning job: one final run per method, target and seed


def set_config(wd: Path, seeds) -> None:
    path = wd / "configs/test.yaml"
    cfg = yaml.safe_load(path.read_text())
    tiny(cfg, seeds)
    path.write_text(yaml.safe_dump(cfg))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's MLflow and subtune settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SUBTUNE_"))}
    env.update(extra)
    return env


def jobs(seeds) -> list[str]:
    return [f"results/test/runs/{t}/{m}/seed{s}.json" for t in TARGETS for m in METHODS for s in seeds]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A workflow copy with the targets' data prepared and the backbone's checkpoint made: what every workflow of
    this file starts from."""
    import safetensors.torch
    import timm
    import torch

    wd = workdir(tmp_path_factory.mktemp("prepared"))
    torch.manual_seed(0)
    model = timm.create_model("resnet18", channels=(8, 16, 32, 64))
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, wd / WEIGHTS)
    set_config(wd, [0])
    cmd = [SNAKEMAKE, *PREPARED, "--cores", "2", "--configfile", "configs/test.yaml"]
    p = subprocess.run(cmd, cwd=wd, env=clean_env(), capture_output=True, text=True)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return wd


def copies(prepared: Path, tmp: Path) -> dict[str, Path]:
    """Each workflow's working directory: a copy of ``prepared`` (its tracking store and logs left out), its seeds."""
    out = {}
    for name, seeds in WORKFLOWS.items():
        wd = tmp / name
        shutil.copytree(prepared, wd, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db*", "mlruns", "logs"))
        set_config(wd, seeds)
        out[name] = wd
    return out


def start(wds: dict[str, Path], env: dict[str, str]) -> dict[str, subprocess.Popen]:
    """Both workflows' training jobs, at once, ``--cores 8`` each (Snakemake's output in ``<wd>/snakemake.log``)."""
    procs = {}
    for name, wd in wds.items():
        cmd = [SNAKEMAKE, *jobs(WORKFLOWS[name]), "--cores", str(CORES), "--configfile", "configs/test.yaml"]
        with open(wd / "snakemake.log", "w") as out:
            procs[name] = subprocess.Popen(cmd, cwd=wd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return procs


def finish(procs: dict[str, subprocess.Popen], wds: dict[str, Path], timeout: float = 900) -> None:
    """Wait for both workflows; each must succeed (a tracking failure never fails a job)."""
    try:
        for p in procs.values():
            p.wait(timeout)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for name, p in procs.items():
        assert p.returncode == 0, (wds[name] / "snakemake.log").read_text()[-4000:]


def logged_by_invocation(uri: str) -> collections.Counter:
    """How many job runs (not parents) each invocation (its parent run's id) has FINISHED so far."""
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return collections.Counter()
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=1000)
    return collections.Counter(r.data.tags.get(track.PARENT_TAG) for r in runs if track.KEY_TAG in r.data.tags)


def flush(wds: dict[str, Path]) -> dict[str, int]:
    """Each workflow's queue logged as ``python -m subtune log --pending`` logs it (:func:`subtune.track.flush_pending`,
    here in the test's process): the runs queued, those it logged, those it found already logged."""
    queued = flushed = 0
    for wd in wds.values():
        pending = wd / "logs/mlflow-pending"
        queued += sum(not e.name.startswith("end-") for e in track.pending_runs(pending))
        out = io.StringIO()
        logged, left = track.flush_pending(pending, out=out)
        assert left == 0 and not track.pending_runs(pending), out.getvalue()
        flushed += logged
    return {"runs queued": queued, "flushed": flushed, "found logged": queued - flushed}


def check_runs(uri: str, wds: dict[str, Path]) -> dict[str, int]:
    """Every job of both workflows is one FINISHED run, each workflow one FINISHED parent: the figures.

    A run is a job's when its ``subtune.metrics_sha256`` tag is the SHA-256 of that job's metrics file. Runs
    deleted by a later attempt of the same job (a run a dying server left unfinished) do not count.
    """
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=5000)
    active = [r for r in runs if r.info.lifecycle_stage == "active"]
    parents = [r for r in active if r.data.tags.get("stage") == "workflow"]
    children = [r for r in active if r.data.tags.get("stage") != "workflow"]
    by_key = collections.defaultdict(list)
    for r in children:
        by_key[r.data.tags.get(track.KEY_TAG)].append(r)
    files = {name: sorted((wd / "results/test/runs").rglob("seed*.json")) for name, wd in wds.items()}
    keys = {name: {track.run_key({}, f) for f in fs} for name, fs in files.items()}
    n_jobs = sum(len(fs) for fs in files.values())
    assert n_jobs == sum(len(jobs(s)) for s in WORKFLOWS.values()) == len(set().union(*keys.values()))

    figures = {
        "jobs": n_jobs,
        "runs logged": sum(len(by_key[k]) for ks in keys.values() for k in ks),
        "runs lost": sum(not by_key[k] for ks in keys.values() for k in ks),
        "duplicates": sum(max(0, len(v) - 1) for v in by_key.values()),
        "runs not a job's": sum(len(v) for k, v in by_key.items() if not any(k in ks for ks in keys.values())),
        "running": sum(r.info.status == "RUNNING" for r in active),
        "deleted": len(runs) - len(active),
        "parents": len(parents),
    }
    assert figures["runs lost"] == 0 and figures["duplicates"] == 0 and figures["runs not a job's"] == 0, figures
    assert figures["running"] == 0 and all(r.info.status == "FINISHED" for r in active), figures
    # One parent per invocation, FINISHED; its children are exactly that invocation's jobs' runs.
    assert len(parents) == len(wds), figures
    parent_of = {}
    for name in wds:
        ids = {by_key[k][0].data.tags.get(track.PARENT_TAG) for k in keys[name]}
        assert len(ids) == 1 and None not in ids, (name, ids)
        parent_of[name] = ids.pop()
    assert sorted(parent_of.values()) == sorted(r.info.run_id for r in parents), (parent_of, figures)
    return figures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `mlflow server` for this file's tests (each logs into an experiment of its own)."""
    s = Server(tmp_path_factory.mktemp("server"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


def say(figures: dict[str, int]) -> None:
    print("MLflow under load: " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)


def test_two_workflows_log_to_a_server_restarted_mid_run(prepared, server, tmp_path):
    wds = copies(prepared, tmp_path)
    procs = start(wds, clean_env(MLFLOW_TRACKING_URI=server.uri))
    try:
        # Kill the server once both workflows have logged a run (their track-init jobs are done: a workflow whose
        # server is down when it starts stops there), while the other jobs still train or log; start it again.
        t = time.monotonic()
        while len(logged := logged_by_invocation(server.uri)) < len(wds):
            assert all(p.poll() is None for p in procs.values()), {n: p.returncode for n, p in procs.items()}
            assert time.monotonic() - t < 600, f"not every workflow logged a run: {logged}"
            time.sleep(0.5)
        server.kill()
        server.start()
    except BaseException:
        for p in procs.values():
            p.kill()
        raise
    finish(procs, wds)
    before = sum(logged.values())
    assert before < sum(len(jobs(s)) for s in WORKFLOWS.values()), "every job had logged before the server died"
    # A job queues its run only when logging failed: each such job says so in one line, and nothing else fails.
    for wd in wds.values():
        for log in (wd / "logs/test").rglob("*.log"):
            text = log.read_text()
            assert text.count("WARNING: MLflow logging") <= 1 and "Traceback" not in text, log
    queue = flush(wds)
    figures = check_runs(server.uri, wds)
    say({"jobs": figures.pop("jobs"), "logged before the restart": before, **queue, "restarts": server.starts - 1,
         **figures})


def test_two_workflows_log_to_one_sqlite_store(prepared, tmp_path):
    wds = copies(prepared, tmp_path)
    (tmp_path / "store").mkdir()
    uri = f"sqlite:///{tmp_path / 'store/mlflow.db'}"
    env = clean_env(MLFLOW_TRACKING_URI=uri)
    finish(start(wds, env), wds)
    # No tracking error reached a job (nor a retry, nor a queued run), nor Snakemake's handlers.
    trouble = []
    for wd in wds.values():
        for log in [wd / "snakemake.log", *sorted((wd / "logs/test").rglob("*.log"))]:
            trouble += [f"{log}: {ln}" for ln in log.read_text().splitlines() if TRACKING_TROUBLE.search(ln)]
        assert not track.pending_runs(wd / "logs/mlflow-pending")
    assert not trouble, "\n".join(trouble[:20])
    figures = check_runs(uri, wds)
    say({"jobs": figures.pop("jobs"), "runs queued": 0, **figures})


def experiment_runs(uri: str, experiment: str) -> list[tuple[str, str, str | None]]:
    """(run id, status, metrics-file key) of the experiment's active runs."""
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return sorted((r.info.run_id, r.info.status, r.data.tags.get(track.KEY_TAG)) for r in runs)


def metrics_file(path: Path) -> Path:
    path.write_text(json.dumps({"method": "ft", "target": "digits", "seed": 0, "val_acc": 0.5, "test_acc": 0.5}))
    return path


def test_a_run_cut_off_between_its_creation_and_its_data_is_logged_once(server, tmp_path):
    """The server dies after creating a job's run, before the run's data reach it (the first log-batch request
    never reaches it, nor does any request after it): the job queues its run. Once the server is back,
    `log --pending` leaves exactly one run of the job's metrics file in the experiment, FINISHED, and no
    unfinished run beside it."""
    f, pending, experiment = metrics_file(tmp_path / "seed0.json"), tmp_path / "pending", "cut-after-create"
    cut = Cut(server.port, b"POST /api/2.0/mlflow/runs/log-batch")
    try:
        run_id = track.log_or_queue(json.loads(f.read_text()), experiment=experiment, tags={"stage": "final"},
                                    artifact=f, tracking_uri=cut.uri, retry_s=5, pending=pending)
        assert run_id is None and cut.dead and len(track.pending_runs(pending)) == 1
        cut.heal()
        assert track.flush_pending(pending, out=io.StringIO()) == (1, 0)
    finally:
        cut.close()
    [(_, status, key)] = experiment_runs(server.uri, experiment)
    assert (status, key) == ("FINISHED", track.run_key({}, f))


def test_a_lost_answer_to_a_run_creation_leaves_one_run(server, tmp_path):
    """The server creates a run but its answer is lost (it died, or the network failed, right after), and MLflow's
    client sends the request again: a job's run is still one run, and so is a workflow's parent run, each
    FINISHED (no second, unfinished one)."""
    f, experiment = metrics_file(tmp_path / "seed0.json"), "answer-lost"
    cut = Cut(server.port, b"POST /api/2.0/mlflow/runs/create", forward=True, stay_dead=False)
    try:
        run_id = track.log_run(json.loads(f.read_text()), tracking_uri=cut.uri, experiment=experiment,
                               tags={"stage": "final"}, artifact=f, retry_s=5)
        assert cut.cut
    finally:
        cut.close()
    cut = Cut(server.port, b"POST /api/2.0/mlflow/runs/create", forward=True, stay_dead=False)
    try:
        parent = track.start_parent(cut.uri, experiment, tags={"invocation": "host-1-2"}, retry_s=5)
        track.end_parent(parent, "FINISHED", cut.uri, retry_s=5)
        assert cut.cut
    finally:
        cut.close()
    assert experiment_runs(server.uri, experiment) == sorted(
        [(run_id, "FINISHED", track.run_key({}, f)), (parent, "FINISHED", None)])
