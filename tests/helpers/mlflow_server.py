"""A real `mlflow server` (SQLite backend, artifacts in its directory) on a free loopback port, for the tests that
log to a tracking server (tests/test_mlflow_server.py, test_mlflow_load.py): started, stopped, killed and started
again on the same port, as a server that dies and comes back would be; and a proxy in front of one that "dies" at a
chosen request (:class:`Cut`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1 in its own process group (stop() and kill() end it and its workers).

    ``starts`` counts the starts (a restart is a second start); each start logs to ``<root>/server<n>.log``.
    """

    def __init__(self, root: Path, workers: int = 1):
        self.root = root
        self.workers = workers
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 120) -> None:
        """Start it (on the same port as before) and wait until ``GET /health`` answers 200."""
        self.starts += 1
        log = open(self.root / f"server{self.starts}.log", "w")
        self.proc = subprocess.Popen(
            [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers)],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        t = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() - t > timeout:
                self.stop()
                text = (self.root / f"server{self.starts}.log").read_text()[-3000:]
                raise AssertionError(f"mlflow server did not start:\n{text}")
            time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM to the group (SIGKILL if it lingers), then wait until the group's workers are gone too."""
        self._end((signal.SIGTERM, 5), (signal.SIGKILL, 10))

    def kill(self) -> None:
        """SIGKILL to the group at once: a server that dies mid-request (no graceful shutdown)."""
        self._end((signal.SIGKILL, 10))

    def _end(self, *steps: tuple[int, float]) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in steps:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        for _ in range(50):  # the group's workers too
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


class Cut:
    """A TCP proxy on a free loopback port to a server on ``port`` that fails once, at the first request containing
    ``at`` (``b"POST /api/2.0/mlflow/runs/log-batch"``), as a server killed at that moment would.

    ``forward=False``: that request never reaches the server; ``forward=True``: the server handles it but its answer
    is dropped (the server died, or the network failed, before the answer came back). Either way the connection is
    closed unanswered. ``stay_dead=True``: from then on every connection is closed unanswered too, until
    :meth:`heal`; ``False``: only that one request fails (what MLflow's client retries at once).
    """

    def __init__(self, port: int, at: bytes, *, forward: bool = False, stay_dead: bool = True):
        self.target, self.at, self.forward, self.stay_dead = port, at, forward, stay_dead
        self.dead = self.cut = False
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def heal(self) -> None:
        self.dead = False

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.dead:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            link = {"mute": False}  # this connection's answers are dropped
            for src, dst, outbound in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, link, outbound), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, link: dict, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                if not outbound:
                    if link["mute"]:
                        break
                elif self.dead:
                    break
                elif not self.cut and self.at in data:
                    self.cut, self.dead = True, self.stay_dead
                    if not self.forward:
                        break
                    link["mute"] = True
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
