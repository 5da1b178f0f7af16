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

Wiring: the backbone family record's ``san_wiring``
(:mod:`subtune.models.families`; each record's docstring gives its adapted
layers, which scale feeds which layer, and their source: the authors' code on
ViT; ours on ResNet, the WideResNet and ConvNeXt, where a scale feeds the next
layer inside a block and nothing crosses blocks).

Trainable: the scales, all normalisation affine parameters, the head. For
the ViT these are the LayerNorms (``norm1``, ``norm2``, the final norm), as
in the authors' code; for ResNets the BatchNorm weight and bias stand in for
LayerNorm (our choice), with BatchNorm kept in eval mode: its running
statistics do not move. Train mode is set on the head only.

Merge (the paper's): ``W' = diag(s_l) W diag(s_p)``, ``b' = s_l * b``; a
scale on the patch embedding merges into its projection.

Departures from the authors' code (we follow the paper's formula, as
summarised in the references): their code also multiplies the anterior scale
by an extra trainable per-layer vector (``LTD_LTP``, init 1) inside the
posterior weight, puts a scale on the head's output (fed by the last
``fc2``), and trains by default with the output scales only; none of these
are here.
"""

from __future__ import annotations

from typing import Any

from .. import SubtuneError
from ..models.blocks import family, head_names
from ._channels import channel_view, out_channels, scale_cols, scale_rows
from .base import Method, Trainable, register
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")

def _norm_types() -> tuple[type, ...]:
    return (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def san_wiring(model: nn.Module) -> list[tuple[str, int, str | None, str]]:
    """(adapted module, channel dim of its output, its anterior module or None, module the scale merges into):
    the family record's ``san_wiring`` (:mod:`subtune.models.families`)."""
    return family(model).san_wiring(model)


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

    def wrap(self, model: nn.Module) -> nn.Module:
        if any(n.endswith(".san_scale") for n, _ in model.named_parameters()):
            raise SubtuneError(f"{self.name}: the model already has SAN parameters")
        wiring = san_wiring(model)
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
        for name, _, anterior, target in san_wiring(model):
            s = model.get_submodule(name).san_scale.detach()
            w, b = f"{target}.weight", f"{target}.bias"
            state[w] = scale_rows(state[w], s)
            if anterior is not None:
                state[w] = scale_cols(state[w], model.get_submodule(anterior).san_scale.detach())
            if b in state:
                state[b] = state[b] * s
        return state
