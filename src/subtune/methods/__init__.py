"""Methods: what trains. One module per method, one interface (:mod:`.base`).

peft provides LoRA/DoRA/PiSSA (:mod:`.lora`, also used by SubTuning+LoRA);
the others are ours: LP, FT, LP-FT, Surgical, SubTuning and BitFit only
choose among existing parameters; SSF and SAN add per-channel parameters
with forward hooks (neither is a peft tuner for timm modules); Multi-LoRA's
shared frozen A is not a peft feature (:mod:`.multilora`, a function, not a
registered single-task method).
"""

from . import baselines, bitfit, lora, lpft, san, ssf, subtuning, surgical  # noqa: F401  (registration)
from .base import REGISTRY, Method, Trainable, fit_phases, get_method, register
from .surgical import surgical_groups

__all__ = ["REGISTRY", "Method", "Trainable", "fit_phases", "get_method", "register", "surgical_groups"]
