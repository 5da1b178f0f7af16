"""Surgical fine-tuning (Lee et al., arXiv 2210.11466): one contiguous group of blocks plus the head.

The group is chosen on validation data (the workflow scores every group like a
selection round and trains the best). Groups, in network order (the family
record's ``groups`` and ``stem``, :mod:`subtune.models.blocks`):

- CIFAR WideResNet (:mod:`subtune.models.wrn`, the authors' model): group 0 =
  ``conv1`` + ``block1``, then ``block2``, ``block3``: exactly the authors'
  ``first_two_block``, ``second_block``, ``third_block`` (``main.py``). The
  final ``bn1`` is in no group (the authors train it only with ``all``).
- ResNet family: group 0 = the stem (``conv1``, ``bn1``) and ``layer1``; then
  ``layer2``, ``layer3``, ``layer4``: the authors' "first block = conv1 +
  block1" convention carried over to timm's stages (their ImageNet-C option
  names ``conv1`` and ``layer1``; timm's stem BatchNorm ``bn1`` comes with it).
- ViT family: four groups of consecutive transformer blocks (the first with
  the patch embedding, positional embedding and class token, which are
  parameters, not modules). The authors do not define ViT groups; this is our
  choice.

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
from .base import Method, Trainable, register
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
    defaults = {"group": 0}

    def trainable(self, model: nn.Module) -> Trainable:
        groups = surgical_groups(model)
        g = self.params["group"]
        if not isinstance(g, int) or not 0 <= g < len(groups):
            raise SubtuneError(f"surgical: group must be 0..{len(groups) - 1}, not {g!r}")
        t = self.modules(model, groups[g])
        t.notes["group"] = g
        return t
