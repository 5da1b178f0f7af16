"""Backbones (timm models), their blocks, and checkpoints (hub, local file, pretraining)."""

from .blocks import Block, enumerate_blocks, family_of, head_names, other_names
from .checkpoint import Checkpoint, build_model, load_checkpoint, save_checkpoint

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
