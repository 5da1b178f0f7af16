"""``multilora``: K tasks trained together with Multi-LoRA (:mod:`subtune.methods.multilora`), optionally compared
with K separate LoRA runs or run as one of its ablations."""

from __future__ import annotations

import argparse

from .. import SubtuneError
from . import Stage
from ._common import common_train, existing, json_arg, threads, track


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--task", nargs=3, action="append", required=True, metavar=("NAME", "DATA", "MANIFEST"),
                   help="one task: its name, prepared data and manifest (repeat for each task)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--params", type=json_arg, default={}, help="rank, alpha, target as JSON")
    s.add_argument("--compare", action="store_true", help="also train K separate peft-LoRA runs and compare")
    s.add_argument("--tuned", help="this job's output on the tuning seed: each side trains only at the point it "
                                   "chose there (Multi-LoRA its point, each separate LoRA run its own)")
    s.add_argument("--train-a", action="store_true", help="ablation: train the shared A (every task's loss)")
    s.add_argument("--sequential", action="store_true",
                   help="ablation: train the tasks one after another (each its whole schedule), A shared")
    s.add_argument("--ablation", help="the ablation's name, recorded in the output (train_a, sequential, rank<R>)")
    s.add_argument("--grid", type=json_arg, default={},
                   help="hyperparameter -> values, as JSON (training keys, rank, alpha): both sides choose on "
                        "validation")
    common_train(s)
    s.add_argument("--out", required=True)


def run(a: argparse.Namespace) -> None:
    """K tasks trained together with Multi-LoRA (shared frozen A, a B and a head per task); optionally compared."""
    from ..tune import multilora_grid_points
    from ..data.prepared import load_manifest, load_prepared
    from ..io import read_json, write_json
    from ..methods.multilora import Task, train_multilora
    from ..methods.multilora_compare import check_tuned, compare, tuned_grid
    from ..models.checkpoint import build_model
    from ..provenance import provenance
    from ..train import Preprocess, TrainConfig

    cfg = TrainConfig.from_dict(a.train)
    for point in multilora_grid_points(a.grid):  # a bad grid fails before any data is loaded
        TrainConfig.from_dict({**a.train, **point["train"]}, "multilora.grid")
    from ..config import MULTILORA_PARAMS  # what --params takes: the config schema's multilora.params

    params = dict(a.params or {})
    unknown = sorted(set(params) - set(MULTILORA_PARAMS))
    if unknown:
        raise SubtuneError(f"multilora takes no parameter {unknown[0]!r} "
                           f"(it takes: {', '.join(sorted(MULTILORA_PARAMS))})")
    tasks_in = []
    for name, data, manifest in a.task:
        tasks_in.append((name, existing(data), load_manifest(existing(manifest))))
    backbone, ckpt = build_model(existing(a.checkpoint), 1, seed=a.seed)
    threads(a.threads)
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
    tuned = read_json(existing(a.tuned)) if a.tuned else None
    if tuned is not None:
        check_tuned(tuned, tasks, a.grid, compared=a.compare, where=f"--tuned {a.tuned}")
    if a.compare:
        out = compare(backbone, tasks, pre, cfg, **kw, tuned=tuned)
    else:
        if tuned is not None:  # Multi-LoRA alone at the point its tuning seed chose
            kw["grid"] = tuned_grid(tuned)
        out = {"multilora": train_multilora(backbone, tasks, pre, cfg, **kw, train_a=a.train_a,
                                            sequential=a.sequential), "tasks": [t.name for t in tasks],
               **({"tuned_on_seed": int(tuned["seed"])} if tuned and "seed" in tuned else {})}
        out["multilora"].pop("model")
    out.update(seed=a.seed, train=cfg.to_dict(), params=params, grid=a.grid or {}, checkpoint=str(a.checkpoint),
               **({"ablation": a.ablation} if a.ablation else {}))
    out["provenance"] = provenance({name: man.get("sha256") for name, _, man in tasks_in})
    write_json(a.out, out)
    # One MLflow run per job: Multi-LoRA's metrics; the comparison is in the attached metrics file.
    # On the tuning seed it tried the grid: every point's validation accuracy, and the point chosen (grid_point);
    # on the other seeds, the point chosen there (tuned).
    r = out["multilora"]
    tried = {x["label"]: x["val_acc"] for x in r.get("grid_results") or []} if tuned is None else {}
    point = r["chosen"]["label"]
    track(a, {"method": "multilora", "target": "+".join(out["tasks"]), "seed": a.seed, "train": r["train"],
              "method_params": {**params, **r["chosen"]["params"], "tasks": ",".join(out["tasks"]),
                                "compared": bool(a.compare)},
              "val_acc": r["mean_val_acc"], "test_acc": r.get("mean_test_acc"),
              "trainable_params": r["params_trained"], "wall_time_s": r["wall_time_s"],
              **({"grid_scores": tried} if len(tried) > 1 else {})},
          a.out, {"stage": "multilora", "method": "multilora", "target": "+".join(out["tasks"]), "seed": str(a.seed),
                  **({"ablation": a.ablation} if a.ablation else {}),
                  **({"grid_point": point} if len(tried) > 1 else {"tuned": point} if tuned is not None else {})})
    for kind in ("multilora", "separate_lora"):
        if kind in out:
            r = out[kind]
            accs = ", ".join(f"{k} {v.get('test_acc', v['val_acc']):.4f} ({v['optimizer_steps']} steps)"
                             for k, v in r["per_task"].items())
            print(f"{kind}: {accs} ({r['params_trained']} trained, {r['params_stored']} stored, "
                  f"{r['wall_time_s']:.1f}s)")


STAGE = Stage("multilora", "train K tasks together with Multi-LoRA (shared frozen A, one B and head per task)",
              add_arguments, run, order=110)
