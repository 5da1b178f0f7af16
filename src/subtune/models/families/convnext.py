"""The ConvNeXt family: timm's ``ConvNeXt`` class (``convnext_atto`` ... ``convnext_xxlarge``, ``convnext_tiny_hnf``,
... any ``timm.models.convnext`` architecture, with the 1x1-convolution MLP (``conv_mlp``: atto to nano) or the
Linear MLP on channels-last tensors (tiny and up)).

Source: timm ``timm/models/convnext.py`` (``forward_features``: ``stem`` (4x4 stride-4 conv ``stem.0``,
LayerNorm2d ``stem.1``) -> ``stages.0`` ... ``stages.3`` (each: ``downsample`` (LayerNorm2d ``.0``, 2x2
stride-2 conv ``.1``; Identity in stage 0), then ``blocks``) -> ``norm_pre`` (Identity unless
``head_norm_first``); ``forward_head``: ``head`` = global pool, ``head.norm``, flatten, ``head.fc``). A block
(``ConvNeXtBlock``) is: 7x7 depthwise ``conv_dw`` -> ``norm`` -> ``mlp.fc1`` -> GELU -> ``mlp.fc2`` -> layer
scale ``gamma`` -> + shortcut.

- Blocks (timm's layer map): every ``ConvNeXtBlock`` ``stages.N.blocks.M``. The stage's ``downsample``
  belongs to no block (timm's map gives it its stage's first ordinal): it is the *transition* that runs
  right before ``stages.N.blocks.0`` (frozen under SubTuning; the split and the multi-task model run it as
  part of the suffix that starts at that block).
- Stem (timm's layer map): ``stem``. Tail: ``norm_pre`` (and ``head.norm``, inside ``forward_head``); the
  classifier is ``head.fc`` (timm's ``pretrained_cfg['classifier']``), so a new head is a new ``head.fc`` and
  ``head.norm`` is a frozen part, like a ViT's final norm.
"""

from __future__ import annotations

from timm.models.convnext import ConvNeXt
from torch import nn

from . import Family


def transitions(model: nn.Module) -> dict[str, str]:
    return {f"stages.{s}.blocks.0": f"stages.{s}.downsample" for s, stage in enumerate(model.stages)
            if len(stage.blocks)}


FAMILY = Family(
    name="convnext",
    classes=(ConvNeXt,),
    stem_forward=lambda m, x: m.stem(x),
    transitions=transitions,
    tail=("norm_pre", "head.norm"),
    tail_forward=lambda m, h: m.norm_pre(h),
    # ls_init_value=1: timm's 1e-6 layer scale would make a fresh model's outputs ignore its blocks, and the
    # merge tests would prove nothing (the architecture is unchanged)
    tiny=("convnext_tiny", {"dims": (8, 16, 32, 64), "depths": (1, 1, 2, 1), "ls_init_value": 1.0}, 32),
    shrink={"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]},
)
