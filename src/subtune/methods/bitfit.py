"""BitFit (Zaken et al. 2021): every bias term of the backbone, plus the head.

Ours (a parameter selection, no library needed). Exact form: the trainable
parameters are every parameter whose name ends in ``bias`` and the head's
weight and bias; nothing is added, so the trained model is a plain timm model
(:meth:`~subtune.methods.base.Method.merge` is the identity).

- ViT family: the biases of the patch-embedding convolution, of ``qkv``,
  ``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` and of every LayerNorm (``norm1``,
  ``norm2``, the final norm); as in BitFit, LayerNorm's shift counts as a bias.
- ResNet family: timm's convolutions have no bias, so the only biases are the
  BatchNorm shifts (beta): BatchNorm's ``bias`` counts as the bias of the
  convolution it follows (a departure: the paper is about transformers, which
  have no BatchNorm). The BatchNorm scales (gamma) do not train, and BatchNorm
  stays in eval mode like every frozen module: its running statistics do not
  move, only beta does.
- Train mode is set on the head only.
"""

from __future__ import annotations


from ..models.blocks import head_names
from .base import Method, Trainable, register
from .._lazy import lazy

nn = lazy("torch.nn")


@register
class BitFit(Method):
    name = "bitfit"
    label = "BitFit"
    order = 60

    def trainable(self, model: nn.Module) -> Trainable:
        heads = head_names(model)

        def in_head(n: str) -> bool:
            return any(n == h or n.startswith(h + ".") for h in heads)

        params = [(n, p) for n, p in model.named_parameters() if in_head(n) or n.rsplit(".", 1)[-1] == "bias"]
        return Trainable(params, list(heads), {"biases": sum(p.numel() for n, p in params if not in_head(n))})
