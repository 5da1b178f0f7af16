"""The ViT family: timm's ``VisionTransformer`` class (``vit_tiny_patch16_224``, ``vit_base_patch16_224_miil``,
``vit_base_patch14_dinov2``, ... any ``timm.models.vision_transformer`` architecture).

Source: timm ``timm/models/vision_transformer.py`` (``forward_features``: ``patch_embed`` -> ``_pos_embed``
(class/register tokens, position embedding) -> ``patch_drop`` -> ``norm_pre`` -> ``blocks`` -> ``norm``;
``forward_head``: pooling, ``fc_norm``, ``head``).

- Blocks: every transformer block ``blocks.0`` ... ``blocks.N``.
- Stem: ``cls_token``, ``reg_token``, ``pos_embed`` (parameters, not modules), ``patch_embed``,
  ``norm_pre``; tail: the final ``norm`` (``fc_norm`` runs inside ``forward_head``).
- Surgical groups (our choice; the surgical-finetuning authors define none for ViTs): four groups of
  consecutive blocks, the first with the stem.
- LoRA (``target: null``): ``attn.qkv`` (timm's fused q/k/v Linear, one adapter), ``attn.proj``,
  ``mlp.fc1``, ``mlp.fc2`` of every block (the SubTuning paper's LoRA baseline adapts qkv and proj).
- SSF (the SSF paper's, authors' ``models/vision_transformer.py``): after the patch embedding; in every
  block after ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1`` (before the GELU),
  ``mlp.fc2``; after the final norm (``norm``, or ``fc_norm`` for average-pooled models).
- SAN (the SAN authors' code): the patch embedding, and in every block ``attn.qkv``, ``attn.proj``,
  ``mlp.fc1``, ``mlp.fc2``; the patch-embedding scale feeds every ``qkv``, ``attn.proj``'s feeds
  ``mlp.fc1``, ``mlp.fc1``'s feeds ``mlp.fc2``.
"""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from . import Family, SANWire, SSFPosition, in_four


def blocks(model: nn.Module) -> list[str]:
    return [f"blocks.{i}" for i in range(len(model.blocks))]


def final_norms(model: nn.Module) -> list[str]:
    """The final norm(s) with parameters (``norm`` for token pooling, ``fc_norm`` for average pooling)."""
    return [n for n in ("norm", "fc_norm") if isinstance(getattr(model, n, None), nn.Module)
            and any(True for _ in getattr(model, n).parameters())]


def patch_embed_target(model: nn.Module) -> str:
    """Where a scale on timm PatchEmbed's output merges: its norm if it has one, else its projection."""
    norm = model.patch_embed.norm
    return "patch_embed.norm" if any(True for _ in norm.parameters()) else "patch_embed.proj"


def ssf_positions(model: nn.Module) -> list[SSFPosition]:
    out = [("patch_embed", -1, patch_embed_target(model))]
    for b in blocks(model):
        for rel in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            out.append((f"{b}.{rel}", -1, f"{b}.{rel}"))
    out += [(n, -1, n) for n in final_norms(model)]
    return out


def san_wiring(model: nn.Module) -> list[SANWire]:
    out: list[SANWire] = [("patch_embed", -1, None, patch_embed_target(model))]
    for b in blocks(model):
        out += [
            (f"{b}.attn.qkv", -1, "patch_embed", f"{b}.attn.qkv"),
            (f"{b}.attn.proj", -1, None, f"{b}.attn.proj"),
            (f"{b}.mlp.fc1", -1, f"{b}.attn.proj", f"{b}.mlp.fc1"),
            (f"{b}.mlp.fc2", -1, f"{b}.mlp.fc1", f"{b}.mlp.fc2"),
        ]
    return out


FAMILY = Family(
    name="vit",
    classes=(VisionTransformer,),
    blocks=blocks,
    stem=("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre"),
    stem_forward=lambda m, x: m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x)))),
    tail=("norm", "fc_norm"),
    tail_forward=lambda m, h: m.norm(h),
    groups=in_four,
    lora_targets=("qkv", "proj", "fc1", "fc2"),
    ssf_positions=ssf_positions,
    san_wiring=san_wiring,
    tiny=("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 4}, 32),
    shrink={"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 8},
)
