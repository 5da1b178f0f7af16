"""``prepare``: a prepared dataset (uint8 tensors and a manifest) from raw files (:mod:`subtune.data.targets`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import Stage
from ._common import json_arg


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--target", required=True, help="dataset name (e.g. fmnist-new)")
    s.add_argument("--raw", help="raw-files directory (from download)")
    s.add_argument("--params", type=json_arg, default={}, help="build parameters as JSON")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--manifest", required=True)


def run(a: argparse.Namespace) -> None:
    from ..data import prepared, targets

    params = dict(a.params or {})
    splits, manifest = targets.build(a.target, Path(a.raw) if a.raw else None, seed=a.seed, **params)
    prepared.save_prepared(a.out, a.manifest, splits, manifest)
    sizes = ", ".join(f"{k} {v}" for k, v in manifest["splits"].items())
    print(f"{a.target}: {sizes} -> {a.out}")


STAGE = Stage("prepare", "build a prepared dataset (uint8 tensors + manifest)", add_arguments, run, order=20)
