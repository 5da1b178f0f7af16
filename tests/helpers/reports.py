"""Result files shaped as the workflow's stages write them, for the tests of the report's tables and claims
(tests/test_report.py, test_report_registry.py, test_claims.py)."""

from __future__ import annotations

import json
from pathlib import Path

BLOCKS = ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]
TRAIN = {"epochs": 2, "lr": 0.01, "weight_decay": 0.0, "batch_size": 32, "optimizer": "sgd",
         "schedule": "cosine", "warmup_epochs": 0, "augment": False, "label_smoothing": 0.0,
         "eval_batch_size": 256}


def write_json(path: Path, obj) -> Path:
    """``obj`` as JSON at ``path`` (parents made): ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def run_json(method, target, seed, test_acc, params, *, val_acc=0.5, method_params=None, train_size=800, **extra):
    """A final run's metrics file as `subtune train` writes it (two epochs of history, :data:`TRAIN`)."""
    hist = [{"epoch": 1, "train_loss": 1.0, "lr": 0.01, "val_acc": val_acc - 0.1, "val_loss": 1.2},
            {"epoch": 2, "train_loss": 0.8, "lr": 0.0, "val_acc": val_acc, "val_loss": 1.0}]
    return {"method": method, "method_params": method_params or {}, "target": target, "seed": seed,
            "train": TRAIN, "history": hist, "val_acc": val_acc, "val_loss": 1.0, "test_acc": test_acc,
            "test_loss": 1.1, "trainable_params": params, "total_params": 100_000, "wall_time_s": 1.5,
            "device": "cpu", "epochs": 2, "train_size": train_size, "checkpoint": "ck.safetensors",
            "notes": {}, **extra}


def scored(blocks, score, params):
    """One candidate's entry in a scoring shard's ``results``."""
    return {"key": "+".join(blocks), "blocks": blocks, "score": score, "trainable_params": params,
            "wall_time_s": 0.1, "history": []}


def greedy_state(gains: dict[str, float]) -> dict:
    """A final selection state as the select stage writes it: a real greedy walk (paper rule, epsilon 0.01, k=3)
    over BLOCKS, scored by an additive scorer (0.5 + the gains of the set's blocks)."""
    from subtune.select import SelectionConfig, greedy

    def scorer(sets):
        return {s: 0.5 + sum(gains.get(b, 0.0) for b in s) for s in sets}

    return json.loads(json.dumps(greedy(BLOCKS, scorer, SelectionConfig(epsilon=0.01, k=3))))


def tune_json(method, target, points, chosen, edge=None, key="lr"):
    """A tune file as `subtune tune` writes it: points = [(value, val_acc, source), ...]."""
    res = [{"train": {key: v} if key == "lr" else {}, "params": {} if key == "lr" else {key: v},
            "label": f"{key}={v}", "source": src, "val_acc": acc, "val_size": 100, "wall_time_s": 1.0,
            "trainable_params": 650, "train_size": 800} for v, acc, src in points]
    return {"method": method, "target": target, "seed": 0, "grid": {key: [v for v, _, s in points if s == "grid"]},
            "extend": 2, "results": res, "chosen_index": chosen,
            "chosen": {"train": res[chosen]["train"], "params": res[chosen]["params"]},
            "explored": {key: sorted(v for v, _, _ in points)}, "edge": edge}
