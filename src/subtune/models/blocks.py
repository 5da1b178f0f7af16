"""Block enumeration for timm backbones.

A *block* is the unit SubTuning selects: each residual block of a ResNet-family
model (``layer1.0`` … ``layer4.N``, BasicBlock or Bottleneck), each transformer
block of a ViT-family model (``blocks.0`` … ``blocks.N``) and each
pre-activation BasicBlock of the CIFAR WideResNet (:mod:`.wrn`:
``block1.layer.0`` … ``block3.layer.N``). The stem (ResNet ``conv1``/``bn1``;
ViT ``patch_embed``, ``cls_token``, ``pos_embed``; WideResNet ``conv1``) and
the final norm are not candidates, as in the SubTuning paper. The head
(timm's classifier: ``fc`` or ``head``) is separate and always trainable.

Families are a registry of :class:`Family` records keyed by the model class,
so a new family is one record here (plus its stem/head functions in
:mod:`.split` and its feature function in :mod:`subtune.multitask`).
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


@dataclass(frozen=True)
class Family:
    """One backbone family: everything the rest of the package needs to know about it.

    ``blocks`` lists the candidate block names of a model; ``stem`` names the
    top-level modules or parameters before the first block (Surgical's group
    0 starts with those that exist); ``groups`` cuts the block list into
    Surgical's groups; ``tiny`` is (timm name, kwargs, input size) of a small
    instance, for tests and smoke runs (tests parametrise over
    :func:`families`, so a new family is tested without being listed).
    The stem/head computation (:mod:`.split`) and the multi-task feature
    function (:mod:`subtune.multitask`) are keyed by ``name``.
    """

    name: str
    cls: type
    blocks: Callable[[nn.Module], list[str]]
    stem: tuple[str, ...]
    groups: Callable[[list[str]], list[list[str]]]
    tiny: tuple[str, dict, int]


_FAMILIES: list[Family] = []


def by_stage(blocks: list[str]) -> list[list[str]]:
    """One group per stage: blocks whose names share everything but the last component, in order."""
    stages: dict[str, list[str]] = {}
    for b in blocks:
        stages.setdefault(b.rsplit(".", 1)[0], []).append(b)
    return list(stages.values())


def in_four(blocks: list[str]) -> list[list[str]]:
    """Four groups of consecutive blocks (the last may be shorter)."""
    size = -(-len(blocks) // 4)
    return [blocks[i : i + size] for i in range(0, len(blocks), size)]


def register_family(name: str, cls: type, *, stem: tuple[str, ...] = (), groups=by_stage,
                    tiny: tuple[str, dict, int] | None = None):
    def deco(fn: Callable[[nn.Module], list[str]]):
        _FAMILIES.append(Family(name, cls, fn, tuple(stem), groups, tiny or ("", {}, 0)))
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


def _wrn_blocks(model: nn.Module) -> list[str]:
    return [f"{s}.layer.{i}" for s in ("block1", "block2", "block3") for i in range(len(model.get_submodule(s).layer))]


_builtin_registered = False


def families() -> list[Family]:
    """The known families; timm's ResNet and VisionTransformer and our CIFAR WideResNet are added on
    first use (importing timm takes seconds, and config validation needs none of this)."""
    global _builtin_registered
    if not _builtin_registered:
        _builtin_registered = True
        from timm.models.resnet import ResNet
        from timm.models.vision_transformer import VisionTransformer

        from .wrn import WideResNet

        _FAMILIES[:0] = [
            # Surgical group 0 = conv1 + bn1 + layer1 (the authors' "conv1 + block1" on timm's stem)
            Family("resnet", ResNet, _resnet_blocks, ("conv1", "bn1"), by_stage,
                   ("resnet18", {"channels": (8, 16, 32, 64)}, 32)),
            Family("vit", VisionTransformer, _vit_blocks, ("cls_token", "reg_token", "pos_embed", "patch_embed",
                                                            "norm_pre"), in_four,
                   ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 4}, 32)),
            # the surgical-finetuning authors' groups: conv1 + block1, block2, block3 (bn1 is the final norm)
            Family("wrn", WideResNet, _wrn_blocks, ("conv1",), by_stage,
                   ("wrn28_10_cifar", {"depth": 10, "widen_factor": 1}, 32)),
        ]
    return _FAMILIES


_families = families


def family(model: nn.Module) -> Family:
    for f in families():
        if isinstance(model, f.cls):
            return f
    raise SubtuneError(
        f"unsupported backbone class {type(model).__name__}: known families are "
        + ", ".join(f.name for f in families())
    )


def family_of(model: nn.Module) -> str:
    return family(model).name


def block_names(model: nn.Module) -> list[str]:
    return family(model).blocks(model)


def stem_names(model: nn.Module) -> list[str]:
    """The family's stem entries that exist in ``model`` and hold parameters (modules or parameters)."""
    out = []
    for n in family(model).stem:
        obj = getattr(model, n, None)
        if isinstance(obj, nn.Parameter) or (isinstance(obj, nn.Module) and any(True for _ in obj.parameters())):
            out.append(n)
    return out


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
