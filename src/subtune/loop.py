"""One training step and the typed state of a run, shared by every training loop.

:func:`subtune.train.fit_group` (and so ``fit``) and Multi-LoRA's ``fit_together`` differ in what they feed a
step (one model per run; one backbone and a head per task) and in their bookkeeping, not in the step itself, so
the step lives here once (:func:`train_step`): the forward under bf16 autocast on CUDA, the cross-entropy of
each target, the method's extra loss, backward, then for every optimizer its hooks, its (scaled) step, its
schedule's step and its step counter (:class:`Optimization`). A task trained together with others is thereby
updated exactly as a separate run of ``fit`` would be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import SubtuneError
from .optim import _optimizer, lr_scheduler
from .train_config import TrainConfig
from .trainable import StepHooks


@dataclass
class Optimization:
    """One optimizer with its learning-rate schedule, the method's step hooks and the steps it has taken.

    ``steps`` counts this optimizer's steps over the run (the ``step`` the hooks are given, Multi-LoRA's
    ``optimizer_steps``).
    """

    opt: torch.optim.Optimizer
    sched: Any
    hooks: StepHooks | None = None
    steps: int = 0

    @classmethod
    def build(cls, params, cfg: TrainConfig, steps_per_epoch: int, hooks: StepHooks | None = None) -> "Optimization":
        """The configured optimizer over ``params`` (tensors or parameter groups) and its schedule; the hooks
        are started with it (``start(optimizer, steps_per_epoch * total_epochs)``)."""
        opt = _optimizer(params, cfg)
        sched = lr_scheduler(opt, cfg, steps_per_epoch)
        if hooks is not None:
            hooks.start(opt, steps_per_epoch * cfg.total_epochs)
        return cls(opt, sched, hooks)

    @property
    def lr(self) -> float:
        """The first parameter group's current learning rate (what the history logs)."""
        return self.opt.param_groups[0]["lr"]

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One update from the gradients present: hooks around it, the method's lr factors for this step only,
        then the schedule's step and the counter."""
        hooks, factors = self.hooks, None
        if hooks is not None:
            hooks.before_step(self.steps)
            factors = hooks.lr_factors(self.opt.param_groups)
        if factors is None:
            self.opt.step()
        else:
            _scaled_step(self.opt, factors)
        self.sched.step()
        if hooks is not None:
            hooks.after_step(self.steps)
        self.steps += 1


def _scaled_step(opt: torch.optim.Optimizer, factors: list[float]) -> None:
    """One optimizer step with each group's scheduled lr multiplied by the method's factor for this step
    (``StepHooks.lr_factors``), then the scheduled lrs restored (the schedule never sees the factors)."""
    if len(factors) != len(opt.param_groups):
        raise SubtuneError(f"lr_factors returned {len(factors)} factors for {len(opt.param_groups)} parameter groups")
    lrs = [g["lr"] for g in opt.param_groups]
    for g, f in zip(opt.param_groups, factors):
        g["lr"] = g["lr"] * float(f)
    try:
        opt.step()
    finally:
        for g, lr in zip(opt.param_groups, lrs):
            g["lr"] = lr


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The training loss of one batch, in float32: hard labels with ``label_smoothing``; soft targets
    (mixup/cutmix, ``[N, classes]``) as timm's ``SoftTargetCrossEntropy`` (the smoothing is inside them)."""
    if y.ndim == 2:
        return F.cross_entropy(logits.float(), y)
    return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


def train_step(
    forward: Callable[[], torch.Tensor | Sequence[torch.Tensor]],
    targets: Sequence[torch.Tensor],
    update: Sequence[Optimization],
    label_smoothing: float = 0.0,
    device_type: str = "cpu",
    zero: Sequence[Optimization] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One training step: forward, loss, backward, every optimizer in ``update`` stepped (with its schedule).

    ``forward()`` runs under bf16 autocast on CUDA and returns logits, or one logits tensor per target
    (Multi-LoRA: each task's batch through its own head); the loss is the sum of each target's mean
    cross-entropy (:func:`cross_entropy`), so each part's gradient is its own, plus each updated
    optimizer's ``hooks.extra_loss()``. The gradients of ``zero`` (default: ``update``) are cleared before
    backward: a wider set drops the gradients of optimizers not stepped now. Returns the detached total
    loss and each target's loss (summed on the device by the callers: no sync per step).
    """
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
        logits = forward()
    if isinstance(logits, torch.Tensor):
        logits = [logits]
    parts = [cross_entropy(out, y, label_smoothing) for out, y in zip(logits, targets, strict=True)]
    loss = parts[0]
    for part in parts[1:]:
        loss = loss + part
    for u in update:
        extra = u.hooks.extra_loss() if u.hooks is not None else None
        if extra is not None:
            loss = loss + extra
    for u in update if zero is None else zero:
        u.zero_grad()
    loss.backward()
    for u in update:
        u.step()
    return loss.detach(), [part.detach() for part in parts]


@dataclass
class Run:
    """One model to train: its trainable parameters and, optionally, its own forward.

    ``forward`` maps a batch of the training inputs to logits; by default the
    inputs are uint8 images run through ``pre`` and the whole model. With
    frozen-prefix caching the inputs are cached prefix features and the
    forward runs only the suffix.
    """

    model: nn.Module
    trainable: Any
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    desc: str = "train"


@dataclass
class RunState:
    """Where one run of :func:`subtune.train.fit_group` stands: its optimization, history and chosen epoch."""

    run: Run
    params: list[nn.Parameter]  # the optimizer's parameters (every stage's)
    optim: Optimization
    forward: Callable[[torch.Tensor], torch.Tensor]  # training inputs -> logits
    best_epoch: int  # 1-based: the epoch whose weights the run ends with
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch trained
    loss: Any = 0.0  # this epoch's training loss summed over its images (a tensor on the device)
    time: float = 0.0  # seconds spent on this run alone: its steps and evaluations
    best: list[torch.Tensor] | None = None  # with epoch_select best_val: the weights of best_epoch
    active: bool = True  # False once ``stop`` stopped it

    @property
    def model(self) -> nn.Module:
        return self.run.model

    def keep(self, epoch: int) -> None:
        """Remember this epoch's weights (1-based ``epoch``): the trainable parameters and every buffer."""
        self.best = [t.detach().clone() for t in [*self.params, *self.model.buffers()]]
        self.best_epoch = epoch

    @torch.no_grad()
    def restore(self) -> None:
        """Back to the weights :meth:`keep` copied."""
        for t, v in zip([*self.params, *self.model.buffers()], self.best, strict=True):
            t.copy_(v)
