"""Backbone families: one :class:`Family` record per family, one module per record.

Every module of this package (``resnet.py``, ``vit.py``, ``wrn.py``,
``convnext.py``, ...) defines ``FAMILY``, a :class:`Family`, which says what a
family's network *is*: which model classes it matches, its blocks, stem,
transitions and tail (the prefix/suffix split, :mod:`subtune.models.split`,
and the multi-task model, :mod:`subtune.multitask`, run the network from
them), and a tiny instance for tests. Blocks and stem come from timm's own
``group_matcher`` (the layer map timm's layer decay reads) unless a record
names them, which it does only where timm's map does not answer (its
docstring says why).

What a *method* does on a family (the layers LoRA adapts, the positions SSF
and SAN adapt, Surgical's groups) is the method's: each such method module
keeps a table keyed by family name (:attr:`subtune.methods.base.Method.per_family`,
as peft keeps its LoRA target modules per model type), so a new method with
per-backbone knowledge is one file, and a method asked about a family it has
no entry for says so, naming both.

Adding a family is adding one module here (plus an entry in each such
method's table): :func:`families` imports every module of the package on
first use (they import timm, which takes seconds; config validation needs
none of this), and the contract tests parametrise over :func:`families`, so
a new family is tested without being listed anywhere.

The forward through a family's model, as the split computes it::

    h = stem_forward(model, x)
    for each block b (in ``blocks(model)`` order):
        h = transition(b)(h)   # if ``transitions(model)`` names a module that runs before b
        h = b(h)
    logits = model.forward_head(tail_forward(model, h))   # pre_logits=True: the features

which must equal ``model(x)`` exactly (``tests/test_models.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ... import SubtuneError
from ..._lazy import import_submodules, lazy

nn = lazy("torch.nn")


def _no_transitions(model: "nn.Module") -> dict[str, str]:
    return {}


# ------------------------------------------------------------------ timm's layer map
def _matcher(model: "nn.Module") -> dict:
    """timm's fine-grained layer map of ``model`` (``group_matcher(coarse=False)``)."""
    gm = getattr(model, "group_matcher", None)
    if not callable(gm):
        raise SubtuneError(f"{type(model).__name__} has no timm group_matcher: its family record must name its "
                           "blocks and stem")
    return gm(coarse=False)


def matcher_blocks(model: "nn.Module") -> list[str]:
    """The blocks of timm's layer map: the modules its per-block patterns (those without a fixed ordinal;
    the fixed ones are a final norm or a stage's downsample) match in full, in the map's order."""
    spec = _matcher(model)["blocks"]
    patterns = [re.compile(p) for p, fixed in ([(spec, None)] if isinstance(spec, str) else spec) if fixed is None]
    found: dict[str, tuple[int, ...]] = {}
    for name, _ in model.named_modules():
        for rx in patterns:
            m = rx.match(name)
            if m is not None and m.end() == len(name):
                found[name] = tuple(int(g) for g in m.groups())
                break
    return sorted(found, key=found.__getitem__)


def matcher_stem(model: "nn.Module") -> list[str]:
    """The stem of timm's layer map: the top-level parameters and modules its ``stem`` pattern matches (timm
    matches it at the start of parameter names), parameters first, each in the model's own order."""
    rx = re.compile(_matcher(model)["stem"])
    tops = [n for n, _ in model.named_parameters(recurse=False)] + [n for n, _ in model.named_children()]
    return [n for n in tops if rx.match(n)]


@dataclass(frozen=True)
class Family:
    """One backbone family (see the package docstring for how the fields compose).

    - ``name``: the family's name (``st.family``, test ids, the methods' per-family tables).
    - ``classes``: the model classes it matches (``isinstance``).
    - ``blocks(model)``: the candidate block names (SubTuning's unit), in network order; default:
      timm's layer map (:func:`matcher_blocks`).
    - ``stem``: top-level modules or parameters the stem uses (before the first block); default
      (empty): those timm's layer map puts in its stem (:func:`matcher_stem`). Read it through
      :meth:`stem_of`. Surgical's group 0 starts with those that hold parameters, in this order.
    - ``stem_forward(model, x)``: the stem's computation.
    - ``transitions(model)``: ``{block: module}``, a frozen module that runs right before
      that block and belongs to no block (ConvNeXt's per-stage downsample); default none.
    - ``tail``: top-level modules or module names between the last block and the
      classifier (final norms); a trainable parameter there counts as head-side for the
      prefix cache.
    - ``tail_forward(model, h)``: their computation; ``model.forward_head`` follows.
    - ``tiny``: ``(timm name, kwargs, input size)`` of a small representative instance, for
      tests and smoke runs.
    - ``shrink``: size-reducing ``timm.create_model`` kwargs for any architecture of the
      family (the architecture stays), for tests that run the paper configs small.
    """

    name: str
    classes: tuple[type, ...]
    stem_forward: Callable[[Any, Any], Any]
    tail: tuple[str, ...]
    tail_forward: Callable[[Any, Any], Any]
    tiny: tuple[str, dict, int]
    blocks: Callable[[Any], list[str]] = matcher_blocks
    stem: tuple[str, ...] = ()
    shrink: dict = field(default_factory=dict)
    transitions: Callable[[Any], dict[str, str]] = _no_transitions

    def matches(self, model: "nn.Module") -> bool:
        return isinstance(model, self.classes)

    def stem_of(self, model: "nn.Module") -> list[str]:
        """The stem's top-level names for ``model``: the record's, or timm's layer map's."""
        return list(self.stem) if self.stem else matcher_stem(model)


def has_params(model: "nn.Module", name: str) -> bool:
    """``name`` is a parameter of ``model``, or a module of it holding parameters."""
    obj = getattr(model, name, None) if "." not in name else None
    if obj is None:
        try:
            obj = model.get_submodule(name)
        except AttributeError:
            return False
    return isinstance(obj, nn.Parameter) or (isinstance(obj, nn.Module) and any(True for _ in obj.parameters()))


# ------------------------------------------------------------------ the registry
_FAMILIES: list[Family] = []
_loaded = False


def register_family(record: Family) -> Family:
    """Add ``record`` (a family defined outside this package, e.g. in a test or a plugin)."""
    if any(f.name == record.name for f in families()):
        raise SubtuneError(f"backbone family {record.name!r} is registered twice")
    _FAMILIES.append(record)
    return record


def families() -> list[Family]:
    """Every registered family: this package's modules (alphabetical), then any registered later."""
    global _loaded
    if not _loaded:
        _loaded = True
        found = []
        for mod in import_submodules(__name__, __path__, sort=True):
            rec = getattr(mod, "FAMILY", None)
            if not isinstance(rec, Family):
                raise SubtuneError(f"{mod.__name__} defines no FAMILY record")
            found.append(rec)
        _FAMILIES[:0] = found
    return _FAMILIES


def family(model: "nn.Module") -> Family:
    """The record whose classes ``model`` is an instance of."""
    for f in families():
        if f.matches(model):
            return f
    raise SubtuneError(
        f"unsupported backbone class {type(model).__name__}: known families are "
        + ", ".join(f.name for f in families())
    )


def family_for_arch(arch: str, **kwargs: Any) -> Family:
    """The family of timm architecture ``arch``, from the class of an instance built on the meta device
    (no memory, no weights)."""
    import timm
    import torch

    from .. import wrn  # noqa: F401  (registers our own architectures with timm)

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, **kwargs)
    return family(model)


__all__ = ["Family", "families", "family", "family_for_arch", "has_params", "matcher_blocks", "matcher_stem",
           "register_family"]
