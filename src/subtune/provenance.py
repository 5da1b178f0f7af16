"""What produced a result: the code that trained it, the data it trained on, the config, its MLflow run.

Every job that writes a metrics file (``train``, ``tune``, ``score``, ``multilora``) records
``"provenance": provenance(data)``: the version of the code that ran (:func:`code_version`), the SHA-256 of the
package's Python sources and the prepared dataset's SHA-256. The main and claims tables copy these into every
row beside the config's hash (:func:`config_hash`, which the workflow passes to the report) and the MLflow runs
of the row's metrics files (:func:`mlflow_run_ids`), and ``python -m subtune status`` compares them with the
installed code and the current config.

Why the code is recorded by the job and not by the report: Snakemake reruns a job when its params, inputs or
shell command change, not when library code in ``src/subtune`` does, so a table can hold runs trained by
older code; only the job itself knows which code ran. Cheap, once per process: two ``git`` calls with a
timeout and one pass of :mod:`hashlib` over the package's ``.py`` files (no torch, no MLflow).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

#: the package whose code trains the runs
PACKAGE = Path(__file__).resolve().parent
#: seconds a ``git`` call may take before the code version falls back to the sources' digest
GIT_TIMEOUT_S = 10.0
#: how many hex digits of a digest a table shows (config hash, code version)
SHORT = 12
#: config sections that change no result (where runs are logged): left out of :func:`config_hash`
UNHASHED = ("tracking",)
#: the provenance columns of tables/main.csv and tables/claims.csv, in order
COLUMNS = ("mlflow_run_ids", "config_hash", "code_version", "data_digest")


def provenance(data: str | Mapping[str, str] | None = None) -> dict[str, Any]:
    """A metrics file's ``provenance``: ``code_version``, ``sources_sha256`` (:func:`code`) and ``data_digest``
    (``data``: the prepared dataset's SHA-256, or task -> SHA-256 for a job that trains several)."""
    return {**code(), "data_digest": dict(data) if isinstance(data, Mapping) else data}


@functools.cache
def code() -> dict[str, str]:
    """The installed code, computed once per process: ``code_version`` and ``sources_sha256``."""
    sources = sources_sha256()
    return {"code_version": code_version(sources=sources), "sources_sha256": sources}


def sources_sha256(package: Path = PACKAGE) -> str:
    """SHA-256 over the package's ``.py`` files (each one's path relative to the package, then its bytes), in
    sorted order: the same code gives the same digest wherever it is installed."""
    h = hashlib.sha256()
    for p in sorted(package.rglob("*.py")):
        h.update(p.relative_to(package).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def code_version(package: Path = PACKAGE, sources: str | None = None) -> str:
    """The git commit of ``package`` (12 hex digits), with ``+dirty`` when the package's files differ from it
    (uncommitted or untracked changes); ``pkg-<sources_sha256, 12 digits>`` when the package is not tracked by
    git (an installed copy, no git, a timeout)."""
    tracked = _git(package, "ls-files", "--error-unmatch", "--", "__init__.py")
    status = _git(package, "status", "--porcelain=v2", "--branch", "--untracked-files=normal", "--", ".")
    commit = next((line.split()[2] for line in (status or "").splitlines() if line.startswith("# branch.oid ")), "")
    if tracked is None or status is None or not commit or commit == "(initial)":
        return f"pkg-{(sources or sources_sha256(package))[:SHORT]}"
    dirty = any(line and not line.startswith("#") for line in status.splitlines())
    return commit[:SHORT] + ("+dirty" if dirty else "")


def _git(cwd: Path, *args: str) -> str | None:
    """``git -C cwd args``'s output, or None when git is missing, fails or takes longer than
    :data:`GIT_TIMEOUT_S` (``GIT_OPTIONAL_LOCKS=0``: a status never takes the index lock another git holds)."""
    try:
        p = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                           env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of the validated config as canonical JSON (sorted keys, no spaces), 12 hex digits; the sections
    in :data:`UNHASHED` are left out (where runs are logged changes no result)."""
    kept = {k: v for k, v in config.items() if k not in UNHASHED}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:SHORT]


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The ``provenance`` a result file records ({} for a file written without one, or not a JSON object)."""
    from .io import read_json

    d = read_json(path)
    p = d.get("provenance") if isinstance(d, dict) else None
    return p if isinstance(p, dict) else {}


def _digest_label(d: Any) -> str:
    """A ``data_digest`` as a table cell: the digest, or ``task=digest`` pairs for several tasks."""
    if isinstance(d, Mapping):
        return "; ".join(f"{k}={v}" for k, v in d.items() if v)
    return str(d) if d else ""


def _distinct(values: Iterable[str]) -> str:
    """The distinct non-empty values, in first-seen order, joined by `` | ``."""
    return " | ".join(dict.fromkeys(v for v in values if v))


def columns(files: Iterable[str | os.PathLike], run_ids: Mapping[str, str], config: str = "") -> dict[str, str]:
    """A table row's :data:`COLUMNS` from the result files it aggregates (``files``, in the row's order):
    the MLflow run ids of the files logged so far (``run_ids``: :func:`mlflow_run_ids`), comma-joined; the
    config's hash (``config``); the distinct code versions and data digests of the files, `` | ``-joined."""
    files = [str(f) for f in files]
    recorded = [read(f) for f in files]
    return {
        "mlflow_run_ids": ",".join(run_ids[f] for f in files if run_ids.get(f)),
        "config_hash": config or "",
        "code_version": _distinct(str(p.get("code_version") or "") for p in recorded),
        "data_digest": _distinct(_digest_label(p.get("data_digest")) for p in recorded),
    }


def mlflow_run_ids(files: Iterable[str | os.PathLike], tracking_uri: str | None = None,
                   experiment: str | None = None) -> dict[str, str]:
    """file -> the id of the finished MLflow run that logged it (the tag ``subtune.metrics_sha256`` is the
    file's SHA-256: :func:`subtune.track.run_key`), for the files logged so far.

    Where: ``tracking_uri`` (else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``) and ``experiment``
    (else ``$SUBTUNE_MLFLOW_EXPERIMENT``, else ``subtune``), as the jobs log. Never fails a table: no store
    (a SQLite file that does not exist is not created), no experiment, a server that does not answer or any
    store error gives {} (one line on stderr for an error); a run still queued (``log --pending``) is absent.
    """
    import sys

    from .io import sha256_file
    from .track import KEY_TAG, check_server, is_server, resolve_uri, sqlite_path

    keys = {str(f): sha256_file(f) for f in files}
    if not keys:
        return {}
    uri = resolve_uri(tracking_uri)
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        return {}
    name = experiment or os.environ.get("SUBTUNE_MLFLOW_EXPERIMENT") or "subtune"
    try:
        if is_server(uri):
            check_server(uri, 2.0)
        from mlflow import MlflowClient
        from mlflow.entities import ViewType

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            return {}
        found: dict[str, str] = {}
        for key in dict.fromkeys(keys.values()):
            runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                                      run_view_type=ViewType.ACTIVE_ONLY, max_results=10)
            done = [r for r in runs if r.info.status == "FINISHED"]
            if done:
                found[key] = done[0].info.run_id
    except Exception as exc:  # noqa: BLE001 - provenance never fails a table
        print(f"MLflow run ids left out ({uri}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
              file=sys.stderr)
        return {}
    return {f: found[k] for f, k in keys.items() if k in found}
