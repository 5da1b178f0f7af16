"""``blocks``: a backbone's candidate blocks (what selection chooses among), with their parameter counts."""

from __future__ import annotations

import argparse

from . import Stage
from ._common import existing, json_arg


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--checkpoint")
    s.add_argument("--arch", default="resnet18")
    s.add_argument("--model-kwargs", type=json_arg, default={})


def run(a: argparse.Namespace) -> None:
    from ..models.blocks import enumerate_blocks, head_names
    from ..models.checkpoint import build_model, create

    if a.checkpoint:
        model, _ = build_model(existing(a.checkpoint), 2)
    else:
        model = create(a.arch, 2, 3, **(a.model_kwargs or {}))
    for b in enumerate_blocks(model):
        print(f"{b.index}\t{b.name}\t{b.num_params}")
    head = sum(p.numel() for n in head_names(model) for p in model.get_submodule(n).parameters())
    print(f"head\t{','.join(head_names(model))}\t{head}")


STAGE = Stage("blocks", "list a backbone's candidate blocks with parameter counts", add_arguments, run, order=50)
