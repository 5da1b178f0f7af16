"""Block enumeration for timm backbones.

A *block* is the unit SubTuning selects: each residual block of a ResNet-family
model (``layer1.0`` … ``layer4.N``, BasicBlock or Bottleneck), each transformer
block of a ViT-family model (``blocks.0`` … ``blocks.N``), each ConvNeXt block
(``stages.0.blocks.0`` … ``stages.3.blocks.N``) and each pre-activation
BasicBlock of the CIFAR WideResNet (:mod:`.wrn`: ``block1.layer.0`` …
``block3.layer.N``). The stem and the final norm are not candidates, as in the
SubTuning paper. The head (timm's classifier: ``fc``, ``head`` or ``head.fc``)
is separate and always trainable.

What a family's blocks, stem and tail are is its record in :mod:`.families`
(one module per family; what a method adapts on it is the method's own
per-family table); this module answers the questions the rest of the package
asks about a model's structure, through that record.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import SubtuneError
from .._lazy import lazy
from .families import Family, families, family, has_params, register_family  # noqa: F401  (this module's API)

nn = lazy("torch.nn")


@dataclass(frozen=True)
class Block:
    index: int
    name: str
    num_params: int


def family_of(model: nn.Module) -> str:
    return family(model).name


def block_names(model: nn.Module) -> list[str]:
    return family(model).blocks(model)


def stem_names(model: nn.Module) -> list[str]:
    """The family's stem entries that exist in ``model`` and hold parameters (modules or parameters)."""
    return [n for n in family(model).stem_of(model) if has_params(model, n)]


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
