"""SubTuning (Kaplun et al., arXiv 2302.06354): a chosen set of blocks plus the head.

The set is not necessarily contiguous; it is chosen greedily on validation
data by :mod:`subtune.select`. The chosen blocks run in train mode (their
BatchNorm statistics adapt), the rest of the backbone is frozen in eval mode,
as in the authors' code.
"""

from __future__ import annotations


from .. import SubtuneError
from ..models.blocks import block_names
from .base import Method, Param, Trainable, register
from .._lazy import lazy

nn = lazy("torch.nn")


@register
class SubTuning(Method):
    name = "subtuning"
    label = "SubTuning"
    order = 50
    needs = "selection"  # the greedily selected blocks (``blocks`` receives them)
    parameters = {"blocks": Param([], "a list of block names", {"type": "array", "items": {"type": "string"}})}

    def trainable(self, model: nn.Module) -> Trainable:
        blocks = list(self.params["blocks"])
        known = block_names(model)
        for b in blocks:
            if b not in known:
                raise SubtuneError(f"subtuning: {b!r} is not a block of this model (blocks: {', '.join(known)})")
        return self.modules(model, blocks)
