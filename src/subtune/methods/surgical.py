"""Surgical fine-tuning (Lee et al., arXiv 2210.11466): one contiguous group of blocks plus the head.

The group is chosen on validation data (the workflow scores every group like a
selection round and trains the best). Groups, in network order:
:data:`SURGICAL_GROUPS`, this module's table keyed by backbone family (each
entry's docstring gives its groups and their source), with the family's stem
(its entries holding parameters) in front of group 0. The CIFAR WideResNet's
are the authors' (``conv1`` + ``block1``, ``block2``, ``block3``: their
``first_two_block``, ``second_block``, ``third_block`` in ``main.py``); ResNet
carries their "first block = conv1 + block1" convention over to timm's stages
(``conv1``, ``bn1`` + ``layer1``, then ``layer2`` ... ``layer4``); ConvNeXt
and EfficientNet are grouped by stage the same way (ConvNeXt's each with its
downsample); ViT's four groups of consecutive blocks are our choice (the
authors define none).

The head: with a new head (``targets.<name>.head: new``) it trains with the
group. With the source head kept (``head: keep``) only the group trains, as in
the authors' code, which keeps the source classifier and gives the optimizer
the group's parameters only (the rule is method-independent, see
:mod:`.base`).

The authors' "last" option (the head only) is LP, and "all" is FT: both are
methods of their own here.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .. import SubtuneError
from ..models.blocks import block_names, has_params, stem_names
from .base import Method, Param, Trainable, family_entry, register
from .._lazy import lazy

nn = lazy("torch.nn")


# ------------------------------------------------------------------ groups, per family
def by_stage(model: nn.Module, blocks: list[str]) -> list[list[str]]:
    """ResNet, the WideResNet, EfficientNet: one group per stage, blocks whose names share everything but the
    last component, in order (ResNet ``layer1`` ... ``layer4``; WideResNet ``block1`` ... ``block3``, the final
    ``bn1`` in no group; EfficientNet ``blocks.S``)."""
    stages: dict[str, list[str]] = {}
    for b in blocks:
        stages.setdefault(b.rsplit(".", 1)[0], []).append(b)
    return list(stages.values())


def in_four(model: nn.Module, blocks: list[str]) -> list[list[str]]:
    """ViT (our choice; the surgical-finetuning authors define none for ViTs): four groups of consecutive blocks
    (the last may be shorter)."""
    size = -(-len(blocks) // 4)
    return [blocks[i : i + size] for i in range(0, len(blocks), size)]


def convnext(model: nn.Module, blocks: list[str]) -> list[list[str]]:
    """ConvNeXt (ours, by stage like ResNet's): group k = ``stages.k.downsample`` (when it has parameters) + the
    blocks of stage k."""
    out = []
    for s, _ in enumerate(model.stages):
        down = f"stages.{s}.downsample"
        out.append(([down] if has_params(model, down) else []) + [b for b in blocks if b.startswith(f"stages.{s}.")])
    return out


#: family name -> (model, its blocks) -> the groups' module names, in network order (the stem is added in front)
SURGICAL_GROUPS: dict[str, Callable[[Any, list[str]], list[list[str]]]] = {
    "convnext": convnext, "efficientnet": by_stage, "resnet": by_stage, "vit": in_four, "wrn": by_stage,
}


def surgical_groups(model: nn.Module, table: Mapping[str, Any] = SURGICAL_GROUPS,
                    who: str = "surgical") -> list[list[str]]:
    """The module (or parameter) names of each group, in network order (``table``: a per-family table of method
    ``who``)."""
    groups = [list(g) for g in family_entry(who, table, model)(model, block_names(model))]
    groups[0] = stem_names(model) + groups[0]
    return groups


@register
class Surgical(Method):
    name = "surgical"
    label = "Surgical"
    order = 40
    needs = "surgical"  # the group is chosen on validation (``group`` receives it)
    # the range is the model's (checked when it trains)
    parameters = {"group": Param(0, "a group index (0 = the first group)", {"type": "integer"})}
    per_family = SURGICAL_GROUPS

    def trainable(self, model: nn.Module) -> Trainable:
        groups = surgical_groups(model, self.per_family, self.name)
        g = self.params["group"]
        if not isinstance(g, int) or not 0 <= g < len(groups):
            raise SubtuneError(f"surgical: group must be 0..{len(groups) - 1}, not {g!r}")
        t = self.modules(model, groups[g])
        t.notes["group"] = g
        return t
