"""``fetch``: pretrained weights (the timm hub, a local file or a registry package) saved as a checkpoint."""

from __future__ import annotations

import argparse

from .. import SubtuneError
from . import Stage
from ._common import json_arg


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", required=True, help="timm name, e.g. resnet50.tv2_in1k")
    s.add_argument("--file", help="local weights file instead of the hub")
    s.add_argument("--package", help="weights shipped in an installed registry package (efficientnet-lite0, ...)")
    s.add_argument("--model-kwargs", type=json_arg, default={})
    s.add_argument("--out", required=True)


def run(a: argparse.Namespace) -> None:
    from ..models.checkpoint import fetch

    if a.package:
        from ..models.packaged import fetch_package

        if a.file or a.model_kwargs:
            raise SubtuneError("fetch --package takes neither --file nor --model-kwargs (the package fixes both)")
        ckpt = fetch_package(a.package, a.out, arch=a.model)
    else:
        ckpt = fetch(a.model, a.out, file=a.file, **(a.model_kwargs or {}))
    print(f"{ckpt.arch} ({ckpt.origin['kind']}) -> {a.out}")


STAGE = Stage("fetch", "fetch pretrained timm weights (hub or local file) as a checkpoint", add_arguments, run,
              order=30)
