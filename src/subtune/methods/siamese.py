"""Siamese SubTuning (Kaplun et al., "Less is More: Selective Layer Finetuning with SubTuning", arXiv
2302.06354, the multi-task inference section): SubTuning whose new head also sees the frozen network's
features.

In the multi-task setting SubTuning is deployed for (the paper's computation
graph: one frozen network shared by the tasks, a new task branching off it at
its first SubTuned block), the original network's features are computed for
the other tasks anyway; Siamese SubTuning gives them to the new task's head
too, concatenated with the features of the task's own (SubTuned) branch. The
authors' code had it in its first version only (github.com/talswisa/SubTuning,
commits a00bc19 to e024f1a, Feb 2023: ``use_frozen_bb`` in ``src/model_utils.py``,
``scripts/run_siamese.sh``; dropped in 3b59304, the paper's second version):
a frozen ``deepcopy`` of the pretrained backbone beside the SubTuned one, the
forward ``torch.cat((tuned(x), frozen(x)), dim=1)`` of the pooled penultimate
features, and a head of width ``2 d`` (a ``Linear`` at their default head depth
1). This follows it (one ICLR 2024 reviewer asked whether the head doubles in
width: it does), with two differences:

- their frozen copy followed the module's train mode (only the tuned backbone
  was put in eval mode): on a ResNet its BatchNorms normalised with batch
  statistics while training and moved their running statistics on the target
  data, which we take for unintended; here the frozen path is the pretrained
  network in eval mode (a ViT has no BatchNorm: no difference there);
- they copied the whole network; here the prefix before the first selected
  block is shared and only the selected blocks are copied (the same outputs).

Exact form. With the backbone's stem ``S``, blocks ``B_1 .. B_L`` (the family
record's order, :mod:`subtune.models.families`; a block's transition, e.g.
ConvNeXt's downsample, runs before it), its tail and pooling ``P`` (final
norm, global pool / class token; timm's ``forward_head(pre_logits=True)``),
the selected set ``K`` (``blocks``, from SubTuning's greedy selection) and
``s = min K`` (the first selected block)::

    h_s    = B_{s-1} ∘ ... ∘ B_1 ∘ S (x)                     shared, frozen
    f_orig = P(B_L ∘ ... ∘ B_s (h_s))                         the frozen network's features
    f_sub  = P(B'_L ∘ ... ∘ B'_s (h_s)),  B'_i = copy of B_i (trainable) if i in K, else B_i (frozen)
    logits = W [f_sub ; f_orig] + b                           W: C x 2d, b: C

- The copies start from the pretrained blocks; the original blocks, the stem,
  the tail and ``P`` stay frozen and bit-identical (the copies are new
  modules; the branch reuses the original's frozen modules after ``s``, as in
  the paper's graph, so no frozen weight is stored twice).
- Trainable: the copies of the selected blocks (every parameter, train mode:
  their BatchNorm statistics adapt, as SubTuning's selected blocks) and the
  head ``(W, b)``: ``sum |B_i| (i in K) + 2 d C + C``. The frozen path and
  the frozen modules of the branch run in eval mode.
- The head is a new ``nn.Linear(2d, C)`` (torch's default initialisation,
  what timm's ``reset_classifier`` gives the other methods' new heads),
  drawn from the global RNG at :meth:`SiameseSubTuning.wrap`
  (:func:`subtune.stages.train.fit_method` seeds it with the run's seed); the backbone's own classifier is removed.
- With no block selected ``f_sub = f_orig`` and it is the linear probe on the
  features twice.
- The blocks are SubTuning's greedily selected ones (``needs: selection``,
  the same selection SubTuning's row uses); the selection is not re-run with
  the Siamese head.
- Head: only a new head (``heads = ("new",)``): the source classifier takes
  ``d`` features, not ``2d``.
- Not mergeable (``mergeable = False``): the trained model has two feature
  paths and a head on both, which no plain timm architecture computes;
  :meth:`SiameseSubTuning.merge` raises and ``train --save-model`` refuses it
  before training.
- Cost: the blocks from ``s`` on run twice (forward), once without gradients.
"""

from __future__ import annotations

import copy

from .. import SubtuneError
from ..models.blocks import block_names, head_names
from .base import Method, Param, Trainable, register
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")


def _siamese_model_class():
    from ..models.split import Staged

    class SiameseModel(nn.Module):
        """The frozen backbone, trainable copies of the selected blocks, and one head on both feature paths.

        Submodules: ``backbone`` (the timm model, its classifier replaced by
        ``nn.Identity``), ``tuned`` (the copies, in network order; ``selected``
        names the blocks they copy) and ``head``.
        """

        def __init__(self, backbone: nn.Module, blocks: list[str], num_classes: int, width: int):
            super().__init__()
            self.backbone = backbone
            self.selected = list(blocks)
            self.tuned = nn.ModuleList([copy.deepcopy(backbone.get_submodule(b)) for b in blocks])
            self.head = nn.Linear(2 * width, num_classes)
            self.num_classes = num_classes
            self._staged = Staged(backbone)
            self._copy_of = {self._staged.block_names.index(b): i for i, b in enumerate(blocks)}

        def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """``(f_sub, f_orig)``: the SubTuned branch's features and the frozen network's."""
            s = self._staged
            start = min(self._copy_of, default=len(s))
            h = s.prefix(x, start)
            orig, sub = h, h
            for i in range(start, len(s)):
                orig = s.run(i, orig)
                j = self._copy_of.get(i)
                sub = s.run(i, sub, None if j is None else self.tuned[j])
            return s.head(sub, pre_logits=True), s.head(orig, pre_logits=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f_sub, f_orig = self.features(x)
            return self.head(torch.cat([f_sub, f_orig], dim=-1))

    return SiameseModel


_CLASS = None


def siamese_model_class():
    """:class:`SiameseModel` (built on first use: this module imports without torch)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _siamese_model_class()
    return _CLASS


@register
class SiameseSubTuning(Method):
    name = "siamese"
    label = "Siamese SubTuning"
    order = 55
    needs = "selection"  # the greedily selected blocks (``blocks`` receives them)
    heads = ("new",)
    mergeable = False
    parameters = {"blocks": Param([], "a list of block names", {"type": "array", "items": {"type": "string"}})}

    def wrap(self, model: nn.Module) -> nn.Module:
        if isinstance(model, siamese_model_class()):
            raise SubtuneError(f"{self.name}: the model is already wrapped")
        known = block_names(model)
        for b in self.params["blocks"]:
            if b not in known:
                raise SubtuneError(f"{self.name}: {b!r} is not a block of this model (blocks: {', '.join(known)})")
        blocks = [b for b in known if b in set(self.params["blocks"])]  # network order, once each
        heads = head_names(model)
        clf = model.get_submodule(heads[0])
        if len(heads) != 1 or not isinstance(clf, nn.Linear):
            raise SubtuneError(f"{self.name}: the classifier {', '.join(heads)} is not one Linear layer")
        width, num_classes = clf.in_features, clf.out_features
        model.set_submodule(heads[0], nn.Identity())
        return siamese_model_class()(model, blocks, num_classes, width)

    def trainable(self, model: nn.Module) -> Trainable:
        if not isinstance(model, siamese_model_class()):
            raise SubtuneError(f"{self.name}: call wrap(model) first and train the model it returns")
        params = [(n, p) for n, p in model.named_parameters() if n.startswith(("tuned.", "head."))]
        return Trainable(params, ["tuned", "head"], {"blocks": list(model.selected)})

    def merge(self, model: nn.Module):
        raise SubtuneError(f"{self.name}: the trained model has two feature paths (the frozen backbone and the "
                           "SubTuned copies) and one head on both; it cannot be merged into a plain timm model")

