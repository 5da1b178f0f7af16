"""LP-FT (Kumar et al., ICLR 2022): a linear probe first, then full fine-tuning from that head.

Ours (two phases of the one training loop). Exact form: phase 1 trains the
head only (backbone frozen in eval mode, as LP) for ``lp_epochs`` epochs at
``lp_lr``; phase 2 fine-tunes every parameter (every module in train mode, as
FT) starting from the phase-1 head, with the method's own training config
(``methods.lpft.train``: usually a smaller learning rate). Both phases use the
same optimizer kind, schedule (restarted per phase) and seed; the test split is
read once, after phase 2. ``lp_epochs: null`` means the training config's
``epochs``.

Departures: the paper's LP phase fits the head with L-BFGS logistic
regression to convergence; here it is the same SGD/AdamW loop as every
other method, for a fixed number of epochs.
"""

from __future__ import annotations

from typing import Any

from .base import POSITIVE_NUMBER, Method, Param, Trainable, register
from .._lazy import lazy

nn = lazy("torch.nn")


@register
class LPFT(Method):
    name = "lpft"
    label = "LP-FT"
    order = 30
    own_head = True
    parameters = {
        "lp_epochs": Param(None, "a positive integer or null", {"type": ["integer", "null"], "minimum": 1}),
        "lp_lr": Param(0.01, "a positive number", POSITIVE_NUMBER),
    }

    def trainable(self, model: nn.Module) -> Trainable:
        """The second (largest) phase: everything."""
        return Trainable.everything(model)

    def phases(self, model: nn.Module) -> list[tuple[Trainable, dict[str, Any]]]:
        lp = self.modules(model, [])
        lp.notes["phase"] = "lp"
        ft = self.trainable(model)
        ft.notes["phase"] = "ft"
        over: dict[str, Any] = {"lr": float(self.params["lp_lr"])}
        if self.params["lp_epochs"] is not None:
            over["epochs"] = self.params["lp_epochs"]
        return [(lp, over), (ft, {})]
