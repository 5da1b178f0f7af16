"""A backbone seen as stem -> blocks -> head, so computation can start at any block.

``prefix(x, b)`` runs the stem and blocks ``0..b-1``; ``suffix(h, b)`` runs
blocks ``b..`` and the head. The pieces are the family record's
(:mod:`.families`): ``stem_forward``, the blocks, each block's transition
(a frozen module that runs right before it, e.g. ConvNeXt's downsample; it
belongs to the suffix starting at that block), ``tail_forward`` and the
model's ``forward_head``. ``suffix(prefix(x, b), b)`` is exactly
``model(x)`` (same modules, same order); this is what frozen-prefix caching
relies on: when every block before ``b`` is frozen (eval mode, no gradient),
``prefix(x, b)`` is a fixed function of the image and can be computed once.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import block_names, family, head_names


class Staged:
    """Stem/blocks/head view of a timm backbone (no copy: it calls the model's own modules)."""

    def __init__(self, model: nn.Module):
        self.model = model
        fam = family(model)
        self.family = fam.name
        self._stem_forward, self._tail_forward = fam.stem_forward, fam.tail_forward
        self.stem_names = list(fam.stem_of(model))
        self.tail_names = list(fam.tail)
        self.block_names = block_names(model)
        self.blocks = [model.get_submodule(n) for n in self.block_names]
        trans = fam.transitions(model)
        #: per block, the module run right before it (None: none)
        self.transition_names = [trans.get(b) for b in self.block_names]
        self.transitions = [None if t is None else model.get_submodule(t) for t in self.transition_names]

    def __len__(self) -> int:
        return len(self.blocks)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self._stem_forward(self.model, x)

    def run(self, i: int, h: torch.Tensor, block: nn.Module | None = None) -> torch.Tensor:
        """Block ``i`` (or ``block``, a tuned copy of it) on ``h``, after block ``i``'s transition."""
        t = self.transitions[i]
        if t is not None:
            h = t(h)
        return (self.blocks[i] if block is None else block)(h)

    def head(self, h: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The tail (final norms) and ``forward_head``: logits, or with ``pre_logits`` the features."""
        h = self._tail_forward(self.model, h)
        return self.model.forward_head(h, pre_logits=True) if pre_logits else self.model.forward_head(h)

    def prefix(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        h = self.stem(x)
        for i in range(stop):
            h = self.run(i, h)
        return h

    def suffix(self, h: torch.Tensor, start: int) -> torch.Tensor:
        for i in range(start, len(self.blocks)):
            h = self.run(i, h)
        return self.head(h)

    def first_trainable(self, trainable_names: list[str]) -> int | None:
        """Index of the earliest block holding a trainable parameter (a parameter of a block's transition
        counts as that block's; len(blocks) if only the head or the tail trains); None when the stem (or
        anything outside blocks, transitions, tail and head) trains."""
        start = len(self.blocks)
        heads = head_names(self.model)
        for name in trainable_names:
            hit = next((i for i, (b, t) in enumerate(zip(self.block_names, self.transition_names))
                        if _under(name, b) or (t is not None and _under(name, t))), None)
            if hit is not None:
                start = min(start, hit)
                continue
            if any(_under(name, s) for s in self.stem_names) or not any(
                    _under(name, h) for h in [*heads, *self.tail_names]):
                return None
        return start


def _under(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")
