"""LP (head only) and FT (everything): the two baselines every paper reports.

FT's ``freeze_stem`` (default false) is SubTuning's FT baseline (its
``models.py``, mode ``finetune``: ``layers_to_finetune`` = every block, plus
its new head): the stem and the final norm stay frozen and in eval mode —
ResNet ``conv1``/``bn1`` (its running statistics included); ViT
``patch_embed``, ``cls_token``, ``pos_embed`` (``reg_token`` if any) and the
final ``norm``. The stem's modules are the family's (``subtune.models.split``);
every other parameter trains and every other top-level module is in train mode.
"""

from __future__ import annotations


from .base import BOOLEAN, Method, Param, Trainable, register
from .._lazy import lazy

nn = lazy("torch.nn")


@register
class LP(Method):
    """Linear probe: only the new head trains; the backbone is frozen in eval mode."""

    name = "lp"
    label = "LP"
    order = 10
    own_head = True  # the head is the method: it trains with head keep too

    def trainable(self, model: nn.Module) -> Trainable:
        return self.modules(model, [])


@register
class FT(Method):
    """Full fine-tuning: every parameter trains; every module is in train mode.

    ``freeze_stem=True``: everything but the stem and the final norm (SubTuning's FT).
    """

    name = "ft"
    label = "FT"
    order = 20
    own_head = True
    parameters = {"freeze_stem": Param(False, "true or false", BOOLEAN)}

    def trainable(self, model: nn.Module) -> Trainable:
        if not self.params["freeze_stem"]:
            return Trainable.everything(model)
        from ..models.blocks import family, head_names

        heads = set(head_names(model))
        frozen = set(family(model).stem_of(model)) | ({"norm"} - heads)
        tops = [n for n, _ in model.named_children() if n not in frozen]
        params = [(n, p) for n, p in model.named_parameters() if n.split(".")[0] not in frozen]
        return Trainable(params, tops, {"frozen": sorted(f for f in frozen if _has(model, f))})


def _has(model: nn.Module, name: str) -> bool:
    return any(n == name or n.startswith(name + ".") for n, _ in model.named_parameters())
