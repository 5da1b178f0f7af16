"""LLRD: full fine-tuning with layer-wise learning-rate decay (a SubTuning reviewer's "layer-wise learning
rates"; BEiT, Bao et al. 2022, ``unilm/beit/optim_factory.py``; timm's ``param_groups_layer_decay``).

Exact form: every parameter trains (every module in train mode, as FT); the network is cut into layers,
numbered from the input: the stem is layer 0, block ``i`` (0-based, the family record's ``blocks`` in
network order) is layer ``i + 1`` (a *transition* that runs right before block ``i``, ConvNeXt's
``downsample``, is in block ``i``'s layer; the record's ``tail``, the final norms: ViT ``norm``/``fc_norm``,
ConvNeXt ``norm_pre``/``head.norm``, WRN ``bn1``, is in the last block's layer, as timm's ``MATCH_PREV_GROUP``
puts ViT's ``norm``), and the classifier is the top layer ``L = len(blocks) + 1``. A parameter in layer
``l`` trains at::

    lr_l(t) = decay ** (L - l) * lr(t)

where ``lr(t)`` is the run's schedule at step ``t`` (warm-up and ``min_lr`` included: timm's ``lr_scale``
convention): the head at factor 1, the top block at ``decay``, block ``i`` at ``decay ** (len(blocks) -
i)``, the stem at ``decay ** L``. The factors are computed by timm's own
``timm.optim.param_groups_layer_decay`` given this layer map as the group matcher (in place of timm's
per-architecture ``group_matcher``); the training loop combines them with its weight-decay groups
(``no_weight_decay_1d``), one optimizer parameter group per (weight decay, factor).

The same as timm's own layer map (``model.group_matcher(coarse=False)``) on ResNet, token-pooled ViTs and
ConvNeXt's stem, downsamples, blocks and ``norm_pre`` (``tests/test_methods.py``). Departure from timm's:
a final norm inside the head (ConvNeXt ``head.norm``, an average-pooled ViT's ``fc_norm``) is in the last
block's layer here (the record's tail), where timm leaves it unmatched, at the head's factor 1. timm's
WideResNet has no group matcher (ours: the record's layers). BEiT's own map (``get_num_layer_for_vit``) puts
the final norm in the head's layer.

``decay`` is in the method's grid (``config.yaml``); ``decay: 1`` is FT exactly (the same floats).
"""

from __future__ import annotations

import math

from .. import SubtuneError
from ..models.blocks import family, head_names
from .base import Method, Param, Trainable, register
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")


def _in(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_ordinals(model: nn.Module) -> dict[str, float]:
    """Parameter name -> its layer's ordinal (stem 0, block ``i`` and its transition ``i + 1``, the tail
    with the last block, head ``inf``): the group matcher timm's layer decay renumbers (:func:`layer_scales`)."""
    fam = family(model)
    blocks = fam.blocks(model)
    trans = fam.transitions(model)
    places: list[tuple[str, float]] = [(s, 0.0) for s in fam.stem_of(model)]
    for i, b in enumerate(blocks):
        places.append((b, float(i + 1)))
        if b in trans:
            places.append((trans[b], float(i + 1)))
    places += [(t, float(len(blocks))) for t in fam.tail]
    places += [(h, math.inf) for h in head_names(model)]
    out = {}
    for n, _ in model.named_parameters():
        where = [o for p, o in places if _in(n, p)]
        if not where:
            raise SubtuneError(f"llrd: parameter {n!r} is in no stem, block, transition, tail or head of the "
                               f"{fam.name} family record")
        out[n] = where[0]
    return out


class _LayerMap:
    """What timm's ``param_groups_layer_decay`` reads of a model (``named_parameters``, ``group_matcher``):
    shape-only stand-ins of the model's parameters (all requiring grad, whatever the model's flags) and a
    group matcher that answers :func:`layer_ordinals`."""

    def __init__(self, model: nn.Module):
        self.ordinals = layer_ordinals(model)
        self.params = [(n, nn.Parameter(torch.empty(p.shape, device="meta"))) for n, p in model.named_parameters()]

    def named_parameters(self):
        return iter(self.params)

    def group_matcher(self, coarse: bool = False):
        return lambda name: (self.ordinals[name],)


def layer_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Parameter name -> its learning-rate factor ``decay ** (L - layer)``, from timm's
    ``param_groups_layer_decay`` with our layer map."""
    from timm.optim import param_groups_layer_decay

    proxy = _LayerMap(model)
    names = {id(p): n for n, p in proxy.params}
    groups = param_groups_layer_decay(proxy, weight_decay=0.0, layer_decay=decay, weight_decay_exclude_1d=False)
    out = {names[id(p)]: float(g["lr_scale"]) for g in groups for p in g["params"]}
    if len(out) != len(proxy.params):
        raise SubtuneError("llrd: timm's layer decay left out parameters")
    return out


@register
class LLRD(Method):
    name = "llrd"
    label = "FT+LLRD"
    order = 22
    own_head = True  # full fine-tuning: the head trains with head keep too
    parameters = {"decay": Param(0.75, "a number in (0, 1]", {"type": "number", "exclusiveMinimum": 0, "maximum": 1})}

    def trainable(self, model: nn.Module) -> Trainable:
        t = Trainable.everything(model)
        t.lr_scale = layer_scales(model, float(self.params["decay"]))
        t.notes.update(decay=float(self.params["decay"]), min_lr_scale=min(t.lr_scale.values()))
        return t
