"""The one interface every method implements.

A method decides *what trains*: given a backbone (with its new head) it
returns a :class:`Trainable`, the named parameters the optimizer updates and
the modules that run in train mode (everything else is frozen, in eval mode,
and stays bit-identical). *How* it trains (lr, epochs, ...) is the training
config, which the workflow sets per method.

A new method is one module in this package with a class decorated by
``@register``; its structural hyperparameters are the class's ``defaults``
(anything else passed to it is rejected with the method's and the key's
names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.nn as nn

from .. import SubtuneError
from ..models.blocks import head_names, module_params

REGISTRY: dict[str, type["Method"]] = {}


@dataclass
class Trainable:
    params: list[tuple[str, nn.Parameter]]
    train_modules: list[str]
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for _, p in self.params)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.params]


class Method:
    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    #: what the method needs from earlier stages: None, "selection" (greedy
    #: selected blocks) or "surgical" (the group chosen on validation)
    needs: ClassVar[str | None] = None

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise SubtuneError(f"method {self.name!r} takes no parameter {unknown[0]!r} (it takes: {known})")
        self.params = {**self.defaults, **params}

    def trainable(self, model: nn.Module) -> Trainable:
        raise NotImplementedError

    @staticmethod
    def modules(model: nn.Module, names: list[str]) -> Trainable:
        """Train the named modules and the head; nothing else."""
        prefixes = list(dict.fromkeys([*names, *head_names(model)]))
        for n in prefixes:
            if n:
                try:
                    model.get_submodule(n)
                except AttributeError:
                    raise SubtuneError(f"model has no module {n!r}") from None
        return Trainable(module_params(model, prefixes), prefixes)


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str, **params: Any) -> Method:
    if name not in REGISTRY:
        raise SubtuneError(f"unknown method {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name](**params)
