"""Backbone families: one :class:`Family` record per family, one module per record.

Every module of this package (``resnet.py``, ``vit.py``, ``wrn.py``,
``convnext.py``, ...) defines ``FAMILY``, a :class:`Family`, and everything
the package needs to know about that family is in it: which model classes it
matches, its blocks, stem, transitions and tail (the prefix/suffix split,
:mod:`subtune.models.split`, and the multi-task model,
:mod:`subtune.multitask`, run the network from them), the layers LoRA adapts,
the positions SSF and SAN adapt, Surgical's groups, and a tiny instance for
tests. Methods and the split read these fields; none of them branches on a
family's name. Adding a family is adding one module here: :func:`families`
imports every module of the package on first use (they import timm, which
takes seconds; config validation needs none of this), and the contract tests
parametrise over :func:`families`, so a new family is tested without being
listed anywhere.

The forward through a family's model, as the split computes it::

    h = stem_forward(model, x)
    for each block b (in ``blocks(model)`` order):
        h = transition(b)(h)   # if ``transitions(model)`` names a module that runs before b
        h = b(h)
    logits = model.forward_head(tail_forward(model, h))   # pre_logits=True: the features

which must equal ``model(x)`` exactly (``tests/test_models.py``).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from ... import SubtuneError
from ..._lazy import lazy

nn = lazy("torch.nn")

#: (module whose output is scaled, channel dim of that output, module the scale/shift merges into)
SSFPosition = tuple[str, int, str]
#: (adapted module, channel dim of its output, anterior module or None, module the scale merges into)
SANWire = tuple[str, int, Union[str, None], str]


def _no_transitions(model: "nn.Module") -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Family:
    """One backbone family (see the package docstring for how the fields compose).

    - ``name``: the family's name (``st.family``, test ids).
    - ``classes``: the model classes it matches (``isinstance``).
    - ``blocks(model)``: the candidate block names (SubTuning's unit), in network order.
    - ``stem``: top-level modules or parameters the stem uses (before the first block);
      Surgical's group 0 starts with those that hold parameters, in this order.
    - ``stem_forward(model, x)``: the stem's computation.
    - ``transitions(model)``: ``{block: module}``, a frozen module that runs right before
      that block and belongs to no block (ConvNeXt's per-stage downsample); default none.
    - ``tail``: top-level modules or module names between the last block and the
      classifier (final norms); a trainable parameter there counts as head-side for the
      prefix cache.
    - ``tail_forward(model, h)``: their computation; ``model.forward_head`` follows.
    - ``groups(model, blocks)``: Surgical's groups of module names, in network order
      (:func:`subtune.methods.surgical.surgical_groups` puts the stem in front of group 0).
    - ``lora_targets``: LoRA's default targets (``target: null``): module names relative to
      a block (a tuple, matched as the full relative name or its last components), or a
      predicate ``(relative name, module) -> bool``.
    - ``ssf_positions(model)``: SSF's positions, :data:`SSFPosition` tuples.
    - ``san_wiring(model)``: SAN's adapted layers, :data:`SANWire` tuples.
    - ``tiny``: ``(timm name, kwargs, input size)`` of a small representative instance, for
      tests and smoke runs.
    - ``shrink``: size-reducing ``timm.create_model`` kwargs for any architecture of the
      family (the architecture stays), for tests that run the paper configs small.
    """

    name: str
    classes: tuple[type, ...]
    blocks: Callable[[Any], list[str]]
    stem: tuple[str, ...]
    stem_forward: Callable[[Any, Any], Any]
    tail: tuple[str, ...]
    tail_forward: Callable[[Any, Any], Any]
    groups: Callable[[Any, list[str]], list[list[str]]]
    lora_targets: Union[tuple[str, ...], Callable[[str, Any], bool]]
    ssf_positions: Callable[[Any], list[SSFPosition]]
    san_wiring: Callable[[Any], list[SANWire]]
    tiny: tuple[str, dict, int]
    shrink: dict = field(default_factory=dict)
    transitions: Callable[[Any], dict[str, str]] = _no_transitions

    def matches(self, model: "nn.Module") -> bool:
        return isinstance(model, self.classes)


# ------------------------------------------------------------------ shared helpers for records
def by_stage(model: "nn.Module", blocks: list[str]) -> list[list[str]]:
    """One group per stage: blocks whose names share everything but the last component, in order."""
    stages: dict[str, list[str]] = {}
    for b in blocks:
        stages.setdefault(b.rsplit(".", 1)[0], []).append(b)
    return list(stages.values())


def in_four(model: "nn.Module", blocks: list[str]) -> list[list[str]]:
    """Four groups of consecutive blocks (the last may be shorter)."""
    size = -(-len(blocks) // 4)
    return [blocks[i : i + size] for i in range(0, len(blocks), size)]


def conv3x3(rel: str, module: "nn.Module") -> bool:
    """LoRA's default on convolutional residual blocks: every 3x3 convolution."""
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3)


def has_params(model: "nn.Module", name: str) -> bool:
    """``name`` is a parameter of ``model``, or a module of it holding parameters."""
    obj = getattr(model, name, None) if "." not in name else None
    if obj is None:
        try:
            obj = model.get_submodule(name)
        except AttributeError:
            return False
    return isinstance(obj, nn.Parameter) or (isinstance(obj, nn.Module) and any(True for _ in obj.parameters()))


def batchnorm_outputs(model: "nn.Module") -> list[SSFPosition]:
    """SSF on a convolutional network: after every BatchNorm (channel dim 1), merged into the BatchNorm."""
    return [(n, 1, n) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def conv_chain(model: "nn.Module") -> list[SANWire]:
    """SAN on a convolutional residual network: every convolution, the scale on its output (channel dim 1);
    inside a block ``conv2`` is fed by ``conv1`` and ``conv3`` by ``conv2``; nothing crosses blocks."""
    blocks = family(model).blocks(model)
    out: list[SANWire] = []
    for n, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        anterior = None
        for b in blocks:
            if n.startswith(b + ".") and n[len(b) + 1:] in ("conv2", "conv3"):
                anterior = f"{b}.conv{int(n[-1]) - 1}"
        out.append((n, 1, anterior, n))
    return out


def channel_dim(module: "nn.Module") -> int:
    """Where a module's output keeps its channels: 1 for NCHW (convolutions, timm's LayerNorm2d, BatchNorm),
    -1 for channels-last (Linear, LayerNorm)."""
    from timm.layers import LayerNorm2d

    if isinstance(module, (LayerNorm2d, nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
        return 1
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        return -1
    raise SubtuneError(f"no channel dimension known for {type(module).__name__}")


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
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            if info.name.startswith("_"):
                continue
            mod = importlib.import_module(f"{__name__}.{info.name}")
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


__all__ = ["Family", "SANWire", "SSFPosition", "batchnorm_outputs", "by_stage", "channel_dim", "conv3x3", "conv_chain",
           "families", "family", "family_for_arch", "has_params", "in_four", "register_family"]
