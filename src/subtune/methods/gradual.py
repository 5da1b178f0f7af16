"""Gradual unfreezing (Howard & Ruder, ACL 2018, "Universal Language Model Fine-tuning for Text Classification",
ULMFiT, Sec. 3.2): the head first, then one more unit of the backbone from the top at each stage.

ULMFiT: "We first unfreeze the last layer and fine-tune all unfrozen layers for one epoch. We then unfreeze
the next lower frozen layer and repeat, until we fine-tune all layers until convergence at the last
iteration."

Exact form: one run (one optimizer, one learning-rate schedule over all its epochs), its epochs in stages.
The backbone's units, in network order, are ``U_0 ... U_{G-1}``: with ``unit: group`` (the default)
Surgical's groups (:func:`subtune.methods.surgical.surgical_groups`: Surgical's per-family groups, the
stem in front of group 0: 4 on ResNet/ViT/ConvNeXt, 3 on the WRN), with ``unit: block`` every block of the
record (the stem with block 0, a transition with the block it precedes). Stage ``k`` (``k = 0 ... G``)
starts at epoch ``k * epochs_per_stage`` (0-based) and trains the head and the top ``k`` units ``U_{G-k}
... U_{G-1}``, with the record's ``tail`` (final norms) from stage 1 on (it sits between the top unit and
the head); stage ``G``, from epoch ``G * epochs_per_stage`` to the end of the run, trains every parameter
with every module in train mode (FT). In a stage the frozen part is as in every other method: no gradient
(the optimizer never updates it: bit-identical through the stage, AdamW's weight decay included) and eval
mode (no BatchNorm statistic moves); a unit's optimizer state starts when it unfreezes. With ``G + 1``
stages and ``epochs_per_stage: 1`` a ResNet unfreezes everything from epoch 5 of the run; a run shorter
than ``G * epochs_per_stage + 1`` epochs never unfreezes the lowest units.

Why one run with a per-epoch schedule of trainable sets (``Trainable.stages``), not phases (LP-FT's
restarted runs): ULMFiT trains continuously, the unfrozen layers keeping their optimizer state across
stages, and the whole run takes the same epochs and schedule as FT (a fair cost comparison); phases would
restart the optimizer and the schedule at each stage and add a run per stage.

Departures from ULMFiT: its "layers" are the AWD-LSTM's three layers and the classifier; here units are
Surgical's block groups (or blocks); ULMFiT also uses discriminative learning rates (lr / 2.6 per layer:
that is the ``llrd`` row here, not combined) and slanted triangular learning rates (here the run's
schedule, as for every method); its last stage trains "until convergence" (here to the end of the run's
epochs).
"""

from __future__ import annotations

from .. import SubtuneError
from ..models.blocks import family, has_params, stem_names
from .base import POSITIVE_INT, Method, Param, Trainable, register
from .surgical import surgical_groups
from ..trainable import Stage
from .._lazy import lazy

nn = lazy("torch.nn")

UNITS = ("group", "block")


def units(model: nn.Module, unit: str) -> list[list[str]]:
    """The backbone's units (module or parameter names), in network order."""
    if unit == "group":
        return surgical_groups(model)
    fam = family(model)
    trans = fam.transitions(model)
    out = [[*([trans[b]] if b in trans else []), b] for b in fam.blocks(model)]
    out[0] = stem_names(model) + out[0]
    return out


@register
class Gradual(Method):
    name = "gradual"
    label = "Gradual unfreezing"
    order = 34
    own_head = True  # it ends as full fine-tuning: the head trains with head keep too
    parameters = {
        "epochs_per_stage": Param(1, "a positive integer", POSITIVE_INT),
        "unit": Param("group", "group or block", {"enum": list(UNITS)}),
    }

    def stages(self, model: nn.Module) -> list[Stage]:
        us = units(model, self.params["unit"])
        if not us or not all(us):
            raise SubtuneError(f"gradual: the model has an empty {self.params['unit']}")
        tail = [t for t in family(model).tail if has_params(model, t)]
        every = self.params["epochs_per_stage"]
        out = []
        for k in range(len(us)):
            names = [n for u in us[len(us) - k:] for n in u] + (tail if k else [])
            t = self.modules(model, names)
            out.append(Stage(k * every, t.names, t.train_modules))
        out.append(Stage(len(us) * every, [n for n, _ in model.named_parameters()], [""]))
        return out

    def trainable(self, model: nn.Module) -> Trainable:
        t = Trainable.everything(model)
        t.stages = self.stages(model)
        t.notes.update(unit=self.params["unit"], epochs_per_stage=self.params["epochs_per_stage"],
                       stages=len(t.stages))
        return t
