"""The EfficientNet family: timm's ``EfficientNet`` class (``tf_efficientnet_lite0`` ... ``lite4``,
``efficientnet_b0`` ..., ``tf_efficientnet_*``, ``mobilenetv2_*``, ``mnasnet_*``, ``tinynet_*``, ``test_efficientnet``:
every architecture timm builds with ``timm.models.efficientnet.EfficientNet``).

Source: timm ``timm/models/efficientnet.py`` (``forward_features``: ``conv_stem`` -> ``bn1`` -> ``blocks`` ->
``conv_head`` -> ``bn2``; ``forward_head``: global pool, dropout, ``classifier``) and
``timm/models/_efficientnet_blocks.py``. ``blocks`` is a Sequential of stages, each a Sequential of blocks:
``DepthwiseSeparableConv`` (``conv_dw`` -> ``bn1`` -> ``se`` -> ``conv_pw`` -> ``bn2``), ``InvertedResidual``
(``conv_pw`` -> ``bn1`` -> ``conv_dw`` -> ``bn2`` -> ``se`` -> ``conv_pwl`` -> ``bn3``), ``EdgeResidual``
(``conv_exp`` -> ``bn1`` -> ``se`` -> ``conv_pwl`` -> ``bn2``) or ``ConvBnAct`` (``conv`` -> ``bn1``). Every norm is
timm's ``BatchNormAct2d``: a ``BatchNorm2d`` whose forward also applies its children ``drop`` (an Identity) and
``act`` (ReLU6 on the Lite models, SiLU on B0-B7).

- Blocks (timm's layer map): every ``blocks.S.I`` (EfficientNet-Lite0: 16 blocks in 7 stages, MobileNetV2: 17).
- Stem (timm's layer map): ``conv_stem``, ``bn1``. Tail: ``conv_head``, ``bn2`` (the 1x1 convolution to
  ``num_features`` and its norm, between the last block and the pooling): frozen under SubTuning and Surgical,
  like a ViT's final norm; the classifier is ``classifier`` (timm's ``pretrained_cfg['classifier']``).
"""

from __future__ import annotations

from timm.models.efficientnet import EfficientNet
from torch import nn

from . import Family


def _tail_forward(model: nn.Module, h):
    return model.bn2(model.conv_head(h))


FAMILY = Family(
    name="efficientnet",
    classes=(EfficientNet,),
    stem_forward=lambda m, x: m.bn1(m.conv_stem(x)),
    tail=("conv_head", "bn2"),
    tail_forward=_tail_forward,
    # timm's own tiny EfficientNet (356k parameters): ConvBnAct, EdgeResidual and InvertedResidual blocks with
    # squeeze-and-excitation, so the contract tests see every block kind the record handles
    tiny=("test_efficientnet", {}, 32),
    shrink={},
)
