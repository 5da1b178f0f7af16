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

With augmentation, mixup/cutmix or drop-path (active in frozen blocks) the
prefix is not a fixed function of the image, so the cache is off (the log
says so); with dropout or drop-path, training draws from
the global RNG, so candidates are trained one by one. The slow path
(``fast=False``) trains every candidate alone through the whole network.

A greedy round with a selection budget (:meth:`CandidateScorer.score_round`,
:mod:`subtune.halving`): with ``kind: halving`` every competing candidate of
the round trains in one lockstep group, whatever block it starts at (each
run's input is the index of an image, which its forward maps to its own
cached prefix features or image), and ``fit_group``'s ``stop`` hook stops the
losers at each rung; the survivors' runs are uninterrupted full-schedule
runs, bit-identical to the exact path's (tests/test_halving.py). Halving
needs candidates trained together (``fast`` and no dropout / drop-path).
With ``kind: shortlist`` the round is scored twice with the ordinary path:
every competing candidate with the short screening schedule, then the best
``keep`` with the full one (fresh runs, the same as exact selection's).

The cost of a round (``score_round``'s second value): candidate-epochs
trained, wall time, and ``ft_equiv``, the round's training cost in plain full
fine-tunes (every parameter trained, the selection's epochs, same data)
estimated from FLOPs: forward and backward of each candidate's training
computation (suffix only when its prefix is cached) and the forward of its
per-epoch validation, counted by ``torch.utils.flop_counter`` on two images;
the prefix computed once per start block is not counted.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import replace
from typing import Any, Mapping, Sequence

import torch

from . import SubtuneError
from .data.prepared import normalization
from .io import sha256_file
from .methods.base import Method
from .models.split import Staged
from .halving import Budget, Halving, survivors
from .prefix import PrefixCache, compute_prefix, continue_prefix
from .select import BlockSet, SelectionConfig, key
from .train import Preprocess, Run, TrainConfig, _image_forward, fit_group, has_randomness, pick_device, set_modes

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
        keep_head: bool = False,
        classes: list[str] | None = None,
        target: str | None = None,
        manifest: Mapping[str, Any] | None = None,
    ):
        from .models.checkpoint import build_model

        if "test_x" in data or "test_y" in data:
            raise ValueError("the scorer must not be given the test split")
        # keep_head: start from the checkpoint's own head, which then does not train (methods/base.py);
        # the empty set (nothing to train) is scored by evaluating the source model as it is
        self.keep_head = keep_head
        self.base, self.ckpt = build_model(checkpoint, num_classes, seed=seed, keep_head=keep_head, classes=classes,
                                           target=target, **train_cfg.model_kwargs())
        # the inputs' mean/std: the dataset's own with data.standardize: dataset (its manifest), else the backbone's
        mean, std = normalization(manifest or {}, self.ckpt.mean, self.ckpt.std)
        self.pre = Preprocess(mean, std, self.ckpt.in_chans)
        self.data = data
        self.train_cfg, self.sel_cfg = train_cfg, sel_cfg
        self.seed = seed
        self.device = pick_device(device)
        self.fast = fast
        self.cache = cache if cache is not None else PrefixCache()
        self.use_cache = fast and train_cfg.fixed_prefix
        if fast and not self.use_cache:
            log.warning("prefix cache off: augmentation, mixing or drop-path make the frozen prefix's output random")
        self.together = fast and not has_randomness(self.base)
        if fast and not self.together:
            log.warning("candidates trained one by one: the model draws random numbers in training (dropout)")
        self._key = {
            "checkpoint": sha256_file(checkpoint),
            "data": data_digest or _tensor_digest(data),
            "mean": list(mean),
            "std": list(std),
            "device": self.device.type,
            **({"head": "keep"} if keep_head else {}),
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
        at = {**self._key, "split": split}
        bs = self.train_cfg.eval_batch_size

        def compute() -> torch.Tensor:
            # from the deepest prefix already held below ``start``: each frozen block runs once per image
            for s in range(start - 1, 0, -1):
                h = self.cache.peek({**at, "stop": s})
                if h is not None:
                    return continue_prefix(staged, h, s, start, bs, self.device)
            return compute_prefix(staged, self.pre.to(self.device), x, start, bs, self.device)

        return self.cache.get({**at, "stop": start}, compute)

    # ------------------------------------------------------------ training
    def _start(self, names: Sequence[str]) -> int | None:
        """The block a candidate's computation starts at (None: the whole network)."""
        if not self.use_cache:
            return None
        return Staged(self.base).first_trainable(Method.modules(self.base, list(names), not self.keep_head).names)

    def _train(self, group: list[Sequence[str]], start: int | None, train, evals,
               cfg: TrainConfig | None = None) -> list[dict[str, Any]]:
        runs = []
        for names in group:
            model = copy.deepcopy(self.base)
            trainable = Method.modules(model, list(names), not self.keep_head)
            fwd = None
            if start is not None:
                staged = Staged(model)
                fwd = (lambda st, b: (lambda h: st.suffix(h, b)))(staged, start)
            runs.append(Run(model, trainable, fwd, desc=key(names) or "(lp)"))
        pre = None if start is not None else self.pre
        return fit_group(runs, pre, train, evals, cfg or self.train_cfg, self.seed, self.device)

    def _untrained(self, evals) -> dict[str, Any]:
        """Metrics of the base model as it is (the kept head with no block: nothing trains)."""
        from .methods.base import evaluate_only

        return evaluate_only(copy.deepcopy(self.base), self.pre, (None, []), evals, self.train_cfg, self.device)

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

    def score_many(self, sets: list[BlockSet], cfg: TrainConfig | None = None) -> list[dict[str, Any]]:
        """Score every candidate set (exactly: the whole schedule); results in the order of ``sets``."""
        results: dict[BlockSet, dict[str, Any]] = {}
        y, yv = self.data["train_y"], self.data.get("val_y")
        todo = list(sets)
        if self.keep_head and () in todo:
            if self.folds is None:
                m = self._untrained({"val": (self.data["val_x"], yv)})
                results[()] = self._result((), m, m["val_acc"])
            else:
                x = self.data["train_x"]
                ms = [self._untrained({"fold": (x[f], y[f])}) for f in self.folds]
                accs = [m["fold_acc"] for m in ms]
                results[()] = {**self._result((), ms[-1], sum(accs) / len(accs)), "fold_accs": accs}
            todo = [s for s in todo if s != ()]
        for start, group in self._groups(todo):
            x = self._inputs("train", start)
            if self.folds is None:
                xv = self._inputs("val", start)
                ms = self._train(group, start, (x, y), {"val": (xv, yv)}, cfg)
                for s, m in zip(group, ms):
                    results[s] = self._result(s, m, m["val_acc"])
            else:
                per_fold = []
                for i, held in enumerate(self.folds):
                    keep = torch.cat([f for j, f in enumerate(self.folds) if j != i])
                    per_fold.append(self._train(group, start, (x[keep], y[keep]), {"fold": (x[held], y[held])}, cfg))
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
            "epochs": m["epochs"],
            "history": m["history"],
        }

    # ------------------------------------------------------------ budget
    def score_round(self, sets: list[BlockSet], reference: Sequence[BlockSet] = (),
                    budget: Budget | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Score one greedy round under ``budget`` (None: exact); (results in the order of ``sets``, cost).

        ``reference``: the sets among ``sets`` that do not compete (the base
        set whose score gains are measured against); they train the whole
        schedule. A result stopped early by halving has ``dropped_at`` (its
        rung's epochs) and that rung's validation accuracy as its score; one
        left off a shortlist has ``dropped_at`` (the screening epochs) and
        its screening score; one on the shortlist has its full-schedule
        score, ``screen_score`` and ``screen_epochs``.
        """
        t0 = time.perf_counter()
        sets = list(sets)
        cfg = self.train_cfg if budget is None or budget.epochs is None else replace(self.train_cfg,
                                                                                     epochs=budget.epochs)
        ref = [s for s in sets if s in set(reference)]
        comp = [s for s in sets if s not in set(reference)]
        halving = budget is not None and budget.kind == "halving" and len(comp) > 1
        rung_list = None
        if halving:
            if self.sel_cfg.scoring != "val":
                raise SubtuneError("selection.budget: halving needs scoring: val")
            if not self.together:
                raise SubtuneError("selection.budget: halving needs candidates trained together (fast: true and a "
                                   "model without dropout / drop-path)")
            h = Halving(len(comp), cfg.epochs, budget.min_epochs, budget.eta)
            rung_list = h.rungs
            results = dict(zip(ref, self.score_many(ref, cfg))) if ref else {}
            for i, (s, m) in enumerate(zip(comp, self._halving(comp, cfg, h))):
                results[s] = self._result(s, m, m["val_acc"])
                if i in h.dropped:
                    results[s]["dropped_at"] = h.dropped[i]
        elif budget is not None and budget.kind == "shortlist" and len(comp) > budget.keep:
            if self.sel_cfg.scoring != "val":
                raise SubtuneError("selection.budget: shortlist needs scoring: val")
            results = dict(zip(ref, self.score_many(ref, cfg))) if ref else {}
            screened = self.score_many(comp, replace(self.train_cfg, epochs=budget.screen_epochs))
            keep = survivors([r["score"] for r in screened], budget.keep)
            full = dict(zip(keep, self.score_many([comp[i] for i in keep], cfg)))
            for i, (s, r) in enumerate(zip(comp, screened)):
                if i in full:
                    results[s] = {**full[i], "screen_score": r["score"], "screen_epochs": r["epochs"]}
                else:
                    results[s] = {**r, "dropped_at": budget.screen_epochs}
        else:
            results = dict(zip(sets, self.score_many(sets, cfg)))
        out = [results[s] for s in sets]
        dropped: dict[str, list[str]] = {}
        for r in out:
            if "dropped_at" in r:
                dropped.setdefault(str(r["dropped_at"]), []).append(r["key"])
        cost = {
            "budget": budget.to_dict() if budget is not None else None,
            "epochs": cfg.epochs,
            "rungs": rung_list,
            "dropped": dropped,
            "candidate_epochs": sum(_trained_epochs(r) for r in out),
            "exact_candidate_epochs": len(sets) * self.train_cfg.epochs,
            "wall_time_s": time.perf_counter() - t0,
            "ft_equiv": self.ft_equiv(out),
        }
        return out, cost

    def _halving(self, sets: list[BlockSet], cfg: TrainConfig, h: Halving) -> list[dict[str, Any]]:
        """Train ``sets`` in one lockstep group; ``h`` stops the losers at each rung."""
        y, yv = self.data["train_y"], self.data["val_y"]
        n, nv = len(y), len(yv)
        dev = self.device
        pre = self.pre.to(dev)
        inputs: dict[int | None, torch.Tensor] = {}
        runs = []
        for names in sets:
            model = copy.deepcopy(self.base)
            trainable = Method.modules(model, list(names))
            start = self._start(names)
            if not self.use_cache:
                runs.append(Run(model, trainable, None, desc=key(names) or "(lp)"))
                continue
            # Inputs are indices: train 0..n-1, validation n..n+nv-1, mapped to this run's own inputs.
            if start not in inputs:
                inputs[start] = torch.cat([self._inputs("train", start), self._inputs("val", start)])
            feats = inputs[start]
            if start is None:
                inner = _image_forward(model, pre, dev)
            else:
                inner = (lambda st, b: (lambda hh: st.suffix(hh, b)))(Staged(model), start)
            fwd = (lambda f, X: (lambda idx: f(X[idx.to(X.device)].to(dev))))(inner, feats)
            runs.append(Run(model, trainable, fwd, desc=key(names) or "(lp)"))
        if self.use_cache:
            train, evals = (torch.arange(n), y), {"val": (torch.arange(n, n + nv), yv)}
            group_pre = None
        else:
            train, evals = (self.data["train_x"], y), {"val": (self.data["val_x"], yv)}
            group_pre = self.pre
        stop = lambda epoch, rows: h.after_epoch(epoch, {i: r["val_acc"] for i, r in rows.items()})  # noqa: E731
        return fit_group(runs, group_pre, train, evals, cfg, self.seed, self.device, stop=stop)

    def _flops(self, names: Sequence[str] | None) -> tuple[float, float]:
        """(forward, backward) FLOPs per image of training ``names`` (None: every parameter, plain FT)."""
        from torch.utils.flop_counter import FlopCounterMode

        ck = key(names) if names is not None else None
        memo = self.__dict__.setdefault("_flop_memo", {})
        if ck in memo:
            return memo[ck]
        model = copy.deepcopy(self.base).to(self.device)
        for p in model.parameters():
            p.requires_grad_(names is None)
        start = None
        if names is not None:
            trainable = Method.modules(model, list(names))
            for _, p in trainable.params:
                p.requires_grad_(True)
            set_modes(model, trainable.train_modules)
            start = self._start(names)
        else:
            model.train()
        x = self._inputs("train", start)[:2]
        if start is None:
            fwd = _image_forward(model, self.pre.to(self.device), self.device)
        else:
            fwd = lambda hh: Staged(model).suffix(hh, start)  # noqa: E731
        with FlopCounterMode(display=False) as fc:
            logits = fwd(x.to(self.device))
        f = fc.get_total_flops()
        with FlopCounterMode(display=False) as bc:
            logits.float().sum().backward()
        memo[ck] = (f / len(x), bc.get_total_flops() / len(x))
        return memo[ck]

    def ft_equiv(self, results: list[dict[str, Any]]) -> float:
        """Training cost of ``results`` (each with ``blocks`` and ``epochs``) in plain full fine-tunes (FLOPs)."""
        n, nv = len(self.data["train_y"]), len(self.data.get("val_y", ()))
        F_, B_ = self._flops(None)
        ft = self.train_cfg.epochs * (n * (F_ + B_) + nv * F_)
        total = 0.0
        for r in results:
            f, b = self._flops(r["blocks"])
            total += _trained_epochs(r) * (n * (f + b) + nv * f)
        return total / ft

    def score_one(self, names: Sequence[str]) -> dict[str, Any]:
        return self.score_many([tuple(names)])[0]

    def __call__(self, sets: list[BlockSet]) -> dict[BlockSet, float]:
        return {r["key"] and tuple(r["blocks"]) or (): r["score"] for r in self.score_many(sets)}


def _trained_epochs(r: dict[str, Any]) -> int:
    """Epochs a result's set trained in its round: its run's, plus its screening run's under a shortlist."""
    return int(r["epochs"]) + int(r.get("screen_epochs", 0))


def _tensor_digest(data: dict[str, torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(data):
        h.update(k.encode())
        h.update(data[k].contiguous().numpy().tobytes())
    return h.hexdigest()
