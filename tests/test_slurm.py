"""The workflow through `--executor slurm` on a real single-node SLURM cluster.

The harness (tests/helpers/slurm_cluster.py) starts munged, slurmctld and slurmd from a
temporary directory on this machine, waits for the node to be idle and stops
exactly those processes at the end. The run uses profiles/slurm/config.yaml with
only what is site-specific swapped, as a cluster user would (see
``test_profile``): the node has no GPU (no GRES), so the GPU requests become 0,
the GPU partition becomes the test cluster's, and the memory and CPU requests
fit its 2 cores.

One scenario, three checks:
1. a run where one target has a bad value: that target's job fails on SLURM and
   is reported with its SLURM log path; the other target's jobs complete;
2. after the fix, a rerun runs only what is missing (nothing of the good target);
3. the tables equal a local run's with the same config and seeds.

Then preemption and cancellation, on a copy of the finished run whose final training
jobs run again with the project's `retries` and `slurm-requeue`: one job is cancelled
(scancel) while it logs its MLflow run, the other is requeued (scontrol requeue) while
it trains. The same invocation finishes: the cancelled job is retried, the requeued
one starts again under its job id; no partial output, no MLflow run left RUNNING or
lost, and the tables still equal the local run's.

The config is configs/test.yaml cut down (one seed, two methods, k=1, no sweep
or pairs) to keep the SLURM run, the failing run and the local run (alongside it)
within a few minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers.slurm_cluster import SlurmCluster, missing_programs
from helpers.workflow import job_stats
from subtune.provenance import COLUMNS as PROVENANCE
from subtune.track import KEY_TAG, PARENT_TAG

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
EXP = "slurmtest"
GOOD, BAD = "fmnist-new", "digits"  # BAD gets a bad value in the failing run

GPU_RULES = {"pretrain", "score_round", "score_surgical", "score_profile", "score_pairs", "tune", "train",
             "train_sweep", "multilora"}
CPU_RULES = {"download", "prepare", "mlflow_init", "decide", "selected", "report_main", "report_rounds",
             "report_profile", "report_pairs", "report_sweep", "report_multilora", "report_grid", "report_claims",
             "report_selection", "report_metrics", "report_start", "fetch"}


def _slurm_missing_reason() -> str | None:
    missing = missing_programs()
    if not missing:
        return None
    return (f"SLURM test cluster unavailable: {', '.join(missing)} not installed "
            "(apt-get install slurmctld slurmd munge slurm-client; `make test` does this as root)")


_reason = _slurm_missing_reason()
if _reason and os.environ.get("CI") and os.geteuid() == 0 and shutil.which("apt-get"):
    # `make test` installs the packages as root: in CI here a skip would hide a broken set-up
    raise RuntimeError(_reason)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # a cluster started, a SLURM run failing, fixed and rerun, a local run
    pytest.mark.skipif(_reason is not None, reason=_reason or ""),
    pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST mirror missing: apt-get install dataset-fashion-mnist"),
]


# ----------------------------------------------------------------- helpers
def small_config(bad: bool = False) -> dict:
    cfg = yaml.safe_load((ROOT / "configs/test.yaml").read_text())
    cfg["experiment"] = EXP
    cfg["seeds"] = cfg["seeds"][:1]
    cfg["targets"] = {t: cfg["targets"][t] for t in (GOOD, BAD)}
    # SubTuning alone: greedy selection runs its rounds as a checkpoint, on SLURM too
    cfg["methods"] = {"subtuning": {k: v for k, v in cfg["methods"]["subtuning"].items() if k != "grid"}}
    cfg["selection"]["k"] = 1
    # little data, one epoch: the run is about scheduling, not accuracy
    cfg["source"]["params"] = {"train_size": 400, "val_size": 100}
    cfg["backbone"]["pretrain"]["train"]["epochs"] = 1
    cfg["train"]["epochs"] = 1
    for t in cfg["targets"].values():
        t["params"].update(train_size=60, val_size=30, test_size=100)
    for key in ("sweep", "pairs", "multilora"):
        cfg.pop(key, None)
    if bad:  # digits has a 597-image test block: preparing the splits fails at run time
        cfg["targets"][BAD]["params"]["test_size"] = 5000
    return cfg


def profile_for_test_cluster(cluster: SlurmCluster, profile: dict) -> dict:
    """profiles/slurm with the site-specific values swapped for the test cluster's."""
    p = yaml.safe_load(yaml.safe_dump(profile))  # a deep copy, anchors resolved
    mem = 1500
    for res in [p.get("default-resources") or {}, *(p.get("set-resources") or {}).values()]:
        for key in ("gpu", "gpu_model", "gres", "slurm_account", "cpus_per_task"):
            res.pop(key, None)  # no GPU (no GRES) on the test node; no accounts without accounting
        if "slurm_partition" in res:
            res["slurm_partition"] = cluster.partition
        if "mem_mb" in res:
            res["mem_mb"] = mem
    p.pop("set-threads", None)  # rule threads as in the local run: capped at its --cores, 2
    p["cores"] = min(2, cluster.cpus)  # also what one grouped allocation may ask for
    p["latency-wait"] = 5
    p["retries"] = 0  # the failing job fails for good: no time spent retrying it
    # poll the queue often: the plugin waits 40 s before the first status check by default
    p["slurm-status-command"] = "squeue"
    p["slurm-init-seconds-before-status-checks"] = 1
    p["seconds-between-status-checks"] = 1
    p["slurm-logdir"] = "slurm_logs"
    return p


def workdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, path / name)
    for name in ("rules", "schemas", "configs", "references", "report"):
        shutil.copytree(ROOT / name, path / name)
    (path / "configs/good.yaml").write_text(yaml.safe_dump(small_config()))
    (path / "configs/bad.yaml").write_text(yaml.safe_dump(small_config(bad=True)))
    return path


def clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in (extra or os.environ).items() if not k.startswith(("MLFLOW_", "SUBTUNE_"))}
    return env


def smk_cmd(config: str, *args: str) -> list[str]:
    return [SNAKEMAKE, "--configfile", f"configs/{config}.yaml", *args]


def run_slurm(cluster: SlurmCluster, wd: Path, config: str, *args: str) -> subprocess.CompletedProcess:
    cmd = smk_cmd(config, "--workflow-profile", "profiles/slurm-test", *args)
    return subprocess.run(cmd, cwd=wd, env=clean_env(cluster.env), capture_output=True, text=True, timeout=600)


def outputs(wd: Path) -> dict[str, int]:
    """Every result file with its mtime (ns)."""
    return {str(f.relative_to(wd)): f.stat().st_mtime_ns for f in (wd / "results").rglob("*") if f.is_file()}


def tail(p: subprocess.CompletedProcess, n: int = 6000) -> str:
    return f"--- stdout\n{p.stdout[-n:]}\n--- stderr\n{p.stderr[-n:]}"


# ----------------------------------------------------------------- the scenario
@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="subtune-slurm-"))
    c = SlurmCluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def scenario(cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm_wf")
    wd, local = workdir(base / "slurm"), workdir(base / "local")
    profile = yaml.safe_load(PROFILE.read_text())
    (wd / "profiles/slurm-test").mkdir(parents=True)
    (wd / "profiles/slurm-test/config.yaml").write_text(yaml.safe_dump(profile_for_test_cluster(cluster, profile)))
    times = {}
    t0 = time.monotonic()
    # the local reference runs alongside the SLURM runs (they mostly wait on the queue)
    local_log = open(base / "local.log", "w")
    local_run = subprocess.Popen(smk_cmd("good", "--cores", "2"), cwd=local, env=clean_env(),
                                 stdout=local_log, stderr=subprocess.STDOUT)
    try:
        failed = run_slurm(cluster, wd, "bad")
        times["failing run"] = time.monotonic() - t0
        after_fail = outputs(wd)
        bad_log = (wd / f"logs/{EXP}/prepare/{BAD}_1k.log").read_text(errors="replace")  # the rerun rewrites it
        t1 = time.monotonic()
        fixed = run_slurm(cluster, wd, "good")
        times["rerun after the fix"] = time.monotonic() - t1
        assert local_run.wait(timeout=600) == 0, (base / "local.log").read_text()[-6000:]
        times["total"] = time.monotonic() - t0
    finally:
        if local_run.poll() is None:
            local_run.kill()
        local_log.close()
    print("SLURM scenario wall times (s):", {k: round(v) for k, v in times.items()})
    return dict(wd=wd, local=local, failed=failed, after_fail=after_fail, bad_log=bad_log, fixed=fixed,
                queue=cluster.queue())


def test_profile():
    """GPU stages ask for a GPU, CPU-only stages don't; retries, grouping off the checkpoint."""
    p = yaml.safe_load(PROFILE.read_text())
    assert p["executor"] == "slurm" and p["retries"] >= 1 and p["keep-going"] is True
    assert p["slurm-requeue"] is True  # preempted jobs go back to the queue, where the site does not do it anyway
    default = p["default-resources"]
    assert "gpu" not in default and "gres" not in default and default["mem_mb"] and default["runtime"]
    res = p["set-resources"]
    for rule in GPU_RULES:
        assert res[rule]["gpu"] >= 1 and res[rule]["slurm_partition"], rule
        assert res[rule]["mem_mb"] and res[rule]["runtime"], rule
    for rule in CPU_RULES & set(res):
        assert not {"gpu", "gpu_model", "gres"} & set(res[rule]), rule
    groups = p["groups"]
    assert "prepare" in groups
    assert not {"decide", "selected", "train", "report_main", "report_rounds"} & set(groups)
    assert set(groups.values()) <= set(p["group-components"])


def test_failed_job_reports_its_slurm_log_and_others_complete(scenario):
    wd, p = scenario["wd"], scenario["failed"]
    out = p.stdout + p.stderr
    assert p.returncode != 0, tail(p)
    # the failing job is named with its SLURM log file, which exists and holds the error
    logs = re.findall(r"(\S*slurm_logs/\S+?\.log)", out)
    assert logs, tail(p)
    failed_logs = [f for f in set(logs) if f"group_data_{BAD}_prepare" in f]
    assert failed_logs and all(Path(f).exists() for f in failed_logs), (logs, tail(p))
    assert "Error in rule prepare" in Path(failed_logs[0]).read_text(errors="replace")
    # ... and the rule's own log says why
    assert "test_size 5000" in scenario["bad_log"]
    # downloads and the seconds-long steps ran where Snakemake ran (localrule), not as SLURM jobs
    local = "download|mlflow_init|decide|selected|report_\\w+"
    assert not re.search(rf"rule_({local})/", out), tail(p)
    assert not [d.name for d in (wd / "slurm_logs").glob("rule_*") if re.fullmatch(rf"rule_({local})", d.name)]
    assert (wd / "data/raw/fashion-mnist/MANIFEST.json").exists()
    # the good target went all the way: selection, final runs, its profile table
    res = wd / "results" / EXP
    assert (res / "select" / GOOD / "seed0" / "selected.json").exists(), tail(p)
    assert (res / "runs" / GOOD / "subtuning" / "seed0.json").exists(), tail(p)
    assert (res / "tables" / f"profile_{GOOD}.csv").exists(), tail(p)
    done = scenario["after_fail"]  # what existed after the failing run
    assert not any(f.startswith(f"results/{EXP}/runs/{BAD}/") for f in done), sorted(done)
    assert f"results/{EXP}/tables/main.csv" not in done


def test_rerun_after_fix_runs_only_what_is_missing(scenario):
    wd, fixed = scenario["wd"], scenario["fixed"]
    assert fixed.returncode == 0, tail(fixed)
    # what the rerun planned (up to the selection checkpoint, which it cannot see past):
    # the bad target's chain and the tables over both targets; nothing of the good target
    stats = job_stats(fixed.stdout + fixed.stderr)
    assert stats, tail(fixed)
    assert {"prepare", "score_round", "decide", "report_main", "report_rounds"} <= set(stats), stats
    assert "pretrain" not in stats and "download" not in stats and "mlflow_init" not in stats, stats
    assert stats["prepare"] == 1 and stats["score_round"] == 1 and stats.get("report_profile", 0) == 1, stats
    assert re.search(r"rule_score_round/digits_", fixed.stdout + fixed.stderr)
    # no job of the good target runs again, its epsilon sets (configs/test.yaml's selection.epsilons) included:
    # report_epsilon reads each target's walk through its own input function, so the good target's sets were
    # trained in the failing run, as soon as its own selection was done
    ran = set(re.findall(rf"rule_(\w+)/{GOOD}", fixed.stdout + fixed.stderr))
    assert not ran, f"a job of the good target ran again: {sorted(ran)}"
    good_sets = [f for f in scenario["after_fail"] if f.startswith(f"results/{EXP}/epsilon/{GOOD}/")]
    bad_sets = [f for f in scenario["after_fail"] if f.startswith(f"results/{EXP}/epsilon/{BAD}/")]
    assert good_sets and not bad_sets, (good_sets, bad_sets)
    assert f"group_data_{BAD}_prepare" in fixed.stdout + fixed.stderr  # the grouped preparation
    before = scenario["after_fail"]
    after = outputs(wd)
    assert {f: after[f] for f in before} == before, "a finished output was rewritten"
    assert not scenario["queue"], "jobs left in the queue"


def tables(wd: Path) -> dict[str, pd.DataFrame]:
    """Every table of the run, less what differs between runs of the same work: wall times and provenance (the
    MLflow run ids; the code version, which counts uncommitted edits)."""
    out = {}
    for f in sorted((wd / "results" / EXP / "tables").glob("*.csv")):
        df = pd.read_csv(f)
        out[f.name] = df.drop(columns=[c for c in df.columns if "time" in c or c in PROVENANCE])
    return out


def test_tables_equal_local_run(scenario):
    slurm, local = tables(scenario["wd"]), tables(scenario["local"])
    assert set(slurm) == set(local) and "main.csv" in slurm, (sorted(slurm), sorted(local))
    for name in local:
        pd.testing.assert_frame_equal(slurm[name], local[name], obj=name)


# ----------------------------------------------------------------- preemption and cancellation
CANCEL, REQUEUE = GOOD, BAD  # whose final training job is cancelled (scancel), whose is requeued (scontrol requeue)
TRAIN_JOB = re.compile(r"rule_train_wildcards_(.+)_subtuning_0")  # the plugin's --comment of a final training job


def final_output(target: str) -> str:
    return f"results/{EXP}/runs/{target}/subtuning/seed0.json"


def store_statuses(db: Path, name: str) -> list[str]:
    """The statuses of the runs named ``name`` (or ``name#2``, ...) in the SQLite store ``db``, read directly:
    polled many times a second while jobs log to it (a client would be slower); [] while there is no store yet
    or it is locked."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)) as con:
            rows = con.execute("SELECT status FROM runs WHERE name = ? OR name LIKE ?", (name, f"{name}#%"))
            return [status for (status,) in rows.fetchall()]
    except sqlite3.Error:
        return []


def output_state(path: Path) -> str:
    """``absent``, ``complete`` (valid JSON) or ``partial``: what a killed job left under its output's final name."""
    if not path.exists():
        return "absent"
    try:
        json.loads(path.read_text())
    except (ValueError, OSError):
        return "partial"
    return "complete"


def run_preempted(cluster: SlurmCluster, finished: Path, wd: Path) -> dict:
    """A copy of the finished SLURM run ``finished`` in ``wd``, its final training jobs run again (``--forcerun
    train``, the project's retries and requeue setting, an MLflow store of this invocation alone). While they run,
    one is cancelled while it logs its MLflow run (its metrics file written, its run RUNNING) and the other is
    requeued while it trains. Returns what happened, with the store's runs, and prints the figures."""
    shutil.copytree(finished, wd, symlinks=True)
    for t in (CANCEL, REQUEUE):  # what the watch below reads must be this run's
        (wd / final_output(t)).unlink(missing_ok=True)
        (wd / f"logs/{EXP}/train/{t}_subtuning_seed0.log").unlink(missing_ok=True)
    project = yaml.safe_load(PROFILE.read_text())
    profile = profile_for_test_cluster(cluster, project)
    profile["retries"] = project["retries"]
    (wd / "profiles/slurm-preempt").mkdir(parents=True)
    (wd / "profiles/slurm-preempt/config.yaml").write_text(yaml.safe_dump(profile))
    db = wd / "mlflow-preempt.db"
    env = {**clean_env(cluster.env), "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    before = {job for job, *_ in cluster.jobs()}
    ev: dict = {"cancelled": None, "requeued": None, "released": None, "left": {}}
    t0 = time.monotonic()
    with open(wd.parent / "snakemake.log", "w+") as log:
        proc = subprocess.Popen(smk_cmd("good", "--workflow-profile", "profiles/slurm-preempt", "--forcerun", "train"),
                                cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None and time.monotonic() - t0 < 600:
                for job, state, reason, comment in cluster.jobs():
                    m = TRAIN_JOB.fullmatch(comment)
                    if job in before or not m:
                        continue
                    target = m.group(1)
                    out = wd / final_output(target)
                    if (target == CANCEL and ev["cancelled"] is None and state == "RUNNING" and out.exists()
                            and "RUNNING" in store_statuses(db, f"final/subtuning/{target}/s0")):
                        cluster.run("scancel", job, check=True)
                        ev["cancelled"] = job
                    elif (target == REQUEUE and ev["requeued"] is None and state == "RUNNING" and not out.exists()
                          and (wd / f"logs/{EXP}/train/{target}_subtuning_seed0.log").exists()):
                        cluster.run("scontrol", "requeue", job, check=True)  # fails unless submitted --requeue
                        ev["requeued"] = job
                    elif job == ev["requeued"] and ev["released"] is None and state == "PENDING":
                        # SLURM holds a requeued job back for two minutes: let it start again now
                        cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=True)
                        ev["released"] = job
                    if job in (ev["cancelled"], ev["requeued"]) and job not in ev["left"] and state not in (
                            "RUNNING", "COMPLETING"):
                        ev["left"][job] = output_state(out)  # the moment the killed attempt is gone
                time.sleep(0.05)
            rc = proc.wait(timeout=max(1.0, 600 - (time.monotonic() - t0)))
        finally:
            if proc.poll() is None:
                proc.kill()
        log.seek(0)
        out_text = log.read()
    wall = time.monotonic() - t0
    runs = mlflow_runs(db)
    outputs = {t: wd / final_output(t) for t in (CANCEL, REQUEUE)}
    logged = {r["tags"].get(KEY_TAG) for r in runs if r["status"] == "FINISHED"}
    figures = {
        "jobs cancelled": int(ev["cancelled"] is not None), "jobs requeued": int(ev["requeued"] is not None),
        "retries seen": out_text.count("Trying to restart job"),
        "requeue restarts": int(cluster.job_info(ev["requeued"]).get("Restarts", 0)) if ev["requeued"] else 0,
        "runs logged": sum(r["status"] == "FINISHED" and r["tags"].get("stage") == "final" for r in runs),
        "runs failed": sum(r["status"] == "FAILED" for r in runs),
        "runs left running": sum(r["status"] == "RUNNING" for r in runs),
        "runs lost": sum(not f.exists() or sha256(f) not in logged for f in outputs.values()),
        "wall s": round(wall),
    }
    print("SLURM preemption:", figures)
    return dict(wd=wd, rc=rc, log=out_text, before=before, runs=runs, outputs=outputs, figures=figures, **ev)


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def mlflow_runs(db: Path) -> list[dict]:
    """Every run of the experiment in the store ``db`` (MlflowClient): id, name, status, tags."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(small_config()["tracking"]["experiment"])
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    return [{"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status, "tags": dict(r.data.tags)}
            for r in runs]


@pytest.fixture(scope="module")
def preempted(cluster, scenario, tmp_path_factory):
    return run_preempted(cluster, scenario["wd"], tmp_path_factory.mktemp("slurm_preempt") / "wd")


def test_cancelled_job_is_retried_and_requeued_job_restarts(preempted, cluster):
    p = preempted
    assert p["cancelled"] and p["requeued"], (p["figures"], p["log"][-6000:])
    assert p["rc"] == 0, p["log"][-6000:]
    jobs = {job: (state, m.group(1)) for job, state, _, comment in cluster.jobs()
            if job not in p["before"] and (m := TRAIN_JOB.fullmatch(comment))}
    # the cancelled job failed (CANCELLED); Snakemake retried it (profile retries) as a new job, which completed
    assert f"SLURM-job '{p['cancelled']}' failed, SLURM status is: 'CANCELLED'" in p["log"], p["log"][-6000:]
    assert p["figures"]["retries seen"] == 1, p["figures"]
    retried = [state for job, (state, t) in jobs.items() if t == CANCEL and job != p["cancelled"]]
    assert retried == ["COMPLETED"], jobs
    # the requeued job (sbatch --requeue from the profile) started again under its id and completed; Snakemake
    # waited for it and saw no failure
    assert [job for job, (_, t) in jobs.items() if t == REQUEUE] == [p["requeued"]], jobs
    info = cluster.job_info(p["requeued"])
    assert info.get("JobState") == "COMPLETED" and info.get("Requeue") == "1" and info.get("Restarts") == "1", info
    assert f"SLURM-job '{p['requeued']}' failed" not in p["log"]
    assert not cluster.queue(), "jobs left in the queue"


def test_killed_jobs_leave_no_partial_output(preempted):
    p = preempted
    # when each killed attempt was gone, its output was absent or whole; in the end both are whole
    assert set(p["left"]) == {p["cancelled"], p["requeued"]}, p["left"]
    assert set(p["left"].values()) <= {"absent", "complete"}, p["left"]
    assert {t: output_state(f) for t, f in p["outputs"].items()} == {CANCEL: "complete", REQUEUE: "complete"}
    assert not sorted(p["wd"].rglob("*.part")), "a temporary file of atomic_path was left behind"


def test_killed_jobs_leave_no_running_or_lost_mlflow_run(preempted):
    p, runs = preempted, preempted["runs"]
    assert not [r for r in runs if r["status"] == "RUNNING"], runs
    parent = [r for r in runs if r["tags"].get("stage") == "workflow"]
    assert [r["status"] for r in parent] == ["FINISHED"], parent
    for target, out in p["outputs"].items():
        # by name: an attempt killed right after creating its run has no tags yet, only its name
        mine = [r for r in runs if r["name"].split("#")[0] == f"final/subtuning/{target}/s0"]
        finished = [r for r in mine if r["status"] == "FINISHED"]
        assert len(finished) == 1, (target, mine)  # the attempt that made the output, and no other
        assert finished[0]["tags"][KEY_TAG] == sha256(out), (target, finished)
        assert finished[0]["tags"].get(PARENT_TAG) == parent[0]["id"]
        assert all(r["status"] == "FAILED" for r in mine if r is not finished[0]), (target, mine)
        if target == CANCEL:  # cancelled while logging: the attempt had created its run, which is FAILED
            assert len(mine) == 2, (target, mine)
    assert p["figures"]["runs lost"] == 0 and p["figures"]["runs logged"] == 2, p["figures"]


def test_preempted_run_tables_equal_local_run(preempted, scenario):
    again, local = tables(preempted["wd"]), tables(scenario["local"])
    assert set(again) == set(local) and "main.csv" in again, (sorted(again), sorted(local))
    for name in local:
        pd.testing.assert_frame_equal(again[name], local[name], obj=name)


# A job's process logging its run when SIGTERM comes (SLURM's scancel, preemption, requeue): the signal is sent at
# the moment the run exists and is not finished (before its artifact is logged), by the process itself.
SIGTERM_WHILE_LOGGING = """
import os, signal, sys
from mlflow import MlflowClient
from subtune.track import log_run

log_artifact = MlflowClient.log_artifact
def terminated_then_log_artifact(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return log_artifact(self, *args, **kwargs)
MlflowClient.log_artifact = terminated_then_log_artifact
log_run({"method": "ft", "target": "digits", "seed": 0, "test_acc": 0.5}, tracking_uri=sys.argv[1],
        experiment="sigterm", artifact=sys.argv[2], tags={"stage": "final"}, retry_s=10)
print("not reached")
"""


def test_sigterm_while_logging_marks_the_run_failed(tmp_path):
    """The job ends as told (exit status 143: SIGTERM), and its run is FAILED, not left RUNNING for good."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    metrics = tmp_path / "seed0.json"
    metrics.write_text(json.dumps({"method": "ft", "target": "digits", "seed": 0, "test_acc": 0.5}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_LOGGING, uri, str(metrics)], env=clean_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 143 and "not reached" not in p.stdout, (p.returncode, p.stderr[-3000:])
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("sigterm").experiment_id], run_view_type=ViewType.ALL)
    assert [(r.info.run_name, r.info.status) for r in runs] == [("final/ft/digits/s0", "FAILED")]
