"""What a run logs (params, per-epoch and final metrics, tags, the metrics file), its name, and logging it, once;
a workflow invocation's parent run, started and ended."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from .. import SubtuneError, __version__
from .retry import _budget, _one_line, _Retrier
from .server import _http_limits
from .store import _BAD_NAME, TrackingError, open_experiment, resolve_uri, store_session

_NAME_PART = re.compile(r"[^\w.+=,:@-]")
_MAX_TAG = 5000  # MLflow keeps tag values up to 8000 characters

KEY_TAG = "subtune.metrics_sha256"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI shows the run as a child row of that run
#: Tags every run carries, taken from its metrics when the job gave none (they name it: :func:`run_name_for`).
IDENTITY_KEYS = ("method", "target", "seed")
HISTORY_KEYS = ("val_acc", "val_loss", "train_loss", "lr")
FINAL_KEYS = (
    "val_acc", "val_loss", "test_acc", "test_loss", "trainable_params", "total_params",
    "wall_time_s", "train_size", "epochs",
)
# MLflow's limits (mlflow.utils.validation): entities per log_batch call, param length.
_MAX_BATCH = 1000
_MAX_PARAMS_TAGS = 100
_MAX_PARAM_LEN = 6000


def _flatten(d: Mapping[str, Any], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = _param_value(v)
    return out


def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        s = ",".join(_param_value(x) for x in v)
    elif v is None:
        s = "None"
    else:
        s = str(v)
    return s[:_MAX_PARAM_LEN]


def _name(key: str) -> str:
    """A valid MLflow param/metric/tag name (letters, digits, _ - . space / :)."""
    return _BAD_NAME.sub("_", str(key))[:250]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def run_params(metrics: Mapping[str, Any]) -> dict[str, str]:
    """The params of a run: method, target, seed, blocks, train.*, method_params.*."""
    params: dict[str, str] = {}
    for k in ("method", "target", "seed"):
        if metrics.get(k) is not None:
            params[k] = _param_value(metrics[k])
    mp = metrics.get("method_params") or {}
    if isinstance(mp, Mapping) and "blocks" in mp:
        params["blocks"] = _param_value(mp["blocks"] or [])
    if isinstance(metrics.get("train"), Mapping):
        params.update(_flatten(metrics["train"], "train"))
    if isinstance(mp, Mapping):
        params.update(_flatten(mp, "method_params"))
    for k in ("device", "checkpoint"):
        if metrics.get(k) is not None:
            params[k] = _param_value(metrics[k])
    return {_name(k): v for k, v in params.items()}


def run_metrics(metrics: Mapping[str, Any], timestamp_ms: int) -> list:
    """Per-epoch history (step = epoch) and final values (at the last epoch's step, later timestamp)."""
    from mlflow.entities import Metric

    out: list = []
    seen: dict[tuple[str, int], float] = {}
    last_step = 0
    for i, row in enumerate(metrics.get("history") or []):
        if not isinstance(row, Mapping):
            continue
        step = int(row.get("epoch", i + 1))
        last_step = max(last_step, step)
        for k in HISTORY_KEYS:
            v = _number(row.get(k))
            if v is not None:
                out.append(Metric(k, v, timestamp_ms, step))
                seen[(k, step)] = v
    for k in FINAL_KEYS:
        v = _number(metrics.get(k))
        if v is None or seen.get((k, last_step)) == v:
            continue  # the final value is the last epoch's: already logged
        out.append(Metric(k, v, timestamp_ms + 1, last_step))
    # Scoring jobs: one score per candidate block set ("" / "(lp)" = linear probe).
    for key, v in (metrics.get("candidate_scores") or {}).items():
        v = _number(v)
        if v is not None:
            label = key.strip("()") or "lp"
            out.append(Metric(_name(f"score/{label}"), v, timestamp_ms, 0))
    # Tuning jobs: every grid point's validation accuracy (the chosen one is also the run's val_acc).
    logged: set[str] = set()
    for label, v in (metrics.get("grid_scores") or {}).items():
        v, key = _number(v), grid_metric(label)
        if v is not None and key not in logged:
            logged.add(key)
            out.append(Metric(key, v, timestamp_ms, 0))
    return out


def _name_part(value: Any) -> str:
    """One part of a run name: no '/' (the parts' separator) and nothing a search filter would need to quote."""
    return _NAME_PART.sub("_", str(value).strip()) or "_"


def run_name_for(tags: Mapping[str, Any]) -> str | None:
    """A run's name, built from its tags: the parts that tell it from the experiment's other runs.

    ``stage/method/target[/n<train_size>][/r<round>][/shard<k>][/<blockset>]/s<seed>``, each part where its tag
    is set: ``final/ft/digits/s1``, ``sweep/ft/digits/n250/s1`` (a data-size sweep's size), ``tune/lora/digits/s0``,
    ``select/subtuning/digits/r2/s0`` (a greedy round; ``shard<k>`` when the round is split between jobs),
    ``epsilon/subtuning/digits/layer3.1+layer4.0/s0`` (an epsilon's block set). A Multi-LoRA ablation stands in
    the method's place: ``multilora/ablation-rank4/fmnist+digits/s0``. The workflow's parent run is
    ``workflow/<invocation>``. One invocation's jobs differ in at least one of these tags, so their names differ;
    :func:`log_run` numbers a name another run of the experiment already has (``#2``, ...). None: nothing to
    name the run by (MLflow then makes a name up).
    """
    t = {k: str(v).strip() for k, v in tags.items() if v is not None and str(v).strip() != ""}
    if t.get("stage") == "workflow":
        return "/".join(_name_part(x) for x in ("workflow", t.get("invocation")) if x)
    parts = [t.get("stage"), f"ablation-{t['ablation']}" if "ablation" in t else t.get("method"), t.get("target")]
    if "train_size" in t:
        parts.append(f"n{t['train_size']}")
    if "round" in t:
        parts.append(f"r{t['round']}")
    if "shard" in t and t.get("shards", "") not in ("1", "0"):
        parts.append(f"shard{t['shard']}")
    if "blockset" in t:
        parts.append(t["blockset"])
    if "seed" in t:
        parts.append(f"s{t['seed']}")
    return "/".join(_name_part(p) for p in parts if p) or None


def identity_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    """``method``, ``target`` and ``seed`` from a run's metrics: every run carries them as tags too."""
    return {k: _param_value(metrics[k]) for k in IDENTITY_KEYS if metrics.get(k) is not None}


def grid_metric(label: str) -> str:
    """The metric of one grid point's validation accuracy: ``grid/<point>/val_acc`` (``lr=0.01, rank=4``:
    ``grid/lr:0.01 rank:4/val_acc``; MLflow's names take no '=' or ',')."""
    point = str(label).replace("/", "_").replace("=", ":").replace(", ", " ").replace(",", " ")
    return _name(f"grid/{point}/val_acc")


def _chunks(params: list, metrics: list, tags: list) -> Iterator[tuple[list, list, list]]:
    """Split into log_batch calls within MLflow's limits (each call is one transaction)."""
    params, metrics, tags = list(params), list(metrics), list(tags)
    while params or metrics or tags:
        p, params = params[:_MAX_PARAMS_TAGS], params[_MAX_PARAMS_TAGS:]
        t, tags = tags[:_MAX_PARAMS_TAGS], tags[_MAX_PARAMS_TAGS:]
        n = _MAX_BATCH - len(p) - len(t)
        m, metrics = metrics[:n], metrics[n:]
        yield p, m, t


def run_key(metrics: Mapping[str, Any], artifact: Path | str | None = None) -> str:
    """A run's identity: the SHA-256 of its metrics file (else of its metrics, as canonical JSON).

    Logged as the tag ``subtune.metrics_sha256``: a file that is already logged is not logged again.
    """
    if artifact is not None:
        with open(artifact, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    text = json.dumps(metrics, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _existing_runs(client, exp_id: str, key: str) -> list:
    from mlflow.entities import ViewType

    return list(client.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                                   run_view_type=ViewType.ACTIVE_ONLY, max_results=100))


def _free_name(client, exp_id: str, name: str) -> str:
    """``name``, or ``name#2``, ``name#3``, ...: the first that no active run of the experiment has.

    A job logged again by a later invocation (its output changed) gets the next number; under the SQLite
    store's file lock no two writers pick the same one.
    """
    from mlflow.entities import ViewType

    prefix = re.split(r"['\\%]", name, maxsplit=1)[0]  # nothing to quote or escape (LIKE's '_' only matches more)
    query = f"attributes.run_name LIKE '{prefix}%'"
    runs = client.search_runs([exp_id], filter_string=query, run_view_type=ViewType.ACTIVE_ONLY, max_results=50000)
    taken = {r.info.run_name for r in runs}
    n, free = 1, name
    while free in taken:
        n += 1
        free = f"{name}#{n}"
    return free


def log_run(
    metrics: Mapping[str, Any],
    *,
    tracking_uri: str | None = None,
    experiment: str = "subtune",
    tags: Mapping[str, str] | None = None,
    artifact: Path | str | None = None,
    run_name: str | None = None,
    retry_s: float | None = None,
    key: str | None = None,
) -> str:
    """Log one training job as one MLflow run; return its run id.

    Params: method, target, seed, blocks (comma-joined), ``train.*`` and
    ``method_params.*`` (flattened), device, checkpoint. Metrics: per-epoch
    ``val_acc``/``val_loss``/``train_loss``/``lr`` (step = epoch) and the final
    ``val_acc``, ``test_acc``, losses, ``trainable_params``, ``total_params``,
    ``wall_time_s``, ``train_size``; a scoring job's ``score/<blocks>``, a
    tuning job's ``grid/<point>/val_acc``. Tags: ``tags`` plus ``method``,
    ``target`` and ``seed`` from the metrics (unless ``tags`` has them),
    ``subtune.version`` and ``subtune.metrics_sha256`` (``key``, default
    :func:`run_key`). The name: ``run_name``, else :func:`run_name_for` of the
    tags, numbered (``#2``, ...) if another run of the experiment has it. The
    metrics JSON (``artifact``) is attached as an artifact.

    Idempotent: if the experiment already has a finished run with the same
    key, its id is returned and nothing is logged; unfinished runs with the
    key (an attempt that died half-way) are deleted first.

    Transient SQLite failures ("database is locked" and other operational
    errors) are retried with jittered backoff for up to ``retry_s`` seconds
    (after waiting for the store's file lock); a tracking server is waited
    for at most ``min(retry_s, 10 s)``; then :class:`TrackingError` is raised
    (the metrics file is kept).
    """
    return _log_run(metrics, tracking_uri=tracking_uri, experiment=experiment, tags=tags, artifact=artifact,
                    run_name=run_name, retry_s=retry_s, key=key)[0]


def _log_run(
    metrics: Mapping[str, Any],
    *,
    tracking_uri: str | None,
    experiment: str,
    tags: Mapping[str, str] | None,
    artifact: Path | str | None,
    run_name: str | None,
    retry_s: float | None,
    key: str | None,
) -> tuple[str, bool]:
    """:func:`log_run`, also saying whether the run was already logged (``(run_id, True)``)."""
    from mlflow.entities import Param, RunTag

    uri = resolve_uri(tracking_uri)
    if artifact is not None and not Path(artifact).is_file():
        raise SubtuneError(f"missing artifact file: {artifact}")
    budget = _budget(retry_s)
    retry = _Retrier(0)
    key = key or run_key(metrics, artifact)
    now_ms = int(time.time() * 1000)
    params = [Param(k, v) for k, v in run_params(metrics).items()]
    mets = run_metrics(metrics, now_ms)
    all_tags = {**identity_tags(metrics), **{_name(k): str(v) for k, v in (tags or {}).items()},
                "subtune.version": __version__, KEY_TAG: key}
    tag_list = [RunTag(k, v) for k, v in all_tags.items()]
    if run_name is None:
        run_name = run_name_for(all_tags)
    where = f" ({artifact})" if artifact is not None else ""
    run_id: str | None = None
    client = None
    restore = _exit_on_sigterm()
    try:
        with store_session(uri, budget) as retry:
            client, exp_id = open_experiment(uri, experiment, retry)
            for old in retry(lambda: _existing_runs(client, exp_id, key), "find run"):
                if old.info.status == "FINISHED":
                    return old.info.run_id, True
                retry(lambda old=old: client.delete_run(old.info.run_id), "delete unfinished run")
            if run_name is not None:
                run_name = retry(lambda: _free_name(client, exp_id, run_name), "find name")
            # the key from the start: a run cut off before its tags are logged is found (and replaced) by its key
            run = retry(lambda: client.create_run(exp_id, start_time=now_ms, run_name=run_name, tags={KEY_TAG: key}),
                        "create run")
            run_id = run.info.run_id
            for p, m, t in _chunks(params, mets, tag_list):
                retry(lambda p=p, m=m, t=t: client.log_batch(run_id, metrics=m, params=p, tags=t), "log batch")
            if artifact is not None:
                retry(lambda: client.log_artifact(run_id, str(artifact)), "log artifact")
            retry(lambda: client.set_terminated(run_id, "FINISHED"), "finish run")
            # MLflow's client sends a request again when its answer is lost: a create-run sent twice left a second run
            for other in retry(lambda: _existing_runs(client, exp_id, key), "find run"):
                if other.info.run_id != run_id and other.info.status != "FINISHED":
                    retry(lambda other=other: client.delete_run(other.info.run_id), "delete unfinished run")
        return run_id, False
    except BaseException as exc:
        if run_id is not None and client is not None:
            with contextlib.suppress(Exception), _http_limits(uri):
                client.set_terminated(run_id, "FAILED")
        if not isinstance(exc, Exception):
            raise  # SIGTERM (SystemExit) or Ctrl-C: the run is FAILED, and the job ends as it was told to
        raise TrackingError(
            f"MLflow logging to {uri} failed after {retry.retries} retries ({_one_line(exc)}); "
            f"the metrics file is kept{where}"
        ) from exc
    finally:
        restore()


def _exit_on_sigterm():
    """Make SIGTERM raise ``SystemExit(143)`` until the returned function is called; return that function.

    SLURM ends a cancelled, preempted or requeued job with SIGTERM (then SIGKILL after its ``KillWait``), and
    Python's default action ends the process on the spot: a job caught between creating its run and finishing it
    would leave the run RUNNING for good (the retry's metrics file differs, so its key does not find the run to
    replace it). Raised instead, the exit reaches :func:`_log_run`'s handler, which marks the run FAILED first. A
    second SIGTERM is ignored so that it cannot interrupt that. Only the main thread can set signal handlers:
    elsewhere nothing changes.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminate(signum, frame):
        signal.signal(signum, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    if previous is None:  # a handler set outside Python: the default is the nearest we can put back
        previous = signal.SIG_DFL
    return lambda: signal.signal(signal.SIGTERM, previous)


def start_parent(tracking_uri: str | None = None, experiment: str = "subtune", *,
                 tags: Mapping[str, str] | None = None, retry_s: float | None = None) -> str:
    """Create an invocation's parent run (RUNNING until :func:`end_parent`); return its id.

    Tags: ``stage=workflow``, ``tags`` (``invocation``, ``experiment``, ``command``), ``subtune.version``; the
    name is :func:`~subtune.track.runs.run_name_for`'s (``workflow/<invocation>``). Under the SQLite store's
    file lock, retried like :func:`~subtune.track.runs.log_run`; :class:`TrackingError` when it fails.
    """
    uri = resolve_uri(tracking_uri)
    budget = _budget(retry_s)
    given = {k: str(v)[:_MAX_TAG] for k, v in (tags or {}).items() if v not in (None, "")}
    all_tags = {"stage": "workflow", **given, "subtune.version": __version__}
    name = run_name_for(all_tags)
    retry = _Retrier(0)
    try:
        with store_session(uri, budget) as retry:
            client, exp_id = open_experiment(uri, experiment, retry)
            if name is not None:
                name = retry(lambda: _free_name(client, exp_id, name), "find name")
            run = retry(lambda: client.create_run(exp_id, run_name=name, tags=all_tags), "create parent run")
            if all_tags.get("invocation"):  # a create-run request sent twice (its answer lost) made a second parent
                query = f"tags.stage = 'workflow' and tags.invocation = '{all_tags['invocation']}'"
                for other in retry(lambda: client.search_runs([exp_id], filter_string=query), "find parent run"):
                    if other.info.run_id != run.info.run_id:
                        retry(lambda other=other: client.delete_run(other.info.run_id), "delete parent run")
            return run.info.run_id
    except Exception as exc:
        raise TrackingError(f"MLflow parent run in {uri} not created after {retry.retries} retries "
                            f"({_one_line(exc)})") from exc


def end_parent(run_id: str, status: str = "FINISHED", tracking_uri: str | None = None, *,
               retry_s: float | None = None) -> None:
    """Mark the parent run ``status`` (FINISHED or FAILED); :class:`TrackingError` when that fails."""
    uri = resolve_uri(tracking_uri)
    budget = _budget(retry_s)
    try:
        with store_session(uri, budget) as retry:
            from mlflow import MlflowClient

            client = retry(lambda: MlflowClient(tracking_uri=uri), "open store")
            retry(lambda: client.set_terminated(run_id, status), "end parent run")
    except Exception as exc:
        raise TrackingError(f"MLflow parent run {run_id} in {uri} not marked {status} ({_one_line(exc)})") from exc
