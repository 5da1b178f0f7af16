"""Scoring candidate block sets by fine-tuning them: the scorer greedy selection calls.

One :class:`CandidateScorer` loads the checkpoint and the data once and then
trains any number of candidates in the same process (no start-up, data or
checkpoint loading per candidate). Each candidate starts from the same
pretrained weights and the same seeded head, trains its blocks plus the head
with the one training loop, and is scored on validation data only: the
validation split (``scoring: val``) or k-fold cross-validation on the
training split (``scoring: cv``; folds from a seeded permutation). It is never
given the test split.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from .methods.base import Method
from .select import BlockSet, SelectionConfig, key
from .train import Preprocess, TrainConfig, fit


class CandidateScorer:
    def __init__(
        self,
        checkpoint: str,
        data: dict[str, torch.Tensor],
        num_classes: int,
        train_cfg: TrainConfig,
        sel_cfg: SelectionConfig,
        seed: int = 0,
        device: str | None = None,
    ):
        from .models.checkpoint import build_model

        if "test_x" in data or "test_y" in data:
            raise ValueError("the scorer must not be given the test split")
        self.base, self.ckpt = build_model(checkpoint, num_classes, seed=seed)
        self.pre = Preprocess(self.ckpt.mean, self.ckpt.std, self.ckpt.in_chans)
        self.data = data
        self.train_cfg, self.sel_cfg = train_cfg, sel_cfg
        self.seed, self.device = seed, device
        self.folds = self._folds() if sel_cfg.scoring == "cv" else None

    def _folds(self) -> list[torch.Tensor]:
        n = len(self.data["train_y"])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return [perm[i :: self.sel_cfg.folds] for i in range(self.sel_cfg.folds)]

    def _run(self, names: Sequence[str], train, evals, desc: str) -> dict[str, Any]:
        model = copy.deepcopy(self.base)
        trainable = Method.modules(model, list(names))
        return fit(model, trainable, self.pre, train, evals, self.train_cfg, self.seed, self.device, desc=desc)

    def score_one(self, names: Sequence[str]) -> dict[str, Any]:
        x, y = self.data["train_x"], self.data["train_y"]
        desc = key(names) or "(lp)"
        if self.folds is None:
            m = self._run(names, (x, y), {"val": (self.data["val_x"], self.data["val_y"])}, desc)
            score = m["val_acc"]
        else:
            accs, walls = [], 0.0
            for i, held in enumerate(self.folds):
                keep = torch.cat([f for j, f in enumerate(self.folds) if j != i])
                m = self._run(names, (x[keep], y[keep]), {"fold": (x[held], y[held])}, f"{desc} fold {i}")
                accs.append(m["fold_acc"])
                walls += m["wall_time_s"]
            m = {**m, "fold_accs": accs, "wall_time_s": walls}
            score = sum(accs) / len(accs)
        return {
            "key": key(names),
            "blocks": list(names),
            "score": score,
            "trainable_params": m["trainable_params"],
            "wall_time_s": m["wall_time_s"],
            "history": m["history"],
            **({"fold_accs": m["fold_accs"]} if "fold_accs" in m else {}),
        }

    def __call__(self, sets: list[BlockSet]) -> dict[BlockSet, float]:
        return {s: self.score_one(s)["score"] for s in sets}
