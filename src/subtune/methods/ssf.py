"""SSF (Lian et al., NeurIPS 2022): per-channel scale and shift after chosen operations, plus the head.

Ours (forward hooks on the timm modules, :mod:`._channels`): SSF is not a
peft tuner. Exact form, at every position ``p``::

    y = gamma_p * x + beta_p   (per channel)     gamma_p ~ N(1, 0.02^2), beta_p ~ N(0, 0.02^2)

Positions: the backbone family record's ``ssf_positions``
(:mod:`subtune.models.families`; each record's docstring gives its positions
and their source: the SSF paper's on ViT, the SSF authors' ConvNeXt code on
ConvNeXt, ours on ResNet and the WideResNet: after every BatchNorm, before the
activation and the residual addition).

Trainable: every ``ssf_scale`` / ``ssf_shift`` and the head. Everything else
is frozen in eval mode (ResNet BatchNorm statistics do not move); train mode
is set on the head only.

Initialisation: with the ``seed`` parameter (an integer) from a dedicated
``torch.Generator`` seeded with it; with ``seed: null`` (the default) from
the global torch RNG, which ``cmd_train`` seeds with the run's seed before
:meth:`SSF.wrap`.

Merge (the paper's re-parameterisation into the preceding linear operation):
``W' = diag(gamma) W``, ``b' = gamma * b + beta``. Linear/conv positions merge
into their own weight and bias; norm positions into the norm's affine
parameters (for ResNet the BN-then-scale merges into BatchNorm's gamma and
beta: ``gamma' = s * gamma``, ``beta' = s * beta + shift``, the running
statistics unchanged); the patch-embedding position into the patch
projection (timm's PatchEmbed has no norm in ViTs; if it had one, into that).
"""

from __future__ import annotations

from typing import Any

from .. import SubtuneError
from ..models.blocks import family, head_names
from ._channels import channel_view, out_channels, scale_rows
from .base import Method, Param, Trainable, is_int, register
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")

INIT_STD = 0.02


def ssf_positions(model: nn.Module) -> list[tuple[str, int, str]]:
    """(module whose output is scaled, channel dim of that output, module the scale merges into): the family
    record's ``ssf_positions`` (:mod:`subtune.models.families`)."""
    return family(model).ssf_positions(model)


def _ssf_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    d = module._ssf_dim
    return output * channel_view(module.ssf_scale, output, d) + channel_view(module.ssf_shift, output, d)


@register
class SSF(Method):
    name = "ssf"
    label = "SSF"
    order = 90
    parameters = {"seed": Param(None, "an integer or null", lambda v: v is None or is_int(v))}

    def wrap(self, model: nn.Module) -> nn.Module:
        if any(n.endswith(".ssf_scale") for n, _ in model.named_parameters()):
            raise SubtuneError(f"{self.name}: the model already has SSF parameters")
        gen = None if self.params["seed"] is None else torch.Generator().manual_seed(self.params["seed"])
        for name, dim, target in ssf_positions(model):
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
        for name, _, target in ssf_positions(model):
            mod = model.get_submodule(name)
            s, t = mod.ssf_scale.detach(), mod.ssf_shift.detach()
            w, b = f"{target}.weight", f"{target}.bias"
            if w not in state or b not in state:
                raise SubtuneError(f"{self.name}: cannot merge the shift at {name}: {target} has no weight and bias")
            state[w] = scale_rows(state[w], s)
            state[b] = state[b] * s + t
        return state
