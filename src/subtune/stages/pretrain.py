"""``pretrain``: a backbone pretrained on a source dataset (:mod:`subtune.models.pretrain`)."""

from __future__ import annotations

import argparse

from . import Stage
from ._common import common_train, existing, json_arg, threads


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--arch", required=True)
    s.add_argument("--model-kwargs", type=json_arg, default={})
    s.add_argument("--data", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", help="write the pretraining metrics JSON here")
    common_train(s)


def run(a: argparse.Namespace) -> None:
    from ..data.prepared import load_manifest, load_prepared
    from ..models.pretrain import pretrain
    from ..train import TrainConfig

    cfg = TrainConfig.from_dict(a.train, "pretrain.train")
    manifest = load_manifest(existing(a.manifest))
    data = load_prepared(existing(a.data), splits=("train", "val", "test"))
    threads(a.threads)
    m = pretrain(a.arch, data, manifest, a.out, cfg, a.seed, a.model_kwargs, a.device)
    if a.metrics:
        from ..io import write_json

        write_json(a.metrics, m)
    print(f"pretrained {a.arch} on {manifest.get('name')}: source test acc {m['test_acc']:.4f} -> {a.out}")


STAGE = Stage("pretrain", "pretrain a backbone on a source dataset", add_arguments, run, order=40)
