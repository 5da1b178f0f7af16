"""Backbones (timm models), their blocks, and checkpoints (hub, local file, pretraining).

The checkpoint functions (timm, safetensors) are imported on first use, so that
:mod:`subtune.models.blocks` can be imported without them (config validation).
"""

from __future__ import annotations

from typing import Any

from .blocks import Block, enumerate_blocks, family_of, head_names, other_names

_CHECKPOINT = ("Checkpoint", "build_model", "load_checkpoint", "save_checkpoint")


def __getattr__(name: str) -> Any:
    if name in _CHECKPOINT:
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Block",
    "Checkpoint",
    "build_model",
    "enumerate_blocks",
    "family_of",
    "head_names",
    "load_checkpoint",
    "other_names",
    "save_checkpoint",
]
