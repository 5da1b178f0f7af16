"""``train``: the final training of one method on one target and seed, the test split read once.

Also the library side of it: :func:`fit_method` (checkpoint -> method-wrapped model -> its phases -> metrics),
which ``tune`` runs for every grid point and the benchmarks call directly.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import SubtuneError
from . import Stage
from ._common import common_train, existing, json_arg, method_help, threads, track, union_train_val

if TYPE_CHECKING:
    from ..train import TrainConfig


def add_arguments(s: argparse.ArgumentParser) -> None:
    h = method_help()
    s.add_argument("--method", required=True, help=h["methods"])
    s.add_argument("--method-params", type=json_arg, default={}, help=h["params"])
    s.add_argument("--selection-state", help=f"greedy selection result ({h['selection']})")
    s.add_argument("--blocks", help=f"instead of --selection-state: the blocks, joined by '+' ('' for none; "
                                    f"{h['selection']})")
    s.add_argument("--surgical-scores", help=f"validation scores of the block groups ({h['surgical']})")
    s.add_argument("--data", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--save-model", help="also save the trained model as a checkpoint")
    s.add_argument("--tuned", help="the values chosen on validation by `tune` (applied over --train/--method-params)")
    s.add_argument("--reuse-tuned", help="the chosen point's run saved by `tune --save-chosen`: when it is this run "
                                         "(same inputs, values, seed and data), load it and evaluate the test split "
                                         "instead of training")
    s.add_argument("--head", choices=["new", "keep"], default="new", help=h["head"])
    s.add_argument("--train-splits", default="train",
                   help="train (default) or train,val: train on the union of the two (no validation per epoch)")
    s.add_argument("--out", required=True)
    common_train(s)


# ---------------------------------------------------------------- the library side (train, tune, bench/)
class Fit(NamedTuple):
    """What :func:`fit_method` returns: the run's metrics and what produced them."""

    metrics: dict
    method: Any  # subtune.methods.Method
    model: Any  # the trained (wrapped) torch module
    checkpoint: Any  # subtune.models.checkpoint.Checkpoint: the record the model was built from
    num_classes: int
    phases: list


def method_params(method: str, params: dict, *, blocks: str | None = None, selection_state: str | None = None,
                  surgical_scores: str | None = None) -> dict:
    """``params`` plus what ``method`` needs from earlier stages: the selected blocks, Surgical's group.

    ``blocks`` (``--blocks``, names joined by '+') gives the blocks directly (the epsilon sensitivity's sets);
    otherwise a method that needs a selection reads ``selection_state`` (a finished greedy walk), and Surgical
    reads ``surgical_scores`` (its groups' validation scores) and takes the best group, the first on a tie.
    """
    from ..io import read_json
    from ..methods import get_method

    params = dict(params)
    method_cls = get_method(method, **params).__class__
    if method_cls.needs == "selection" and blocks is not None:
        from ..select import unkey

        params["blocks"] = list(unkey(blocks))
    elif method_cls.needs == "selection":
        if not selection_state:
            raise SubtuneError(f"method {method!r} needs --selection-state (the greedy selection result)")
        state = read_json(existing(selection_state))
        if not state.get("done"):
            raise SubtuneError(f"{selection_state}: selection has not finished")
        params["blocks"] = state["selected"]
    elif method_cls.needs == "surgical":
        if not surgical_scores:
            raise SubtuneError(f"method {method!r} needs --surgical-scores (validation scores of the groups)")
        sc = read_json(existing(surgical_scores))["results"]
        params["group"] = max(range(len(sc)), key=lambda i: (sc[i]["score"], -i))
    return params


def _build_method(method_name: str, params: dict, cfg: TrainConfig, manifest: dict, checkpoint: str, seed: int,
                  head: str):
    """The model from the checkpoint, wrapped with the method (adapters initialised from ``seed``), its phases."""
    import torch

    from ..data.prepared import normalization
    from ..methods import get_method
    from ..models.checkpoint import build_model
    from ..train import Preprocess

    method = get_method(method_name, head=head, **params)
    num_classes = int(manifest["num_classes"])
    model, ckpt = build_model(existing(checkpoint), num_classes, seed=seed, keep_head=head == "keep",
                              classes=manifest.get("classes"), target=manifest.get("name"), **cfg.model_kwargs())
    base_params = sum(p.numel() for p in model.parameters())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = method.wrap(model)
        phases = method.phases(model)
    pre = Preprocess(*normalization(manifest, ckpt.mean, ckpt.std), ckpt.in_chans)  # data.standardize
    return method, model, phases, ckpt, num_classes, base_params, pre


def fit_method(method: str, params: dict, cfg: TrainConfig, data: dict, manifest: dict, *, checkpoint: str,
               test: bool, seed: int = 0, head: str = "new", device: str | None = None, reuse=None) -> Fit:
    """Train ``method`` from ``checkpoint`` on ``data`` (a prepared dataset's splits) the way ``train`` does.

    One function for the ``train`` and ``tune`` stages and for studies that train in-process (``bench/``), so
    that all of them train the very same run: the model built from the checkpoint (a new head unless ``head``
    is ``keep``), wrapped by the method after the global torch RNG is seeded with ``seed`` (adapter
    initialisation is per seed), its phases run by :func:`subtune.methods.fit_phases`. ``params`` are the
    method's full parameters (:func:`method_params` adds the selected blocks or Surgical's group). The test
    split is evaluated only if ``test``; ``data`` without a val split trains with no per-epoch validation.
    ``reuse``: the weights and metrics of the same run saved by ``tune --save-chosen`` (:mod:`subtune.reuse`):
    loaded instead of trained, and only the test split evaluated.
    """
    import time

    from ..methods import fit_phases
    from ..reuse import load_into
    from ..train import evaluate, pick_device

    built, model, phases, ckpt, num_classes, base_params, pre = _build_method(method, params, cfg, manifest,
                                                                              checkpoint, seed, head)
    if reuse is not None:
        state, m = reuse
        load_into(model, state)
        dev = pick_device(device)
        t0 = time.perf_counter()
        model.to(dev)
        r = evaluate(model, pre.to(dev), data["test_x"], data["test_y"], cfg.eval_batch_size, dev)
        m.update(test_acc=r["acc"], test_loss=r["loss"], device=str(dev),
                 wall_time_s=m["wall_time_s"] + time.perf_counter() - t0)  # the tuning job's training, and the test
    else:
        # no val split in ``data`` (final runs on train+val): nothing is evaluated per epoch
        evals = {"val": (data["val_x"], data["val_y"])} if "val_x" in data else {}
        m = fit_phases(
            model, phases, pre, (data["train_x"], data["train_y"]), evals, cfg, seed, device,
            final_evals={"test": (data["test_x"], data["test_y"])} if test else None, desc=method,
        )
    notes: dict = {}
    for t, _ in phases:
        notes.update(t.notes)
    m.update(
        method=method, method_params={k: v for k, v in params.items()}, target=manifest.get("name"),
        seed=seed, train=cfg.to_dict(), checkpoint=str(checkpoint), notes=notes, head=head,
        adapted_params=m["total_params"], total_params=base_params,
    )
    return Fit(m, built, model, ckpt, num_classes, phases)


def fit_args(a: argparse.Namespace) -> dict:
    """:func:`fit_method`'s keyword arguments from a stage's options."""
    return {"checkpoint": a.checkpoint, "seed": a.seed, "head": a.head, "device": a.device}


def params_args(a: argparse.Namespace) -> dict:
    """:func:`method_params`'s keyword arguments from a stage's options (``tune`` has no ``--blocks``)."""
    return {"blocks": getattr(a, "blocks", None), "selection_state": a.selection_state,
            "surgical_scores": a.surgical_scores}


# ---------------------------------------------------------------- the stage
def _train_splits(text: str) -> str:
    """``--train-splits``: ``train`` or ``train,val`` -> the ``train_data`` label (``train`` or ``train+val``)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts not in (["train"], ["train", "val"]):
        raise SubtuneError(f"--train-splits takes train or train,val, not {text!r}")
    return "+".join(parts)


def _tuned(a: argparse.Namespace) -> dict:
    """``--tuned``: the values ``tune`` chose on validation, with what the metrics record about the choice."""
    from ..io import read_json

    t = read_json(existing(a.tuned))
    if t.get("method") != a.method:
        raise SubtuneError(f"{a.tuned}: tuned for method {t.get('method')!r}, not {a.method!r}")
    return {**t["chosen"], "grid": t.get("grid", {}), "val_acc": t["results"][t["chosen_index"]]["val_acc"],
            "seed": t.get("seed"), "edge": t.get("edge"), "explored": t.get("explored", t.get("grid", {}))}


def _reused(a: argparse.Namespace, params: dict, cfg: TrainConfig, manifest: dict, train_data: str):
    """``--reuse-tuned``: the saved run's weights and metrics when it is this run, else None (this run trains)."""
    from ..reuse import file_digests, load_chosen, run_key

    got = load_chosen(a.reuse_tuned, run_key(a.method, params, cfg.to_dict(), a.seed, a.head,
                                             file_digests(a.checkpoint, a.data, manifest), train_data))
    if isinstance(got, str):
        print(f"not reusing {a.reuse_tuned}: {got}; training", flush=True)
        return None
    print(f"reusing the tuning run of these values and seed ({a.reuse_tuned}): weights loaded, "
          f"the test split evaluated", flush=True)
    return got


def run(a: argparse.Namespace) -> None:
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
    from ..data.prepared import load_manifest, load_prepared
    from ..io import write_json
    from ..methods import method_class
    from ..provenance import provenance
    from ..train import TrainConfig

    if a.save_model and not method_class(a.method).mergeable:  # before any training
        raise SubtuneError(f"--save-model: method {a.method!r} cannot be merged into a plain timm model")
    train_cfg, params, tuned = dict(a.train), dict(a.method_params or {}), None
    if a.tuned:
        tuned = _tuned(a)
        train_cfg.update(tuned["train"])
        params.update(tuned["params"])
    train_data = _train_splits(a.train_splits)
    if train_data == "train+val" and train_cfg.get("epoch_select") == "best_val":
        raise SubtuneError("--train-splits train,val leaves no validation split for epoch_select best_val")
    cfg = TrainConfig.from_dict(train_cfg)
    params = method_params(a.method, params, **params_args(a))
    manifest = load_manifest(existing(a.manifest))
    existing(a.data)
    data = load_prepared(a.data, splits=("train", "val", "test"))
    if train_data == "train+val":
        data, _ = union_train_val(data)
    threads(a.threads)
    reuse = _reused(a, params, cfg, manifest, train_data) if a.reuse_tuned else None
    fit = fit_method(a.method, params, cfg, data, manifest, test=True, reuse=reuse, **fit_args(a))
    m = fit.metrics
    m["train_data"] = train_data
    m["provenance"] = provenance(manifest.get("sha256"))  # the code and data that trained it (subtune status)
    if reuse is not None:
        m["reused"] = str(a.reuse_tuned)
    if tuned is not None:
        m["tuned"] = tuned
    if a.save_model:
        _save_merged(a.save_model, fit, manifest)
    write_json(a.out, m)
    track(a, m, a.out, _run_tags(a, m, train_data))
    val = f"val {m['val_acc']:.4f}" if m.get("val_acc") is not None else f"trained on {train_data}"
    print(f"{a.method} on {m['target']} seed {a.seed}: {val} test {m['test_acc']:.4f} "
          f"({m['trainable_params']} trainable, {m['wall_time_s']:.1f}s)")


def _run_tags(a: argparse.Namespace, m: dict, train_data: str) -> dict[str, str]:
    """The MLflow tags of a final run: what tells it from the others (the rule adds ``stage`` and a sweep's
    ``train_size``); ``tuned``: the grid point chosen on validation that it trained at; ``blockset``: the blocks
    given by ``--blocks`` (the epsilon sensitivity's sets)."""
    from ..tune import point_label

    out = {"stage": "final", "target": m["target"], "method": a.method, "seed": str(a.seed), "train_data": train_data}
    if m.get("tuned"):
        out["tuned"] = point_label(m["tuned"])
    if a.blocks is not None:
        out["blockset"] = a.blocks or "lp"
    return out


def _save_merged(path: str, fit: Fit, manifest: dict) -> None:
    """``--save-model``: the method merged into a plain timm model of the checkpoint's architecture, saved."""
    import dataclasses

    from ..models.checkpoint import create, save_checkpoint

    ckpt = fit.checkpoint
    plain = create(ckpt.arch, fit.num_classes, ckpt.in_chans, **ckpt.model_kwargs)
    plain.load_state_dict({k: v.cpu() for k, v in fit.method.merge(fit.model).items()}, strict=True)
    save_checkpoint(path, plain, dataclasses.replace(ckpt, num_classes=fit.num_classes,
                                                     classes=manifest.get("classes")))


STAGE = Stage("train", "final training of one method on one target and seed (test read once)", add_arguments, run,
              order=90)
