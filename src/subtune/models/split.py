"""A backbone seen as stem -> blocks -> head, so computation can start at any block.

``prefix(x, b)`` runs the stem and blocks ``0..b-1``; ``suffix(h, b)`` runs
blocks ``b..`` and the head. ``suffix(prefix(x, b), b)`` is exactly
``model(x)`` (same modules, same order); this is what frozen-prefix caching
relies on: when every block before ``b`` is frozen (eval mode, no gradient),
``prefix(x, b)`` is a fixed function of the image and can be computed once.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .blocks import block_names, family_of


def _resnet_stem(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.maxpool(m.act1(m.bn1(m.conv1(x))))


def _resnet_head(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.forward_head(x)


def _vit_stem(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))


def _vit_head(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.forward_head(m.norm(x))


def _wrn_stem(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.conv1(x)


def _wrn_head(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.forward_head(m.relu(m.bn1(x)))


_STAGES: dict[str, tuple[Callable, Callable, list[str]]] = {
    # family: (stem, head, names of the modules the stem uses)
    "resnet": (_resnet_stem, _resnet_head, ["conv1", "bn1", "act1", "maxpool"]),
    "vit": (_vit_stem, _vit_head, ["patch_embed", "cls_token", "pos_embed", "reg_token", "norm_pre"]),
    # CIFAR WideResNet (.wrn): stem = conv1; head = the final bn1 + relu, pooling, fc
    "wrn": (_wrn_stem, _wrn_head, ["conv1"]),
}


class Staged:
    """Stem/blocks/head view of a timm backbone (no copy: it calls the model's own modules)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.family = family_of(model)
        self._stem, self._head, self.stem_names = _STAGES[self.family]
        self.block_names = block_names(model)
        self.blocks = [model.get_submodule(n) for n in self.block_names]

    def __len__(self) -> int:
        return len(self.blocks)

    def prefix(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        h = self._stem(self.model, x)
        for blk in self.blocks[:stop]:
            h = blk(h)
        return h

    def suffix(self, h: torch.Tensor, start: int) -> torch.Tensor:
        for blk in self.blocks[start:]:
            h = blk(h)
        return self._head(self.model, h)

    def first_trainable(self, trainable_names: list[str]) -> int | None:
        """Index of the earliest block holding a trainable parameter (len(blocks) if only the head
        trains); None when the stem (or anything outside blocks and head) trains."""
        start = len(self.blocks)
        for name in trainable_names:
            hit = next((i for i, b in enumerate(self.block_names) if name.startswith(b + ".")), None)
            if hit is not None:
                start = min(start, hit)
                continue
            top = name.split(".")[0]
            if top in self.stem_names or not self._is_head(top):
                return None
        return start

    def _is_head(self, top: str) -> bool:
        from .blocks import head_names

        return top in head_names(self.model) or top in ("norm", "fc_norm") or (self.family == "wrn" and top == "bn1")
