"""Methods: what trains. One module per method, one interface (:mod:`.base`).

Every module of this package whose name does not start with ``_`` is
imported here (:func:`discover`), and the classes it decorates with
``@register`` make up :data:`REGISTRY`: adding a method is adding its module,
listed nowhere else. The modules import without torch, timm or peft (the
workflow and the config check read the registry). Three modules register no
method: :mod:`.base` (the interface), :mod:`.multilora` (Multi-LoRA's
multi-task trainer, a function that imports torch, not a single-task method)
and :mod:`.multilora_compare` (Multi-LoRA against separate LoRA runs).

peft provides LoRA/DoRA/PiSSA (:mod:`.lora`, also used by SubTuning+LoRA)
and AdaLoRA (:mod:`.adalora`, whose penalty and rank allocation run through
the loop's per-step hooks); the others are ours: LP, FT, LP-FT, Surgical,
SubTuning and BitFit only choose among existing parameters; SSF and SAN add
per-channel parameters with forward hooks (neither is a peft tuner for timm
modules); Siamese SubTuning wraps the backbone in a two-path model
(:mod:`.siamese`); Multi-LoRA's shared frozen A is not a peft feature
(:mod:`.multilora`).
"""

from __future__ import annotations

from .._lazy import import_submodules
from .base import (
    REGISTRY,
    Method,
    Param,
    Trainable,
    base_method,
    fit_phases,
    get_method,
    method_class,
    method_label,
    method_needs,
    method_order,
    register,
)

#: modules of this package that register no method (see above)
NOT_METHODS = frozenset({"base", "multilora", "multilora_compare"})


def discover() -> None:
    """Import every method module of this package (each registers its classes; importing twice is a no-op)."""
    for _ in import_submodules(__name__, __path__, skip=NOT_METHODS):
        pass


discover()

from .surgical import surgical_groups  # noqa: E402  (after discovery: part of this package's API)

__all__ = ["REGISTRY", "Method", "Param", "Trainable", "base_method", "discover", "fit_phases", "get_method",
           "method_class", "method_label", "method_needs", "method_order", "register", "surgical_groups"]
