"""What a training run updates: :class:`Trainable` (importable without torch).

A method (:mod:`subtune.methods`) returns one; :func:`subtune.train.fit`
trains exactly its parameters and puts exactly its modules in train mode.
It lives below both, so code that trains everything (pretraining,
:mod:`subtune.models.pretrain`) needs no method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._lazy import lazy

nn = lazy("torch.nn")


@dataclass
class Trainable:
    params: list[tuple[str, nn.Parameter]]
    train_modules: list[str]
    notes: dict[str, Any] = field(default_factory=dict)

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
