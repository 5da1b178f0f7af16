"""``python -m subtune STAGE ...``: one subcommand per pipeline stage.

Each stage reads explicit input paths and writes explicit output paths
atomically; hyperparameters arrive as JSON (the workflow passes config
sections through ``params``). Bad input is reported as one line naming the
culprit (exit status 2) before any expensive work starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from . import SubtuneError

log = logging.getLogger("subtune")


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} ({exc})") from None


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise SubtuneError(f"missing input file: {p}")
    return p


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _tags(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise SubtuneError(f"--tag takes KEY=VALUE, not {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _track(a: argparse.Namespace, metrics: dict, out: str, tags: dict[str, str]) -> None:
    """Log one MLflow run for this job (after its metrics file is written: nothing is lost if it fails)."""
    if not getattr(a, "track", False):
        return
    import os
    import time

    from . import timing
    from .track import log_or_queue

    tags = {
        "experiment": os.environ.get("SUBTUNE_EXPERIMENT", ""),
        "invocation": os.environ.get("SUBTUNE_INVOCATION", ""),
        **tags,
        **_tags(a.tag),
    }
    # On failure: one WARNING line, the run queued for `log --pending`; the job still succeeds.
    t = time.perf_counter()
    run_id = log_or_queue(
        metrics,
        experiment=os.environ.get("SUBTUNE_MLFLOW_EXPERIMENT", "subtune"),
        tags={k: str(v) for k, v in tags.items() if v != ""},
        artifact=Path(out),
    )
    timing.add_mlflow(time.perf_counter() - t)
    if run_id is not None:
        print(f"logged MLflow run {run_id}")


# ---------------------------------------------------------------- data stages
def cmd_download(a: argparse.Namespace) -> None:
    from .data import download as dl

    files = dl.download_dataset(a.dataset, Path(a.out), mirrors=a.mirror or None)
    for name, path in files.items():
        print(f"{name}\t{path}")


def cmd_prepare(a: argparse.Namespace) -> None:
    from .data import prepared, targets

    params = dict(a.params or {})
    splits, manifest = targets.build(a.target, Path(a.raw) if a.raw else None, seed=a.seed, **params)
    prepared.save_prepared(a.out, a.manifest, splits, manifest)
    sizes = ", ".join(f"{k} {v}" for k, v in manifest["splits"].items())
    print(f"{a.target}: {sizes} -> {a.out}")


# ---------------------------------------------------------------- checkpoints
def cmd_fetch(a: argparse.Namespace) -> None:
    from .models.checkpoint import fetch

    if a.package:
        from .models.packaged import fetch_package

        if a.file or a.model_kwargs:
            raise SubtuneError("fetch --package takes neither --file nor --model-kwargs (the package fixes both)")
        ckpt = fetch_package(a.package, a.out, arch=a.model)
    else:
        ckpt = fetch(a.model, a.out, file=a.file, **(a.model_kwargs or {}))
    print(f"{ckpt.arch} ({ckpt.origin['kind']}) -> {a.out}")


def cmd_pretrain(a: argparse.Namespace) -> None:
    from .data.prepared import load_manifest, load_prepared
    from .models.pretrain import pretrain
    from .train import TrainConfig

    cfg = TrainConfig.from_dict(a.train, "pretrain.train")
    manifest = load_manifest(_existing(a.manifest))
    data = load_prepared(_existing(a.data), splits=("train", "val", "test"))
    _threads(a.threads)
    m = pretrain(a.arch, data, manifest, a.out, cfg, a.seed, a.model_kwargs, a.device)
    if a.metrics:
        from .io import write_json

        write_json(a.metrics, m)
    print(f"pretrained {a.arch} on {manifest.get('name')}: source test acc {m['test_acc']:.4f} -> {a.out}")


def cmd_blocks(a: argparse.Namespace) -> None:
    from .models.blocks import enumerate_blocks, head_names
    from .models.checkpoint import build_model, create

    if a.checkpoint:
        model, _ = build_model(_existing(a.checkpoint), 2)
    else:
        model = create(a.arch, 2, 3, **(a.model_kwargs or {}))
    for b in enumerate_blocks(model):
        print(f"{b.index}\t{b.name}\t{b.num_params}")
    head = sum(p.numel() for n in head_names(model) for p in model.get_submodule(n).parameters())
    print(f"head\t{','.join(head_names(model))}\t{head}")


def _union_train_val(data: dict, digest: str | None = None) -> tuple[dict, str | None]:
    """``data`` with its train and val splits concatenated into ``train`` (train first, then val) and no val.

    VTAB-1k's train800val200: SubTuning, SSF and SAN choose hyperparameters on
    train800/val200 and then train (and SubTuning cross-validates) on the
    1,000. ``digest`` (the prepared file's SHA-256, the prefix cache's data
    key) gets a suffix: the union is other data than the file's train split.
    """
    import torch

    out = {k: v for k, v in data.items() if not k.startswith("val_")}
    for f in ("x", "y"):
        out[f"train_{f}"] = torch.cat([data[f"train_{f}"], data[f"val_{f}"]])
    return out, (f"{digest}+train+val" if digest else None)


def _train_splits(text: str) -> str:
    """``--train-splits``: ``train`` or ``train,val`` -> the ``train_data`` label (``train`` or ``train+val``)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts not in (["train"], ["train", "val"]):
        raise SubtuneError(f"--train-splits takes train or train,val, not {text!r}")
    return "+".join(parts)


# ---------------------------------------------------------------- selection
def _candidate_sets(a: argparse.Namespace, model, blocks: list[str], sel_cfg) -> tuple[list[tuple[str, ...]], dict]:
    from . import select
    from .io import read_json

    if a.sets == "surgical":
        from .methods import surgical_groups

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


def cmd_score(a: argparse.Namespace) -> None:
    from . import select
    from .data.prepared import load_manifest, load_prepared
    from .io import read_json, write_json
    from .models.blocks import block_names
    from .scoring import CandidateScorer
    from .train import TrainConfig

    train_cfg = TrainConfig.from_dict(a.train)
    sel_cfg = select.SelectionConfig.from_dict(a.selection)
    manifest = load_manifest(_existing(a.manifest))
    _existing(a.data), _existing(a.checkpoint)
    if a.state:
        _existing(a.state)
    if a.cv_data != "train" and sel_cfg.scoring != "cv":
        raise SubtuneError(f"--cv-data {a.cv_data} needs scoring cv in --selection (it is {sel_cfg.scoring})")
    # Only train and validation are loaded: selection never reads the test split.
    data = load_prepared(a.data, splits=("train", "val"))
    digest = manifest.get("sha256")
    if a.cv_data == "train+val":  # the folds run over the union
        data, digest = _union_train_val(data, digest)
    _threads(a.threads)
    from .prefix import PrefixCache

    cache = PrefixCache(a.cache_mb, a.cache_dir)
    scorer = CandidateScorer(a.checkpoint, data, int(manifest["num_classes"]), train_cfg, sel_cfg, a.seed, a.device,
                             fast=not a.no_fast, cache=cache, data_digest=digest,
                             keep_head=a.head == "keep", classes=manifest.get("classes"), target=manifest.get("name"))
    blocks = block_names(scorer.base)
    sets, extra = _candidate_sets(a, scorer.base, blocks, sel_cfg)
    mine = select.shard(sets, a.shard, a.shards)
    if a.sets == "greedy":
        # One greedy round, under the selection budget if any (subtune.halving); its cost goes in the file.
        from .halving import Budget

        budget = Budget.from_dict(a.budget, "--budget")
        if budget is not None:
            budget.check(train_cfg.epochs)
            if budget.kind == "halving" and a.shards > 1:
                raise SubtuneError("--budget: halving needs the round's candidates in one job (--shards 1)")
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
        "train": train_cfg.to_dict(), "results": results,
        **({"cv_data": a.cv_data, "train_size": len(data["train_y"])} if sel_cfg.scoring == "cv" else {}),
    }
    write_json(a.out, out)
    best = max(results, key=lambda r: r["score"]) if results else None
    _track(a, {
        "method": f"score-{a.sets}", "target": out["target"], "seed": a.seed, "train": out["train"],
        "method_params": {"candidates": len(results), "shard": a.shard, "shards": a.shards},
        "val_acc": best["score"] if best else None,
        "candidate_scores": {r["key"] or "(lp)": r["score"] for r in results},
        "wall_time_s": sum(r["wall_time_s"] for r in results),
        "trainable_params": best["trainable_params"] if best else None,
        "history": [],
    }, a.out, {"stage": "select", "target": out["target"], "seed": str(a.seed), **({"round": str(extra["round"])} if "round" in extra else {})})


def cmd_decide(a: argparse.Namespace) -> None:
    from . import select
    from .io import read_json, write_json

    sel_cfg = select.SelectionConfig.from_dict(a.selection)
    shards = [read_json(_existing(p)) for p in a.scores]
    if a.state:
        state = read_json(_existing(a.state))
        if state["config"] != sel_cfg.to_dict():
            raise SubtuneError(f"{a.state}: selection config differs from --selection (rerun from round 1)")
    else:
        state = select.initial_state(shards[0]["blocks"], sel_cfg)
    scores = {select.unkey(r["key"]): r["score"] for sh in shards for r in sh["results"]}
    # Candidates a selection budget stopped early: recorded, never chosen (subtune.halving).
    dropped = {select.unkey(r["key"]): r["dropped_at"] for sh in shards for r in sh["results"] if "dropped_at" in r}
    if not state["done"]:
        state = select.decide(state, scores, dropped)
        costs = [sh["cost"] for sh in shards if isinstance(sh.get("cost"), dict)]
        if costs:
            cost = {**costs[0], "dropped": {}}
            for c in costs:
                for rung, keys in (c.get("dropped") or {}).items():
                    cost["dropped"].setdefault(rung, []).extend(keys)
            for k in ("candidate_epochs", "exact_candidate_epochs", "wall_time_s", "ft_equiv"):
                cost[k] = sum(c.get(k) or 0 for c in costs)
            state["rounds"][-1]["cost"] = cost
    write_json(a.out, state)
    last = state["rounds"][-1] if state["rounds"] else {}
    print(
        f"round {last.get('round')}: chose {last.get('chosen')} (gain {last.get('gain', 0):+.4f}, "
        f"accepted {last.get('accepted')}); selected {state['selected']}; done {state['done']}"
    )


def cmd_replay(a: argparse.Namespace) -> None:
    """The final state a selection with ``--epsilon`` reaches, replayed from a finished walk (subtune.select.replay)."""
    from . import select
    from .io import read_json, write_json

    state = select.replay(read_json(_existing(a.state)), a.epsilon)
    write_json(a.out, state)
    print(f"epsilon {a.epsilon}: selected {state['selected']} after {len(state['rounds'])} round(s) "
          f"({state['stop_reason']})")


# ---------------------------------------------------------------- final training
def _method_params(a: argparse.Namespace, params: dict) -> dict:
    """The method's parameters plus what it needs from earlier stages (selected blocks, Surgical's group)."""
    from .io import read_json
    from .methods import get_method

    params = dict(params)
    method_cls = get_method(a.method, **params).__class__
    if method_cls.needs == "selection" and getattr(a, "blocks", None) is not None:
        from .select import unkey

        params["blocks"] = list(unkey(a.blocks))  # given blocks (the epsilon sensitivity's sets)
    elif method_cls.needs == "selection":
        if not a.selection_state:
            raise SubtuneError(f"method {a.method!r} needs --selection-state (the greedy selection result)")
        state = read_json(_existing(a.selection_state))
        if not state.get("done"):
            raise SubtuneError(f"{a.selection_state}: selection has not finished")
        params["blocks"] = state["selected"]
    elif method_cls.needs == "surgical":
        if not a.surgical_scores:
            raise SubtuneError(f"method {a.method!r} needs --surgical-scores (validation scores of the groups)")
        sc = read_json(_existing(a.surgical_scores))["results"]
        params["group"] = max(range(len(sc)), key=lambda i: (sc[i]["score"], -i))
    return params


def _build_method(a: argparse.Namespace, params: dict, cfg, manifest: dict):
    """The model from the checkpoint, wrapped with the method (adapters initialised from ``--seed``), its phases."""
    import torch

    from .methods import get_method
    from .models.checkpoint import build_model
    from .train import Preprocess

    method = get_method(a.method, head=a.head, **params)
    num_classes = int(manifest["num_classes"])
    model, ckpt = build_model(_existing(a.checkpoint), num_classes, seed=a.seed, keep_head=a.head == "keep",
                              classes=manifest.get("classes"), target=manifest.get("name"), **cfg.model_kwargs())
    base_params = sum(p.numel() for p in model.parameters())
    with torch.random.fork_rng():
        torch.manual_seed(a.seed)
        model = method.wrap(model)
        phases = method.phases(model)
    return method, model, phases, ckpt, num_classes, base_params, Preprocess(ckpt.mean, ckpt.std, ckpt.in_chans)


def _fit_method(a: argparse.Namespace, params: dict, cfg, data: dict, manifest: dict, test: bool, reuse=None):
    """Build the model from the checkpoint, wrap it with the method, run its phases; test read only if ``test``.

    ``reuse``: the weights and metrics of the same run saved by ``tune --save-chosen`` (:mod:`subtune.reuse`):
    loaded instead of trained, and only the test split evaluated.
    Returns the metrics, the method, the trained model, the checkpoint record, the class count and the phases.
    """
    import time

    from .methods import fit_phases
    from .reuse import load_into
    from .train import evaluate, pick_device

    method, model, phases, ckpt, num_classes, base_params, pre = _build_method(a, params, cfg, manifest)
    if reuse is not None:
        state, m = reuse
        load_into(model, state)
        device = pick_device(a.device)
        t0 = time.perf_counter()
        model.to(device)
        r = evaluate(model, pre.to(device), data["test_x"], data["test_y"], cfg.eval_batch_size, device)
        m.update(test_acc=r["acc"], test_loss=r["loss"], device=str(device),
                 wall_time_s=m["wall_time_s"] + time.perf_counter() - t0)  # the tuning job's training, and the test
    else:
        # no val split in ``data`` (final runs on train+val): nothing is evaluated per epoch
        evals = {"val": (data["val_x"], data["val_y"])} if "val_x" in data else {}
        m = fit_phases(
            model, phases, pre, (data["train_x"], data["train_y"]), evals, cfg, a.seed, a.device,
            final_evals={"test": (data["test_x"], data["test_y"])} if test else None, desc=a.method,
        )
    notes: dict = {}
    for t, _ in phases:
        notes.update(t.notes)
    m.update(
        method=a.method, method_params={k: v for k, v in params.items()}, target=manifest.get("name"),
        seed=a.seed, train=cfg.to_dict(), checkpoint=str(a.checkpoint), notes=notes, head=a.head,
        adapted_params=m["total_params"], total_params=base_params,
    )
    return m, method, model, ckpt, num_classes, phases


def cmd_train(a: argparse.Namespace) -> None:
    """Final training of one method: wrap, run its phases through ``fit``, evaluate the test split once.

    The method's :meth:`~subtune.methods.Method.wrap` runs after the global RNG
    is seeded with ``--seed`` (adapter initialisation is per seed); its
    :meth:`~subtune.methods.Method.phases` run in order (LP-FT: head, then
    everything; the metrics are :func:`subtune.methods.fit_phases`'s).
    ``--tuned`` applies the values chosen on validation by ``tune`` over
    ``--train`` and ``--method-params`` (recorded as ``tuned``).
    ``total_params`` is the plain backbone's size (before any adapter), so
    ``trainable_params / total_params`` compares across methods;
    ``adapted_params`` counts the trained model with its adapters.
    ``--save-model`` saves the merged plain timm model (:meth:`Method.merge`);
    refused, before training, for a method that is not ``mergeable``.
    ``--train-splits train,val`` trains on the union of the train and val
    splits (train first; ``train_size`` counts both) and evaluates no
    validation split (no ``val_acc``); the metrics' ``train_data`` says which.
    """
    import dataclasses

    from .data.prepared import load_manifest, load_prepared
    from .io import read_json, write_json
    from .models.checkpoint import create, save_checkpoint
    from .train import TrainConfig

    from .methods import method_class

    if a.save_model and not method_class(a.method).mergeable:  # before any training
        raise SubtuneError(f"--save-model: method {a.method!r} cannot be merged into a plain timm model")
    train_cfg, params, tuned = dict(a.train), dict(a.method_params or {}), None
    if a.tuned:
        t = read_json(_existing(a.tuned))
        if t.get("method") != a.method:
            raise SubtuneError(f"{a.tuned}: tuned for method {t.get('method')!r}, not {a.method!r}")
        tuned = {**t["chosen"], "grid": t.get("grid", {}), "val_acc": t["results"][t["chosen_index"]]["val_acc"],
                 "seed": t.get("seed"), "edge": t.get("edge"), "explored": t.get("explored", t.get("grid", {}))}
        train_cfg.update(tuned["train"])
        params.update(tuned["params"])
    train_data = _train_splits(a.train_splits)
    if train_data == "train+val" and train_cfg.get("epoch_select") == "best_val":
        raise SubtuneError("--train-splits train,val leaves no validation split for epoch_select best_val")
    cfg = TrainConfig.from_dict(train_cfg)
    params = _method_params(a, params)
    manifest = load_manifest(_existing(a.manifest))
    _existing(a.data)
    data = load_prepared(a.data, splits=("train", "val", "test"))
    if train_data == "train+val":
        data, _ = _union_train_val(data)
    _threads(a.threads)
    reuse = None
    if a.reuse_tuned:
        from .reuse import file_digests, load_chosen, run_key

        got = load_chosen(a.reuse_tuned, run_key(a.method, params, cfg.to_dict(), a.seed, a.head,
                                                 file_digests(a.checkpoint, a.data, manifest), train_data))
        if isinstance(got, str):
            print(f"not reusing {a.reuse_tuned}: {got}; training", flush=True)
        else:
            reuse = got
            print(f"reusing the tuning run of these values and seed ({a.reuse_tuned}): weights loaded, "
                  f"the test split evaluated", flush=True)
    m, method, model, ckpt, num_classes, _ = _fit_method(a, params, cfg, data, manifest, test=True, reuse=reuse)
    m["train_data"] = train_data
    if reuse is not None:
        m["reused"] = str(a.reuse_tuned)
    if tuned is not None:
        m["tuned"] = tuned
    if a.save_model:
        plain = create(ckpt.arch, num_classes, ckpt.in_chans, **ckpt.model_kwargs)
        plain.load_state_dict({k: v.cpu() for k, v in method.merge(model).items()}, strict=True)
        save_checkpoint(a.save_model, plain, dataclasses.replace(ckpt, num_classes=num_classes,
                                                                 classes=manifest.get("classes")))
    write_json(a.out, m)
    _track(a, m, a.out, {"stage": "final", "target": m["target"], "method": a.method, "seed": str(a.seed),
                         "train_data": train_data})
    val = f"val {m['val_acc']:.4f}" if m.get("val_acc") is not None else f"trained on {train_data}"
    print(f"{a.method} on {m['target']} seed {a.seed}: {val} test {m['test_acc']:.4f} "
          f"({m['trainable_params']} trainable, {m['wall_time_s']:.1f}s)")


def cmd_tune(a: argparse.Namespace) -> None:
    """Train every point of a method's grid on the training split; choose by validation accuracy.

    The test split is not loaded (:mod:`subtune.tune`). A choice on an edge of the
    grid extends it (``--extend`` steps per key and direction, :func:`subtune.tune.tune_grid`).
    Writes every point's validation metrics (grid and extension), the values
    explored, the edges the choice is still on, and the chosen values; ``train
    --tuned`` applies them. ``--save-chosen`` keeps the chosen point's trained state.
    """
    from .data.prepared import load_manifest, load_prepared
    from .io import write_json
    from .train import TrainConfig
    from .tune import better, grid_points, point_label, tune_grid

    base_params = dict(a.method_params or {})
    for p in grid_points(a.method, a.grid):  # a bad grid fails before any data is loaded
        TrainConfig.from_dict({**a.train, **p["train"]}, f"methods.{a.method}.grid")
        _method_params(a, {**base_params, **p["params"]})
    manifest = load_manifest(_existing(a.manifest))
    _existing(a.data)
    data = load_prepared(a.data, splits=("train", "val"))
    val_size = int(len(data["val_y"]))
    _threads(a.threads)
    kept, n = None, [0]
    if a.save_chosen:
        from .reuse import file_digests, run_key, trained_state

        digests = file_digests(a.checkpoint, a.data, manifest)

    def score(point: dict) -> dict:
        nonlocal kept
        cfg = TrainConfig.from_dict({**a.train, **point["train"]}, f"methods.{a.method}.grid")
        prm = _method_params(a, {**base_params, **point["params"]})
        m, _, model, _, _, phases = _fit_method(a, prm, cfg, data, manifest, test=False)
        r = {"val_acc": m["val_acc"], "val_size": val_size, "val_loss": m.get("val_loss"),
             "train_acc": m.get("train_acc"), "wall_time_s": m["wall_time_s"],
             "trainable_params": m["trainable_params"], "train_size": m["train_size"]}
        if a.save_chosen and (kept is None or better(r, kept[0])):  # choose()'s rule: ties keep the first
            kept = (r, n[0], trained_state(model, phases), dict(m),
                    run_key(a.method, prm, cfg.to_dict(), a.seed, a.head, digests))
        del model
        n[0] += 1
        print(f"{a.method} on {m['target']} [{point_label(point)}]: val {m['val_acc']:.4f}", flush=True)
        return r

    t = tune_grid(a.method, a.grid, a.train, base_params, score, a.extend)
    results, best = t["results"], t["chosen_index"]
    if a.save_chosen:
        from .reuse import save_chosen

        if kept[1] != best:
            raise SubtuneError(f"tune: kept grid point {kept[1]}, chose {best} (a bug)")
        save_chosen(a.save_chosen, kept[2], kept[3], kept[4])
    chosen = {"train": results[best]["train"], "params": results[best]["params"]}
    out = {"method": a.method, "target": manifest.get("name"), "seed": a.seed, "grid": a.grid or {},
           "extend": a.extend, "train": a.train, "method_params": base_params, "results": results,
           "chosen_index": best, "chosen": chosen, "explored": t["explored"], "edge": t["edge"],
           "extension": t["extension"]}
    write_json(a.out, out)
    r = results[best]
    _track(a, {"method": a.method, "target": out["target"], "seed": a.seed, "val_acc": r["val_acc"],
               "val_loss": r["val_loss"], "trainable_params": r["trainable_params"],
               "wall_time_s": sum(x["wall_time_s"] for x in results),
               "train": {**a.train, **chosen["train"]}, "method_params": {**base_params, **chosen["params"]}},
           a.out, {"stage": "tune", "target": out["target"], "method": a.method, "seed": str(a.seed),
                   "grid_points": str(len(results)), "chosen": r["label"],
                   "edge": ",".join(f"{k}:{v}" for k, v in (t["edge"] or {}).items()) or "none"})
    flag = f"; still on the {', '.join(f'{v} edge of {k}' for k, v in t['edge'].items())}" if t["edge"] else ""
    print(f"chosen for {a.method} on {out['target']}: {r['label']} (val {r['val_acc']:.4f}){flag}")


def cmd_multilora(a: argparse.Namespace) -> None:
    """K tasks trained together with Multi-LoRA (shared frozen A, a B and a head per task); optionally compared."""
    from .data.prepared import load_manifest, load_prepared
    from .io import read_json, write_json
    from .methods.multilora import Task, compare, train_multilora
    from .models.checkpoint import build_model
    from .train import Preprocess, TrainConfig

    from .config import multilora_grid_points

    cfg = TrainConfig.from_dict(a.train)
    for point in multilora_grid_points(a.grid):  # a bad grid fails before any data is loaded
        TrainConfig.from_dict({**a.train, **point["train"]}, "multilora.grid")
    known = {"rank", "alpha", "target"}
    params = dict(a.params or {})
    unknown = sorted(set(params) - known)
    if unknown:
        raise SubtuneError(f"multilora takes no parameter {unknown[0]!r} (it takes: {', '.join(sorted(known))})")
    tasks_in = []
    for name, data, manifest in a.task:
        tasks_in.append((name, _existing(data), load_manifest(_existing(manifest))))
    backbone, ckpt = build_model(_existing(a.checkpoint), 1, seed=a.seed)
    _threads(a.threads)
    tasks = []
    for name, data, manifest in tasks_in:
        d = load_prepared(data, splits=("train", "val", "test"))
        tasks.append(Task(name, int(manifest["num_classes"]), (d["train_x"], d["train_y"]),
                          (d["val_x"], d["val_y"]), (d["test_x"], d["test_y"])))
    pre = Preprocess(ckpt.mean, ckpt.std, ckpt.in_chans)
    kw = dict(seed=a.seed, rank=int(params.get("rank", 8)), alpha=params.get("alpha", 8),
              target=params.get("target"), device=a.device, progress=None, grid=a.grid)
    if a.compare and (a.train_a or a.sequential):
        raise SubtuneError("--train-a and --sequential are Multi-LoRA ablations: not with --compare")
    if a.tuned and not a.compare:
        raise SubtuneError("--tuned reads a --compare result: give --compare too")
    if a.compare:
        out = compare(backbone, tasks, pre, cfg, **kw, tuned=read_json(_existing(a.tuned)) if a.tuned else None)
    else:
        out = {"multilora": train_multilora(backbone, tasks, pre, cfg, **kw, train_a=a.train_a,
                                            sequential=a.sequential), "tasks": [t.name for t in tasks]}
        out["multilora"].pop("model")
    out.update(seed=a.seed, train=cfg.to_dict(), params=params, grid=a.grid or {}, checkpoint=str(a.checkpoint),
               **({"ablation": a.ablation} if a.ablation else {}))
    write_json(a.out, out)
    # One MLflow run per job: Multi-LoRA's metrics; the comparison is in the attached metrics file.
    r = out["multilora"]
    _track(a, {"method": "multilora", "target": "+".join(out["tasks"]), "seed": a.seed, "train": r["train"],
               "method_params": {**params, **r["chosen"]["params"], "tasks": ",".join(out["tasks"]),
                                 "compared": bool(a.compare)},
               "val_acc": r["mean_val_acc"], "test_acc": r.get("mean_test_acc"),
               "trainable_params": r["params_trained"], "wall_time_s": r["wall_time_s"]},
           a.out, {"stage": "multilora", "method": "multilora", "seed": str(a.seed)})
    for kind in ("multilora", "separate_lora"):
        if kind in out:
            r = out[kind]
            accs = ", ".join(f"{k} {v.get('test_acc', v['val_acc']):.4f} ({v['optimizer_steps']} steps)"
                             for k, v in r["per_task"].items())
            print(f"{kind}: {accs} ({r['params_trained']} trained, {r['params_stored']} stored, "
                  f"{r['wall_time_s']:.1f}s)")


# ---------------------------------------------------------------- tracking
def cmd_track_init(a: argparse.Namespace) -> None:
    import os

    from .io import write_json
    from .track import init_store, pending_dir, pending_runs, resolve_uri

    uri = resolve_uri(a.uri)
    experiment = a.experiment or os.environ.get("SUBTUNE_MLFLOW_EXPERIMENT", "subtune")
    exp_id = init_store(uri, experiment)
    write_json(a.out, {"tracking_uri": uri, "experiment": experiment, "experiment_id": exp_id})
    print(f"MLflow store ready: {uri}, experiment {experiment!r} ({exp_id})")
    queued = len(pending_runs())
    if queued:
        print(f"NOTE: {queued} earlier run{'s' if queued != 1 else ''} could not be logged and "
              f"{'are' if queued != 1 else 'is'} queued in {pending_dir()}: python -m subtune log --pending")


def cmd_log(a: argparse.Namespace) -> None:
    """Log runs that were computed but not logged (e.g. the tracking server was down); never one twice."""
    import os

    from .io import read_json
    from .track import _log_run, flush_pending, pending_dir

    if a.pending is not None:
        logged, left = flush_pending(a.pending or None, tracking_uri=a.uri, experiment=a.experiment)
        print(f"logged {logged} queued MLflow run{'s' if logged != 1 else ''}; {left} still queued "
              f"in {pending_dir(a.pending or None)}")
        if left:
            raise SubtuneError(f"{left} run{'s' if left != 1 else ''} could not be logged (still queued)")
        return
    experiment = a.experiment or os.environ.get("SUBTUNE_MLFLOW_EXPERIMENT", "subtune")
    for f in a.metrics:
        m = read_json(_existing(f))
        run_id, already = _log_run(m, tracking_uri=a.uri, experiment=experiment, tags=_tags(a.tag),
                                   artifact=Path(f), run_name=None, retry_s=None, key=None)
        print(f"{'already logged' if already else 'logged'} MLflow run {run_id}: {f}")


# ---------------------------------------------------------------- report
def cmd_report(a: argparse.Namespace) -> None:
    from . import report

    if a.what == "main":
        report.main_table(a.runs, a.out_csv, a.out_md, out_json=a.out_json, checkpoint_json=a.checkpoint, selected_files=a.selected,
                          references=a.references, backbone=a.backbone, surgical_files=a.surgical,
                          out_cost_png=a.out_cost_png)
    elif a.what == "rounds":
        report.rounds(a.states, a.out_csv)
    elif a.what == "profile":
        report.profile(a.scores, a.out_csv, a.out_png)
    elif a.what == "pairs":
        report.pairs(a.scores, a.out_csv, a.out_png)
    elif a.what == "sweep":
        report.sweep(a.runs, a.out_csv, a.out_png, references=a.references, backbone=a.backbone)
    elif a.what == "epsilon":
        report.epsilon(a.states, a.runs, a.epsilons, a.selection_epsilon, a.out_csv, a.out_md)
    elif a.what == "grid":
        report.grid_table(a.tunes, a.out_csv, a.out_md, a.out_png)
    elif a.what == "selection":
        report.selection_table(a.states, a.out_csv, a.out_md)
    elif a.what == "claims":
        from .claims import parse_shifts

        report.claims_table(a.runs, a.out_csv, a.out_md, sweep_files=a.sweep, profile_files=a.profiles,
                            multilora_files=a.multilora, shifts=parse_shifts(a.shifts), experiment=a.experiment)
    elif a.what == "multilora":
        report.multilora(a.runs, a.out_csv, a.out_md, references=a.references, backbone=a.backbone,
                         ablation_files=a.ablations, ranks=a.ranks, out_ablations_csv=a.out_ablations_csv)
    print(f"report {a.what}: {a.out_csv}" + (f", {a.out_png}" if getattr(a, "out_png", None) else ""))


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .methods import REGISTRY, method_order
    from .methods.base import describe_parameters

    # the method registry's one definition of each method (subtune.methods): names, parameters, needs, head
    methods_help = f"one of {', '.join(method_order(REGISTRY))}"
    params_help = "the method's parameters as JSON; each method's: " + describe_parameters().replace("\n", " | ")
    own_head = ", ".join(m for m in method_order(REGISTRY) if REGISTRY[m].own_head)
    head_help = (f"new: a fresh classifier; keep: the checkpoint's own (same label space), trained only by "
                 f"methods that train it themselves ({own_head})")
    needing = {n: ", ".join(m for m in method_order(REGISTRY) if REGISTRY[m].needs == n)
               for n in ("selection", "surgical")}
    p = argparse.ArgumentParser(prog="python -m subtune", description="subtune: one subcommand per pipeline stage (each reads explicit inputs and writes explicit outputs atomically).")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)

    def stage(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    def tracking(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--track", action="store_true",
                        help="log an MLflow run ($MLFLOW_TRACKING_URI, default sqlite:///mlflow.db; "
                             "experiment $SUBTUNE_MLFLOW_EXPERIMENT)")
        sp.add_argument("--tag", action="append", help="MLflow tag KEY=VALUE (repeatable)")

    def common_train(sp: argparse.ArgumentParser) -> None:
        tracking(sp)
        sp.add_argument("--train", type=_json_arg, default={}, help="training config as JSON")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        sp.add_argument("--device", default=None, help="cuda, cpu or auto (default)")

    s = stage("download", cmd_download, "download a dataset's raw files (mirrors, SHA-256 checked)")
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True, help="directory for the raw files")
    s.add_argument("--mirror", action="append", help="extra mirror base URL, tried first (repeatable)")

    s = stage("prepare", cmd_prepare, "build a prepared dataset (uint8 tensors + manifest)")
    s.add_argument("--target", required=True, help="dataset name (e.g. fmnist-new)")
    s.add_argument("--raw", help="raw-files directory (from download)")
    s.add_argument("--params", type=_json_arg, default={}, help="build parameters as JSON")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--manifest", required=True)

    s = stage("fetch", cmd_fetch, "fetch pretrained timm weights (hub or local file) as a checkpoint")
    s.add_argument("--model", required=True, help="timm name, e.g. resnet50.tv2_in1k")
    s.add_argument("--file", help="local weights file instead of the hub")
    s.add_argument("--package", help="weights shipped in an installed registry package (efficientnet-lite0, ...)")
    s.add_argument("--model-kwargs", type=_json_arg, default={})
    s.add_argument("--out", required=True)

    s = stage("pretrain", cmd_pretrain, "pretrain a backbone on a source dataset")
    s.add_argument("--arch", required=True)
    s.add_argument("--model-kwargs", type=_json_arg, default={})
    s.add_argument("--data", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", help="write the pretraining metrics JSON here")
    common_train(s)

    s = stage("blocks", cmd_blocks, "list a backbone's candidate blocks with parameter counts")
    s.add_argument("--checkpoint")
    s.add_argument("--arch", default="resnet18")
    s.add_argument("--model-kwargs", type=_json_arg, default={})

    s = stage("score", cmd_score, "fine-tune candidate block sets and score them on validation data")
    s.add_argument("--sets", choices=["greedy", "profile", "pairs", "surgical", "explicit"], default="greedy")
    s.add_argument("--candidate", action="append",
                   help="with --sets explicit: a block set, names joined by '+' ('' = head only); repeatable")
    s.add_argument("--state", help="selection state after the previous round (greedy rounds > 1)")
    s.add_argument("--selection", type=_json_arg, default={}, help="selection config as JSON")
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
    s.add_argument("--head", choices=["new", "keep"], default="new", help=head_help)
    s.add_argument("--budget", type=_json_arg, default=None,
                   help="with --sets greedy: the selection budget as JSON (selection.budget; null: exact)")
    s.add_argument("--out", required=True)
    common_train(s)

    s = stage("decide", cmd_decide, "apply one greedy round's scores and write the next selection state")
    s.add_argument("--state", help="state after the previous round (absent for round 1)")
    s.add_argument("--scores", nargs="+", required=True, help="score files of this round (all shards)")
    s.add_argument("--selection", type=_json_arg, default={})
    s.add_argument("--out", required=True)

    s = stage("replay", cmd_replay, "the selection another epsilon makes, replayed from a finished greedy walk")
    s.add_argument("--state", required=True, help="final state of a walk that went at least as far")
    s.add_argument("--epsilon", type=float, required=True)
    s.add_argument("--out", required=True)

    s = stage("train", cmd_train, "final training of one method on one target and seed (test read once)")
    s.add_argument("--method", required=True, help=methods_help)
    s.add_argument("--method-params", type=_json_arg, default={}, help=params_help)
    s.add_argument("--selection-state", help=f"greedy selection result ({needing['selection']})")
    s.add_argument("--blocks", help=f"instead of --selection-state: the blocks, joined by '+' ('' for none; "
                                    f"{needing['selection']})")
    s.add_argument("--surgical-scores", help=f"validation scores of the block groups ({needing['surgical']})")
    s.add_argument("--data", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--save-model", help="also save the trained model as a checkpoint")
    s.add_argument("--tuned", help="the values chosen on validation by `tune` (applied over --train/--method-params)")
    s.add_argument("--reuse-tuned", help="the chosen point's run saved by `tune --save-chosen`: when it is this run "
                                         "(same inputs, values, seed and data), load it and evaluate the test split "
                                         "instead of training")
    s.add_argument("--head", choices=["new", "keep"], default="new", help=head_help)
    s.add_argument("--train-splits", default="train",
                   help="train (default) or train,val: train on the union of the two (no validation per epoch)")
    s.add_argument("--out", required=True)
    common_train(s)
    s = stage("tune", cmd_tune, "train a method's grid on the training split and choose by validation (no test)")
    s.add_argument("--method", required=True, help=methods_help)
    s.add_argument("--method-params", type=_json_arg, default={}, help=params_help)
    s.add_argument("--grid", type=_json_arg, default={}, help="hyperparameter -> values, as JSON")
    s.add_argument("--selection-state", help=f"greedy selection result ({needing['selection']})")
    s.add_argument("--surgical-scores", help=f"validation scores of the block groups ({needing['surgical']})")
    s.add_argument("--data", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--head", choices=["new", "keep"], default="new", help=head_help)
    s.add_argument("--save-chosen", help="also save the chosen point's trained weights and metrics (safetensors) "
                                         "for `train --reuse-tuned` (subtune.reuse)")
    s.add_argument("--extend", type=int, default=0,
                   help="a choice on an edge of the grid tries up to N more values beyond it, per key and direction "
                        "(config tuning.extend; default 0: the grid alone)")
    s.add_argument("--out", required=True)
    common_train(s)
    s = stage("multilora", cmd_multilora,
              "train K tasks together with Multi-LoRA (shared frozen A, one B and head per task)")
    s.add_argument("--task", nargs=3, action="append", required=True, metavar=("NAME", "DATA", "MANIFEST"),
                   help="one task: its name, prepared data and manifest (repeat for each task)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--params", type=_json_arg, default={}, help="rank, alpha, target as JSON")
    s.add_argument("--compare", action="store_true", help="also train K separate peft-LoRA runs and compare")
    s.add_argument("--tuned", help="the --compare output of the tuning seed: each side trains only at the point "
                                   "it chose there (Multi-LoRA its point, each separate LoRA run its own)")
    s.add_argument("--train-a", action="store_true", help="ablation: train the shared A (every task's loss)")
    s.add_argument("--sequential", action="store_true",
                   help="ablation: train the tasks one after another (each its whole schedule), A shared")
    s.add_argument("--ablation", help="the ablation's name, recorded in the output (train_a, sequential, rank<R>)")
    s.add_argument("--grid", type=_json_arg, default={},
                   help="hyperparameter -> values, as JSON (training keys, rank, alpha): both sides choose on "
                        "validation")
    common_train(s)
    s.add_argument("--out", required=True)
    s = stage("track-init", cmd_track_init, "create the MLflow store and experiment once, before parallel jobs log")
    s.add_argument("--uri", help="tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    s.add_argument("--experiment", help="MLflow experiment (default $SUBTUNE_MLFLOW_EXPERIMENT)")
    s.add_argument("--out", required=True, help="marker file the training jobs depend on")
    s = stage("log", cmd_log, "log runs that could not be logged at the time (queued runs, or metrics files)")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--pending", nargs="?", const="", metavar="DIR",
                      help="log the queued runs (default $SUBTUNE_MLFLOW_PENDING, else logs/mlflow-pending), "
                           "each to its own URI and experiment unless --uri/--experiment")
    what.add_argument("--metrics", nargs="+", metavar="FILE", help="metrics JSON files, one run each")
    s.add_argument("--uri", help="tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    s.add_argument("--experiment", help="MLflow experiment (default $SUBTUNE_MLFLOW_EXPERIMENT)")
    s.add_argument("--tag", action="append", help="MLflow tag KEY=VALUE (repeatable)")

    s = stage("report", cmd_report, "aggregate results into tables (csv, markdown) and plots")
    rsub = s.add_subparsers(dest="what", metavar="TABLE", required=True)
    def refs(r: argparse.ArgumentParser) -> None:
        r.add_argument("--references", nargs="*", default=[], help="published numbers (references/*.csv)")
        r.add_argument("--backbone", help="the backbone's timm name, to match published numbers")

    r = rsub.add_parser("main", help="method x target test accuracy (mean ± std over seeds), parameters")
    r.add_argument("--runs", nargs="+", required=True)
    r.add_argument("--checkpoint", help="checkpoint sidecar JSON (source accuracy)")
    r.add_argument("--selected", nargs="*", help="final selection states")
    r.add_argument("--surgical", nargs="*", help="Surgical's group scores (select/<target>/seed<S>/surgical.json)")
    r.add_argument("--out-cost-png", help="also the plot of accuracy against total cost, a panel per target")
    refs(r)
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-md", required=True)
    r.add_argument("--out-json", help="also the table as JSON, method -> target -> numbers (DVC metrics)")
    r = rsub.add_parser("rounds", help="greedy rounds: chosen block and gain per round")
    r.add_argument("--states", nargs="*", default=[], help="final selection states (none: an empty table)")
    r.add_argument("--out-csv", required=True)
    for name, what in (("profile", "fine-tuning profile (round 1)"), ("pairs", "pair grid heatmap")):
        r = rsub.add_parser(name, help=what)
        r.add_argument("--scores", nargs="+", required=True, help="score files (all shards)")
        r.add_argument("--out-csv", required=True)
        r.add_argument("--out-png", required=True)
    r = rsub.add_parser("sweep", help="data-size sweep: test accuracy against training-set size")
    r.add_argument("--runs", nargs="+", required=True)
    refs(r)
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-png", required=True)
    r = rsub.add_parser("grid", help="validation curves of the tuned grids: every point tried, the choice, edges")
    r.add_argument("--tunes", nargs="+", required=True, help="tune result files (tune/<target>/<method>.json)")
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-md", required=True)
    r.add_argument("--out-png", required=True)
    r = rsub.add_parser("selection", help="the block set each seed's selection picked, and how often they agree")
    r.add_argument("--states", nargs="*", default=[], help="final selection states (none: an empty table)")
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-md", required=True)
    r = rsub.add_parser("epsilon", help="epsilon sensitivity: the set each epsilon selects, its accuracy")
    r.add_argument("--states", nargs="+", required=True, help="final states of the greedy walks")
    r.add_argument("--runs", nargs="+", required=True, help="final runs of every epsilon's set (SubTuning)")
    r.add_argument("--epsilons", nargs="+", type=float, required=True)
    r.add_argument("--selection-epsilon", type=float, required=True, help="the main selection's epsilon")
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-md", required=True)
    r = rsub.add_parser("claims", help="the papers' claims against the results: paired tests and verdicts")
    r.add_argument("--runs", nargs="*", default=[], help="final runs (runs/<target>/<method>/seed<S>.json)")
    r.add_argument("--sweep", nargs="*", default=[], help="the data-size sweep's runs")
    r.add_argument("--profiles", nargs="*", default=[], help="round-1 score files of every target and selection seed")
    r.add_argument("--multilora", nargs="*", default=[], help="multilora --compare outputs (one per seed)")
    r.add_argument("--shifts", nargs="*", default=[], help="TARGET=input|output|domain (targets.<t>.shift)")
    r.add_argument("--experiment", default="", help="the experiment's name (a column of claims.csv)")
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-md", required=True)
    r = rsub.add_parser("multilora", help="Multi-LoRA against K separate LoRA runs: accuracy per task, parameters")
    r.add_argument("--runs", nargs="+", required=True, help="multilora --compare outputs (one per seed)")
    r.add_argument("--ablations", nargs="*", default=[], help="multilora --ablation outputs (one per seed each)")
    r.add_argument("--ranks", nargs="*", type=int, default=[],
                   help="the ranks ablation's ranks (the configured rank's row is the Multi-LoRA row)")
    r.add_argument("--out-ablations-csv", help="the ablations' rows as CSV")
    refs(r)
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-md", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    from . import timing
    from .warm import STAGES

    timing.reset()
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(message)s")
    try:
        a.fn(a)
    except SubtuneError as exc:
        print(f"subtune {a.stage}: error: {exc}", file=sys.stderr)
        return 2
    if a.stage in STAGES:  # the job log's last line: where its time went (bench/pipeline.py reads it)
        print(timing.summary(a.stage), file=sys.stderr, flush=True)
    return 0
