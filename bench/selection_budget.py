"""Agreement study: exact greedy selection against selection under budgets, on the embedded default.

    python bench/selection_budget.py --root bench/work/pipeline          # the study (make selection-study)
    python bench/selection_budget.py --summarize bench/work/selection_budget --plot docs/img/selection_budget.png

For every target of the config and every seed (a unit): run the whole greedy
selection once exactly (every candidate trains the full schedule) and once
under each named budget of ``--variants`` (:mod:`subtune.halving`), each with a
fresh scorer of the same seed and the workflow's fast path (frozen-prefix
cache + candidates trained together). Then train each distinct selected set
with the final SubTuning training config (``methods.subtuning.train`` over
``train``; the configured learning rate, no grid) on that seed and read the
test split once.

Per target and budget the summary gives: how often the selected set is
identical to exact's, the Spearman rank correlation of round-1 scores with
exact's (a shortlist's screening scores, a halving's last-rung scores), the
validation and test gaps (exact minus cheap, points), test accuracy of each
(mean ± std over seeds), and the cost of each selection in plain full
fine-tunes: measured (CPU time of the process over that of one plain full
fine-tune of the same target in a process of its own, one thread; wall time
swings with the machine's load, CPU time of a one-thread process much less)
and estimated from FLOPs (``ft_equiv``, :mod:`subtune.scoring`). The plot is
test accuracy against selection cost, a panel per target.

Each unit and each target's plain fine-tune is a task; ``--jobs`` tasks run
at once, one thread each, and every task writes its own JSON under ``--out``
(a directory): a rerun skips what is there, so an interrupted study resumes.

Inputs: the prepared targets and the ImageNet backbone of the embedded
default under ``--root`` (a finished ``make reproduce`` tree, or this
checkout; built with Snakemake if missing). Not run by the tests; CPU-heavy
(about 9 CPU-minutes per unit on the 2-core machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS = {
    "exact": None,
    "shortlist": {"kind": "shortlist", "screen_epochs": 1, "keep": 2},
    "short2": {"epochs": 2},
    "halving": {"kind": "halving", "min_epochs": 1, "eta": 2},
}


def parse_variant(text: str) -> tuple[str, dict | None]:
    """``name`` (one of VARIANTS) or ``name=<budget JSON>``."""
    name, _, js = text.partition("=")
    if js:
        return name, json.loads(js)
    if name not in VARIANTS:
        raise SystemExit(f"--variants: {name!r} is neither one of {', '.join(VARIANTS)} nor name=<budget JSON>")
    return name, VARIANTS[name]


def inputs(root: Path, cfg: dict, targets: list[str]) -> tuple[Path, dict[str, Path]]:
    exp = cfg["experiment"]
    ckpt = root / f"checkpoints/{exp}/backbone.safetensors"
    data = {t: root / f"data/prepared/{exp}/{t}/1k.safetensors" for t in targets}
    missing = [str(p.relative_to(root)) for p in (ckpt, *data.values()) if not p.exists()]
    if missing:
        print(f"building {', '.join(missing)} with snakemake ...", flush=True)
        subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--cores", "all", *missing],
                       cwd=root, check=True)
    return ckpt, data


def select(scorer, blocks, sel, budget):
    """One whole greedy selection; (final state, wall s, CPU s, FLOP-estimated cost in plain fine-tunes)."""
    from subtune.select import candidates, decide, initial_state, reference

    state, t0, c0, ft = initial_state(blocks, sel), time.perf_counter(), time.process_time(), 0.0
    round1 = {}
    while not state["done"]:
        cands = candidates(state)
        results, cost = scorer.score_round(cands, reference(state), budget)
        scores = {tuple(r["blocks"]): r["score"] for r in results}
        dropped = {tuple(r["blocks"]): r["dropped_at"] for r in results if "dropped_at" in r}
        if not round1:  # the round-1 ranking signal: a shortlist's screening score, else the score
            round1 = {"+".join(r["blocks"]): r.get("screen_score", r["score"]) for r in results if r["blocks"]}
        state = decide(state, scores, dropped)
        state["rounds"][-1]["cost"] = cost
        ft += cost["ft_equiv"]
    return state, time.perf_counter() - t0, time.process_time() - c0, ft, round1


def _setup(a: argparse.Namespace, target: str):
    import torch
    import yaml

    from subtune.config import method_train, selection_train
    from subtune.data.prepared import load_manifest, load_prepared
    from subtune.train import TrainConfig

    torch.set_num_threads(1)  # on a shared CPU, OpenMP threads spin-wait on each other
    cfg = yaml.safe_load(Path(a.config).read_text())
    ckpt, paths = inputs(Path(a.root), cfg, [target])
    manifest = load_manifest(paths[target].with_suffix(".json"))
    data = load_prepared(paths[target], splits=("train", "val", "test"))
    return (cfg, ckpt, manifest, data, TrainConfig.from_dict(selection_train(cfg)),
            TrainConfig.from_dict(method_train(cfg, "subtuning")))


def task_ft(a: argparse.Namespace, target: str) -> dict:
    """The unit of cost: one plain full fine-tune of ``target`` (selection epochs), one thread."""
    from subtune.methods import get_method
    from subtune.models.checkpoint import build_model
    from subtune.train import Preprocess, fit

    cfg, ckpt, manifest, data, sel_train, _ = _setup(a, target)
    model, ck = build_model(ckpt, int(manifest["num_classes"]), seed=0)
    t0, c0 = time.perf_counter(), time.process_time()
    fit(model, get_method("ft").trainable(model), Preprocess(ck.mean, ck.std, ck.in_chans),
        (data["train_x"], data["train_y"]), {"val": (data["val_x"], data["val_y"])}, sel_train, 0)
    return {"target": target, "t_ft": time.perf_counter() - t0, "c_ft": time.process_time() - c0}


def task_select(a: argparse.Namespace, target: str, seed: int, name: str, spec: dict | None) -> dict:
    """One variant's whole selection of (target, seed), in a process of its own (as the unit of cost is)."""
    from subtune.halving import Budget
    from subtune.models.blocks import block_names
    from subtune.models.checkpoint import build_model
    from subtune.prefix import PrefixCache
    from subtune.scoring import CandidateScorer
    from subtune.select import SelectionConfig

    cfg, ckpt, manifest, data, sel_train, _ = _setup(a, target)
    k = int(manifest["num_classes"])
    seldata = {s: data[s] for s in ("train_x", "train_y", "val_x", "val_y")}
    blocks = block_names(build_model(ckpt, k, seed=seed)[0])
    sel_keys = ("strategy", "stop_rule", "k", "epsilon", "scoring", "folds")
    sel = SelectionConfig(**{kk: v for kk, v in cfg["selection"].items() if kk in sel_keys})
    budget = Budget.from_dict(spec, f"--variants {name}")
    if budget is not None:
        budget.check(sel_train.epochs, f"--variants {name}")
    scorer = CandidateScorer(str(ckpt), seldata, k, sel_train, sel, seed, cache=PrefixCache(8192),
                             data_digest=manifest.get("sha256"))
    state, dt, dc, ft, round1 = select(scorer, blocks, sel, budget)
    print(f"  {target} seed {seed} {name}: {'+'.join(state['selected']) or '(lp)'} "
          f"val {100 * state['score']:.2f}, {dc:.0f} s CPU, {ft:.2f} FT by FLOPs", flush=True)
    return {"target": target, "seed": seed, "variant": name, "budget": spec, "selected": state["selected"],
            "val": state["score"], "wall_s": dt, "cpu_s": dc, "cost_ft_flops": ft, "round1": round1,
            "rounds": state["rounds"]}


def task_test(a: argparse.Namespace, target: str, seed: int, blocks: list[str]) -> dict:
    """A selected set trained with SubTuning's final config on (target, seed); the test split read once."""
    from subtune.stages.train import fit_method

    _, ckpt, manifest, data, _, final_train = _setup(a, target)
    m = fit_method("subtuning", {"blocks": list(blocks)}, final_train, data, manifest, checkpoint=str(ckpt),
                   seed=seed, test=True).metrics
    return {"target": target, "seed": seed, "blocks": list(blocks), "test_acc": m["test_acc"]}


def test_file(out: Path, target: str, seed: int, blocks: list[str]) -> Path:
    return out / f"test_{target}_seed{seed}_{hashlib.sha256('+'.join(blocks).encode()).hexdigest()[:12]}.json"


def run_task(job: tuple) -> str:
    a, kind, args, out = job
    t0 = time.perf_counter()
    print(f"start {out.name}", flush=True)
    res = {"ft": task_ft, "select": task_select, "test": task_test}[kind](a, *args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".tmp").write_text(json.dumps(res, indent=1))
    out.with_suffix(".tmp").rename(out)
    return f"done {out.name} in {time.perf_counter() - t0:.0f} s"


def run_pool(jobs: list[tuple], n: int) -> None:
    todo = [j for j in jobs if not j[-1].exists()]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} tasks done; {len(todo)} to run, {n} at once", flush=True)
    if todo:
        with mp.get_context("spawn").Pool(n, maxtasksperchild=1) as pool:
            for msg in pool.imap_unordered(run_task, todo):
                print(msg, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--root", default=str(ROOT), help="where the default's checkpoints/ and data/ are")
    ap.add_argument("--targets", nargs="+")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--variants", nargs="+", default=[(n, b) for n, b in VARIANTS.items()], type=parse_variant,
                    help=f"exact and budgets: names ({', '.join(VARIANTS)}) or name=<budget JSON>")
    ap.add_argument("--out", default=str(ROOT / "bench/work/selection_budget"), help="a directory of task files")
    ap.add_argument("--jobs", type=int, default=2, help="tasks at once (one thread each)")
    ap.add_argument("--summarize", metavar="DIR", help="only print the table of a study's --out directory")
    ap.add_argument("--plot", help="also draw test accuracy against selection cost to this PNG")
    a = ap.parse_args()
    out = Path(a.summarize or a.out)
    if not a.summarize:
        import yaml

        if not a.variants or a.variants[0][0] != "exact":
            raise SystemExit("--variants: the first must be exact (the reference)")
        cfg = yaml.safe_load(Path(a.config).read_text())
        targets = a.targets or list(cfg["targets"])
        inputs(Path(a.root), cfg, targets)
        # every selection, and each target's unit of cost, in a process of its own; a seed's final trainings
        # after its selections, so that an interrupted study has whole seeds to summarise
        run_pool([(a, "ft", (t,), out / f"ft_{t}.json") for t in targets], a.jobs)
        for s in a.seeds:
            run_pool([(a, "select", (t, s, name, spec), out / f"sel_{t}_seed{s}_{name}.json")
                      for t in targets for name, spec in a.variants], a.jobs)
            sets = {(t, tuple(json.loads((out / f"sel_{t}_seed{s}_{name}.json").read_text())["selected"]))
                    for t in targets for name, _ in a.variants}
            run_pool([(a, "test", (t, s, list(b)), test_file(out, t, s, list(b))) for t, b in sorted(sets)], a.jobs)
    rows, ft = load(out)
    summary = summarize(rows, ft)
    print_table(summary, rows)
    if a.plot:
        plot(summary, Path(a.plot))
        print(f"wrote {a.plot}")


def load(out: Path) -> tuple[list[dict], dict[str, dict]]:
    """Units (target, seed) with exact's selection and every selected set's test: {target, seed, variants}."""
    read = lambda p: json.loads(p.read_text())  # noqa: E731
    ft = {read(p)["target"]: read(p) for p in sorted(out.glob("ft_*.json"))}
    units: dict[tuple[str, int], dict] = {}
    for p in sorted(out.glob("sel_*.json")):
        v = read(p)
        tf = test_file(out, v["target"], v["seed"], v["selected"])
        if tf.exists():
            units.setdefault((v["target"], v["seed"]), {})[v["variant"]] = {**v, "test": read(tf)["test_acc"]}
    rows = [{"target": t, "seed": s, "variants": {"exact": vs.pop("exact"), **dict(sorted(vs.items()))}}
            for (t, s), vs in units.items() if "exact" in vs]
    if not rows:
        raise SystemExit(f"{out}: no finished unit (an exact selection and its test)")
    return rows, ft


def ms(xs: list[float]) -> tuple[float, float]:
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(rows: list[dict], ft: dict[str, dict]) -> list[dict]:
    """Per target and variant: agreement, gaps, accuracy and cost over the seeds."""
    from scipy.stats import spearmanr

    out = []
    for t in dict.fromkeys(r["target"] for r in rows):
        rs = sorted((r for r in rows if r["target"] == t), key=lambda r: r["seed"])
        c_ft = ft.get(t, {}).get("c_ft")
        for name in dict.fromkeys(n for r in rs for n in r["variants"]):
            have = [r for r in rs if name in r["variants"]]
            ex, vs = [r["variants"]["exact"] for r in have], [r["variants"][name] for r in have]
            rho = []
            for e, v in zip(ex, vs):
                ks = sorted(e["round1"])
                rho.append(float(spearmanr([e["round1"][k] for k in ks], [v["round1"][k] for k in ks]).statistic))
            out.append({
                "target": t, "variant": name, "budget": vs[0]["budget"], "seeds": [r["seed"] for r in have],
                "same": sum(e["selected"] == v["selected"] for e, v in zip(ex, vs)),
                "rho1": ms(rho),
                "val_gap": ms([100 * (e["val"] - v["val"]) for e, v in zip(ex, vs)]),
                "test_gap": ms([100 * (e["test"] - v["test"]) for e, v in zip(ex, vs)]),
                "test": ms([100 * v["test"] for v in vs]),
                "test_exact": ms([100 * e["test"] for e in ex]),
                "cost": ms([v["cpu_s"] / c_ft for v in vs]) if c_ft else (float("nan"), float("nan")),
                "cost_max": max(v["cpu_s"] / c_ft for v in vs) if c_ft else float("nan"),
                "flops": ms([v["cost_ft_flops"] for v in vs]),
                "flops_max": max(v["cost_ft_flops"] for v in vs),
            })
    return out


def paired_gap(rows: list[dict], name: str, n_boot: int = 10000) -> tuple[float, float, float, int]:
    """Test accuracy of exact minus ``name`` (points), paired by (target, seed) over every unit that ran both:
    the mean and a 95 % percentile bootstrap interval (units resampled, seed 0), and the number of units."""
    import numpy as np

    gaps = np.array([100 * (r["variants"]["exact"]["test"] - r["variants"][name]["test"])
                     for r in rows if name in r["variants"]])
    boot = np.random.default_rng(0).choice(gaps, (n_boot, len(gaps))).mean(axis=1)
    return float(gaps.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)), len(gaps)


def print_table(summary: list[dict], rows: list[dict] | None = None) -> None:
    """The study's table and the three checks (≤ 3 plain fine-tunes; same set ≥ 80 % or test within 1 std)."""
    print("\n| target | selection | seeds | same set as exact | round-1 Spearman | val gap (pts) | test gap (pts) "
          "| test (%) | cost, CPU time (FT) | max | cost, FLOPs (FT) | max |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        n = len(s["seeds"])
        print(f"| {s['target']} | {s['variant']} | {n} | {s['same']}/{n} | {s['rho1'][0]:.2f} ± {s['rho1'][1]:.2f} "
              f"| {s['val_gap'][0]:.2f} ± {s['val_gap'][1]:.2f} | {s['test_gap'][0]:.2f} ± {s['test_gap'][1]:.2f} "
              f"| {s['test'][0]:.2f} ± {s['test'][1]:.2f} | {s['cost'][0]:.2f} ± {s['cost'][1]:.2f} "
              f"| {s['cost_max']:.2f} | {s['flops'][0]:.2f} ± {s['flops'][1]:.2f} | {s['flops_max']:.2f} |")
    for name in dict.fromkeys(s["variant"] for s in summary):
        if name == "exact":
            continue
        ss = [s for s in summary if s["variant"] == name]
        n, same = sum(len(s["seeds"]) for s in ss), sum(s["same"] for s in ss)
        # not below exact's mean by more than exact's std over seeds (a cheap selection that tests higher passes)
        within = all(s["test_exact"][0] - s["test"][0] <= s["test_exact"][1] for s in ss)
        cheap = all(s["cost_max"] <= 3 for s in ss) and all(s["flops_max"] <= 3 for s in ss)
        flops = all(s["flops_max"] <= 3 for s in ss)
        print(f"{name}: same set {same}/{n} ({100 * same / n:.0f} %; target 80 %); test mean within one std of "
              f"exact's on every target (or above it): {within} ("
              + ", ".join(f"{s['target']} {s['test_exact'][0] - s['test'][0] <= s['test_exact'][1]}" for s in ss)
              + f"); every selection <= 3 plain fine-tunes: by FLOPs {flops}, by CPU time and FLOPs {cheap}; "
              f"meets the target: {cheap and (same >= 0.8 * n or within)}")
        if rows:
            m, lo, hi, k = paired_gap(rows, name)
            print(f"  test accuracy, exact minus {name}, paired over {k} (target, seed): {m:+.2f} points "
                  f"(95 % bootstrap interval {lo:+.2f} to {hi:+.2f})")


def plot(summary: list[dict], path: Path) -> None:
    """Test accuracy (mean ± std over seeds) against selection cost in plain fine-tunes, a panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(s["target"] for s in summary))
    names = list(dict.fromkeys(s["variant"] for s in summary))
    markers = dict(zip(names, "os^Dvp<>"))
    fig, axes = plt.subplots(1, len(targets), figsize=(3.4 * len(targets), 3.2), squeeze=False)
    for ax, t in zip(axes[0], targets):
        for s in (s for s in summary if s["target"] == t):
            x = s["cost"][0] if s["cost"][0] == s["cost"][0] else s["flops"][0]
            ax.errorbar(x, s["test"][0], xerr=s["cost"][1], yerr=s["test"][1], marker=markers[s["variant"]],
                        color=f"C{names.index(s['variant'])}", capsize=3, label=s["variant"], linestyle="none")
        ax.axvline(3, color="0.6", lw=0.8, ls="--")
        ax.set_title(t)
        ax.set_xlabel("selection cost (plain fine-tunes, CPU time)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy of the selected set (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(names), bbox_to_anchor=(0.5, 1.08), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
