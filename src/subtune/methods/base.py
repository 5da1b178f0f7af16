"""The one interface every method implements.

A method decides *what trains*: given a backbone (with its new head) it
returns a :class:`Trainable`, the named parameters the optimizer updates and
the modules that run in train mode (everything else is frozen, in eval mode,
and stays bit-identical). *How* it trains (lr, epochs, ...) is the training
config, which the workflow sets per method.

A new method is one module in this package (any name not starting with
``_``): a class decorated by ``@register``. The package imports every such
module (:mod:`subtune.methods`), so nothing else lists it. The class is the
method's one definition, read by the workflow, the config check, the CLI,
the grids (:mod:`subtune.tune`) and the report; every attribute is
importable without torch, timm or peft (use :mod:`subtune._lazy` in the
module), because the Snakefile and the config check read them:

- ``name``: its key in configs, paths and ``--method``;
- ``label``, ``order``: its row label in tables and its place among the rows
  (ascending; :func:`method_label`, :func:`method_order`);
- ``needs``: what it needs from earlier workflow stages: ``None``,
  ``"selection"`` (the greedily selected blocks, passed as its ``blocks``
  parameter) or ``"surgical"`` (the group chosen on validation, passed as its
  ``group`` parameter); the workflow builds its job graph from it
  (:func:`method_needs`);
- ``own_head``: it trains the classifier itself (LP, FT, LP-FT), also with
  the source head kept (see below);
- ``heads``: the heads it supports (default both, ``("new", "keep")``; see
  below); another is refused naming the method;
- ``mergeable``: :meth:`Method.merge` gives a plain timm state dict (default
  True); False for a method whose trained model is not a timm architecture
  (Siamese SubTuning's two feature paths), whose ``merge`` raises;
- ``parameters``: its typed structural hyperparameters, ``{key: Param(default,
  kind, schema)}`` (``schema`` a JSON-schema fragment, the one statement of
  the constraint: the check and the config schema's ``params`` read it);
  ``defaults`` is derived from them. Anything else passed to
  it is rejected with the method's and the key's names, and a value failing
  its check with ``"<name>: <key> must be <kind>, not <value>"``; the config
  check, the grids and ``--method-params`` all go through this.

A method that needs per-backbone knowledge (the positions SSF scales, SAN's
wiring, LoRA's default targets, Surgical's groups) keeps it in its own
module, as ``per_family``: a table keyed by backbone family name
(:mod:`subtune.models.families`; peft keeps its LoRA target modules per model
type the same way). :meth:`Method.for_family` (or :func:`family_entry` for a
module-level table) returns a model's entry, and a family the table has no
entry for is a one-line error naming the method and the family. The family
records hold only structure (blocks, stem, tail), so such a method, like any
other, is one file.

The registry (:data:`REGISTRY`, name -> class) is checked on registration:
a duplicate name, a name with a ``-``, a missing label, or a ``needs``
without its parameter is an error at import.

A *variant* runs a registered method under a name of its own,
``<method>-<variant>`` (e.g. ``ssf-val-tuned``: SSF tuned on validation,
beside the ``ssf`` row that runs the authors' per-task values). A config
gives the variant its own training config, parameters and grid; it gets its
own runs, tuning results, MLflow runs and table row, labelled ``SSF
(val-tuned)`` and placed right after its method. The name alone says which
method runs (:func:`base_method`), so every stage resolves it the same way
with nothing passed beside it; registered names have no ``-`` for that
reason. :func:`method_class`, :func:`get_method`, :func:`method_needs`,
:func:`method_label` and :func:`method_order` accept variant names; a
variant of an unknown method is a one-line error naming both.

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

A method may also change *how* its parameters train through the
:class:`Trainable` it returns (:mod:`subtune.trainable`; the training loop
honours them, other methods are untouched): ``lr_scale`` (a constant lr
factor per parameter: LLRD), ``stages`` (a trainable set per epoch within one
run: gradual unfreezing) and ``hooks`` (:class:`~subtune.trainable.StepHooks`:
an extra loss and callbacks around each optimizer step, AdaLoRA's budget;
per-tensor lr factors computed after each backward pass, Auto-RGN).

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

import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Mapping

from .. import SubtuneError
from ..train_config import check_keywords, conforms
from ..models.blocks import family, head_names, module_params
from ..trainable import Trainable
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")

#: name -> method class, filled by :func:`register` when :mod:`subtune.methods` imports the package's modules
REGISTRY: dict[str, type["Method"]] = {}
#: joins a registered method's name and a variant's own part (``ssf-val-tuned``; see the module docstring)
VARIANT_SEP = "-"
HEADS = ("new", "keep")
NEEDS = (None, "selection", "surgical")
#: the parameter through which the workflow passes what a method needs (see :attr:`Method.needs`)
NEEDS_PARAM = {"selection": "blocks", "surgical": "group"}

__all__ = ["REGISTRY", "Method", "Param", "Trainable", "base_method", "family_entry", "fit_phases", "get_method",
           "method_class", "method_label", "method_needs", "method_order", "register"]


def family_entry(who: str, table: Mapping[str, Any], model: nn.Module) -> Any:
    """``table``'s entry for the backbone family of ``model`` (a per-family table of method ``who``); a family it
    has no entry for is an error naming both, since the table, not the family record, is where it would go."""
    name = family(model).name
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise SubtuneError(f"{who}: no entry for backbone family {name!r} (it has entries for: {known})")
    return table[name]


@dataclass(frozen=True)
class Param:
    """A method's typed parameter: its default, what a valid value is in words (``kind``, read in errors and the
    CLI's help: "a positive integer") and in a JSON-schema fragment (``schema``, e.g. :data:`POSITIVE_INT`).

    The fragment is the one statement of the constraint: :meth:`validate` checks values against it
    (:func:`subtune.train_config.conforms`) and the config schema's ``$defs.method_params`` embeds it
    (:meth:`Method.params_schema`). For a check no fragment expresses, ``schema`` may be a callable (True for a
    valid value); the config schema then leaves the key unconstrained and the check runs when the method is
    built. ``None``: checked against the model when the method runs (e.g. block names)."""

    default: Any
    kind: str
    schema: Mapping[str, Any] | Callable[[Any], bool] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.schema, Mapping):
            check_keywords(self.schema, f"Param({self.kind!r})")

    @property
    def check(self) -> Callable[[Any], bool] | None:
        """True for a valid value (``None``: no check here)."""
        if self.schema is None or callable(self.schema):
            return self.schema
        return functools.partial(conforms, self.schema)

    def json_schema(self) -> dict[str, Any]:
        """The fragment with the kind and the default as its description (no ``default`` keyword: the config
        check fills schema defaults in, and a ``params`` section's missing key must stay missing)."""
        own = dict(self.schema) if isinstance(self.schema, Mapping) else {}
        return {**own, "description": f"{self.kind}; default {json.dumps(self.default)}"}

    def validate(self, method: str, key: str, value: Any) -> None:
        check = self.check
        if check is not None and not check(value):
            raise SubtuneError(f"{method}: {key} must be {self.kind}, not {value!r}")


# fragments shared by the methods' parameters
POSITIVE_INT = {"type": "integer", "minimum": 1}
POSITIVE_NUMBER = {"type": "number", "exclusiveMinimum": 0}
BOOLEAN = {"type": "boolean"}
#: in [0, 1)
FRACTION = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
#: a list of non-empty strings (module or block names)
NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}}
#: null or a non-empty list of non-empty strings
NAMES_OR_NULL = {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}, "minItems": 1}


# checks for a parameter given as a callable (a custom method's), and the registration's own
def is_int(v: Any) -> bool:
    return conforms({"type": "integer"}, v)


def is_positive_int(v: Any) -> bool:
    return conforms(POSITIVE_INT, v)


class Method:
    """A method: what trains (see the module docstring for the attributes a method declares)."""

    name: ClassVar[str]
    #: the row label in tables
    label: ClassVar[str]
    #: the place among table rows (ascending; ties by name)
    order: ClassVar[int] = 1000
    #: what the method needs from earlier stages: None, "selection" (greedy selected blocks, as ``blocks``)
    #: or "surgical" (the group chosen on validation, as ``group``); the workflow reads it (:func:`method_needs`)
    needs: ClassVar[str | None] = None
    #: the method itself trains the classifier (LP, FT, LP-FT): with ``head="keep"`` it still trains it
    own_head: ClassVar[bool] = False
    #: the heads it supports (a subset of :data:`HEADS`)
    heads: ClassVar[tuple[str, ...]] = HEADS
    #: :meth:`merge` gives the state dict of the plain timm architecture
    mergeable: ClassVar[bool] = True
    #: typed structural hyperparameters: key -> :class:`Param`
    parameters: ClassVar[dict[str, Param]] = {}
    #: key -> default, derived from :attr:`parameters`
    defaults: ClassVar[dict[str, Any]] = {}
    #: its per-backbone knowledge: family name -> entry (what an entry is, is the method's; see the module docstring)
    per_family: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, head: str = "new", **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise SubtuneError(f"method {self.name!r} takes no parameter {unknown[0]!r} (it takes: {known})")
        if head not in HEADS:
            raise SubtuneError(f"method {self.name!r}: head must be one of {', '.join(HEADS)}, not {head!r}")
        if head not in self.heads:
            raise SubtuneError(f"method {self.name!r} supports head {' or '.join(self.heads)} only, not {head!r}")
        self.head = head
        self.params = {**self.defaults, **params}
        for key, spec in self.parameters.items():
            spec.validate(self.name, key, self.params[key])

    @classmethod
    def params_schema(cls) -> dict[str, Any]:
        """The JSON schema of this method's ``params`` (the config schema's ``$defs.method_params.<name>``)."""
        return {"type": "object", "additionalProperties": False,
                "properties": {k: p.json_schema() for k, p in cls.parameters.items()}}

    @property
    def trains_head(self) -> bool:
        """Whether the classifier is among the trained parameters (see the module docstring)."""
        return self.head == "new" or self.own_head

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "defaults" in cls.__dict__:
            raise TypeError(f"{cls.__qualname__}: declare typed parameters (parameters = {{key: Param(default, kind, "
                            f"schema)}}); defaults is derived from them")
        cls.defaults = {k: p.default for k, p in cls.parameters.items()}
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
        stages = [dataclasses.replace(s, names=[n for n in s.names if not in_head(n)],
                                      train_modules=[m for m in s.train_modules if not (m and in_head(m))])
                  for s in t.stages]
        return dataclasses.replace(t, params=params, train_modules=modules, notes={**t.notes, "head": "keep"},
                                   stages=stages)

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

    def for_family(self, model: nn.Module) -> Any:
        """This method's :attr:`per_family` entry for ``model``'s backbone family (:func:`family_entry`)."""
        return family_entry(self.name, self.per_family, model)

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
    """Add ``cls`` to :data:`REGISTRY` under its ``name``, checking what it declares (see the module docstring)."""
    where = f"method class {cls.__module__}.{cls.__qualname__}"
    name, label = cls.__dict__.get("name"), cls.__dict__.get("label")  # its own, not a base class's
    if not isinstance(name, str) or not name:
        raise SubtuneError(f"{where}: give it its own name (class attribute name)")
    if VARIANT_SEP in name:
        raise SubtuneError(f"{where}: the name {name!r} has a {VARIANT_SEP!r}, which names a variant "
                           f"(<method>{VARIANT_SEP}<variant>); use '_'")
    if name in REGISTRY and REGISTRY[name] is not cls:
        other = REGISTRY[name]
        raise SubtuneError(f"{where}: the name {name!r} is already registered by "
                           f"{other.__module__}.{other.__qualname__}")
    if not isinstance(label, str) or not label:
        raise SubtuneError(f"{where}: give it its own table label (class attribute label)")
    if not is_int(cls.order):
        raise SubtuneError(f"{where}: order must be an integer, not {cls.order!r}")
    if cls.needs not in NEEDS:
        raise SubtuneError(f"{where}: needs must be one of {NEEDS}, not {cls.needs!r}")
    if cls.needs and NEEDS_PARAM[cls.needs] not in cls.parameters:
        raise SubtuneError(f"{where}: needs {cls.needs} but has no parameter {NEEDS_PARAM[cls.needs]!r} to receive it")
    if not cls.heads or any(h not in HEADS for h in cls.heads):
        raise SubtuneError(f"{where}: heads must be a non-empty subset of {HEADS}, not {cls.heads!r}")
    bad = [k for k, p in cls.parameters.items() if not isinstance(p, Param)]
    if bad:
        raise SubtuneError(f"{where}: parameter {bad[0]!r} is not a Param")
    if not isinstance(cls.per_family, Mapping) or not all(isinstance(k, str) and k for k in cls.per_family):
        raise SubtuneError(f"{where}: per_family must map backbone family names to entries")
    REGISTRY[name] = cls
    return cls


def base_method(name: str) -> str:
    """The registered method that ``name`` runs: ``name`` itself, or for a variant ``<method>-<variant>`` the
    registered ``<method>`` (the part before the first ``-``; see the module docstring). A name that is neither
    comes back as it is (:func:`method_class` names it in its error)."""
    base, sep, variant = name.partition(VARIANT_SEP)
    return base if sep and variant and name not in REGISTRY and base in REGISTRY else name


def method_class(name: str) -> type[Method]:
    """The registered class of method ``name`` or of the method a variant runs (raises naming the known ones)."""
    cls = REGISTRY.get(base_method(name))
    if cls is not None:
        return cls
    known = ", ".join(sorted(REGISTRY))
    base, sep, variant = name.partition(VARIANT_SEP)
    if sep and variant and base not in REGISTRY:
        raise SubtuneError(f"unknown method {base!r} in variant {name!r} (<method>{VARIANT_SEP}<variant>; "
                           f"known methods: {known})")
    raise SubtuneError(f"unknown method {name!r} (known: {known})")


def get_method(name: str, **params: Any) -> Method:
    return method_class(name)(**params)


def method_needs(name: str) -> str | None:
    """What method ``name`` needs from earlier workflow stages (None for an unknown name: the config check names it)."""
    cls = REGISTRY.get(base_method(name))
    return cls.needs if cls is not None else None


def method_label(name: str) -> str:
    """The table label of method ``name`` (the name itself for an unregistered one); a variant's is its method's
    label with the variant's own part in parentheses (``ssf-val-tuned``: ``SSF (val-tuned)``)."""
    base = base_method(name)
    cls = REGISTRY.get(base)
    if cls is None:
        return name
    return cls.label if base == name else f"{cls.label} ({name[len(base) + len(VARIANT_SEP):]})"


def method_order(names: Iterable[str]) -> list[str]:
    """``names`` (duplicates dropped) in table order: registered methods by ``order`` (a variant right after its
    method), then the others by name."""
    ms = list(dict.fromkeys(names))
    known = [m for m in ms if base_method(m) in REGISTRY]
    known.sort(key=lambda m: (REGISTRY[base_method(m)].order, base_method(m), m != base_method(m), m))
    return known + sorted(m for m in ms if base_method(m) not in REGISTRY)


def describe_parameters() -> str:
    """Every method's parameters with their kinds and defaults, one method per line (the CLI's help)."""
    lines = []
    for m in method_order(REGISTRY):
        ps = REGISTRY[m].parameters
        body = "; ".join(f"{k}: {p.kind} (default {json.dumps(p.default)})" for k, p in ps.items()) or "none"
        lines.append(f"{m}: {body}")
    return "\n".join(lines)


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
            m = _fit_phase(model, trainable, pre, train, evals, final_evals if last else None, pcfg, seed, device,
                           progress, desc if len(phases) == 1 else f"{desc} {i + 1}/{len(phases)}")
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


def _fit_phase(model, trainable, pre, train, evals, final_evals, cfg, seed, device, progress, desc):
    """One phase through :func:`subtune.train.fit`; with its frozen prefix computed once where that is the
    run's own computation (:func:`subtune.prefix.run_start`: e.g. LP, LP-FT's first phase, SubTuning and
    Surgical from their first trained block on), which ``prefix_block`` in the metrics names."""
    from ..prefix import run_inputs, run_start
    from ..train import fit, pick_device

    start = run_start(model, trainable, cfg)
    if start is not None:
        dev, t0 = pick_device(device), time.perf_counter()
        splits = {"train": train, **{f"e:{k}": v for k, v in evals.items()},
                  **{f"f:{k}": v for k, v in (final_evals or {}).items()}}
        cached = run_inputs(model, pre, start, splits, cfg.eval_batch_size, dev)
        if cached is not None:
            feats, forward = cached
            m = fit(model, trainable, None, feats["train"], {k: feats[f"e:{k}"] for k in evals}, cfg, seed, dev,
                    final_evals={k: feats[f"f:{k}"] for k in final_evals or {}} or None, progress=progress,
                    desc=desc, forward=forward)
            m["prefix_block"] = start
            m["wall_time_s"] = time.perf_counter() - t0  # the prefix's computation included
            return m
    return fit(model, trainable, pre, train, evals, cfg, seed, device, final_evals=final_evals, progress=progress,
               desc=desc)


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
