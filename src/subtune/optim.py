"""The optimizer and its learning-rate schedule, built the same way for every training loop.

:func:`subtune.train.fit_group` and Multi-LoRA's ``fit_together`` build each run's (or task's) optimizer and
schedule here, so a task trained together with others is updated exactly like a separate run of ``fit``.
The names are re-exported by :mod:`subtune.train`, where the protocol options they honour are described.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from . import SubtuneError
from .train_config import TrainConfig


def _param_groups(model: nn.Module, params: list[nn.Parameter], cfg: TrainConfig, trainable=None):
    """The optimizer's parameters: one group, or timm's decay / no-decay groups (``no_weight_decay_1d``),
    split further by the method's learning-rate factors (``trainable``, a :class:`~subtune.trainable.Trainable`).

    timm's groups are built from the model's parameters with ``requires_grad``
    (exactly the method's, set by the caller). The model's
    ``no_weight_decay()`` names are matched also under a wrapper's prefix
    (peft's ``base_model.model.``).

    ``trainable.lr_scale``: each group split by factor (in order of first
    appearance), the factor in the group's ``lr_scale`` (timm's key: the
    schedule multiplies it, see :func:`lr_scheduler`). ``hooks.per_tensor_groups``:
    one group per tensor, its name in ``names``. Without either (every other
    method) the groups are exactly as before.
    """
    if not cfg.no_weight_decay_1d:
        groups = params
    else:
        from timm.optim import param_groups_weight_decay

        skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
        skip |= {f"*.{n}" for n in skip}
        groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)
        if {id(p) for g in groups for p in g["params"]} != {id(p) for p in params} or sum(
                len(g["params"]) for g in groups) != len(params):
            raise SubtuneError("no_weight_decay_1d: the method's parameters are not the model's trainable parameters")
    scale = getattr(trainable, "lr_scale", None) or {}
    per_tensor = bool(getattr(getattr(trainable, "hooks", None), "per_tensor_groups", False))
    if not scale and not per_tensor:
        return groups
    names = {id(p): n for n, p in trainable.params}
    out: list[dict[str, Any]] = []
    for g in ([{"params": groups}] if not cfg.no_weight_decay_1d else groups):
        buckets: dict[Any, dict[str, Any]] = {}
        for p in g["params"]:
            n = names[id(p)]
            key = n if per_tensor else scale.get(n, 1.0)
            if key not in buckets:
                buckets[key] = {**g, "params": [], "names": []}
                if scale:
                    buckets[key]["lr_scale"] = float(scale.get(n, 1.0))
            buckets[key]["params"].append(p)
            buckets[key]["names"].append(n)
        out += buckets.values()
    return out


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer, PyTorch's fused implementation (one kernel for every parameter instead of a
    loop over them; the same update, summed in another order, so the last bits of a float32 can differ)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9, fused=True)


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The plain per-step factor of ``lr``: warm-up ``(step + 1) / warmup``, then cosine to 0 over
    ``total - warmup`` steps (0 after ``total``), or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """``schedule_unit: step``: the learning rate of optimizer step ``step`` (0-based) over ``cfg.lr``.

    With ``W = steps_per_epoch * warmup_epochs``, ``T = steps_per_epoch *
    epochs`` and ``f`` = :func:`_lr_factor` (the plain form)::

        lr(s) = warmup_lr + (lr - warmup_lr) * (s + 1) / W            for s < W
        lr(s) = min_lr + (lr - min_lr) * 1/2 (1 + cos(pi (s - W) / (T - W)))   for W <= s < T (cosine)
        lr(s) = min_lr                                                 for s >= T (cooldown epochs)

    (constant: ``lr`` after the warm-up). With ``warmup_lr`` and ``min_lr`` 0
    this is exactly ``f`` (the same floats). Unlike the epoch unit (timm's
    form) the warm-up's first step already moves off ``warmup_lr`` and the
    cosine is stretched over the steps after the warm-up.
    """
    total, warmup = steps_per_epoch * cfg.epochs, steps_per_epoch * cfg.warmup_epochs
    f = _lr_factor(step, total, warmup, cfg.schedule)
    start = cfg.warmup_lr / cfg.lr if warmup and step < warmup else cfg.min_lr / cfg.lr
    return start + (1.0 - start) * f if start else f


class EpochSchedule:
    """``schedule_unit: epoch``: the learning rate changes once per epoch, stepped like SSF's train.py.

    The scheduler is timm's, built by timm's ``create_scheduler_v2`` (what
    SSF's and SAN's ``create_scheduler`` call) with ``step_on_epochs``, on
    the run's optimizer: ``cosine`` is ``CosineLRScheduler(t_initial=epochs,
    lr_min=min_lr, warmup_t=warmup_epochs, warmup_lr_init=warmup_lr)``,
    ``constant`` timm's constant schedule (``StepLRScheduler`` that never
    decays, same warm-up). ``step()`` is called after every optimizer step
    (the loop's interface); after the last step of epoch ``e`` (0-based) it
    calls timm's ``step(e + 1)`` (SSF's ``lr_scheduler.step(epoch + 1)``), so
    epoch ``e`` trains at::

        lr(e) = warmup_lr + e (lr - warmup_lr) / warmup_epochs          for e < warmup_epochs
        lr(e) = min_lr + 1/2 (lr - min_lr) (1 + cos(pi e / epochs))    for warmup_epochs <= e < epochs
        lr(e) = min_lr                                                  for e >= epochs (cooldown epochs)

    (no ``warmup_prefix``: the cosine is that of a whole ``epochs``-epoch
    run, its first ``warmup_epochs`` replaced by the warm-up; constant:
    ``lr`` after the warm-up). Epoch 0 trains at ``warmup_lr`` (timm sets it
    when built), or at ``lr`` without warm-up. With no warm-up and ``min_lr``
    0 this is torch's ``CosineAnnealingLR(T_max=epochs)`` stepped per epoch
    (SubTuning's Lightning schedule). SAN calls ``lr_scheduler.step(epoch=
    epoch)`` after epoch ``epoch`` instead, so its epoch ``e >= 1`` trains at
    the value above for ``e - 1`` (one epoch behind); we implement SSF's.
    """

    def __init__(self, opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        from timm.scheduler import create_scheduler_v2

        self.steps_per_epoch, self.steps = steps_per_epoch, 0
        self.timm, n = create_scheduler_v2(opt, sched=cfg.schedule, num_epochs=cfg.epochs,
                                           cooldown_epochs=cfg.cooldown_epochs, min_lr=cfg.min_lr,
                                           warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
                                           step_on_epochs=True)
        if cfg.schedule == "cosine" and n != cfg.total_epochs:  # timm's own count of a run's epochs
            raise SubtuneError(f"timm's schedule has {n} epochs, the run {cfg.total_epochs}")

    def step(self) -> None:
        self.steps += 1
        if self.steps % self.steps_per_epoch == 0:
            self.timm.step(self.steps // self.steps_per_epoch)


def lr_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """The run's schedule; its ``step()`` is called once after every optimizer step.

    ``schedule_unit: step``: a ``LambdaLR`` of :func:`lr_factor` (the lr of
    every step is its own); ``epoch``: :class:`EpochSchedule`. A group with
    an ``lr_scale`` (:func:`_param_groups`) trains at that factor times the
    schedule at every step, warm-up and ``min_lr`` included (timm's
    layer-decay convention: its schedulers multiply ``lr_scale``).
    """
    if cfg.schedule_unit == "epoch":
        return EpochSchedule(opt, cfg, steps_per_epoch)  # timm's scheduler multiplies a group's ``lr_scale``
    # the same: each group's factor (1 without one) times the schedule
    return torch.optim.lr_scheduler.LambdaLR(opt, [
        (lambda s, k=g.get("lr_scale", 1.0): k * lr_factor(s, cfg, steps_per_epoch)) for g in opt.param_groups])


def steps_per_epoch(n: int, cfg: TrainConfig, drop_last: bool = False) -> int:
    """Optimizer steps per epoch on ``n`` training images: ``floor(n / batch_size)`` when the incomplete last
    batch is dropped (``cfg.drop_last`` or ``drop_last``, e.g. mixing), else ``ceil``."""
    if cfg.drop_last or drop_last:
        if n < cfg.batch_size:
            why = "train.drop_last drops" if cfg.drop_last else "mixup/cutmix drop"
            raise SubtuneError(f"{why} the incomplete last batch: {n} training images, "
                               f"fewer than one batch of {cfg.batch_size}")
        return n // cfg.batch_size
    return math.ceil(n / cfg.batch_size)

