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

- Blocks: every ``blocks.S.I`` (EfficientNet-Lite0: 16 blocks in 7 stages, MobileNetV2: 17).
- Stem: ``conv_stem``, ``bn1``. Tail: ``conv_head``, ``bn2`` (the 1x1 convolution to ``num_features`` and its
  norm, between the last block and the pooling): frozen under SubTuning and Surgical, like a ViT's final norm;
  the classifier is ``classifier`` (timm's ``pretrained_cfg['classifier']``).
- Surgical groups (ours, by stage as on ResNet): one group per stage ``blocks.S``; group 0 starts with the stem.
- LoRA (``target: null``, ours): the pointwise 1x1 convolutions of every block (``conv_pw``, ``conv_pwl``,
  ``conv_exp`` when 1x1, ``conv``), not the depthwise ones (a rank-r adapter on a depthwise kxk kernel has more
  parameters than the kernel, and peft's LoRA for grouped convolutions is limited) and not the
  squeeze-and-excitation convolutions. They hold almost all of a block's weights, as the MLP does in a ConvNeXt
  or ViT block.
- SSF (ours; the SSF authors have no EfficientNet): after every norm, before its activation, as on ResNet. The
  scale sits on the output of the norm's ``drop`` child (an Identity that runs between the BatchNorm and the
  activation in ``BatchNormAct2d``), so it merges exactly into the BatchNorm's affine parameters.
- SAN (ours): every convolution of the network except squeeze-and-excitation ones (stem, each block's, the tail's
  ``conv_head``), the scale on its output. Inside a block a convolution's scale feeds the next convolution of
  the block, except that no scale feeds a depthwise convolution (one input channel per group, as on ConvNeXt):
  ``conv_dw`` feeds ``conv_pwl`` in an InvertedResidual, ``conv_pw`` in a DepthwiseSeparableConv, ``conv_exp``
  feeds ``conv_pwl`` in an EdgeResidual. Nothing crosses blocks. The trained norms are every BatchNorm's affine
  parameters (in eval mode, their statistics frozen), as on ResNet.
"""

from __future__ import annotations

from timm.layers import BatchNormAct2d
from timm.models.efficientnet import EfficientNet
from torch import nn

from . import Family, SANWire, SSFPosition, by_stage


def blocks(model: nn.Module) -> list[str]:
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def _convs(block: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """A block's convolutions in forward order (named_modules order is the forward order for every block
    class of the family), squeeze-and-excitation ones left out."""
    return [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("se.")]


def pointwise(rel: str, module: nn.Module) -> bool:
    """LoRA's default: a 1x1, ungrouped convolution outside the squeeze-and-excitation module."""
    return (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1
            and not rel.startswith("se.") and ".se." not in rel)


def ssf_positions(model: nn.Module) -> list[SSFPosition]:
    out: list[SSFPosition] = []
    for n, m in model.named_modules():
        if isinstance(m, BatchNormAct2d):
            out.append((f"{n}.drop", 1, n))  # between the BatchNorm and the activation
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out.append((n, 1, n))
    return out


def san_wiring(model: nn.Module) -> list[SANWire]:
    out: list[SANWire] = [("conv_stem", 1, None, "conv_stem")]
    for b in blocks(model):
        prev = None
        for rel, conv in _convs(model.get_submodule(b)):
            n = f"{b}.{rel}"
            anterior = prev if conv.groups == 1 else None
            out.append((n, 1, anterior, n))
            prev = n
    if isinstance(getattr(model, "conv_head", None), nn.Conv2d):
        out.append(("conv_head", 1, None, "conv_head"))
    return out


def _tail_forward(model: nn.Module, h):
    return model.bn2(model.conv_head(h))


FAMILY = Family(
    name="efficientnet",
    classes=(EfficientNet,),
    blocks=blocks,
    stem=("conv_stem", "bn1"),
    stem_forward=lambda m, x: m.bn1(m.conv_stem(x)),
    tail=("conv_head", "bn2"),
    tail_forward=_tail_forward,
    groups=by_stage,
    lora_targets=pointwise,
    ssf_positions=ssf_positions,
    san_wiring=san_wiring,
    # timm's own tiny EfficientNet (356k parameters): ConvBnAct, EdgeResidual and InvertedResidual blocks with
    # squeeze-and-excitation, so the contract tests see every block kind the record handles
    tiny=("test_efficientnet", {}, 32),
    shrink={},
)
