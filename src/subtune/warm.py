"""Warm start: the heavy imports (torch, timm, MLflow, pandas, ...) paid once per workflow, not once per job.

A workflow job is ``python -m subtune STAGE ...``. Importing torch and timm takes about 3 s on a laptop CPU and
MLflow 1.5 s more, while a job on the embedded default fits for well under a second: most of a job was start-up
So ``python -m subtune`` is a thin client for the heavy stages (the caller names them): it connects to a
*warm server* (one per user, Python, installed code and environment), which has imported those libraries once
and **forks** a child for each job. The child takes over the client's stdin/stdout/stderr (passed over the
Unix socket with ``SCM_RIGHTS``), working directory, environment, umask and argv, runs the very same ``main``
the client would have run, and its exit status becomes the client's. Each job is still one CLI call with
explicit inputs and outputs; what it computes is identical (a test compares a job run both ways).

This module knows no stage and imports no CLI: :func:`run` receives the CLI's ``main`` and the stages to serve
from its caller (``python -m subtune``), and hands ``main`` to the server it starts by its import name
(``module:function``), which the server imports once.

Why hand-written: :mod:`multiprocessing`'s ``forkserver`` preloads modules too, but serves only the process
that started it, not independent processes started by Snakemake; nailgun-style servers are for the JVM.

Rules that keep it exact and safe:

- The server never runs a torch operation before forking (no thread pools exist yet), and forks from its only
  thread (a single-threaded ``selectors`` loop).
- A server serves only identical set-ups: the socket's name is a digest of the interpreter, ``sys.path``, the
  environment (libraries read some variables at import: ``OMP_NUM_THREADS``, ``HF_HUB_OFFLINE``, ...), the
  subtune sources (path, size, mtime) and the site-packages directories. Edit the code, change a variable, and
  the next job starts a fresh server; the old one exits when idle.
- The socket lives in a directory only the user can open (``/tmp/subtune-warm-<uid>``, mode 0700), and the
  server also checks the peer's uid (``SO_PEERCRED``).
- Signals sent to the client (Ctrl-C, Snakemake cancelling a job) are forwarded to the child; if the client
  dies, the server kills the child. A child killed by signal N makes the client die of signal N too.
- The server never initialises CUDA (it refuses to serve if a preloaded module did): each job's child
  initialises it itself, as its own process would. Python's and NumPy's global RNGs are reseeded from the OS in
  each child, as a fresh process would seed them.
- Linux only (forking after macOS's frameworks are loaded is unsafe). Off under SLURM (``SLURM_JOB_ID`` set: the
  scheduler kills whatever a job leaves running, and jobs land on many nodes) and with ``SUBTUNE_WARM=0``; the
  server exits after ``SUBTUNE_WARM_IDLE`` seconds (default 60) without a job. If a server cannot be started or
  reached, the job runs in its own process.

What changes for the user: Snakemake's ``benchmark:`` files keep the wall time ``s`` of each job (what
``bench/pipeline.py`` reads), but their CPU and memory columns now count the client only. The server's own
messages go to ``/tmp/subtune-warm-<uid>/<key>.log``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path

Main = Callable[[list[str]], int]  # a CLI's entry: its arguments (without the program) -> its exit status

# imported once by the server (in this order); a module that fails to import is skipped (the job imports it).
# peft (and the transformers it imports) takes seconds, paid by every LoRA/AdaLoRA/Multi-LoRA job without it.
PRELOAD = (
    "torch", "torchvision", "timm", "peft", "safetensors.torch", "numpy", "pandas", "matplotlib", "matplotlib.pyplot",
    "mlflow", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "sqlalchemy",
    "subtune.stages", "subtune.train", "subtune.models", "subtune.models.checkpoint", "subtune.methods",
    "subtune.scoring", "subtune.prefix", "subtune.track", "subtune.report", "subtune.data.targets",
    "subtune.data.prepared", "subtune.augment", "subtune.tune", "subtune.multitask", "subtune.methods.multilora",
)  # fmt: skip
DEFAULT_IDLE_S = 60.0
HELP = frozenset({"-h", "--help"})  # anywhere in argv: the job runs in its own process, no server is started
START_TIMEOUT_S = 300.0
_HEADER = struct.Struct("!Q")
_MAX_SOCKET_PATH = 107  # bytes: sun_path holds 108 with the terminating NUL (Linux)
# variables that change between otherwise identical jobs and that no library reads at import
VOLATILE_ENV = frozenset({"PYTEST_CURRENT_TEST", "PWD", "OLDPWD"})


def enabled() -> bool:
    """Whether jobs go through a warm server (``SUBTUNE_WARM=0`` or a SLURM job: no)."""
    if os.environ.get("SUBTUNE_WARM", "1").strip().lower() in {"0", "false", "no", "off", ""}:
        return False
    # Linux only: on macOS, forking after the system frameworks are loaded is unsafe (Objective-C runtime)
    return "SLURM_JOB_ID" not in os.environ and sys.platform.startswith("linux") and hasattr(socket, "send_fds")


def key(env: dict[str, str] | None = None, entry: str = "") -> str:
    """Digest of everything a server's imported state depends on (see the module docstring); ``entry``: the
    ``module:function`` its children run."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k not in VOLATILE_ENV}
    h = hashlib.sha256()
    h.update(json.dumps([sys.executable, sys.version, _path_key(), sorted(env.items())]).encode())
    if entry:
        h.update(entry.encode())
    pkg = Path(__file__).resolve().parent
    for p in sorted(pkg.rglob("*.py")):
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for d in sys.path:
        if d.endswith("-packages") and os.path.isdir(d):
            h.update(f"{d}:{os.stat(d).st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _path_key() -> list[str]:
    """``sys.path`` with the working directory (``python -m`` puts it first) left out unless it holds a module
    a server has imported: the child gets the client's own ``sys.path``, so only imported modules could differ."""
    cwd = os.getcwd()
    path = [p for p in sys.path if p not in ("", cwd)]
    roots = {name.split(".")[0] for name in PRELOAD}
    shadow = sorted(n for n in roots if any(os.path.exists(os.path.join(cwd, f)) for f in (n, f"{n}.py")))
    return path + [f"cwd shadows {n}: {cwd}" for n in shadow]


def socket_dir() -> Path:
    d = Path(os.environ.get("SUBTUNE_WARM_DIR") or f"/tmp/subtune-warm-{os.getuid()}")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{d}: not a private directory of this user")
    return d


# ------------------------------------------------------------------------------------------------ client
def run(argv: list[str], main: Main, stages: Collection[str]) -> int | None:
    """Run ``main(argv[1:])`` (``argv``: ``sys.argv``) in a warm server's child: its exit status, or None when
    this job should run in its own process (disabled, not one of ``stages``, ``-h``/``--help`` given, no server
    could be started).

    ``main`` must be importable by its name (a module-level function): the server imports it itself.
    """
    stage = next((a for a in argv[1:] if not a.startswith("-")), None)
    if stage not in stages or not enabled() or HELP & set(argv[1:]):
        return None  # --help: argparse prints and exits before any import a server would save
    entry = entry_name(main)
    try:
        sock_path = socket_dir() / f"{key(entry=entry)}.sock"
        if len(os.fsencode(sock_path)) > _MAX_SOCKET_PATH:
            raise OSError(f"socket path too long for AF_UNIX: {sock_path} (set SUBTUNE_WARM_DIR to a shorter one)")
        conn = _connect_or_start(sock_path, entry)
    except OSError as exc:
        print(f"subtune: warm start unavailable ({exc}); running in this process", file=sys.stderr)
        return None
    if conn is None:
        return None
    return _serve_me(conn, argv)


def entry_name(main: Main) -> str:
    """``module:function`` naming ``main`` for the server process (which imports it: a callable cannot cross
    ``exec``)."""
    name = f"{main.__module__}:{main.__qualname__}"
    if "<" in main.__qualname__ or resolve(name) is not main:
        raise ValueError(f"{name}: the warm server runs a module-level function it can import, not this one")
    return name


def resolve(entry: str) -> Main:
    """The function ``module:qualname`` names (:func:`entry_name`'s inverse)."""
    import importlib

    module, _, qualname = entry.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _try_connect(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return s
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        return None


def _connect_or_start(path: Path, entry: str) -> socket.socket | None:
    conn = _try_connect(path)
    if conn is not None:
        return conn
    with open(f"{path}.lock", "w") as lock:  # one client starts the server; the others wait for it
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _try_connect(path)
        if conn is not None:
            return conn
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead server's socket
        logf = open(path.with_suffix(".log"), "ab")
        proc = subprocess.Popen([sys.executable, "-m", "subtune.warm", str(path), entry], stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=logf, start_new_session=True, close_fds=True)  # fmt: skip
        logf.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            conn = _try_connect(path)
            if conn is not None:
                return conn
            if proc.poll() is not None:
                print(f"subtune: the warm server exited with status {proc.returncode} (see "
                      f"{path.with_suffix('.log')}); running in this process", file=sys.stderr)  # fmt: skip
                return None
            time.sleep(0.05)
        proc.kill()
        print(f"subtune: the warm server did not start within {START_TIMEOUT_S:.0f} s; running in this process",
              file=sys.stderr)  # fmt: skip
        return None


def _serve_me(conn: socket.socket, argv: list[str]) -> int:
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path,
                          "umask": _umask()}).encode()  # fmt: skip
    child: list[int] = []
    pending: list[int] = []

    def forward(signum, _frame):
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child[0], signum)
        else:
            pending.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
    conn.sendall(request)
    reader = conn.makefile("r")
    for line in reader:
        msg = json.loads(line)
        if "pid" in msg:
            child.append(msg["pid"])
            for sig in pending:
                forward(sig, None)
        elif "exit" in msg:
            code = msg["exit"]
            if code < 0:  # killed by a signal: die of it too, as the job's own process would have
                signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
                return 128 - code
            return code
    print("subtune: the warm server went away during the job", file=sys.stderr)
    return 1


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ------------------------------------------------------------------------------------------------ server
def serve(path: Path, main: Main, idle_s: float | None = None) -> None:
    """Preload :data:`PRELOAD`, listen on ``path``, fork a child per request (which runs ``main``) until idle for
    ``idle_s``."""
    idle_s = float(os.environ.get("SUBTUNE_WARM_IDLE", DEFAULT_IDLE_S)) if idle_s is None else idle_s
    start = time.monotonic()
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001 - the job will import it itself and report
            print(f"preload {name}: {type(exc).__name__}: {exc}", flush=True)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # a forked child could not use the GPU
        print("CUDA was initialised while preloading: not serving (jobs run in their own processes)", flush=True)
        sys.exit(3)
    print(f"warm server {os.getpid()} on {path}: preloaded in {time.monotonic() - start:.1f} s", flush=True)

    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_name(f"{os.getpid()}.tmp")  # not longer than the socket's own name
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    lsock.bind(str(tmp))
    lsock.listen(64)
    os.replace(tmp, path)  # clients connect only once it listens
    ino = os.stat(path).st_ino
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    children: dict[int, socket.socket] = {}  # pid -> client connection
    last = time.monotonic()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        while not stopping:
            for k, _ in sel.select(timeout=0.1):
                if k.data is None:
                    conn, _ = lsock.accept()
                    pid = _spawn(conn, lsock, sel, main)
                    if pid is None:
                        conn.close()
                        continue
                    children[pid] = conn
                    sel.register(conn, selectors.EVENT_READ, pid)
                    last = time.monotonic()
                else:  # a client's connection is readable: it went away; its job must not outlive it
                    with contextlib.suppress(OSError):
                        if k.fileobj.recv(1, socket.MSG_PEEK):
                            continue
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(k.data, signal.SIGTERM)
                    sel.unregister(k.fileobj)
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if conn is None:
                    continue
                code = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(conn)
                conn.close()
                last = time.monotonic()
            if not children and time.monotonic() - last > idle_s:
                break
            if not _is(path, ino):  # removed by hand (or a newer server took the name): stop serving
                break
    finally:
        if _is(path, ino):
            with contextlib.suppress(OSError):
                path.unlink()
        lsock.close()
        print(f"warm server {os.getpid()}: exit", flush=True)


def _is(path: Path, ino: int) -> bool:
    try:
        return os.stat(path).st_ino == ino
    except OSError:
        return False


def _spawn(conn: socket.socket, lsock: socket.socket, sel: selectors.BaseSelector, main: Main) -> int | None:
    """Read one request from ``conn`` and fork its child; the child never returns."""
    conn.settimeout(10)
    try:
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
        if uid != os.getuid():
            return None
        msg, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        if len(msg) != _HEADER.size or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return None
        (n,) = _HEADER.unpack(msg)
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("client closed the connection")
            data += chunk
        req = json.loads(data)
    except (OSError, ValueError) as exc:
        print(f"bad request: {exc}", flush=True)
        return None
    conn.settimeout(None)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: become the job
        try:
            for k in list(sel.get_map().values()):  # the other clients' connections, the listening socket
                if k.fileobj is not conn:
                    k.fileobj.close()
            sel.close()
            lsock.close()
            code = _child(req, fds, conn, main)
        except BaseException:  # noqa: BLE001 - whatever happens, never return into the server loop
            code = 1
        os._exit(code)
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    return pid


def _child(req: dict, fds: list[int], conn: socket.socket, main: Main) -> int:
    import atexit
    import io
    import traceback

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    conn.close()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="strict")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="strict",
                                  line_buffering=os.isatty(1))  # fmt: skip
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)  # fmt: skip
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    os.umask(req["umask"])
    _reseed()
    sys.argv = list(req["argv"])
    sys.path[:] = req["path"]
    code = 1
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, status 1
        traceback.print_exc()
        code = 1
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _reseed() -> None:
    """Fresh entropy for the global RNGs a process seeds from the OS when it starts (Python's ``random``, NumPy's
    legacy global state): forked children would otherwise all draw the server's numbers. torch's default generator
    starts from a fixed seed in every process, and the server has drawn nothing from it."""
    import random

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), resolve(sys.argv[2]))
