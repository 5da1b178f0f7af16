"""Surgical fine-tuning (Lee et al., arXiv 2210.11466): one contiguous group of blocks plus the head.

The group is chosen on validation data (the workflow scores every group like a
selection round and trains the best). Groups, in network order: the backbone
family record's ``groups``, with the record's ``stem`` (its entries holding
parameters) in front of group 0 (:mod:`subtune.models.families`; each record's
docstring gives its groups and their source). The CIFAR WideResNet's are the
authors' (``conv1`` + ``block1``, ``block2``, ``block3``: their
``first_two_block``, ``second_block``, ``third_block`` in ``main.py``); ResNet
carries their "first block = conv1 + block1" convention over to timm's stages
(``conv1``, ``bn1`` + ``layer1``, then ``layer2`` ... ``layer4``); ConvNeXt
is grouped by stage the same way, each stage with its downsample; ViT's four
groups of consecutive blocks are our choice (the authors define none).

The head: with a new head (``targets.<name>.head: new``) it trains with the
group. With the source head kept (``head: keep``) only the group trains, as in
the authors' code, which keeps the source classifier and gives the optimizer
the group's parameters only (the rule is method-independent, see
:mod:`.base`).

The authors' "last" option (the head only) is LP, and "all" is FT: both are
methods of their own here.
"""

from __future__ import annotations


from .. import SubtuneError
from ..models.blocks import block_names, family, stem_names
from .base import Method, Param, Trainable, is_int, register
from .._lazy import lazy

nn = lazy("torch.nn")


def surgical_groups(model: nn.Module) -> list[list[str]]:
    """The module (or parameter) names of each group, in network order."""
    groups = [list(g) for g in family(model).groups(model, block_names(model))]
    groups[0] = stem_names(model) + groups[0]
    return groups


@register
class Surgical(Method):
    name = "surgical"
    label = "Surgical"
    order = 40
    needs = "surgical"  # the group is chosen on validation (``group`` receives it)
    # the range is the model's (checked when it trains)
    parameters = {"group": Param(0, "a group index (0 = the first group)", is_int)}

    def trainable(self, model: nn.Module) -> Trainable:
        groups = surgical_groups(model)
        g = self.params["group"]
        if not isinstance(g, int) or not 0 <= g < len(groups):
            raise SubtuneError(f"surgical: group must be 0..{len(groups) - 1}, not {g!r}")
        t = self.modules(model, groups[g])
        t.notes["group"] = g
        return t
