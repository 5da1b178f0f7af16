"""Agreement study: exact greedy selection against selection under a budget (successive halving).

    python bench/selection_budget.py                  # default targets, seeds 0-4, halving from 1 epoch, eta 2
    python bench/selection_budget.py --targets digits --seeds 0 1 --budget '{"kind": "halving", "eta": 3}'

For every default target of config.yaml and every seed: run the whole greedy
selection twice with the same scorer seed, exactly (every candidate trains the
full schedule) and under ``--budget`` (:mod:`subtune.halving`), both with the
workflow's fast path (frozen-prefix cache + candidates trained together).
Then train each distinct selected set with the final SubTuning training config
of config.yaml (``methods.subtuning.train`` over ``train``; the configured
learning rate, no grid) on that seed and read the test split once. Prints per
target: how often the selected sets are identical, the validation score gap
(exact minus cheap, points), final test accuracy of each (mean ± std over
seeds), and the cost of each selection in plain full fine-tunes, measured
(CPU time of the process over that of one plain full fine-tune of the same
target, same process, same epochs: on a shared machine wall time swings with
the load, CPU time of a one-thread process much less; wall-time ratios are in
the JSON as ``cost_ft_wall``) and estimated from FLOPs (``ft_equiv``). Writes
every number to ``bench/work/selection_budget.json`` after every seed;
``--summarize`` prints the table of several such files.

Inputs: the prepared targets and the pretrained backbone of the embedded
default (built with Snakemake if missing, as bench/selection.py does).
Not run by the tests; CPU-heavy (about 20-40 minutes on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from subtune.config import method_train, selection_train  # noqa: E402
from subtune.data.prepared import load_manifest, load_prepared  # noqa: E402
from subtune.halving import Budget  # noqa: E402
from subtune.methods import get_method  # noqa: E402
from subtune.models.blocks import block_names  # noqa: E402
from subtune.models.checkpoint import build_model  # noqa: E402
from subtune.prefix import PrefixCache  # noqa: E402
from subtune.scoring import CandidateScorer  # noqa: E402
from subtune.select import SelectionConfig, candidates, decide, initial_state, reference  # noqa: E402
from subtune.stages.train import fit_method  # noqa: E402
from subtune.train import Preprocess, TrainConfig, fit  # noqa: E402


def inputs(cfg, targets):
    exp = cfg["experiment"]
    ckpt = ROOT / f"checkpoints/{exp}/backbone.safetensors"
    data = {t: ROOT / f"data/prepared/{exp}/{t}/1k.safetensors" for t in targets}
    missing = [str(p.relative_to(ROOT)) for p in (ckpt, *data.values()) if not p.exists()]
    if missing:
        print(f"building {', '.join(missing)} with snakemake ...", flush=True)
        subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--cores", "all", *missing],
                       cwd=ROOT, check=True)
    return ckpt, data


def select(scorer, blocks, sel, budget):
    """One whole greedy selection; (final state, wall s, CPU s, FLOP-estimated cost in plain fine-tunes)."""
    state, t0, c0, ft = initial_state(blocks, sel), time.perf_counter(), time.process_time(), 0.0
    while not state["done"]:
        cands = candidates(state)
        results, cost = scorer.score_round(cands, reference(state), budget)
        scores = {tuple(r["blocks"]): r["score"] for r in results}
        dropped = {tuple(r["blocks"]): r["dropped_at"] for r in results if "dropped_at" in r}
        state = decide(state, scores, dropped)
        state["rounds"][-1]["cost"] = cost
        ft += cost["ft_equiv"]
    return state, time.perf_counter() - t0, time.process_time() - c0, ft


def ms(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--targets", nargs="+")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--budget", type=json.loads, default={"kind": "halving", "min_epochs": 1, "eta": 2})
    ap.add_argument("--out", default=str(ROOT / "bench/work/selection_budget.json"))
    ap.add_argument("--summarize", nargs="+", metavar="JSON",
                    help="only print the table of earlier runs' --out files (e.g. targets run in parallel)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared CPU, OpenMP threads spin-wait on each other)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.summarize:
        print_table([r for f in a.summarize for r in json.loads(Path(f).read_text())["rows"]])
        return

    cfg = yaml.safe_load(Path(a.config).read_text())
    targets = a.targets or list(cfg["targets"])
    ckpt, paths = inputs(cfg, targets)
    sel_train = TrainConfig.from_dict(selection_train(cfg))
    final_train = TrainConfig.from_dict(method_train(cfg, "subtuning"))
    budget = Budget.from_dict(a.budget, "--budget")
    budget.check(sel_train.epochs, "--budget")
    sel_keys = ("strategy", "stop_rule", "k", "epsilon", "scoring", "folds")
    sel = SelectionConfig(**{k: v for k, v in cfg["selection"].items() if k in sel_keys})
    print(f"{torch.get_num_threads()} CPU threads; selection {sel_train.epochs} epochs, budget {budget.to_dict()}; "
          f"final training {final_train.to_dict()}", flush=True)

    rows = []
    for t in targets:
        manifest = load_manifest(paths[t].with_suffix(".json"))
        k = int(manifest["num_classes"])
        data = load_prepared(paths[t], splits=("train", "val", "test"))
        seldata = {s: data[s] for s in ("train_x", "train_y", "val_x", "val_y")}
        # the unit: one plain full fine-tune (selection epochs), in process
        model, ck = build_model(ckpt, k, seed=a.seeds[0])
        t0, c0 = time.perf_counter(), time.process_time()
        fit(model, get_method("ft").trainable(model), Preprocess(ck.mean, ck.std, ck.in_chans),
            (data["train_x"], data["train_y"]), {"val": (data["val_x"], data["val_y"])}, sel_train, a.seeds[0])
        t_ft, c_ft = time.perf_counter() - t0, time.process_time() - c0
        print(f"\n{t}: one plain full fine-tune {t_ft:.1f} s wall, {c_ft:.1f} s CPU", flush=True)
        blocks = block_names(model)
        for seed in a.seeds:
            row = {"target": t, "seed": seed, "t_ft": t_ft, "c_ft": c_ft}
            for name, b in (("exact", None), ("cheap", budget)):
                scorer = CandidateScorer(str(ckpt), seldata, k, sel_train, sel, seed, cache=PrefixCache(8192),
                                         data_digest=manifest.get("sha256"))
                state, dt, dc, ft = select(scorer, blocks, sel, b)
                row[name] = {"selected": state["selected"], "val": state["score"], "wall_s": dt, "cpu_s": dc,
                             "cost_ft_wall": dt / t_ft, "cost_ft": dc / c_ft, "cost_ft_flops": ft,
                             "rounds": state["rounds"]}
            tests = {}
            for s in {tuple(row["exact"]["selected"]), tuple(row["cheap"]["selected"])}:
                m = fit_method("subtuning", {"blocks": list(s)}, final_train, data, manifest, checkpoint=str(ckpt),
                               seed=seed, test=True).metrics
                tests[s] = m["test_acc"]
            for name in ("exact", "cheap"):
                row[name]["test"] = tests[tuple(row[name]["selected"])]
            e, c = row["exact"], row["cheap"]
            print(f"  seed {seed}: exact {'+'.join(e['selected']) or '(lp)'} val {100 * e['val']:.2f} "
                  f"test {100 * e['test']:.2f} cost {e['cost_ft']:.2f} FT by CPU time ({e['cost_ft_flops']:.2f} by FLOPs) | "
                  f"cheap {'+'.join(c['selected']) or '(lp)'} val {100 * c['val']:.2f} test {100 * c['test']:.2f} "
                  f"cost {c['cost_ft']:.2f} FT by CPU time ({c['cost_ft_flops']:.2f} by FLOPs)", flush=True)
            rows.append(row)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps({"budget": budget.to_dict(), "rows": rows}, indent=1))
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """The study's table (per target over seeds) and the issue's three checks."""
    summary = []
    for t in dict.fromkeys(r["target"] for r in rows):
        rs = [r for r in rows if r["target"] == t]
        summary.append({
            "target": t, "seeds": len(rs), "same": sum(r["exact"]["selected"] == r["cheap"]["selected"] for r in rs),
            "val_gap": ms([100 * (r["exact"]["val"] - r["cheap"]["val"]) for r in rs]),
            "test_exact": ms([100 * r["exact"]["test"] for r in rs]),
            "test_cheap": ms([100 * r["cheap"]["test"] for r in rs]),
            "cost_exact": ms([r["exact"]["cost_ft"] for r in rs]),
            "cost_cheap": ms([r["cheap"]["cost_ft"] for r in rs]),
            "cost_cheap_max": max(r["cheap"]["cost_ft"] for r in rs),
            "flops_exact": ms([r["exact"]["cost_ft_flops"] for r in rs]),
            "flops_cheap": ms([r["cheap"]["cost_ft_flops"] for r in rs]),
            "flops_cheap_max": max(r["cheap"]["cost_ft_flops"] for r in rs),
        })
    print("\n| target | seeds | same set | val gap exact-cheap (pts) | test exact (%) | test cheap (%) "
          "| cost exact (FT) | cost cheap (FT) | max cheap (FT) | FLOPs exact / cheap / max cheap (FT) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['target']} | {s['seeds']} | {s['same']}/{s['seeds']} | {s['val_gap'][0]:.2f} ± {s['val_gap'][1]:.2f} "
              f"| {s['test_exact'][0]:.2f} ± {s['test_exact'][1]:.2f} | {s['test_cheap'][0]:.2f} ± "
              f"{s['test_cheap'][1]:.2f} | {s['cost_exact'][0]:.2f} ± {s['cost_exact'][1]:.2f} | "
              f"{s['cost_cheap'][0]:.2f} ± {s['cost_cheap'][1]:.2f} | {s['cost_cheap_max']:.2f} | "
              f"{s['flops_exact'][0]:.2f} / {s['flops_cheap'][0]:.2f} / {s['flops_cheap_max']:.2f} |")
    n = sum(s["seeds"] for s in summary)
    same = sum(s["same"] for s in summary)
    print(f"\nidentical selections: {same}/{n} ({100 * same / n:.0f}%; target >= 80%)")
    print("cheap test mean within one std of exact's: "
          + ", ".join(f"{s['target']} {abs(s['test_cheap'][0] - s['test_exact'][0]) <= s['test_exact'][1]}"
                      for s in summary))
    print("cheap cost <= 3 plain fine-tunes on every (target, seed): measured "
          f"{all(s['cost_cheap_max'] <= 3 for s in summary)}, FLOPs {all(s['flops_cheap_max'] <= 3 for s in summary)}")


if __name__ == "__main__":
    main()
