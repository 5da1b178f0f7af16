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

Three optional hooks extend the interface for methods that add parameters or
train in stages; their defaults keep the plain behaviour:

- :meth:`Method.wrap` ``(model) -> model``: add the method's own parameters
  (SSF/SAN: in place; LoRA: a peft ``PeftModel`` around the timm model). It
  is called once, before :meth:`Method.trainable` / :meth:`Method.phases`;
  callers use the model it returns. Default: the identity.
- :meth:`Method.phases` ``(model) -> [(Trainable, train overrides)]``: the
  stages run in order by :func:`fit_phases` on the same model (LP-FT: the
  head, then everything). Default: one phase, ``trainable(model)``.
- :meth:`Method.merge` ``(model) -> state_dict``: the trained model as the
  state dict of the plain timm architecture (``load_state_dict(strict=True)``
  into an unmodified ``timm.create_model``). Default: the model's own state
  dict (methods that add nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .. import SubtuneError
from ..needs import method_needs
from ..models.blocks import head_names, module_params
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")

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
    #: selected blocks) or "surgical" (the group chosen on validation); set by
    #: :func:`register` from :data:`subtune.needs.NEEDS` (the workflow reads it there)
    needs: ClassVar[str | None] = None

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise SubtuneError(f"method {self.name!r} takes no parameter {unknown[0]!r} (it takes: {known})")
        self.params = {**self.defaults, **params}

    def trainable(self, model: nn.Module) -> Trainable:
        raise NotImplementedError

    def wrap(self, model: nn.Module) -> nn.Module:
        """Add the method's parameters to ``model``; return the model to train (default: ``model`` itself).

        May change ``model`` in place or wrap it; use the returned object.
        """
        return model

    def phases(self, model: nn.Module) -> list[tuple[Trainable, dict[str, Any]]]:
        """Training phases, in order: what trains and which training-config keys it overrides."""
        return [(self.trainable(model), {})]

    def merge(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The (wrapped, trained) model as a state dict of the plain timm architecture."""
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

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
    cls.needs = method_needs(cls.name)
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str, **params: Any) -> Method:
    if name not in REGISTRY:
        raise SubtuneError(f"unknown method {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name](**params)


def fit_phases(
    model: nn.Module,
    phases: list[tuple[Trainable, dict[str, Any]]],
    pre,
    train,
    evals: dict,
    cfg,
    seed: int = 0,
    device=None,
    final_evals: dict | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> dict[str, Any]:
    """Run a method's phases in order through :func:`subtune.train.fit` on the same model.

    Each phase trains with ``cfg`` updated by its overrides (checked like the
    ``train`` config section). ``final_evals`` (the test split) are read once,
    after the last phase. One phase gives exactly ``fit``'s metrics. With
    several: the last phase's ``{split}_acc/_loss``; ``history`` concatenated
    (``epoch`` counted across phases, ``phase`` added, 1-based);
    ``trainable_params`` the maximum over phases; ``epochs`` and
    ``wall_time_s`` summed; ``phases`` lists each phase's training config,
    trainable-parameter count and final validation metrics.
    """
    from ..train import TrainConfig, fit

    if not phases:
        raise SubtuneError("the method has no training phase")
    results = []
    for i, (trainable, overrides) in enumerate(phases):
        last = i == len(phases) - 1
        pcfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides}, f"train (phase {i + 1})") if overrides else cfg
        m = fit(model, trainable, pre, train, evals, pcfg, seed, device,
                final_evals=final_evals if last else None, progress=progress,
                desc=desc if len(phases) == 1 else f"{desc} {i + 1}/{len(phases)}")
        results.append((pcfg, m))
    if len(results) == 1:
        return results[0][1]
    out = dict(results[-1][1])
    history, offset = [], 0
    for i, (_, m) in enumerate(results):
        history += [{**row, "epoch": row["epoch"] + offset, "phase": i + 1} for row in m["history"]]
        offset += m["epochs"]
    out.update(
        history=history,
        trainable_params=max(m["trainable_params"] for _, m in results),
        epochs=sum(m["epochs"] for _, m in results),
        wall_time_s=sum(m["wall_time_s"] for _, m in results),
        phases=[{"phase": i + 1, "train": c.to_dict(), "trainable_params": m["trainable_params"],
                 **{k: v for k, v in m.items() if k.endswith(("_acc", "_loss"))}}
                for i, (c, m) in enumerate(results)],
    )
    return out
