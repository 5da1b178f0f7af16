"""A throwaway single-node SLURM cluster for the tests: munged, slurmctld and slurmd
(Debian's slurm-wlm packages) started in the foreground from a temporary directory.

Everything the cluster needs lives in that directory: its own munge key and socket,
slurm.conf (pointed to by SLURM_CONF, so the system's /etc/slurm is never read),
state, spool, pid and log files. No accounting database (squeue answers the status
queries), no cgroups (proctrack/linuxproc, task/none: containers have no cgroup
delegation), no GRES: the node has no GPU, so jobs must not ask for one. Batch jobs
are requeued only when submitted with ``--requeue`` (JobRequeue=0, as some sites set it).

``SlurmCluster.start()`` waits until ``sinfo`` shows the node idle;
``SlurmCluster.stop()`` cancels the cluster's jobs and ends exactly the three
processes it started (by their PIDs), never anything found by name.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")


def missing_programs() -> list[str]:
    """The SLURM/munge programs not on PATH (or in /usr/sbin)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [p for p in DAEMONS + CLIENTS if shutil.which(p, path=path) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(_free_port())
    return sorted(ports)


def _node_hardware() -> tuple[int, int]:
    """CPUs and memory (MB) of this machine as slurmd sees them (`slurmd -C`)."""
    cpus, mem = os.cpu_count() or 1, 1024
    try:
        out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
        if m := re.search(r"\bCPUs=(\d+)", out):
            cpus = int(m.group(1))
        if m := re.search(r"\bRealMemory=(\d+)", out):
            mem = int(m.group(1))
    except (OSError, subprocess.SubprocessError):
        pass
    return cpus, mem


def _which(prog: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    found = shutil.which(prog, path=path)
    if found is None:
        raise FileNotFoundError(prog)
    return found


class SlurmCluster:
    """One node (this machine), one partition; see the module docstring."""

    partition = "debug"

    def __init__(self, root: Path, *, memory_margin_mb: int = 2048):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.cpus, mem = _node_hardware()
        # leave the OS some memory: jobs are scheduled against this figure
        self.memory_mb = max(1024, mem - memory_margin_mb)
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"

    # ------------------------------------------------------------------ files
    def _write_files(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(parents=True, exist_ok=True)
        munge.chmod(0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for d in ("state", "spool", "log", "run", "bin"):
            (self.root / d).mkdir(exist_ok=True)
        # snakemake-executor-plugin-slurm-jobstep starts each job step with `srun`
        # after dropping every SLURM_* variable it does not know, SLURM_CONF
        # included: a real cluster's srun finds /etc/slurm/slurm.conf (or asks
        # slurmctld, configless), this one finds its config through this shim.
        shim = self.root / "bin" / "srun"
        shim.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {_which("srun")} "$@"\n')
        shim.chmod(0o755)
        ctld_port, d_port = _free_ports(2)
        r = self.root
        self.conf.write_text(
            f"""# written by tests/slurm_cluster.py
ClusterName=subtunetest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser={os.environ.get("USER") or "root"}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# finished jobs stay visible to squeue this long (the plugin's status queries)
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
# batch jobs are not requeued unless they ask (sbatch --requeue), as on sites that turn it off: preemption or
# `scontrol requeue` then requeues only jobs submitted that way (profiles/slurm's slurm-requeue)
JobRequeue=0
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        )

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, snakemake) needs to talk to this cluster."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        path = [str(self.root / "bin"), *env.get("PATH", "").split(os.pathsep)]
        if "/usr/sbin" not in path:
            path.append("/usr/sbin")
        env["PATH"] = os.pathsep.join(path)
        return env

    def run(self, *cmd: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=check)

    # --------------------------------------------------------------- lifetime
    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the test run does not reach the daemons first
        )
        log.close()

    def _wait(self, what: str, ok, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}:\n{self.logs()}")
            if ok():
                return
            time.sleep(0.3)
        raise TimeoutError(f"SLURM test cluster: no {what} after {timeout:.0f} s:\n{self.logs()}")

    def logs(self, tail: int = 2000) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def start(self, timeout: float = 90) -> "SlurmCluster":
        self._write_files()
        m = self.root / "munge"
        self._spawn("munged", [
            _which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
            f"--seed-file={m / 'munged.seed'}", f"--log-file={self.root / 'log' / 'munged.log'}",
        ])
        try:
            self._wait("munge socket", self.munge_socket.exists, 20)
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: self.run("scontrol", "ping").returncode == 0
                       and "UP" in self.run("scontrol", "ping").stdout, timeout)
            self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.host])
            self._wait("idle node", self.node_idle, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def node_idle(self) -> bool:
        p = self.run("sinfo", "--noheader", "--Node", "--format=%t")
        return p.returncode == 0 and p.stdout.split() == ["idle"]

    def queue(self) -> list[str]:
        """Job ids still pending or running."""
        p = self.run("squeue", "--noheader", "--format=%i", "--states=PENDING,RUNNING,COMPLETING")
        return p.stdout.split() if p.returncode == 0 else []

    def jobs(self) -> list[tuple[str, str, str, str]]:
        """Every job slurmctld still knows (finished ones for MinJobAge): (id, state, reason, comment).

        The comment is what snakemake-executor-plugin-slurm names the job by: ``rule_<rule>_wildcards_<values>``.
        """
        p = self.run("squeue", "--noheader", "--states=all", "--format=%i|%T|%r|%k")
        if p.returncode != 0:
            return []
        return [(j, state, reason, comment) for j, state, reason, comment in
                (line.split("|", 3) for line in p.stdout.splitlines() if line.count("|") >= 3)]

    def job_info(self, job: str) -> dict[str, str]:
        """One job's fields as ``scontrol show job`` gives them (JobState, Restarts, Requeue, ...)."""
        p = self.run("scontrol", "--oneliner", "show", "job", job)
        return dict(f.split("=", 1) for f in p.stdout.split() if "=" in f)

    def stop(self, timeout: float = 20) -> None:
        """Cancel this cluster's jobs, then end the daemons it started (by PID), newest first."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            jobs = self.queue()
            if jobs:
                self.run("scancel", *jobs)
                deadline = time.monotonic() + timeout
                while self.queue() and time.monotonic() < deadline:
                    time.sleep(0.5)
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        self.procs.clear()

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
