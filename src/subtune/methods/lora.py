"""LoRA (Hu et al. 2021) and its peft variants DoRA and PiSSA: low-rank weight deltas plus the head.

Uses Hugging Face **peft** (``LoraConfig`` + ``get_peft_model`` on the plain
timm module, ``modules_to_save`` for the new head): peft implements LoRA,
DoRA and PiSSA for ``nn.Linear`` and ``nn.Conv2d`` and their merging, so we
do not re-implement them.

Exact form, for every adapted layer with frozen weight ``W`` (rank ``r``,
``scaling = alpha / r``)::

    y = W x + b + scaling * B A dropout(x)      A: r x d_in (Kaiming-uniform, peft's default), B: d_out x r (zeros)

(for a ``k x k`` convolution, ``A`` is a ``k x k`` convolution to ``r``
channels with the layer's stride and padding, ``B`` a ``1 x 1`` convolution).

- ``variant: lora`` as above; ``dora`` (peft ``use_dora``): the weight is
  re-normalised per output channel and a trainable magnitude vector (one per
  output channel) rescales it; ``pissa`` (peft ``init_lora_weights="pissa"``):
  ``A``/``B`` start from the top-``r`` singular vectors of ``W`` and the
  frozen weight becomes the residual ``W - scaling * B A`` (so the frozen base
  weights differ from the checkpoint's, by construction, from ``wrap`` on;
  the merged model starts equal to the checkpoint). peft has no PiSSA for
  convolutions: ``pissa`` on a ResNet target is rejected.
- Targets (``target``: module names relative to a block, matched as the full
  relative name or its last components). Default (``target: null``):
  :data:`LORA_TARGETS`, this module's table keyed by backbone family (as
  peft's ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``; an entry is
  names relative to a block, or a predicate ``(relative name, module) ->
  bool``). ViT: ``attn.qkv`` (timm's fused q/k/v Linear, one adapter for the
  three), ``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` of every block;
  convolutional families: ResNet and WideResNet every 3x3 convolution inside
  the blocks (:func:`conv3x3`); ConvNeXt the pointwise ``mlp.fc1``/``mlp.fc2``
  (:data:`CONVNEXT`); EfficientNet the pointwise convolutions
  (:func:`pointwise`). The stem, any layer outside the blocks and the head
  are not adapted unless ``target`` names them.
- Scaling: peft's ``scaling = lora_alpha / r`` (``use_rslora`` off);
  ``alpha`` is ``lora_alpha``.
- ``rank_factors`` (default ``{}``): a target entry -> an integer factor:
  those layers get rank ``factor * rank`` and alpha ``factor * alpha``
  (peft's per-layer ``rank_pattern``/``alpha_pattern``), so their scaling
  stays ``alpha / rank``. ``{qkv: 3}`` is the SubTuning authors' one
  rank-3r update of the fused qkv (A: d -> 3r) scaled by ``alpha / r``.
- ``train_modules`` (default ``[]``): submodules of every adapted block
  (``lora``: every block; ``subtuning_lora``: the selected blocks), named
  relative to the block (``mlp``, ``norm1``, ``norm2``), trained fully (all
  their parameters, train mode) beside the adapters. They may not contain an
  adapted layer.
- Trainable: ``lora_A``, ``lora_B`` (and DoRA's ``lora_magnitude_vector``) of
  every adapted layer, the ``train_modules``' parameters, and the head
  (peft's trained copy of it; with ``head: keep`` no copy and no head, see
  :mod:`.base`). Everything else is frozen, and frozen modules stay in eval
  mode: BatchNorm statistics do not move. Train mode is set on the adapted
  layers (for LoRA dropout), the ``train_modules`` and the head only.
- Initialisation draws from the global torch RNG, which
  :func:`subtune.stages.train.fit_method` seeds with the run's seed before :meth:`LoRA.wrap`.
- :meth:`LoRA.merge`: peft's ``merge_and_unload`` on a copy, giving a plain
  timm state dict (``W + scaling * B A``; DoRA's re-normalised weight).
- ``fit`` makes the model channels_last (every device), which breaks peft's DoRA for
  convolutions (it ``view``s the 4-D adapter weights); a forward pre-hook on
  each adapted convolution keeps its adapter weights contiguous.

:class:`SubTuningLoRA` (``subtuning_lora``) is the same with the adapters
restricted to the greedily selected blocks (target module names restricted
to the blocks' submodules; no ``layers_to_transform`` needed). With no block
selected it is the linear probe (no peft wrapping at all).

The SubTuning authors' LoRA (``src/model_utils.py``: ``LoraAttention``,
``SelectiveFinetuneViT``) is expressible: ``target: [qkv, proj]``,
``alpha: 768`` (their delta is multiplied by ``768 / rank``; with peft's
``alpha / r`` that is ``alpha = 768``, for any rank) and ``train_modules:
[mlp, norm1, norm2]`` (they unfreeze the whole chosen block and then freeze
only the original attention weights). Their plain LoRA baseline (``mode:
finetune``) is the same on all 12 blocks, i.e. ``lora`` with these
parameters; SubTuning+LoRA (``finetune_layers``) is ``subtuning_lora`` with
them; ``rank_factors: {qkv: 3}`` gives qkv their rank-3r update. Remaining
departures from their code: their A and B are ``nn.Linear``
layers with biases where the adapted layer has one (qkv of their
``vit_base_patch16_224_miil`` has none; proj has: a trainable r-vector on A
and a zero-initialised d-vector on B), peft's A and B have no bias; their
ViT head is a new MLP head module, ours timm's Linear head.

Departures from the paper: Hu et al. adapt W_q and W_v of a language model;
here the fused qkv Linear is adapted as one matrix (as in the SubTuning
paper's LoRA baseline, "qkv and proj"), and ResNets get convolutional LoRA,
which the paper does not define.
"""

from __future__ import annotations

import re

import copy
from typing import Any, Callable, Mapping, Union

from .. import SubtuneError
from ..models.blocks import block_names, head_names
from .base import (FRACTION, NAMES, NAMES_OR_NULL, POSITIVE_INT, POSITIVE_NUMBER, Method, Param, Trainable,
                   family_entry, register)
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")

VARIANTS = ("lora", "dora", "pissa")


# ------------------------------------------------------------------ default targets, per family
def conv3x3(rel: str, module: nn.Module) -> bool:
    """ResNet and the WideResNet: every 3x3 convolution inside the blocks (ResNet BasicBlock ``conv1``/``conv2``,
    Bottleneck ``conv2``; WideResNet ``conv1``/``conv2``); not the stem, not the 1x1 convolutions (ResNet
    ``downsample.0``, WideResNet ``convShortcut``)."""
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3)


def pointwise(rel: str, module: nn.Module) -> bool:
    """EfficientNet (ours): the pointwise 1x1, ungrouped convolutions of every block (``conv_pw``, ``conv_pwl``,
    ``conv_exp`` when 1x1, ``conv``), not the depthwise ones (a rank-r adapter on a depthwise kxk kernel has more
    parameters than the kernel, and peft's LoRA for grouped convolutions is limited) and not the
    squeeze-and-excitation convolutions. They hold almost all of a block's weights, as the MLP does in a ConvNeXt
    or ViT block."""
    return (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1
            and not rel.startswith("se.") and ".se." not in rel)


#: ViT: ``attn.qkv`` (timm's fused q/k/v Linear, one adapter), ``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` of every
#: block (the SubTuning paper's LoRA baseline adapts qkv and proj)
VIT = ("qkv", "proj", "fc1", "fc2")
#: ConvNeXt: ``mlp.fc1`` and ``mlp.fc2`` of every block (Linear, or 1x1 Conv2d with ``conv_mlp``). The pointwise
#: MLP holds almost all of a block's weights (8 C^2 against 49 C for the depthwise conv), the counterpart of the
#: ViT MLP; a rank-r adapter on the depthwise 7x7 conv would have more parameters than the layer itself (and peft's
#: LoRA for grouped convolutions is limited). The stem, downsample convolutions and head are not adapted.
CONVNEXT = ("mlp.fc1", "mlp.fc2")

#: family name -> LoRA's default targets: names relative to a block, or a predicate (relative name, module) -> bool
LORA_TARGETS: dict[str, Union[tuple[str, ...], Callable[[str, Any], bool]]] = {
    "convnext": CONVNEXT, "efficientnet": pointwise, "resnet": conv3x3, "vit": VIT, "wrn": conv3x3,
}


def _matches(rel: str, entry: str) -> bool:
    return rel == entry or rel.endswith("." + entry)


def lora_targets(model: nn.Module, target: list[str] | None = None, blocks: list[str] | None = None,
                 who: str = "lora", table: Mapping[str, Any] = LORA_TARGETS) -> list[str]:
    """Full module names of the layers to adapt (see the module docstring), in network order.

    ``target=None``: the family's entry in ``table`` (default :data:`LORA_TARGETS`; a family without one is an
    error naming ``who``).

    ``blocks`` restricts them to those blocks (default: every block).
    """
    known = block_names(model)
    blocks = known if blocks is None else list(blocks)
    for b in blocks:
        if b not in known:
            raise SubtuneError(f"{who}: {b!r} is not a block of this model (blocks: {', '.join(known)})")
    rule = None  # the family's default, when it is a predicate rather than names
    if target is None:
        default = family_entry(who, table, model)
        if callable(default):
            rule = default
        else:
            target = list(default)
    out: list[str] = []
    used: set[str] = set()
    for b in blocks:
        for rel, mod in model.get_submodule(b).named_modules():
            if not rel or not isinstance(mod, (nn.Linear, nn.Conv2d)):
                continue
            if rule is not None:
                hit = bool(rule(rel, mod))
            else:
                hits = [e for e in target if _matches(rel, e)]
                used.update(hits)
                hit = bool(hits)
            if hit:
                out.append(f"{b}.{rel}")
    if target is not None and blocks == known:
        missing = [e for e in target if e not in used]
        if missing:
            raise SubtuneError(f"{who}: target {missing[0]!r} names no Linear/Conv2d layer inside the blocks")
    return out



#: LoRA's typed parameters (SubTuning+LoRA adds ``blocks``)
LORA_PARAMETERS = {
    "rank": Param(8, "a positive integer", POSITIVE_INT),
    "alpha": Param(8, "a positive number", POSITIVE_NUMBER),
    "dropout": Param(0.0, "in [0, 1)", FRACTION),
    "variant": Param("lora", f"one of {', '.join(VARIANTS)}", {"enum": list(VARIANTS)}),
    "target": Param(None, "null or a non-empty list of module names", NAMES_OR_NULL),
    "train_modules": Param([], "a list of module names (relative to a block)", NAMES),
    "rank_factors": Param({}, "a mapping of target names to positive integers",
                          {"type": "object", "propertyNames": {"type": "string", "minLength": 1},
                           "additionalProperties": POSITIVE_INT}),
}


def block_modules(model: nn.Module, blocks: list[str], names: list[str], targets: list[str],
                  who: str = "lora") -> list[str]:
    """Full names of the ``names`` submodules of every block in ``blocks`` (trained fully), checked:
    each exists in each block and contains no adapted layer (``targets``)."""
    out = []
    for b in blocks:
        blk = model.get_submodule(b)
        for rel in names:
            try:
                blk.get_submodule(rel)
            except AttributeError:
                raise SubtuneError(f"{who}: train_modules entry {rel!r} is not a submodule of block {b}") from None
            full = f"{b}.{rel}"
            hit = next((t for t in targets if t == full or t.startswith(full + ".")), None)
            if hit is not None:
                raise SubtuneError(f"{who}: train_modules entry {rel!r} contains the adapted layer {hit}")
            out.append(full)
    return out


def _is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _contiguous_params(module: nn.Module) -> None:
    for p in module.parameters():
        if not p.is_contiguous():
            p.data = p.data.contiguous()


def _contiguous_adapters(module: nn.Module, args: tuple) -> None:
    """Keep a conv LoRA layer's adapter weights contiguous.

    ``fit`` converts the model to channels_last, which makes the 4-D
    ``lora_A``/``lora_B``/magnitude weights non-contiguous, and peft's DoRA
    for convolutions ``view``s them (a RuntimeError). Restored here before
    the first forward, i.e. before the optimizer creates its state; the
    optimizer's in-place updates keep them contiguous afterwards.
    """
    for name in ("lora_A", "lora_B", "lora_magnitude_vector"):
        sub = getattr(module, name, None)
        if sub is not None:
            _contiguous_params(sub)


def merge_peft(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The plain timm state dict of a peft-wrapped model, its adapters merged in (peft's ``merge_and_unload`` on a
    copy); None for a model peft did not wrap."""
    if not _is_peft(model):
        return None
    model = copy.deepcopy(model)
    _contiguous_params(model)
    plain = model.merge_and_unload()
    return {k: v.detach().clone() for k, v in plain.state_dict().items()}


@register
class LoRA(Method):
    name = "lora"
    label = "LoRA"
    order = 70
    parameters = LORA_PARAMETERS
    per_family = LORA_TARGETS

    def adapted_blocks(self, model: nn.Module) -> list[str]:
        return block_names(model)

    def targets(self, model: nn.Module) -> list[str]:
        return lora_targets(model, self.params["target"], who=self.name, table=self.per_family)

    def full_modules(self, model: nn.Module, targets: list[str] | None = None) -> list[str]:
        """The ``train_modules`` of the adapted blocks, as full names in the (unwrapped) timm model."""
        return block_modules(model, self.adapted_blocks(model), self.params["train_modules"], targets or [],
                             self.name)

    def wrap(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        if _is_peft(model):
            raise SubtuneError(f"{self.name}: the model is already wrapped by peft")
        targets = self.targets(model)
        self.full_modules(model, targets)  # checked before any work
        if not targets:
            return model  # nothing to adapt (SubTuning+LoRA with no selected block): the linear probe
        variant = self.params["variant"]
        convs = [n for n in targets if isinstance(model.get_submodule(n), nn.Conv2d)]
        if variant == "pissa" and convs:
            raise SubtuneError(
                f"{self.name}: variant 'pissa' is not supported by peft for Conv2d layers ({convs[0]}, ...); "
                "use variant lora or dora for ResNet targets")
        rank, alpha, factors = self.params["rank"], self.params["alpha"], self.params["rank_factors"]
        unused = [e for e in factors if not any(_matches(n, e) for n in targets)]
        if unused:
            raise SubtuneError(f"{self.name}: rank_factors entry {unused[0]!r} names no adapted layer")
        # full names, anchored: peft matches a pattern key as a suffix of the module name
        scaled = {n: next(f for e, f in factors.items() if _matches(n, e)) for n in targets
                  if any(_matches(n, e) for e in factors)}
        cfg = LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=float(self.params["dropout"]),
            rank_pattern={f"^{re.escape(n)}$": f * rank for n, f in scaled.items()},
            alpha_pattern={f"^{re.escape(n)}$": f * alpha for n, f in scaled.items()},
            target_modules=targets, modules_to_save=head_names(model) if self.trains_head else None,
            use_dora=variant == "dora", use_rslora=False,
            init_lora_weights="pissa" if variant == "pissa" else True, bias="none",
        )
        try:
            wrapped = get_peft_model(model, cfg)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise SubtuneError(f"{self.name}: peft refused variant {variant!r}: {exc}") from None
        for name in convs:
            wrapped.base_model.model.get_submodule(name).register_forward_pre_hook(_contiguous_adapters)
        return wrapped

    def trainable(self, model: nn.Module) -> Trainable:
        from peft.tuners.lora import LoraLayer
        from peft.utils import ModulesToSaveWrapper

        if not _is_peft(model):
            if self.targets(model):
                raise SubtuneError(f"{self.name}: call wrap(model) first and train the model it returns")
            t = self.modules(model, [])
            t.notes.update(variant=self.params["variant"], targets=[])
            return t
        prefix = "base_model.model."
        full = [prefix + n for n in self.full_modules(model.get_base_model())]
        params = [(n, p) for n, p in model.named_parameters()
                  if ".lora_" in n or ".modules_to_save." in n or any(n.startswith(f + ".") for f in full)]
        layers = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
        heads = [n for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
        return Trainable(params, layers + full + heads, {
            "variant": self.params["variant"], "rank": self.params["rank"],
            "targets": [n.removeprefix(prefix) for n in layers],
            "train_modules": [n.removeprefix(prefix) for n in full]})

    def merge(self, model: nn.Module) -> dict[str, torch.Tensor]:
        merged = merge_peft(model)
        return super().merge(model) if merged is None else merged


@register
class SubTuningLoRA(LoRA):
    name = "subtuning_lora"
    label = "SubTuning+LoRA"
    order = 80
    needs = "selection"  # the greedily selected blocks (``blocks`` receives them)
    parameters = {**LORA_PARAMETERS, "blocks": Param([], "a list of block names", NAMES)}

    def adapted_blocks(self, model: nn.Module) -> list[str]:
        return list(self.params["blocks"])

    def targets(self, model: nn.Module) -> list[str]:
        return lora_targets(model, self.params["target"], self.adapted_blocks(model), who=self.name,
                            table=self.per_family)

    def trainable(self, model: nn.Module) -> Trainable:
        t = super().trainable(model)
        t.notes["blocks"] = list(self.params["blocks"])
        return t
