"""``tune``: a method's grid trained on the training split, the point chosen by validation accuracy (no test).

The test split is not loaded (:mod:`subtune.tune`). A choice on an edge of the grid extends it (``--extend``
steps per key and direction, :func:`subtune.tune.tune_grid`). ``train --tuned`` applies the chosen values;
``--save-chosen`` keeps the chosen point's trained state for ``train --reuse-tuned``.
"""

from __future__ import annotations

import argparse

from .. import SubtuneError
from . import Stage
from ._common import common_train, existing, json_arg, method_help, threads, track
from .train import fit_args, fit_method, method_params, params_args


def add_arguments(s: argparse.ArgumentParser) -> None:
    h = method_help()
    s.add_argument("--method", required=True, help=h["methods"])
    s.add_argument("--method-params", type=json_arg, default={}, help=h["params"])
    s.add_argument("--grid", type=json_arg, default={}, help="hyperparameter -> values, as JSON")
    s.add_argument("--selection-state", help=f"greedy selection result ({h['selection']})")
    s.add_argument("--surgical-scores", help=f"validation scores of the block groups ({h['surgical']})")
    s.add_argument("--data", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--head", choices=["new", "keep"], default="new", help=h["head"])
    s.add_argument("--save-chosen", help="also save the chosen point's trained weights and metrics (safetensors) "
                                         "for `train --reuse-tuned` (subtune.reuse)")
    s.add_argument("--extend", type=int, default=0,
                   help="a choice on an edge of the grid tries up to N more values beyond it, per key and direction "
                        "(config tuning.extend; default 0: the grid alone)")
    s.add_argument("--out", required=True)
    common_train(s)


def run(a: argparse.Namespace) -> None:
    """Train every point of a method's grid on the training split; choose by validation accuracy.

    Writes every point's validation metrics (grid and extension), the values
    explored, the edges the choice is still on, and the chosen values.
    """
    from ..data.prepared import load_manifest, load_prepared
    from ..io import write_json
    from ..provenance import provenance
    from ..train import TrainConfig
    from ..tune import better, grid_points, point_label, tune_grid

    base_params = dict(a.method_params or {})
    for p in grid_points(a.method, a.grid):  # a bad grid fails before any data is loaded
        TrainConfig.from_dict({**a.train, **p["train"]}, f"methods.{a.method}.grid")
        method_params(a.method, {**base_params, **p["params"]}, **params_args(a))
    manifest = load_manifest(existing(a.manifest))
    existing(a.data)
    data = load_prepared(a.data, splits=("train", "val"))
    val_size = int(len(data["val_y"]))
    threads(a.threads)
    kept, n = None, [0]
    if a.save_chosen:
        from ..reuse import file_digests, run_key, trained_state

        digests = file_digests(a.checkpoint, a.data, manifest)

    def score(point: dict) -> dict:
        nonlocal kept
        cfg = TrainConfig.from_dict({**a.train, **point["train"]}, f"methods.{a.method}.grid")
        prm = method_params(a.method, {**base_params, **point["params"]}, **params_args(a))
        m, _, model, _, _, phases = fit_method(a.method, prm, cfg, data, manifest, test=False, **fit_args(a))
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
        from ..reuse import save_chosen

        if kept[1] != best:
            raise SubtuneError(f"tune: kept grid point {kept[1]}, chose {best} (a bug)")
        save_chosen(a.save_chosen, kept[2], kept[3], kept[4])
    chosen = {"train": results[best]["train"], "params": results[best]["params"]}
    out = {"method": a.method, "target": manifest.get("name"), "seed": a.seed, "grid": a.grid or {},
           "extend": a.extend, "train": a.train, "method_params": base_params, "results": results,
           "chosen_index": best, "chosen": chosen, "explored": t["explored"], "edge": t["edge"],
           "extension": t["extension"], "provenance": provenance(manifest.get("sha256"))}
    write_json(a.out, out)
    r = results[best]
    track(a, {"method": a.method, "target": out["target"], "seed": a.seed, "val_acc": r["val_acc"],
              "val_loss": r["val_loss"], "trainable_params": r["trainable_params"],
              "wall_time_s": sum(x["wall_time_s"] for x in results),
              "train": {**a.train, **chosen["train"]}, "method_params": {**base_params, **chosen["params"]},
              "grid_scores": {x["label"]: x["val_acc"] for x in results}},  # metrics grid/<point>/val_acc
          a.out, {"stage": "tune", "target": out["target"], "method": a.method, "seed": str(a.seed),
                  "grid_points": str(len(results)), "grid_point": r["label"], "chosen": r["label"],
                  "edge": ",".join(f"{k}:{v}" for k, v in (t["edge"] or {}).items()) or "none"})
    flag = f"; still on the {', '.join(f'{v} edge of {k}' for k, v in t['edge'].items())}" if t["edge"] else ""
    print(f"chosen for {a.method} on {out['target']}: {r['label']} (val {r['val_acc']:.4f}){flag}")


STAGE = Stage("tune", "train a method's grid on the training split and choose by validation (no test)",
              add_arguments, run, order=100)
