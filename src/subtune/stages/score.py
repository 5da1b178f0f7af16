"""``score``: candidate block sets fine-tuned and scored on validation data (:mod:`subtune.scoring`).

One greedy round (``--sets greedy``), the fine-tuning profile, the pair grid, Surgical's groups or given sets;
``--shard``/``--shards`` split the candidates between jobs. The test split is never loaded.
"""

from __future__ import annotations

import argparse

from .. import SubtuneError
from . import Stage
from ._common import common_train, existing, json_arg, method_help, threads, track, union_train_val


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--sets", choices=["greedy", "profile", "pairs", "surgical", "explicit"], default="greedy")
    s.add_argument("--candidate", action="append",
                   help="with --sets explicit: a block set, names joined by '+' ('' = head only); repeatable")
    s.add_argument("--state", help="selection state after the previous round (greedy rounds > 1)")
    s.add_argument("--selection", type=json_arg, default={}, help="selection config as JSON")
    s.add_argument("--data", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--shard", type=int, default=0)
    s.add_argument("--shards", type=int, default=1)
    s.add_argument("--no-fast", action="store_true",
                   help="train every candidate alone through the whole network (no prefix cache, no grouping)")
    s.add_argument("--cv-data", choices=["train", "train+val"], default="train",
                   help="with scoring cv: the data the folds run over (train+val: the union of the two splits)")
    s.add_argument("--cache-mb", type=float, default=2048, help="memory budget of the prefix cache")
    s.add_argument("--cache-dir", help="where prefix-cache entries over the memory budget go")
    s.add_argument("--head", choices=["new", "keep"], default="new", help=method_help()["head"])
    s.add_argument("--budget", type=json_arg, default=None,
                   help="with --sets greedy: the selection budget as JSON (selection.budget; null: exact)")
    s.add_argument("--out", required=True)
    common_train(s)


def candidate_sets(a: argparse.Namespace, model, blocks: list[str], sel_cfg) -> tuple[list[tuple[str, ...]], dict]:
    """The block sets ``--sets`` names for this model, and what the output records about them (greedy: the round)."""
    from .. import select
    from ..io import read_json

    if a.sets == "surgical":
        from ..methods import surgical_groups

        return [tuple(g) for g in surgical_groups(model)], {}
    if a.sets == "greedy":
        state = read_json(a.state) if a.state else select.initial_state(blocks, sel_cfg)
        return select.candidates(state), {"round": len(state["rounds"]) + 1}
    if a.sets == "profile":
        return select.profile_sets(blocks), {}
    if a.sets == "pairs":
        return select.pair_sets(blocks), {}
    if a.sets == "explicit":
        if not a.candidate:
            raise SubtuneError("--sets explicit needs at least one --candidate (block names joined by '+')")
        sets = [select.unkey(c) for c in a.candidate]
        for c in sets:
            for b in c:
                if b not in blocks:
                    raise SubtuneError(f"--candidate: {b!r} is not a block of this model ({', '.join(blocks)})")
        return sets, {}
    raise SubtuneError(f"unknown --sets {a.sets!r}")


def run(a: argparse.Namespace) -> None:
    from .. import select
    from ..data.prepared import load_manifest, load_prepared
    from ..io import read_json, write_json
    from ..models.blocks import block_names
    from ..prefix import PrefixCache
    from ..provenance import provenance
    from ..scoring import CandidateScorer
    from ..train import TrainConfig

    train_cfg = TrainConfig.from_dict(a.train)
    sel_cfg = select.SelectionConfig.from_dict(a.selection)
    manifest = load_manifest(existing(a.manifest))
    existing(a.data), existing(a.checkpoint)
    if a.state:
        existing(a.state)
    if a.cv_data != "train" and sel_cfg.scoring != "cv":
        raise SubtuneError(f"--cv-data {a.cv_data} needs scoring cv in --selection (it is {sel_cfg.scoring})")
    # Only train and validation are loaded: selection never reads the test split.
    data = load_prepared(a.data, splits=("train", "val"))
    digest = manifest.get("sha256")
    if a.cv_data == "train+val":  # the folds run over the union
        data, digest = union_train_val(data, digest)
    threads(a.threads)
    cache = PrefixCache(a.cache_mb, a.cache_dir)
    scorer = CandidateScorer(a.checkpoint, data, int(manifest["num_classes"]), train_cfg, sel_cfg, a.seed, a.device,
                             fast=not a.no_fast, cache=cache, data_digest=digest,
                             keep_head=a.head == "keep", classes=manifest.get("classes"), target=manifest.get("name"),
                             manifest=manifest)
    blocks = block_names(scorer.base)
    sets, extra = candidate_sets(a, scorer.base, blocks, sel_cfg)
    mine = select.shard(sets, a.shard, a.shards)
    if a.sets == "greedy":
        # One greedy round, under the selection budget if any (subtune.halving); its cost goes in the file.
        from ..halving import Budget

        budget = Budget.from_dict(a.budget, "--budget")
        if budget is not None:
            budget.check(train_cfg.epochs)
            if budget.one_job and a.shards > 1:
                raise SubtuneError(f"--budget: {budget.kind} needs the round's candidates in one job (--shards 1)")
        ref = select.reference(read_json(a.state) if a.state else select.initial_state(blocks, sel_cfg))
        results, extra["cost"] = scorer.score_round(mine, [r for r in ref if r in mine], budget)
    else:
        import time

        t0 = time.perf_counter()
        results = scorer.score_many(mine)
        # what Surgical's group choice cost (tables/main.md's cost columns)
        if a.sets == "surgical":
            extra["cost"] = {"candidate_epochs": sum(r["epochs"] for r in results),
                             "wall_time_s": time.perf_counter() - t0,
                             "ft_equiv": scorer.ft_equiv(results)}
    for i, r in enumerate(results, 1):
        print(f"[{i}/{len(mine)}] {r['key'] or '(lp)'}: {r['score']:.4f} ({r['wall_time_s']:.1f}s)", flush=True)
    out = {
        "kind": a.sets, **extra, "shard": a.shard, "shards": a.shards, "blocks": blocks,
        "target": manifest.get("name"), "seed": a.seed, "selection": sel_cfg.to_dict(),
        "train": train_cfg.to_dict(), "results": results, "provenance": provenance(manifest.get("sha256")),
        **({"cv_data": a.cv_data, "train_size": len(data["train_y"])} if sel_cfg.scoring == "cv" else {}),
    }
    write_json(a.out, out)
    _track(a, out, results, extra)


def _track(a: argparse.Namespace, out: dict, results: list[dict], extra: dict) -> None:
    """The job's MLflow run: the best candidate's score and every candidate's.

    Tagged with the method the scores serve (Surgical's block groups, else SubTuning's selection), the kind of
    candidate sets, the shard and the greedy round: the run's name tells the jobs of one selection apart.
    """
    best = max(results, key=lambda r: r["score"]) if results else None
    track(a, {
        "method": f"score-{a.sets}", "target": out["target"], "seed": a.seed, "train": out["train"],
        "method_params": {"candidates": len(results), "shard": a.shard, "shards": a.shards},
        "val_acc": best["score"] if best else None,
        "candidate_scores": {r["key"] or "(lp)": r["score"] for r in results},
        "wall_time_s": sum(r["wall_time_s"] for r in results),
        "trainable_params": best["trainable_params"] if best else None,
        "history": [],
    }, a.out, {"stage": "select", "method": "surgical" if a.sets == "surgical" else "subtuning",
               "target": out["target"], "seed": str(a.seed), "sets": a.sets, "shard": str(a.shard),
               "shards": str(a.shards), **({"round": str(extra["round"])} if "round" in extra else {})})


STAGE = Stage("score", "fine-tune candidate block sets and score them on validation data", add_arguments, run,
              order=60)
