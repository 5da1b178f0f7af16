"""Block enumeration for timm backbones.

A *block* is the unit SubTuning selects: each residual block of a ResNet-family
model (``layer1.0`` … ``layer4.N``, BasicBlock or Bottleneck) and each
transformer block of a ViT-family model (``blocks.0`` … ``blocks.N``). The stem
(ResNet ``conv1``/``bn1``; ViT ``patch_embed``, ``cls_token``, ``pos_embed``)
and the final norm are not candidates, as in the SubTuning paper. The head
(timm's classifier: ``fc`` or ``head``) is separate and always trainable.

Families are a registry keyed by the timm model class, so a new family is one
``@register_family`` function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import SubtuneError
from .._lazy import lazy

nn = lazy("torch.nn")


@dataclass(frozen=True)
class Block:
    index: int
    name: str
    num_params: int


_FAMILIES: list[tuple[str, type, Callable[[nn.Module], list[str]]]] = []


def register_family(name: str, cls: type):
    def deco(fn: Callable[[nn.Module], list[str]]):
        _FAMILIES.append((name, cls, fn))
        return fn

    return deco


def _resnet_blocks(model: nn.Module) -> list[str]:
    names = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model, stage, None)
        if layer is None:
            continue
        names.extend(f"{stage}.{i}" for i in range(len(layer)))
    return names


def _vit_blocks(model: nn.Module) -> list[str]:
    return [f"blocks.{i}" for i in range(len(model.blocks))]


_builtin_registered = False


def _families() -> list[tuple[str, type, Callable[[nn.Module], list[str]]]]:
    """The known families; timm's ResNet and VisionTransformer are added on first use
    (importing timm takes seconds, and config validation needs none of this)."""
    global _builtin_registered
    if not _builtin_registered:
        _builtin_registered = True
        from timm.models.resnet import ResNet
        from timm.models.vision_transformer import VisionTransformer

        _FAMILIES[:0] = [("resnet", ResNet, _resnet_blocks), ("vit", VisionTransformer, _vit_blocks)]
    return _FAMILIES


def family_of(model: nn.Module) -> str:
    for name, cls, _ in _families():
        if isinstance(model, cls):
            return name
    raise SubtuneError(
        f"unsupported backbone class {type(model).__name__}: known families are "
        + ", ".join(n for n, _, _ in _families())
    )


def block_names(model: nn.Module) -> list[str]:
    for _, cls, fn in _families():
        if isinstance(model, cls):
            return fn(model)
    family_of(model)  # raises
    return []


def enumerate_blocks(model: nn.Module) -> list[Block]:
    """The candidate blocks of ``model`` in network order, with parameter counts."""
    out = []
    for i, name in enumerate(block_names(model)):
        mod = model.get_submodule(name)
        out.append(Block(i, name, sum(p.numel() for p in mod.parameters())))
    return out


def head_names(model: nn.Module) -> list[str]:
    """Module names of the classifier head (timm's ``pretrained_cfg['classifier']``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    clf = cfg.get("classifier")
    names = [clf] if isinstance(clf, str) else list(clf or [])
    if not names:
        for cand in ("fc", "head", "classifier"):
            if isinstance(getattr(model, cand, None), nn.Module):
                names = [cand]
                break
    if not names:
        raise SubtuneError(f"cannot find the classifier head of {type(model).__name__}")
    return names


def other_names(model: nn.Module) -> list[str]:
    """Top-level parameter/module names that are neither blocks nor head (stem, final norm)."""
    blocks = {n.split(".")[0] for n in block_names(model)}
    heads = set(head_names(model))
    seen = []
    for pname, _ in model.named_parameters():
        top = pname.split(".")[0]
        if top not in blocks and top not in heads and top not in seen:
            seen.append(top)
    return seen


def module_params(model: nn.Module, prefixes: list[str]) -> list[tuple[str, nn.Parameter]]:
    """Parameters whose name lies under any of the module-name ``prefixes`` ("" = all)."""
    out = []
    for pname, p in model.named_parameters():
        if any(pre == "" or pname == pre or pname.startswith(pre + ".") for pre in prefixes):
            out.append((pname, p))
    return out
