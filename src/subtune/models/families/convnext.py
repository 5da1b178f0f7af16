"""The ConvNeXt family: timm's ``ConvNeXt`` class (``convnext_atto`` ... ``convnext_xxlarge``, ``convnext_tiny_hnf``,
... any ``timm.models.convnext`` architecture, with the 1x1-convolution MLP (``conv_mlp``: atto to nano) or the
Linear MLP on channels-last tensors (tiny and up)).

Source: timm ``timm/models/convnext.py`` (``forward_features``: ``stem`` (4x4 stride-4 conv ``stem.0``,
LayerNorm2d ``stem.1``) -> ``stages.0`` ... ``stages.3`` (each: ``downsample`` (LayerNorm2d ``.0``, 2x2
stride-2 conv ``.1``; Identity in stage 0), then ``blocks``) -> ``norm_pre`` (Identity unless
``head_norm_first``); ``forward_head``: ``head`` = global pool, ``head.norm``, flatten, ``head.fc``). A block
(``ConvNeXtBlock``) is: 7x7 depthwise ``conv_dw`` -> ``norm`` -> ``mlp.fc1`` -> GELU -> ``mlp.fc2`` -> layer
scale ``gamma`` -> + shortcut. The SSF positions follow the SSF authors' ConvNeXt
(github.com/dongzelian/SSF, ``models/convnext.py``, commit e94e0e7).

- Blocks: every ``ConvNeXtBlock`` ``stages.N.blocks.M``. The stage's ``downsample`` belongs to no block:
  it is the *transition* that runs right before ``stages.N.blocks.0`` (frozen under SubTuning; the split
  and the multi-task model run it as part of the suffix that starts at that block).
- Stem: ``stem``. Tail: ``norm_pre`` (and ``head.norm``, inside ``forward_head``); the classifier is
  ``head.fc`` (timm's ``pretrained_cfg['classifier']``), so a new head is a new ``head.fc`` and
  ``head.norm`` is a frozen part, like a ViT's final norm.
- Surgical groups (ours, by stage like ResNet's): group k = ``stages.k.downsample`` (when it has
  parameters) + the blocks of stage k; group 0 starts with the stem.
- LoRA (``target: null``): ``mlp.fc1`` and ``mlp.fc2`` of every block (Linear, or 1x1 Conv2d with
  ``conv_mlp``). Why: the pointwise MLP holds almost all of a block's weights (8 C^2 against 49 C for the
  depthwise conv), it is the counterpart of the ViT MLP that LoRA adapts there; a rank-r adapter on the
  depthwise 7x7 conv would have more parameters than the layer itself (and peft's LoRA for grouped
  convolutions is limited). The stem, downsample convolutions and head are not adapted.
- SSF (the authors' positions): after ``stem.0`` and ``stem.1``; after each ``downsample.0`` (norm) and
  ``downsample.1`` (conv); in every block after ``conv_dw``, ``norm``, ``mlp.fc1`` (before the GELU) and
  ``mlp.fc2`` (before the layer scale); at the end after the final norm (``head.norm``, or ``norm_pre`` with
  ``head_norm_first``). Departures: the authors' last scale/shift sits on ``norm_pre``'s output (an
  Identity in their default, i.e. on the last residual sum before pooling), where it cannot merge into a
  plain timm model (a LayerNorm follows the pooling); ours is after the final norm, as on the ViT, and
  merges into it. The authors put no scale after ``norm`` with ``conv_mlp`` (their code then uses its Linear
  MLP anyway); ours is there in both layouts. Channel dim: 1 for NCHW outputs (convolutions, LayerNorm2d),
  -1 for channels-last ones (``norm`` and the Linear MLP of tiny and up).
- SAN (ours; the SAN paper reports ConvNeXt, the authors' released code covers ViT): adapted layers are
  ``stem.0``, each ``downsample.1`` and in every block ``conv_dw``, ``mlp.fc1``, ``mlp.fc2``, the scale on
  the output; inside a block ``conv_dw``'s scale feeds ``mlp.fc1`` (through ``norm``, as a ResNet's
  ``conv1`` feeds ``conv2`` through its BatchNorm) and ``mlp.fc1``'s feeds ``mlp.fc2`` (as on the ViT);
  nothing crosses blocks, and no scale feeds a depthwise conv (it has one input channel per group). The
  trained norms are every LayerNorm's affine parameters (``stem.1``, ``downsample.0``, block ``norm``,
  ``head.norm``). The layer scale ``gamma`` stays frozen under SSF and SAN.
"""

from __future__ import annotations

from timm.models.convnext import ConvNeXt
from torch import nn

from . import Family, SANWire, SSFPosition, channel_dim, has_params


def blocks(model: nn.Module) -> list[str]:
    return [f"stages.{s}.blocks.{i}" for s, stage in enumerate(model.stages) for i in range(len(stage.blocks))]


def transitions(model: nn.Module) -> dict[str, str]:
    return {f"stages.{s}.blocks.0": f"stages.{s}.downsample" for s, stage in enumerate(model.stages)
            if len(stage.blocks)}


def groups(model: nn.Module, names: list[str]) -> list[list[str]]:
    out = []
    for s, stage in enumerate(model.stages):
        down = f"stages.{s}.downsample"
        out.append(([down] if has_params(model, down) else []) + [b for b in names if b.startswith(f"stages.{s}.")])
    return out


def _final_norms(model: nn.Module) -> list[str]:
    return [n for n in ("norm_pre", "head.norm") if has_params(model, n)]


def ssf_positions(model: nn.Module) -> list[SSFPosition]:
    names = ["stem.0", "stem.1"]
    for s, stage in enumerate(model.stages):
        if has_params(model, f"stages.{s}.downsample"):
            names += [f"stages.{s}.downsample.0", f"stages.{s}.downsample.1"]
        for i in range(len(stage.blocks)):
            b = f"stages.{s}.blocks.{i}"
            names += [f"{b}.conv_dw", f"{b}.norm", f"{b}.mlp.fc1", f"{b}.mlp.fc2"]
    names += _final_norms(model)
    return [(n, channel_dim(model.get_submodule(n)), n) for n in names]


def san_wiring(model: nn.Module) -> list[SANWire]:
    out: list[SANWire] = [("stem.0", 1, None, "stem.0")]
    for s, stage in enumerate(model.stages):
        if has_params(model, f"stages.{s}.downsample"):
            out.append((f"stages.{s}.downsample.1", 1, None, f"stages.{s}.downsample.1"))
        for i in range(len(stage.blocks)):
            b = f"stages.{s}.blocks.{i}"
            for rel, ant in (("conv_dw", None), ("mlp.fc1", f"{b}.conv_dw"), ("mlp.fc2", f"{b}.mlp.fc1")):
                n = f"{b}.{rel}"
                out.append((n, channel_dim(model.get_submodule(n)), ant, n))
    return out


FAMILY = Family(
    name="convnext",
    classes=(ConvNeXt,),
    blocks=blocks,
    stem=("stem",),
    stem_forward=lambda m, x: m.stem(x),
    transitions=transitions,
    tail=("norm_pre", "head.norm"),
    tail_forward=lambda m, h: m.norm_pre(h),
    groups=groups,
    lora_targets=("mlp.fc1", "mlp.fc2"),
    ssf_positions=ssf_positions,
    san_wiring=san_wiring,
    # ls_init_value=1: timm's 1e-6 layer scale would make a fresh model's outputs ignore its blocks, and the
    # merge tests would prove nothing (the architecture is unchanged)
    tiny=("convnext_tiny", {"dims": (8, 16, 32, 64), "depths": (1, 1, 2, 1), "ls_init_value": 1.0}, 32),
    shrink={"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]},
)
