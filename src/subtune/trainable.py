"""What a training run updates: :class:`Trainable` (importable without torch).

A method (:mod:`subtune.methods`) returns one; :func:`subtune.train.fit`
trains exactly its parameters and puts exactly its modules in train mode.
It lives below both, so code that trains everything (pretraining,
:mod:`subtune.models.pretrain`) needs no method.

A method that must act inside the training loop (AdaLoRA: an orthogonality
penalty on the loss and a rank allocation after every optimizer step) gives
its :class:`Trainable` a :class:`StepHooks`; without one (``hooks=None``, every
other method) the loop is the plain one, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._lazy import lazy

nn = lazy("torch.nn")


class StepHooks:
    """Callbacks :func:`subtune.train.fit_group` calls for one run; each default does nothing.

    Per optimizer step ``step`` (0-based, counted over the run)::

        loss = cross_entropy(logits, y) [+ extra_loss()]
        zero_grad; loss.backward()
        before_step(step)                # gradients present, parameters not yet updated
        f = lr_factors(param_groups)     # None: the plain step; else one factor per group, this step only
        optimizer.step(); scheduler.step()
        after_step(step)                 # parameters updated, gradients still present

    ``start(optimizer, total_steps)`` is called once before the first step
    with the run's optimizer and its number of optimizer steps
    (``steps_per_epoch * (epochs + cooldown_epochs)``). The extra loss is
    computed outside autocast (float32) and counts in the logged
    ``train_loss`` (it is part of what is minimised).
    """

    def start(self, optimizer: Any, total_steps: int) -> None:
        pass

    def extra_loss(self) -> Any:
        """A scalar tensor added to the step's loss, or None."""
        return None

    #: the optimizer gets one parameter group per tensor (its name in the group's ``names``), for
    #: :meth:`lr_factors` to scale each tensor's learning rate on its own (Auto-RGN)
    per_tensor_groups: bool = False

    def before_step(self, step: int) -> None:
        pass

    def lr_factors(self, param_groups: list[dict[str, Any]]) -> list[float] | None:
        """One factor per parameter group multiplying its scheduled learning rate for this step only (the
        schedule never sees them), or None for the plain step."""
        return None

    def after_step(self, step: int) -> None:
        pass


@dataclass
class Stage:
    """From epoch ``first_epoch`` (0-based) on, only the parameters ``names`` train and only the modules
    ``train_modules`` are in train mode (until the next stage's first epoch)."""

    first_epoch: int
    names: list[str]
    train_modules: list[str]


@dataclass
class Trainable:
    """What a run trains; the optional fields change *how* (their defaults keep the plain loop, bit-identical):

    - ``lr_scale``: parameter name -> a constant factor of its learning rate (missing names: 1). The
      optimizer gets one parameter group per (weight-decay group, factor), each with timm's ``lr_scale``
      key: every group's learning rate is the factor times the run's schedule at every step (LLRD).
    - ``stages``: :class:`Stage` s in order of ``first_epoch`` (the first at 0): within one run (one
      optimizer, one schedule) each epoch trains only its stage's parameters, the others get no gradient,
      so the optimizer leaves them bit-identical (gradual unfreezing). ``params`` is every parameter that
      trains in some stage (the optimizer's), ``train_modules`` is unused.
    - ``hooks``: a :class:`StepHooks`, the one per-step mechanism: an extra loss and callbacks around each
      optimizer step (AdaLoRA's budget), per-tensor learning-rate factors for one step (Auto-RGN).
    """

    params: list[tuple[str, nn.Parameter]]
    train_modules: list[str]
    notes: dict[str, Any] = field(default_factory=dict)
    #: per-step callbacks inside the training loop (None: the plain loop)
    hooks: StepHooks | None = None
    lr_scale: dict[str, float] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)

    def stage(self, epoch: int) -> Stage | None:
        """The stage epoch ``epoch`` (0-based) trains in (None without stages)."""
        current = None
        for s in self.stages:
            if s.first_epoch <= epoch:
                current = s
        return current

    @classmethod
    def everything(cls, model: nn.Module) -> "Trainable":
        """Every parameter trains; every module is in train mode (``""``: the model itself)."""
        return cls(list(model.named_parameters()), [""])

    @property
    def num_params(self) -> int:
        return sum(p.numel() for _, p in self.params)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.params]
