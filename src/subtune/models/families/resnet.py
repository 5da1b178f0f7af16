"""The ResNet family: timm's ``ResNet`` class (``resnet18``, ``resnet50``, ``resnet50d``, ... any ``timm.models.resnet``
architecture, BasicBlock or Bottleneck).

Source: timm ``timm/models/resnet.py`` (``forward_features``: ``conv1`` -> ``bn1`` -> ``act1`` ->
``maxpool`` -> ``layer1`` ... ``layer4``; ``forward_head``: global pool, ``fc``).

- Blocks (timm's layer map): every residual block ``layer1.0`` ... ``layer4.N`` (its ``downsample`` inside it).
- Stem (timm's layer map): ``conv1``, ``bn1``, ``maxpool`` (``maxpool`` holds no parameters, nor does ``act1``,
  which the map leaves out); tail: none.
"""

from __future__ import annotations

from timm.models.resnet import ResNet

from . import Family

FAMILY = Family(
    name="resnet",
    classes=(ResNet,),
    stem_forward=lambda m, x: m.maxpool(m.act1(m.bn1(m.conv1(x)))),
    tail=(),
    tail_forward=lambda m, h: h,
    # zero_init_last=False: timm zero-initialises each block's last BN scale, so a fresh ResNet's outputs
    # would not depend on the block convolutions (the architecture is unchanged)
    tiny=("resnet18", {"channels": (8, 16, 32, 64), "zero_init_last": False}, 32),
    shrink={"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]},
)
