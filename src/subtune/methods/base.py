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

The head (``targets.<name>.head``, passed as ``get_method(name, head=...)``):
with ``head="new"`` (the default) the model has a fresh classifier and every
method trains it. With ``head="keep"`` the model starts from the checkpoint's
own classifier (the source task's head, same label space) and the head trains
only when the method itself trains it: LP (the head is the method), FT and
LP-FT (everything); the class attribute ``own_head`` marks them. Every other
method (Surgical, SubTuning, BitFit, LoRA, SSF, SAN, SubTuning+LoRA) then
trains only its own parameters, with the source head frozen. This is
surgical fine-tuning's code (``main.py``: the source classifier is kept and
the optimizer gets the chosen group's parameters only). The rule is applied
to whatever a method's :meth:`trainable` / :meth:`phases` return (wrapped
once per class in ``__init_subclass__``), so it holds for any method. A
phase left with nothing to train (SubTuning with no block selected and the
head kept) is evaluated without training (0 epochs).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .. import SubtuneError
from ..needs import method_needs
from ..models.blocks import head_names, module_params
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")

REGISTRY: dict[str, type["Method"]] = {}
HEADS = ("new", "keep")


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
    #: the method itself trains the classifier (LP, FT, LP-FT): with ``head="keep"`` it still trains it
    own_head: ClassVar[bool] = False

    def __init__(self, head: str = "new", **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise SubtuneError(f"method {self.name!r} takes no parameter {unknown[0]!r} (it takes: {known})")
        if head not in HEADS:
            raise SubtuneError(f"method {self.name!r}: head must be one of {', '.join(HEADS)}, not {head!r}")
        self.head = head
        self.params = {**self.defaults, **params}

    @property
    def trains_head(self) -> bool:
        """Whether the classifier is among the trained parameters (see the module docstring)."""
        return self.head == "new" or self.own_head

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "trainable" in cls.__dict__:
            fn = cls.__dict__["trainable"]

            @functools.wraps(fn)
            def trainable(self, model, *a, **kw):
                return self._head_rule(model, fn(self, model, *a, **kw))

            cls.trainable = trainable
        if "phases" in cls.__dict__:
            fp = cls.__dict__["phases"]

            @functools.wraps(fp)
            def phases(self, model, *a, **kw):
                return [(self._head_rule(model, t), o) for t, o in fp(self, model, *a, **kw)]

            cls.phases = phases

    def _head_rule(self, model: nn.Module, t: Trainable) -> Trainable:
        """``t`` without the classifier when the head is kept and the method does not train it itself."""
        if self.trains_head:
            return t
        heads = head_names(_plain(model))

        def in_head(name: str) -> bool:
            n = name.removeprefix("base_model.model.")  # peft's wrapper
            return any(n == h or n.startswith(h + ".") for h in heads)

        params = [(n, p) for n, p in t.params if not in_head(n)]
        modules = [m for m in t.train_modules if not (m and in_head(m))]
        return Trainable(params, modules, {**t.notes, "head": "keep"})

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
    def modules(model: nn.Module, names: list[str], head: bool = True) -> Trainable:
        """Train the named modules or parameters (ViT ``cls_token``, ``pos_embed``) and, if ``head``, the head.

        Modules run in train mode; a bare parameter has no mode.
        """
        prefixes = list(dict.fromkeys([*names, *(head_names(model) if head else [])]))
        mods = []
        for n in prefixes:
            if not n:
                mods.append(n)
                continue
            try:
                model.get_submodule(n)
                mods.append(n)
            except AttributeError:
                try:
                    model.get_parameter(n)
                except AttributeError:
                    raise SubtuneError(f"model has no module or parameter {n!r}") from None
        return Trainable(module_params(model, prefixes), mods)


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
        if not trainable.params and trainable.notes.get("head") == "keep":
            m = evaluate_only(model, pre, train, evals, pcfg, device, final_evals if last else None)
        else:
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


def _plain(model: nn.Module) -> nn.Module:
    """The timm model inside a peft wrapper (the model itself otherwise)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def evaluate_only(model: nn.Module, pre, train, evals: dict, cfg, device=None,
                  final_evals: dict | None = None) -> dict[str, Any]:
    """``fit``'s metrics for a model that trains nothing (the kept source head with no block): 0 epochs."""
    from ..train import evaluate, pick_device

    device = pick_device(device)
    t0 = time.perf_counter()
    model.to(device)
    out: dict[str, Any] = {"history": []}
    for split, (x, y) in {**evals, **(final_evals or {})}.items():
        r = evaluate(model, pre.to(device) if pre is not None else None, x, y, cfg.eval_batch_size, device)
        out[f"{split}_acc"], out[f"{split}_loss"] = r["acc"], r["loss"]
    out.update(trainable_params=0, total_params=sum(p.numel() for p in model.parameters()),
               wall_time_s=time.perf_counter() - t0, device=str(device), epochs=0, train_size=len(train[1]))
    return out
