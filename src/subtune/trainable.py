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

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass


@dataclass
class Trainable:
    params: list[tuple[str, nn.Parameter]]
    train_modules: list[str]
    notes: dict[str, Any] = field(default_factory=dict)
    #: per-step callbacks inside the training loop (None: the plain loop)
    hooks: StepHooks | None = None

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
