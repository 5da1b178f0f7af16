"""AdaLoRA (Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023,
arXiv 2303.10512): LoRA in SVD form whose ranks are pruned during training by importance, plus the head.

Uses Hugging Face **peft**'s AdaLoRA (``AdaLoraConfig`` + ``get_peft_model``
on the plain timm module, ``modules_to_save`` for the new head, as
:mod:`.lora`); peft implements the SVD adapters for ``nn.Linear`` and
``nn.Conv2d`` (``SVDLinear``, ``SVDConv2d``), the importance scores, the budget
schedule and merging, so we do not re-implement them. peft adds two things
only inside its own training integrations, which our loop does through the
method's per-step hooks (:class:`subtune.trainable.StepHooks`):

- the orthogonal regularisation, which peft's ``AdaLoraModel.forward`` adds to
  a transformers model's ``outputs.loss`` (a timm model returns logits, so
  peft adds nothing): added to our loss, computed exactly as peft does
  (:func:`orth_regularizer`);
- ``model.base_model.update_and_allocate(step)`` after every optimizer step
  (gradients still present), ``step`` counted from 0 (peft's AdaLoRA
  example).

Exact form, for every adapted layer with frozen weight ``W`` (``d_out x
d_in``; for a ``k x k`` convolution ``d_in = in_channels * k * k`` and the
update is reshaped to the kernel's shape and applied as a convolution with
the layer's stride, padding and dilation)::

    y = W x + b + (alpha / (r0 + 1e-5)) * P (Lambda * Q) dropout(x)
    Q: r0 x d_in, P: d_out x r0 (both N(0, 0.02^2)), Lambda: r0 x 1 (zeros), r0 = init_r

(peft's ``ranknum`` stays ``r0``: the scaling does not change as ranks are
pruned). The loss is ``CE + orth_reg_weight * R`` with::

    R = mean over the adapted layers' Q and P of ||Q Q^T - I||_F and ||P^T P - I||_F

(peft: the mean over all ``lora_A``/``lora_B`` matrices). After each step
``t`` (0-based) of ``T`` (the run's optimizer steps), peft's
``RankAllocator``: the sensitivity ``|w * grad|`` of every entry of P, Lambda,
Q is smoothed (``beta1``) and its uncertainty tracked (``beta2``); a triplet's
score is its Lambda entry's plus the mean of its Q row's and P column's. The
budget (total rank over layers) is ``init_r * n`` for ``t <= t_i``, then falls
cubically to ``target_r * n`` at ``T - t_f``; every ``deltaT`` steps (and
once at ``t = T - t_f``) the Lambda entries of the lowest-scoring triplets
are set to 0 to meet it; from ``T - t_f`` on the final pattern is re-applied
after every step (masked entries stay 0).

Parameters (``init_r``, ``target_r``, ``deltaT``, ``beta1``, ``beta2``,
``orth_reg_weight`` are peft's fields; ``alpha`` is ``lora_alpha``):

- ``tinit``, ``tfinal``: fractions of the run's optimizer steps ``T`` (peft
  takes steps; our runs' ``T`` differs by target and regime):
  ``t_i = floor(tinit * T)``, ``t_f = floor(tfinal * T)``; peft's
  ``total_step`` is ``T``, set when training starts. ``tinit + tfinal < 1``
  (peft requires a budgeting phase, ``t_i < T - t_f``).
- ``target_r < init_r`` (otherwise there is nothing to prune and peft's
  masking fails).
- Defaults: peft's for ``init_r`` (12), ``target_r`` (8), ``beta1``/``beta2``
  (0.85, also the paper's) and ``alpha`` (8, as our LoRA); ours for the
  schedule: ``tinit 0.1``, ``tfinal 0.3``, ``deltaT 10`` (peft's defaults
  ``tinit = tfinal = 0``, ``deltaT 1`` prune from the first step, every step;
  the paper's GLUE schedules warm up on about a tenth of the steps and keep
  the final ranks for a large part of the rest) and ``orth_reg_weight 0.1``
  (the paper's gamma; peft's default 0.5).
- Targets (``target``): as LoRA's (:func:`subtune.methods.lora.lora_targets`):
  default LoRA's per-family table (:data:`subtune.methods.lora.LORA_TARGETS`; ViT: ``attn.qkv``,
  ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``; ResNet/WideResNet: the blocks'
  3x3 convolutions; ConvNeXt: ``mlp.fc1``/``mlp.fc2``). peft's ``SVDConv2d``
  has no grouped convolutions (its update has ``in_channels * k * k``
  columns): a grouped target is refused, naming the method and the layer.
  peft added ``SVDConv2d`` late (huggingface/peft PR #3196; our floor, peft
  0.17, has AdaLoRA for Linear layers only): with a peft without it, a
  convolutional target (ResNet, WideResNet) is refused in one line naming
  the method, the peft version and the layer; ViT and ConvNeXt (Linear MLP)
  targets work with any supported peft.
- Trainable: ``lora_A`` (Q), ``lora_E`` (Lambda) and ``lora_B`` (P) of every
  adapted layer, and the head (peft's trained copy; with ``head: keep`` no
  head). Count per layer: ``init_r * (d_in + 1 + d_out)``. peft's
  ``ranknum`` is a frozen parameter. Pruning zeroes entries; it does not
  shrink the tensors (peft masks rather than resizes), so the count is that
  of ``init_r``.
- :meth:`AdaLoRA.merge`: peft's ``merge_and_unload`` on a copy, giving a plain
  timm state dict (``W + alpha / (r0 + 1e-5) * P (Lambda * Q)``, reshaped for
  convolutions).

Departures from the paper: it adapts every weight matrix of DeBERTaV3/BART
(q, k, v, o and both FFN matrices); we adapt the family's LoRA targets
(ViT's fused qkv as one matrix), and convolutions, which the paper does not
define (peft does).
"""

from __future__ import annotations

import math
from typing import Any

from .. import SubtuneError
from ..models.blocks import head_names
from ..trainable import StepHooks
from .base import FRACTION, NAMES_OR_NULL, POSITIVE_INT, POSITIVE_NUMBER, Method, Param, Trainable, register
from .lora import LORA_TARGETS, _is_peft, lora_targets, merge_peft
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")

ADAPTER = "default"  # peft's adapter name


#: in (0, 1)
_OPEN_UNIT = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}


def orth_regularizer(model: nn.Module, adapter: str = ADAPTER) -> torch.Tensor:
    """AdaLoRA's orthogonality penalty R (unweighted), exactly the term peft's ``AdaLoraModel.forward`` adds:
    over the named parameters of ``model`` (the timm model inside the peft wrapper) holding ``lora_A`` or
    ``lora_B`` and the adapter's name, the mean of ``||A A^T - I||_F`` (A) and ``||B^T B - I||_F`` (B)."""
    regu, num = 0, 0
    for n, p in model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and adapter in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            eye = torch.eye(*cov.size(), out=torch.empty_like(cov))
            eye.requires_grad = False
            num += 1
            regu = regu + torch.norm(cov - eye, p="fro")
    return regu / num if num else torch.zeros(())


def _peft_has_conv() -> bool:
    from peft.tuners.adalora import layer

    return hasattr(layer, "SVDConv2d")


class AdaLoraHooks(StepHooks):
    """AdaLoRA inside the loop: peft's schedule set from the run's steps, the penalty, the rank allocation."""

    def __init__(self, model: nn.Module, tinit: float, tfinal: float, orth_reg_weight: float):
        self.model, self.tinit, self.tfinal, self.weight = model, tinit, tfinal, orth_reg_weight

    @property
    def config(self):
        return self.model.peft_config[ADAPTER]

    def start(self, optimizer, total_steps: int) -> None:
        cfg = self.config
        cfg.total_step = int(total_steps)
        cfg.tinit = math.floor(self.tinit * total_steps)
        cfg.tfinal = math.floor(self.tfinal * total_steps)
        if cfg.tinit >= cfg.total_step - cfg.tfinal:  # cannot happen with tinit + tfinal < 1; peft's own check
            raise SubtuneError(f"adalora: {total_steps} steps leave no budgeting phase (tinit {cfg.tinit} steps, "
                               f"tfinal {cfg.tfinal} steps)")
        alloc = self.model.base_model.rankallocator
        alloc.peft_config = cfg  # the allocator reads the schedule from the same config object
        alloc.reset_ipt()
        cfg.rank_pattern = None

    def extra_loss(self):
        if not self.weight:
            return None
        return self.weight * orth_regularizer(self.model.base_model.model)

    def after_step(self, step: int) -> None:
        self.model.base_model.update_and_allocate(step)


@register
class AdaLoRA(Method):
    name = "adalora"
    label = "AdaLoRA"
    order = 75
    per_family = LORA_TARGETS  # LoRA's default targets
    parameters = {
        "init_r": Param(12, "a positive integer", POSITIVE_INT),
        "target_r": Param(8, "a positive integer", POSITIVE_INT),
        "alpha": Param(8, "a positive number", POSITIVE_NUMBER),
        "dropout": Param(0.0, "in [0, 1)", FRACTION),
        "target": Param(None, "null or a non-empty list of module names", NAMES_OR_NULL),
        "tinit": Param(0.1, "a fraction in [0, 1)", FRACTION),
        "tfinal": Param(0.3, "a fraction in [0, 1)", FRACTION),
        "deltaT": Param(10, "a positive integer", POSITIVE_INT),
        "beta1": Param(0.85, "in (0, 1)", _OPEN_UNIT),
        "beta2": Param(0.85, "in (0, 1)", _OPEN_UNIT),
        "orth_reg_weight": Param(0.1, "a non-negative number", {"type": "number", "minimum": 0}),
    }

    def __init__(self, head: str = "new", **params: Any):
        super().__init__(head, **params)
        p = self.params
        if p["target_r"] >= p["init_r"]:
            raise SubtuneError(f"adalora: target_r must be below init_r ({p['init_r']}), not {p['target_r']!r}")
        if p["tinit"] + p["tfinal"] >= 1:
            raise SubtuneError(f"adalora: tinit + tfinal must be below 1 (a budgeting phase), not "
                               f"{p['tinit']} + {p['tfinal']}")

    def targets(self, model: nn.Module) -> list[str]:
        return lora_targets(model, self.params["target"], who=self.name, table=self.per_family)

    def wrap(self, model: nn.Module) -> nn.Module:
        from peft import AdaLoraConfig, get_peft_model

        if _is_peft(model):
            raise SubtuneError(f"{self.name}: the model is already wrapped by peft")
        targets = self.targets(model)
        if not targets:
            raise SubtuneError(f"{self.name}: no layer to adapt in this model")
        convs = [n for n in targets if isinstance(model.get_submodule(n), nn.Conv2d)]
        if convs and not _peft_has_conv():
            import peft

            raise SubtuneError(f"{self.name}: peft {peft.__version__} has no AdaLoRA for Conv2d layers ({convs[0]}, "
                               "...); a peft with SVDConv2d (huggingface/peft PR #3196) has")
        for n in convs:
            mod = model.get_submodule(n)
            if mod.groups != 1:
                raise SubtuneError(f"{self.name}: peft's AdaLoRA does not adapt grouped convolutions "
                                   f"({n} has groups={mod.groups})")
        p = self.params
        cfg = AdaLoraConfig(
            init_r=p["init_r"], target_r=p["target_r"], lora_alpha=p["alpha"], lora_dropout=float(p["dropout"]),
            target_modules=targets, modules_to_save=head_names(model) if self.trains_head else None,
            # the schedule is set from the run's optimizer steps when training starts (AdaLoraHooks.start)
            total_step=1, tinit=0, tfinal=0, deltaT=p["deltaT"], beta1=float(p["beta1"]), beta2=float(p["beta2"]),
            orth_reg_weight=float(p["orth_reg_weight"]), bias="none",
        )
        try:
            return get_peft_model(model, cfg)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise SubtuneError(f"{self.name}: peft refused the model: {exc}") from None

    def trainable(self, model: nn.Module) -> Trainable:
        from peft.tuners.adalora import AdaLoraLayer
        from peft.utils import ModulesToSaveWrapper

        if not _is_peft(model):
            raise SubtuneError(f"{self.name}: call wrap(model) first and train the model it returns")
        prefix = "base_model.model."
        params = [(n, p) for n, p in model.named_parameters()
                  if any(f".{k}.{ADAPTER}" in n for k in ("lora_A", "lora_B", "lora_E")) or ".modules_to_save." in n]
        layers = [n for n, m in model.named_modules() if isinstance(m, AdaLoraLayer)]
        heads = [n for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
        p = self.params
        hooks = AdaLoraHooks(model, p["tinit"], p["tfinal"], p["orth_reg_weight"])
        return Trainable(params, layers + heads, {
            "init_r": p["init_r"], "target_r": p["target_r"],
            "targets": [n.removeprefix(prefix) for n in layers]}, hooks)

    def merge(self, model: nn.Module) -> dict[str, torch.Tensor]:
        merged = merge_peft(model)
        return super().merge(model) if merged is None else merged
