"""Scoring candidate block sets by fine-tuning them: the scorer greedy selection calls.

One :class:`CandidateScorer` loads the checkpoint and the data once and then
trains any number of candidates in the same process (no start-up, data or
checkpoint loading per candidate). Each candidate starts from the same
pretrained weights and the same seeded head, trains its blocks plus the head
with the one training loop, and is scored on validation data only: the
validation split (``scoring: val``) or k-fold cross-validation on the
training split (``scoring: cv``; folds from a seeded permutation). With
``selection.cv_data: train+val`` (``score --cv-data train+val``) the CLI hands
the scorer the union of the train and val splits as its training split and no
val split, so the folds run over both (SubTuning's 5-fold CV over VTAB-1k's
train800val200). It is never given the test split.

The fast path (``fast=True``, the default) is exact and does two things
(see :mod:`subtune.prefix`):

- frozen-prefix caching: a candidate whose earliest trainable block is ``b``
  trains on the cached output of the frozen stem and blocks before ``b``
  (computed once per split and ``b``), running only ``blocks[b:]`` and the
  head;
- candidates trained together: candidates starting at the same block are
  trained in lockstep by :func:`subtune.train.fit_group`, sharing each
  batch (and its cached prefix features).

With augmentation the prefix is not a fixed function of the image, so the
cache is off (the log says so); with dropout or drop-path, training draws from
the global RNG, so candidates are trained one by one. The slow path
(``fast=False``) trains every candidate alone through the whole network.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

import torch

from .io import sha256_file
from .methods.base import Method
from .models.split import Staged
from .prefix import PrefixCache, compute_prefix
from .select import BlockSet, SelectionConfig, key
from .train import Preprocess, Run, TrainConfig, fit_group, has_randomness, pick_device

log = logging.getLogger(__name__)


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
        fast: bool = True,
        cache: PrefixCache | None = None,
        data_digest: str | None = None,
    ):
        from .models.checkpoint import build_model

        if "test_x" in data or "test_y" in data:
            raise ValueError("the scorer must not be given the test split")
        self.base, self.ckpt = build_model(checkpoint, num_classes, seed=seed)
        self.pre = Preprocess(self.ckpt.mean, self.ckpt.std, self.ckpt.in_chans)
        self.data = data
        self.train_cfg, self.sel_cfg = train_cfg, sel_cfg
        self.seed = seed
        self.device = pick_device(device)
        self.fast = fast
        self.cache = cache if cache is not None else PrefixCache()
        self.use_cache = fast and train_cfg.augment == "none"
        if fast and not self.use_cache:
            log.warning("prefix cache off: augmentation %r makes the frozen prefix's output random", train_cfg.augment)
        self.together = fast and not has_randomness(self.base)
        if fast and not self.together:
            log.warning("candidates trained one by one: the model draws random numbers in training (dropout)")
        self._key = {
            "checkpoint": sha256_file(checkpoint),
            "data": data_digest or _tensor_digest(data),
            "mean": list(self.ckpt.mean),
            "std": list(self.ckpt.std),
            "device": self.device.type,
        }
        self.folds = self._folds() if sel_cfg.scoring == "cv" else None

    def _folds(self) -> list[torch.Tensor]:
        n = len(self.data["train_y"])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return [perm[i :: self.sel_cfg.folds] for i in range(self.sel_cfg.folds)]

    # ------------------------------------------------------------ features
    def _inputs(self, split: str, start: int | None) -> torch.Tensor:
        x = self.data[f"{split}_x"]
        if start is None:
            return x
        staged = Staged(self.base.to(self.device))
        return self.cache.get(
            {**self._key, "split": split, "stop": start},
            lambda: compute_prefix(staged, self.pre.to(self.device), x, start, self.train_cfg.eval_batch_size,
                                   self.device),
        )

    # ------------------------------------------------------------ training
    def _start(self, names: Sequence[str]) -> int | None:
        """The block a candidate's computation starts at (None: the whole network)."""
        if not self.use_cache:
            return None
        return Staged(self.base).first_trainable(Method.modules(self.base, list(names)).names)

    def _train(self, group: list[Sequence[str]], start: int | None, train, evals) -> list[dict[str, Any]]:
        runs = []
        for names in group:
            model = copy.deepcopy(self.base)
            trainable = Method.modules(model, list(names))
            fwd = None
            if start is not None:
                staged = Staged(model)
                fwd = (lambda st, b: (lambda h: st.suffix(h, b)))(staged, start)
            runs.append(Run(model, trainable, fwd, desc=key(names) or "(lp)"))
        pre = None if start is not None else self.pre
        return fit_group(runs, pre, train, evals, self.train_cfg, self.seed, self.device)

    def _groups(self, sets: list[BlockSet]) -> list[tuple[int | None, list[BlockSet]]]:
        if not self.fast:
            return [(None, [s]) for s in sets]
        by_start: dict[int | None, list[BlockSet]] = {}
        for s in sets:
            by_start.setdefault(self._start(s), []).append(s)
        groups = []
        for start, members in by_start.items():
            if self.together:
                groups.append((start, members))
            else:
                groups.extend((start, [m]) for m in members)
        return groups

    def score_many(self, sets: list[BlockSet]) -> list[dict[str, Any]]:
        """Score every candidate set; results in the order of ``sets``."""
        results: dict[BlockSet, dict[str, Any]] = {}
        y, yv = self.data["train_y"], self.data.get("val_y")
        for start, group in self._groups(list(sets)):
            x = self._inputs("train", start)
            if self.folds is None:
                xv = self._inputs("val", start)
                ms = self._train(group, start, (x, y), {"val": (xv, yv)})
                for s, m in zip(group, ms):
                    results[s] = self._result(s, m, m["val_acc"])
            else:
                per_fold = []
                for i, held in enumerate(self.folds):
                    keep = torch.cat([f for j, f in enumerate(self.folds) if j != i])
                    per_fold.append(self._train(group, start, (x[keep], y[keep]), {"fold": (x[held], y[held])}))
                for g, s in enumerate(group):
                    accs = [fold[g]["fold_acc"] for fold in per_fold]
                    m = {**per_fold[-1][g], "wall_time_s": sum(f[g]["wall_time_s"] for f in per_fold)}
                    results[s] = {**self._result(s, m, sum(accs) / len(accs)), "fold_accs": accs}
        return [results[s] for s in sets]

    @staticmethod
    def _result(names: Sequence[str], m: dict[str, Any], score: float) -> dict[str, Any]:
        return {
            "key": key(names),
            "blocks": list(names),
            "score": score,
            "trainable_params": m["trainable_params"],
            "wall_time_s": m["wall_time_s"],
            "history": m["history"],
        }

    def score_one(self, names: Sequence[str]) -> dict[str, Any]:
        return self.score_many([tuple(names)])[0]

    def __call__(self, sets: list[BlockSet]) -> dict[BlockSet, float]:
        return {r["key"] and tuple(r["blocks"]) or (): r["score"] for r in self.score_many(sets)}


def _tensor_digest(data: dict[str, torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(data):
        h.update(k.encode())
        h.update(data[k].contiguous().numpy().tobytes())
    return h.hexdigest()
