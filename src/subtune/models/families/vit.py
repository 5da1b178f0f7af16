"""The ViT family: timm's ``VisionTransformer`` class (``vit_tiny_patch16_224``, ``vit_base_patch16_224_miil``,
``vit_base_patch14_dinov2``, ... any ``timm.models.vision_transformer`` architecture).

Source: timm ``timm/models/vision_transformer.py`` (``forward_features``: ``patch_embed`` -> ``_pos_embed``
(class/register tokens, position embedding) -> ``patch_drop`` -> ``norm_pre`` -> ``blocks`` -> ``norm``;
``forward_head``: pooling, ``fc_norm``, ``head``).

- Blocks (timm's layer map): every transformer block ``blocks.0`` ... ``blocks.N``.
- Stem (timm's layer map): ``cls_token``, ``reg_token``, ``pos_embed`` (parameters, not modules),
  ``patch_embed``, ``norm_pre``; tail: the final ``norm`` and ``fc_norm`` (``fc_norm`` runs inside
  ``forward_head``; an average-pooled model has it, with ``norm`` an Identity).
"""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from . import Family

FAMILY = Family(
    name="vit",
    classes=(VisionTransformer,),
    stem_forward=lambda m, x: m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x)))),
    tail=("norm", "fc_norm"),
    tail_forward=lambda m, h: m.norm(h),
    tiny=("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 4}, 32),
    shrink={"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 8},
)
