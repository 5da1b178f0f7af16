"""The CIFAR WideResNet family: our ``WideResNet`` class (:mod:`subtune.models.wrn`, ``wrn28_10_cifar``,
RobustBench's "Standard" layout, the surgical-finetuning authors' model).

Source: :mod:`subtune.models.wrn` (``forward_features``: ``conv1`` -> ``block1`` -> ``block2`` ->
``block3`` -> ``bn1`` -> ``relu``; ``forward_head``: global pool, ``fc``).

- Blocks: every pre-activation BasicBlock ``block1.layer.0`` ... ``block3.layer.N``.
- Stem: ``conv1``; tail: the final ``bn1`` and ``relu``.

The record names its blocks and stem itself: the class is ours, not timm's, and defines no timm
``group_matcher`` for the layer map to come from.
"""

from __future__ import annotations

from torch import nn

from ..wrn import WideResNet
from . import Family


def blocks(model: nn.Module) -> list[str]:
    return [f"{s}.layer.{i}" for s in ("block1", "block2", "block3") for i in range(len(model.get_submodule(s).layer))]


FAMILY = Family(
    name="wrn",
    classes=(WideResNet,),
    blocks=blocks,
    stem=("conv1",),
    stem_forward=lambda m, x: m.conv1(x),
    tail=("bn1",),
    tail_forward=lambda m, h: m.relu(m.bn1(h)),
    tiny=("wrn28_10_cifar", {"depth": 10, "widen_factor": 1}, 32),
    shrink={"depth": 10, "widen_factor": 1},
)
