"""The tuning run of the chosen grid point is the final run of the selection seed: trained once, not twice.

``tune`` trains every grid point on the training split with the selection seed and chooses by validation.
When the final runs also train on the training split (``final_data: train``, the embedded default), the
final run of that seed with the chosen values is the same computation: same checkpoint, data, method,
parameters, training config, seed and head. ``tune --save-chosen`` keeps what that run trained (the
trainable parameters of every phase and every buffer, e.g. BatchNorm statistics; the frozen rest is
rebuilt from the checkpoint and the seed exactly as the run built it) with its metrics and a key of its
inputs; ``train --reuse-tuned`` compares the key with its own, and on a match loads the weights and only
evaluates the test split, which the tuning job never read. Any difference (a changed value, another seed,
``train+val``) trains as usual, with one line saying which key differed.

safetensors (not pickle) for the weights, the key and the metrics in its string metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import SubtuneError
from .io import atomic_path, sha256_file


def file_digests(checkpoint: str, data: str, manifest: dict) -> dict[str, str]:
    """The checkpoint's and the prepared data's SHA-256, once per job (the data's from its manifest, which
    :func:`subtune.data.prepared.save_prepared` writes with it, as the prefix cache's key does)."""
    return {"checkpoint": sha256_file(checkpoint), "data": manifest.get("sha256") or sha256_file(data)}


def run_key(method: str, params: dict, train: dict, seed: int, head: str, digests: dict[str, str],
            train_data: str = "train") -> dict[str, Any]:
    """Everything a final run's computation depends on (files by their SHA-256: :func:`file_digests`)."""
    return {"method": method, "params": params, "train": train, "seed": int(seed), "head": head, **digests,
            "train_data": train_data}


def trained_state(model: nn.Module, phases) -> dict[str, torch.Tensor]:
    """What a run changed: every phase's trainable parameters and every buffer (copies on the CPU)."""
    names = {n for trainable, _ in phases for n, _ in trainable.params}
    state = model.state_dict(keep_vars=False)
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v.detach().to('cpu', copy=True).contiguous() for k, v in state.items() if k in names or k in buffers}


def save_chosen(path: str | Path, state: dict[str, torch.Tensor], metrics: dict[str, Any],
                key: dict[str, Any]) -> None:
    """Write a run's trained tensors (:func:`trained_state`), metrics and key."""
    from safetensors.torch import save_file

    meta = {"key": json.dumps(key, sort_keys=True), "metrics": json.dumps(metrics, sort_keys=True, default=str)}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_chosen(path: str | Path, key: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | str:
    """The saved weights and metrics when the saved key equals ``key``; else why not (one line)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SubtuneError(f"--reuse-tuned: {path} does not exist")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
        if "key" not in meta or "metrics" not in meta:
            raise SubtuneError(f"--reuse-tuned: {path} is not a file written by tune --save-chosen")
        saved = json.loads(meta["key"])
        want = json.loads(json.dumps(key, sort_keys=True))
        if saved != want:
            diff = sorted(k for k in {*saved, *want} if saved.get(k) != want.get(k))
            return f"its {', '.join(diff)} {'differs' if len(diff) == 1 else 'differ'} from this run's"
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    return state, json.loads(meta["metrics"])


def load_into(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put the saved tensors into the rebuilt model (every saved name must exist in it)."""
    own = model.state_dict()
    extra = sorted(set(state) - set(own))
    if extra:
        raise SubtuneError(f"--reuse-tuned: the saved run has tensors this model lacks: {', '.join(extra[:3])}")
    model.load_state_dict(state, strict=False)
