"""Warm start (subtune.warm): a job run by a warm server's child is the same job, minus the imports.

The jobs here are real ``python -m subtune`` processes (a digits target, a tiny random ResNet); the server is
the real one, in a private socket directory per test module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from subtune import warm
from subtune.cli import main, warm_stages

TRAIN = {"epochs": 2, "lr": 0.01, "batch_size": 16}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import timm
    import torch

    from subtune.models.checkpoint import Checkpoint, save_checkpoint

    wd = tmp_path_factory.mktemp("warm")
    params = json.dumps({"train_size": 64, "val_size": 32, "test_size": 64})
    assert main(["prepare", "--target", "digits", "--params", params, "--out", str(wd / "d.safetensors"),
                 "--manifest", str(wd / "d.json")]) == 0  # fmt: skip
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4, channels=(8, 16, 32, 64))
    save_checkpoint(wd / "c.safetensors", model,
                    Checkpoint("resnet18", 4, image_size=32, model_kwargs={"channels": [8, 16, 32, 64]}))  # fmt: skip
    sockets = tmp_path_factory.mktemp("sockets")
    sockets.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUBTUNE_", "SLURM_", "MLFLOW_"))}
    env.update(SUBTUNE_WARM_DIR=str(sockets), SUBTUNE_WARM_IDLE="60")
    yield wd, env
    for pid in servers(sockets):
        os.kill(pid, signal.SIGTERM)


def servers(sockets: Path) -> list[int]:
    """Pids of the live warm servers that logged to ``sockets``."""
    pids = []
    for log in sockets.glob("*.log"):
        for line in log.read_text().splitlines():
            if line.startswith("warm server ") and " on " in line:
                pid = int(line.split()[2])
                if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    pids.append(pid)
    return sorted(set(pids))


def train_cmd(wd: Path, out: Path, **train) -> list[str]:
    return [sys.executable, "-m", "subtune", "train", "--method", "bitfit", "--data", str(wd / "d.safetensors"),
            "--manifest", str(wd / "d.json"), "--checkpoint", str(wd / "c.safetensors"), "--seed", "0",
            "--threads", "1", "--train", json.dumps({**TRAIN, **train}), "--out", str(out)]  # fmt: skip


@pytest.mark.slow  # real `python -m subtune train` jobs, through the warm server
def test_a_job_through_the_warm_server_is_the_same_job(work, tmp_path):
    wd, env = work
    cold = subprocess.run(train_cmd(wd, tmp_path / "cold.json"), env={**env, "SUBTUNE_WARM": "0"},
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert cold.returncode == 0, cold.stderr
    assert not list(Path(env["SUBTUNE_WARM_DIR"]).glob("*.sock")), "SUBTUNE_WARM=0 started a server"
    outs = []
    for i in range(2):  # the first starts the server, the second is served by it
        p = subprocess.run(train_cmd(wd, tmp_path / f"warm{i}.json"), env=env, capture_output=True, text=True,
                           cwd=tmp_path)  # fmt: skip
        assert p.returncode == 0, p.stderr
        outs.append(p)
    assert len(servers(Path(env["SUBTUNE_WARM_DIR"]))) == 1
    a = json.loads((tmp_path / "cold.json").read_text())
    for i in range(2):
        b = json.loads((tmp_path / f"warm{i}.json").read_text())
        assert a.keys() == b.keys()
        differ = {k for k in a if a[k] != b[k] and k not in {"wall_time_s"}}
        differ -= {k for k in differ if isinstance(a[k], list) and all(
            {**x, "seconds": 0} == {**y, "seconds": 0} for x, y in zip(a[k], b[k]))}  # per-epoch timings
        assert not differ, {k: (a[k], b[k]) for k in differ}
    # the job's own output reaches the client's stdout (the per-epoch lines and the summary)
    strip = [ln.rsplit(" ", 1)[0] for ln in cold.stdout.splitlines()]
    assert [ln.rsplit(" ", 1)[0] for ln in outs[1].stdout.splitlines()] == strip
    assert any(ln.startswith("bitfit epoch 2/2") for ln in outs[1].stdout.splitlines())


@pytest.mark.slow  # real `python -m subtune train` jobs, through the warm server
def test_bad_input_exits_2_with_its_one_line_error(work, tmp_path):
    wd, env = work
    p = subprocess.run(train_cmd(wd, tmp_path / "o.json", lrr=1), env=env, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("subtune train: error: unknown key"), p.stderr
    p = subprocess.run([sys.executable, "-m", "subtune", "train", "--nosuch"], env=env, capture_output=True,
                       text=True)  # fmt: skip
    assert p.returncode == 2 and "arguments are required" in p.stderr  # argparse's SystemExit(2)
    assert not (tmp_path / "o.json").exists()


def long_job(work, tmp_path) -> tuple[subprocess.Popen, int]:
    """A training job of 10,000 epochs, once it has logged its first epoch, and its warm server's pid."""
    wd, env = work
    log = tmp_path / "job.log"
    with open(log, "w") as fh:
        p = subprocess.Popen(train_cmd(wd, tmp_path / "o.json", epochs=10000), env=env, stdout=fh, stderr=fh)
    deadline = time.monotonic() + 120
    while "epoch 1/" not in log.read_text():
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    (server,) = servers(Path(env["SUBTUNE_WARM_DIR"]))
    return p, server


@pytest.mark.slow  # real `python -m subtune train` jobs, through the warm server
def test_a_signal_to_the_job_reaches_its_child_and_ends_it(work, tmp_path):
    p, server = long_job(work, tmp_path)
    assert len(psutil.Process(server).children()) == 1
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == -signal.SIGTERM  # died of the signal, as the job itself would have
    deadline = time.monotonic() + 10
    while psutil.Process(server).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert psutil.Process(server).children() == []
    assert not (tmp_path / "o.json").exists()


@pytest.mark.slow  # real `python -m subtune train` jobs, through the warm server
def test_a_killed_client_takes_its_job_with_it(work, tmp_path):
    p, server = long_job(work, tmp_path)
    p.kill()  # SIGKILL: nothing forwarded; the server sees the connection close
    p.wait()
    deadline = time.monotonic() + 10
    while psutil.Process(server).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert psutil.Process(server).children() == []


def test_the_key_follows_the_environment_not_pytest_or_the_directory(tmp_path):
    def key(cwd, **env):
        e = {**os.environ, **env}
        return subprocess.run([sys.executable, "-c", "from subtune import warm; print(warm.key())"], cwd=cwd,
                              env=e, capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    k = key(tmp_path / "a")
    assert key(tmp_path / "a", PYTEST_CURRENT_TEST="another test") == k
    assert key(tmp_path / "b", PWD=str(tmp_path / "b")) == k  # the job's directory is sys.path[0] in the child
    (tmp_path / "b" / "torch.py").write_text("")
    assert key(tmp_path / "b") != k  # ... unless it shadows a module the server imported
    assert key(tmp_path / "a", OMP_NUM_THREADS="3") != k  # read by libgomp when torch loads: another server


def test_off_under_slurm_and_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("SUBTUNE_WARM_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert warm.run(["subtune", "train", "--help"], main, warm_stages()) is None
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("SUBTUNE_WARM", "0")
    assert warm.run(["subtune", "train", "--help"], main, warm_stages()) is None
    monkeypatch.delenv("SUBTUNE_WARM")
    assert warm.run(["subtune", "decide", "--help"], main, warm_stages()) is None  # a light stage: its own process
    assert not (tmp_path / "s").exists()


@pytest.mark.slow  # a real `python -m subtune train` job
def test_a_socket_path_too_long_runs_the_job_in_its_own_process(work, tmp_path):
    wd, env = work
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    env = {**env, "SUBTUNE_WARM_DIR": str(deep)}
    p = subprocess.run(train_cmd(wd, tmp_path / "o.json"), env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "socket path too long" in p.stderr and (tmp_path / "o.json").exists()
    assert not list(deep.glob("*.sock")) and not list(deep.glob("*.log"))


@pytest.mark.slow  # a real warm server, left to time out
def test_an_idle_server_exits_and_removes_its_socket(work):
    wd, env = work
    tmp_path = Path(tempfile.mkdtemp(prefix="sw", dir="/tmp"))  # a short path: AF_UNIX names hold 107 bytes
    env = {**env, "SUBTUNE_WARM_DIR": str(tmp_path / "s"), "SUBTUNE_WARM_IDLE": "1"}
    # a heavy stage that runs (--help never starts a server) and stops at once on a missing input
    missing = tmp_path / "missing.json"
    p = subprocess.run([sys.executable, "-m", "subtune", "report", "rounds", "--states", str(missing), "--out-csv",
                        str(tmp_path / "rounds.csv")], env=env, capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 2 and str(missing) in p.stderr, p.stdout + p.stderr
    (log,) = (tmp_path / "s").glob("*.log")
    deadline = time.monotonic() + 60
    while not log.read_text().rstrip().endswith(": exit"):  # it may be gone already: idle 1 s
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    pid = int(log.read_text().split()[2])
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert not list((tmp_path / "s").glob("*.sock"))
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_each_child_draws_its_own_random_numbers():
    """Forked children reseed Python's and NumPy's global RNGs, as fresh processes would seed them."""
    import random

    import numpy as np

    def draw(reseed: bool) -> str:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            if reseed:
                warm._reseed()
            os.write(w, f"{np.random.rand()} {random.random()}".encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        with os.fdopen(r) as fh:
            return fh.read()

    np.random.seed(0)
    random.seed(0)
    # what a plain fork gives: NumPy's numbers of the parent in every child (Python's random reseeds itself)
    assert draw(False).split()[0] == draw(False).split()[0]
    a, b = draw(True), draw(True)
    assert a != b and a.split()[0] != b.split()[0] and a.split()[1] != b.split()[1]
