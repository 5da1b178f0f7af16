"""SAN (Dai et al., arXiv 2409.06706): SSF-style output scales whose effect is propagated into the next layer.

Ours (forward hooks on the timm modules, :mod:`._channels`): SAN is not a
peft tuner. Exact form, for every adapted layer ``l`` with frozen weight
``W_l``, bias ``b_l`` and a trainable scale ``s_l`` (one per output channel,
initialised to 1, no shift)::

    y_l = s_l * ((W_l diag(s_p(l))) x + b_l)

where ``s_p(l)`` is the scale of the layer whose output feeds ``l`` (its
anterior; ``s_p = 1`` if it has none). The anterior scale thus acts twice: on
its own layer's output feature, and again on the posterior weight's input
columns. It is computed as ``W_l (s_p * x)`` (a forward pre-hook scales the
posterior layer's input), which is the same function.

Wiring: this module's per-family table :data:`SAN_WIRING` (each entry gives
its adapted layers, which scale feeds which layer, and their source: the
authors' code on ViT; ours on ResNet, the WideResNet, ConvNeXt and
EfficientNet, where a scale feeds the next layer inside a block and nothing
crosses blocks).

Trainable: the scales, all normalisation affine parameters, the head. For
the ViT these are the LayerNorms (``norm1``, ``norm2``, the final norm), as
in the authors' code; for ResNets the BatchNorm weight and bias stand in for
LayerNorm (our choice), with BatchNorm kept in eval mode: its running
statistics do not move. Train mode is set on the head only.

Merge (the paper's): ``W' = diag(s_l) W diag(s_p)``, ``b' = s_l * b``; a
scale on the patch embedding merges into its projection.

The authors' code (``train_code/SAN_base.py`` with ``args.py``, read at
daviddaiiiii/SAN-PEFT@8856ecb) computes the same function on the ViT: a
scale after the patch embedding (before the class token and the position
embedding are added) and an output scale on every block's ``attn.qkv``,
``attn.proj``, ``mlp.fc1`` and ``mlp.fc2``; each of those layers runs with
``W * s_p`` (its anterior's scale on the weight's input columns) and then
its own scale, with the wiring above; ``--train-mode`` defaults to ``both``
(anterior and own scale), and the head runs unscaled. Trainable there: every
parameter whose name contains ``head`` or ``norm`` (the LayerNorms and the
new head) and the scales. Its ``synapse_plasticity`` also creates an
``LTD_LTP`` vector (init 1) per layer with an anterior, but the line that
would apply it is commented out, so it never enters the forward pass and gets
no gradient; ours has no such vector. The other scripts in that folder are
variants: ``SAN_nt_only.py`` trains the output scales alone (``--train-mode
nt``), ``SAN_resize_smooth.py`` passes the anterior scale through
``LTD_LTP`` before it multiplies the weight; neither is what ``san`` does.
"""

from __future__ import annotations

from typing import Any, Callable

from .. import SubtuneError
from ..models.blocks import block_names, has_params, head_names
from ._channels import channel_dim, channel_view, out_channels, patch_embed_target, scale_cols, scale_rows
from .base import Method, Trainable, family_entry, register
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")

#: (adapted module, channel dim of its output, its anterior module or None, module the scale merges into)
SANWire = tuple[str, int, str | None, str]


def _norm_types() -> tuple[type, ...]:
    return (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


# ------------------------------------------------------------------ wiring, per family
def conv_chain(model: nn.Module) -> list[SANWire]:
    """ResNet and the WideResNet (ours): every convolution (ResNet: the stem ``conv1``, each block's
    ``conv1``/``conv2``(/``conv3``), each ``downsample.0``; WideResNet: the stem ``conv1``, each block's
    ``conv1``/``conv2``, each ``convShortcut``), the scale on its output (channel dim 1); inside a block
    ``conv1`` feeds ``conv2`` and ``conv2`` feeds ``conv3`` (a Bottleneck); nothing crosses blocks."""
    blocks = block_names(model)
    out: list[SANWire] = []
    for n, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        anterior = None
        for b in blocks:
            if n.startswith(b + ".") and n[len(b) + 1:] in ("conv2", "conv3"):
                anterior = f"{b}.conv{int(n[-1]) - 1}"
        out.append((n, 1, anterior, n))
    return out


def vit(model: nn.Module) -> list[SANWire]:
    """ViT (the SAN authors' code): the patch embedding, and in every block ``attn.qkv``, ``attn.proj``,
    ``mlp.fc1``, ``mlp.fc2``; the patch-embedding scale feeds every ``qkv``, ``attn.proj``'s feeds ``mlp.fc1``,
    ``mlp.fc1``'s feeds ``mlp.fc2``."""
    out: list[SANWire] = [("patch_embed", -1, None, patch_embed_target(model))]
    for b in block_names(model):
        out += [
            (f"{b}.attn.qkv", -1, "patch_embed", f"{b}.attn.qkv"),
            (f"{b}.attn.proj", -1, None, f"{b}.attn.proj"),
            (f"{b}.mlp.fc1", -1, f"{b}.attn.proj", f"{b}.mlp.fc1"),
            (f"{b}.mlp.fc2", -1, f"{b}.mlp.fc1", f"{b}.mlp.fc2"),
        ]
    return out


def convnext(model: nn.Module) -> list[SANWire]:
    """ConvNeXt (ours; the SAN paper reports ConvNeXt, the authors' released code covers ViT): ``stem.0``, each
    ``downsample.1`` and in every block ``conv_dw``, ``mlp.fc1``, ``mlp.fc2``, the scale on the output; inside a
    block ``conv_dw``'s scale feeds ``mlp.fc1`` (through ``norm``, as a ResNet's ``conv1`` feeds ``conv2``
    through its BatchNorm) and ``mlp.fc1``'s feeds ``mlp.fc2`` (as on the ViT); nothing crosses blocks, and no
    scale feeds a depthwise conv (it has one input channel per group). The trained norms are every
    LayerNorm's affine parameters (``stem.1``, ``downsample.0``, block ``norm``, ``head.norm``); the layer scale
    ``gamma`` stays frozen."""
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


def efficientnet(model: nn.Module) -> list[SANWire]:
    """EfficientNet (ours): every convolution of the network except squeeze-and-excitation ones (stem, each
    block's, the tail's ``conv_head``), the scale on its output. Inside a block a convolution's scale feeds the
    next convolution of the block (named_modules order is the forward order for every block class of the
    family), except that no scale feeds a depthwise convolution (one input channel per group, as on ConvNeXt):
    ``conv_dw`` feeds ``conv_pwl`` in an InvertedResidual, ``conv_pw`` in a DepthwiseSeparableConv,
    ``conv_exp`` feeds ``conv_pwl`` in an EdgeResidual. Nothing crosses blocks. The trained norms are every
    BatchNorm's affine parameters (in eval mode, their statistics frozen), as on ResNet."""
    out: list[SANWire] = [("conv_stem", 1, None, "conv_stem")]
    for b in block_names(model):
        prev = None
        for rel, conv in model.get_submodule(b).named_modules():
            if not isinstance(conv, nn.Conv2d) or rel.startswith("se."):
                continue
            n = f"{b}.{rel}"
            out.append((n, 1, prev if conv.groups == 1 else None, n))
            prev = n
    if isinstance(getattr(model, "conv_head", None), nn.Conv2d):
        out.append(("conv_head", 1, None, "conv_head"))
    return out


#: family name -> the model's SAN wiring
SAN_WIRING: dict[str, Callable[[Any], list[SANWire]]] = {
    "convnext": convnext, "efficientnet": efficientnet, "resnet": conv_chain, "vit": vit, "wrn": conv_chain,
}


def san_wiring(model: nn.Module) -> list[SANWire]:
    """SAN's wiring on ``model`` (:data:`SAN_WIRING`)."""
    return family_entry("san", SAN_WIRING, model)(model)


def _san_out(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return output * channel_view(module.san_scale, output, module._san_dim)


class _AnteriorScale:
    """Forward pre-hook: the posterior layer's input times the anterior layer's scale (W diag(s_p) x)."""

    def __init__(self, anterior: nn.Module, dim: int):
        self.anterior, self.dim = anterior, dim

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (x * channel_view(self.anterior.san_scale, x, self.dim), *args[1:])


@register
class SAN(Method):
    name = "san"
    label = "SAN"
    order = 100
    per_family = SAN_WIRING

    def wiring(self, model: nn.Module) -> list[SANWire]:
        """The layers this method adapts on ``model`` and which scale feeds which: its ``per_family`` entry."""
        return self.for_family(model)(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        if any(n.endswith(".san_scale") for n, _ in model.named_parameters()):
            raise SubtuneError(f"{self.name}: the model already has SAN parameters")
        wiring = self.wiring(model)
        ref = next(model.parameters())
        for name, dim, _, _ in wiring:
            mod = model.get_submodule(name)
            mod.register_parameter("san_scale", nn.Parameter(torch.ones(out_channels(mod), dtype=ref.dtype,
                                                                        device=ref.device)))
            mod._san_dim = dim
            mod.register_forward_hook(_san_out)
        for name, dim, anterior, _ in wiring:
            if anterior is not None:
                model.get_submodule(name).register_forward_pre_hook(
                    _AnteriorScale(model.get_submodule(anterior), dim))
        return model

    def trainable(self, model: nn.Module) -> Trainable:
        scales = [(n, p) for n, p in model.named_parameters() if n.endswith(".san_scale")]
        if not scales:
            raise SubtuneError(f"{self.name}: call wrap(model) first and train the model it returns")
        heads = head_names(model)
        norms = [(f"{mn}.{pn}", p) for mn, m in model.named_modules() if isinstance(m, _norm_types())
                 for pn, p in m.named_parameters(recurse=False) if pn in ("weight", "bias")]
        norms = [(n, p) for n, p in norms if not any(n.startswith(h + ".") for h in heads)]
        t = self.modules(model, [])
        return Trainable(scales + norms + t.params, list(heads), {"scales": len(scales)})

    def merge(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith(".san_scale")}
        for name, _, anterior, target in self.wiring(model):
            s = model.get_submodule(name).san_scale.detach()
            w, b = f"{target}.weight", f"{target}.bias"
            state[w] = scale_rows(state[w], s)
            if anterior is not None:
                state[w] = scale_cols(state[w], model.get_submodule(anterior).san_scale.detach())
            if b in state:
                state[b] = state[b] * s
        return state
