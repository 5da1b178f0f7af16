"""SSF (Lian et al., NeurIPS 2022): per-channel scale and shift after chosen operations, plus the head.

Ours (forward hooks on the timm modules, :mod:`._channels`): SSF is not a
peft tuner. Exact form, at every position ``p``::

    y = gamma_p * x + beta_p   (per channel)     gamma_p ~ N(1, 0.02^2), beta_p ~ N(0, 0.02^2)

Positions: :data:`SSF_POSITIONS`, this module's table keyed by backbone
family (each entry's docstring gives its positions and their source: the SSF
paper's on ViT, the SSF authors' ConvNeXt code on ConvNeXt, ours on ResNet,
the WideResNet and EfficientNet: after every BatchNorm, before the activation
and the residual addition). A position is ``(module whose output is scaled,
channel dim of that output, module the scale/shift merges into)``.

Trainable: every ``ssf_scale`` / ``ssf_shift`` and the head. Everything else
is frozen in eval mode (ResNet BatchNorm statistics do not move); train mode
is set on the head only.

Initialisation: with the ``seed`` parameter (an integer) from a dedicated
``torch.Generator`` seeded with it; with ``seed: null`` (the default) from
the global torch RNG, which :func:`subtune.stages.train.fit_method` seeds with the run's seed
before :meth:`SSF.wrap`.

Merge (the paper's re-parameterisation into the preceding linear operation):
``W' = diag(gamma) W``, ``b' = gamma * b + beta``. Linear/conv positions merge
into their own weight and bias; norm positions into the norm's affine
parameters (for ResNet the BN-then-scale merges into BatchNorm's gamma and
beta: ``gamma' = s * gamma``, ``beta' = s * beta + shift``, the running
statistics unchanged); the patch-embedding position into the patch
projection (timm's PatchEmbed has no norm in ViTs; if it had one, into that).

A method like SSF at other positions is a subclass with its own
``per_family`` table (``tests/test_method_probe.py``).
"""

from __future__ import annotations

from typing import Any, Callable

from .. import SubtuneError
from ..models.blocks import block_names, family, has_params, head_names
from ._channels import channel_dim, channel_view, out_channels, patch_embed_target, scale_rows
from .base import Method, Param, Trainable, family_entry, register
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")

INIT_STD = 0.02
#: (module whose output is scaled, channel dim of that output, module the scale/shift merges into)
SSFPosition = tuple[str, int, str]


# ------------------------------------------------------------------ positions, per family
def batchnorm_outputs(model: nn.Module) -> list[SSFPosition]:
    """ResNet and the WideResNet (ours; the SSF authors have no ResNet): after every BatchNorm (channel dim 1),
    before the activation and the residual addition, merged into the BatchNorm. ResNet: the stem ``bn1``, each
    block's ``bn1``/``bn2``(/``bn3``), each ``downsample.1``; WideResNet: each block's ``bn1`` (on the block
    input) and ``bn2``, and the final ``bn1``, before the ReLU."""
    return [(n, 1, n) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _final_norms(model: nn.Module) -> list[str]:
    """The family's tail entries holding parameters: the final norm(s)."""
    return [n for n in family(model).tail if has_params(model, n)]


def vit(model: nn.Module) -> list[SSFPosition]:
    """ViT (the SSF paper's, authors' ``models/vision_transformer.py``): after the patch embedding; in every
    block after ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1`` (before the GELU), ``mlp.fc2``;
    after the final norm (``norm``, or ``fc_norm`` for average-pooled models)."""
    out = [("patch_embed", -1, patch_embed_target(model))]
    for b in block_names(model):
        for rel in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            out.append((f"{b}.{rel}", -1, f"{b}.{rel}"))
    out += [(n, -1, n) for n in _final_norms(model)]
    return out


def convnext(model: nn.Module) -> list[SSFPosition]:
    """ConvNeXt (the SSF authors' positions, github.com/dongzelian/SSF ``models/convnext.py``, commit e94e0e7):
    after ``stem.0`` and ``stem.1``; after each ``downsample.0`` (norm) and ``downsample.1`` (conv); in every
    block after ``conv_dw``, ``norm``, ``mlp.fc1`` (before the GELU) and ``mlp.fc2`` (before the layer scale
    ``gamma``, which stays frozen); at the end after the final norm (``head.norm``, or ``norm_pre`` with
    ``head_norm_first``). Channel dim: 1 for NCHW outputs (convolutions, LayerNorm2d), -1 for channels-last
    ones (``norm`` and the Linear MLP of tiny and up).

    Departures: the authors' last scale/shift sits on ``norm_pre``'s output (an Identity in their default,
    i.e. on the last residual sum before pooling), where it cannot merge into a plain timm model (a LayerNorm
    follows the pooling); ours is after the final norm, as on the ViT, and merges into it. The authors put no
    scale after ``norm`` with ``conv_mlp`` (their code then uses its Linear MLP anyway); ours is there in both
    layouts."""
    names = ["stem.0", "stem.1"]
    for s, stage in enumerate(model.stages):
        if has_params(model, f"stages.{s}.downsample"):
            names += [f"stages.{s}.downsample.0", f"stages.{s}.downsample.1"]
        for i in range(len(stage.blocks)):
            b = f"stages.{s}.blocks.{i}"
            names += [f"{b}.conv_dw", f"{b}.norm", f"{b}.mlp.fc1", f"{b}.mlp.fc2"]
    names += _final_norms(model)
    return [(n, channel_dim(model.get_submodule(n)), n) for n in names]


def efficientnet(model: nn.Module) -> list[SSFPosition]:
    """EfficientNet (ours; the SSF authors have no EfficientNet): after every norm, before its activation, as on
    ResNet. The scale sits on the output of the norm's ``drop`` child (an Identity that runs between the
    BatchNorm and the activation in timm's ``BatchNormAct2d``), so it merges exactly into the BatchNorm's
    affine parameters."""
    from timm.layers import BatchNormAct2d

    out: list[SSFPosition] = []
    for n, m in model.named_modules():
        if isinstance(m, BatchNormAct2d):
            out.append((f"{n}.drop", 1, n))  # between the BatchNorm and the activation
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out.append((n, 1, n))
    return out


#: family name -> the model's SSF positions
SSF_POSITIONS: dict[str, Callable[[Any], list[SSFPosition]]] = {
    "convnext": convnext, "efficientnet": efficientnet, "resnet": batchnorm_outputs, "vit": vit,
    "wrn": batchnorm_outputs,
}


def ssf_positions(model: nn.Module) -> list[SSFPosition]:
    """SSF's positions on ``model`` (:data:`SSF_POSITIONS`)."""
    return family_entry("ssf", SSF_POSITIONS, model)(model)


def _ssf_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    d = module._ssf_dim
    return output * channel_view(module.ssf_scale, output, d) + channel_view(module.ssf_shift, output, d)


@register
class SSF(Method):
    name = "ssf"
    label = "SSF"
    order = 90
    parameters = {"seed": Param(None, "an integer or null", {"type": ["integer", "null"]})}
    per_family = SSF_POSITIONS

    def positions(self, model: nn.Module) -> list[SSFPosition]:
        """The positions this method scales on ``model``: its ``per_family`` entry."""
        return self.for_family(model)(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        if any(n.endswith(".ssf_scale") for n, _ in model.named_parameters()):
            raise SubtuneError(f"{self.name}: the model already has SSF parameters")
        gen = None if self.params["seed"] is None else torch.Generator().manual_seed(self.params["seed"])
        for name, dim, target in self.positions(model):
            mod = model.get_submodule(name)
            # the channels of the module the scale merges into: the scaled module may hold no parameter
            # (EfficientNet's BatchNormAct2d.drop, the Identity between its BatchNorm and its activation)
            c = out_channels(model.get_submodule(target))
            ref = next(model.parameters())
            scale = torch.empty(c, dtype=ref.dtype).normal_(1.0, INIT_STD, generator=gen)
            shift = torch.empty(c, dtype=ref.dtype).normal_(0.0, INIT_STD, generator=gen)
            mod.register_parameter("ssf_scale", nn.Parameter(scale.to(ref.device)))
            mod.register_parameter("ssf_shift", nn.Parameter(shift.to(ref.device)))
            mod._ssf_dim = dim
            mod.register_forward_hook(_ssf_hook)
        return model

    def trainable(self, model: nn.Module) -> Trainable:
        heads = head_names(model)
        ssf = [(n, p) for n, p in model.named_parameters() if n.endswith((".ssf_scale", ".ssf_shift"))]
        if not ssf:
            raise SubtuneError(f"{self.name}: call wrap(model) first and train the model it returns")
        t = self.modules(model, [])
        return Trainable(ssf + t.params, list(heads), {"positions": len(ssf) // 2})

    def merge(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = {k: v.detach().clone() for k, v in model.state_dict().items() if ".ssf_" not in k}
        for name, _, target in self.positions(model):
            mod = model.get_submodule(name)
            s, t = mod.ssf_scale.detach(), mod.ssf_shift.detach()
            w, b = f"{target}.weight", f"{target}.bias"
            if w not in state or b not in state:
                raise SubtuneError(f"{self.name}: cannot merge the shift at {name}: {target} has no weight and bias")
            state[w] = scale_rows(state[w], s)
            state[b] = state[b] * s + t
        return state
