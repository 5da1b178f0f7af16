"""LP (head only) and FT (everything): the two baselines every paper reports."""

from __future__ import annotations


from .base import Method, Trainable, register
from .._lazy import lazy

nn = lazy("torch.nn")


@register
class LP(Method):
    """Linear probe: only the new head trains; the backbone is frozen in eval mode."""

    name = "lp"
    own_head = True  # the head is the method: it trains with head keep too

    def trainable(self, model: nn.Module) -> Trainable:
        return self.modules(model, [])


@register
class FT(Method):
    """Full fine-tuning: every parameter trains; every module is in train mode."""

    name = "ft"
    own_head = True

    def trainable(self, model: nn.Module) -> Trainable:
        return Trainable(list(model.named_parameters()), [""])
