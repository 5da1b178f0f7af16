"""The ResNet family: timm's ``ResNet`` class (``resnet18``, ``resnet50``, ``resnet50d``, ... any ``timm.models.resnet``
architecture, BasicBlock or Bottleneck).

Source: timm ``timm/models/resnet.py`` (``ResNet.forward_features``: ``conv1`` -> ``bn1`` -> ``act1`` ->
``maxpool`` -> ``layer1`` ... ``layer4``; ``forward_head``: global pool, ``fc``).

- Blocks: every residual block ``layer1.0`` ... ``layer4.N`` (its ``downsample`` inside it).
- Stem: ``conv1``, ``bn1`` (``act1``, ``maxpool`` hold no parameters); tail: none.
- Surgical groups, one per stage: group 0 = ``conv1`` + ``bn1`` + ``layer1`` (the surgical-finetuning
  authors' "conv1 + block1" on timm's stem), then ``layer2``, ``layer3``, ``layer4``.
- LoRA (``target: null``): every 3x3 convolution inside the blocks (BasicBlock ``conv1``/``conv2``,
  Bottleneck ``conv2``); not the stem, not the 1x1 convolutions.
- SSF (ours; the SSF authors have no ResNet): after every BatchNorm (stem ``bn1``, each block's
  ``bn1``/``bn2``(/``bn3``), each ``downsample.1``), before the activation and the residual addition.
- SAN (ours): every convolution (stem ``conv1``, each block's ``conv1``/``conv2``(/``conv3``), each
  ``downsample.0``), the scale on its output; inside a block ``conv1`` feeds ``conv2`` (and ``conv2``
  feeds ``conv3`` in a Bottleneck); nothing crosses block boundaries.
"""

from __future__ import annotations

from timm.models.resnet import ResNet
from torch import nn

from . import Family, batchnorm_outputs, by_stage, conv3x3, conv_chain

STAGES = ("layer1", "layer2", "layer3", "layer4")


def blocks(model: nn.Module) -> list[str]:
    names = []
    for stage in STAGES:
        layer = getattr(model, stage, None)
        if layer is not None:
            names.extend(f"{stage}.{i}" for i in range(len(layer)))
    return names


FAMILY = Family(
    name="resnet",
    classes=(ResNet,),
    blocks=blocks,
    stem=("conv1", "bn1", "act1", "maxpool"),
    stem_forward=lambda m, x: m.maxpool(m.act1(m.bn1(m.conv1(x)))),
    tail=(),
    tail_forward=lambda m, h: h,
    groups=by_stage,
    lora_targets=conv3x3,
    ssf_positions=batchnorm_outputs,
    san_wiring=conv_chain,
    # zero_init_last=False: timm zero-initialises each block's last BN scale, so a fresh ResNet's outputs
    # would not depend on the block convolutions (the architecture is unchanged)
    tiny=("resnet18", {"channels": (8, 16, 32, 64), "zero_init_last": False}, 32),
    shrink={"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]},
)
