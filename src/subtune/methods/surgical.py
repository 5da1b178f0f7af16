"""Surgical fine-tuning (Lee et al., arXiv 2210.11466): one contiguous group of blocks plus the head.

The group is chosen on validation data (the workflow scores every group like a
selection round and trains the best). Groups, in network order:

- ResNet family: group 0 = the stem (``conv1``, ``bn1``) and ``layer1``; then
  ``layer2``, ``layer3``, ``layer4``: the authors' "first block = conv1 +
  block1" convention carried over from their wide ResNet to timm's stages.
- ViT family: four groups of consecutive transformer blocks (the first with
  the patch embedding, positional embedding and class token). The authors do
  not define ViT groups; this is our choice.

The authors' "last" option (the head only) is LP, and "all" is FT: both are
methods of their own here.
"""

from __future__ import annotations


from .. import SubtuneError
from ..models.blocks import block_names, family_of, other_names
from .base import Method, Trainable, register
from .._lazy import lazy

nn = lazy("torch.nn")


def surgical_groups(model: nn.Module, n_groups: int = 4) -> list[list[str]]:
    """The module names of each group, in network order."""
    blocks = block_names(model)
    stem = [n for n in other_names(model) if n not in ("norm", "fc_norm", "head_drop")]
    if family_of(model) == "resnet":
        stages: dict[str, list[str]] = {}
        for b in blocks:
            stages.setdefault(b.split(".")[0], []).append(b)
        groups = list(stages.values())
    else:
        size = -(-len(blocks) // n_groups)
        groups = [blocks[i : i + size] for i in range(0, len(blocks), size)]
    groups[0] = stem + groups[0]
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
