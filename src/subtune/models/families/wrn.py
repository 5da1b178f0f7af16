"""The CIFAR WideResNet family: our ``WideResNet`` class (:mod:`subtune.models.wrn`, ``wrn28_10_cifar``,
RobustBench's "Standard" layout, the surgical-finetuning authors' model).

Source: :mod:`subtune.models.wrn` (``forward_features``: ``conv1`` -> ``block1`` -> ``block2`` ->
``block3`` -> ``bn1`` -> ``relu``; ``forward_head``: global pool, ``fc``).

- Blocks: every pre-activation BasicBlock ``block1.layer.0`` ... ``block3.layer.N``.
- Stem: ``conv1``; tail: the final ``bn1`` and ``relu``.
- Surgical groups, the authors' (``main.py``: ``first_two_block``, ``second_block``, ``third_block``):
  ``conv1`` + ``block1``, then ``block2``, ``block3``; the final ``bn1`` is in no group.
- LoRA (``target: null``): each block's 3x3 ``conv1`` and ``conv2``; not the stem ``conv1``, not the 1x1
  ``convShortcut``.
- SSF (ours, the ResNet rule): after every BatchNorm: each block's ``bn1`` (on the block input) and
  ``bn2``, and the final ``bn1``, before the ReLU.
- SAN (ours, the ResNet rule): every convolution (stem ``conv1``, each block's ``conv1``/``conv2``,
  each ``convShortcut``), the scale on its output; ``conv1``'s scale feeds ``conv2``.
"""

from __future__ import annotations

from torch import nn

from ..wrn import WideResNet
from . import Family, batchnorm_outputs, by_stage, conv3x3, conv_chain


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
    groups=by_stage,
    lora_targets=conv3x3,
    ssf_positions=batchnorm_outputs,
    san_wiring=conv_chain,
    tiny=("wrn28_10_cifar", {"depth": 10, "widen_factor": 1}, 32),
    shrink={"depth": 10, "widen_factor": 1},
)
