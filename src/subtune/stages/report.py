"""``report TABLE``: results aggregated into tables (CSV, Markdown) and plots (:mod:`subtune.report`)."""

from __future__ import annotations

import argparse

from . import Stage


def _references(r: argparse.ArgumentParser) -> None:
    r.add_argument("--references", nargs="*", default=[], help="published numbers (references/*.csv)")
    r.add_argument("--backbone", help="the backbone's timm name, to match published numbers")


def _outputs(r: argparse.ArgumentParser, *kinds: str) -> None:
    for kind in kinds:
        r.add_argument(f"--out-{kind}", required=True)


def add_arguments(s: argparse.ArgumentParser) -> None:
    rsub = s.add_subparsers(dest="what", metavar="TABLE", required=True)
    r = rsub.add_parser("main", help="method x target test accuracy (mean ± std over seeds), parameters")
    r.add_argument("--runs", nargs="+", required=True)
    r.add_argument("--checkpoint", help="checkpoint sidecar JSON (source accuracy)")
    r.add_argument("--selected", nargs="*", help="final selection states")
    r.add_argument("--surgical", nargs="*", help="Surgical's group scores (select/<target>/seed<S>/surgical.json)")
    r.add_argument("--out-cost-png", help="also the plot of accuracy against total cost, a panel per target")
    _references(r)
    _outputs(r, "csv", "md")
    r.add_argument("--out-json", help="also the table as JSON, method -> target -> numbers (DVC metrics)")
    r = rsub.add_parser("rounds", help="greedy rounds: chosen block and gain per round")
    r.add_argument("--states", nargs="*", default=[], help="final selection states (none: an empty table)")
    _outputs(r, "csv")
    for name, what in (("profile", "fine-tuning profile (round 1)"), ("pairs", "pair grid heatmap")):
        r = rsub.add_parser(name, help=what)
        r.add_argument("--scores", nargs="+", required=True, help="score files (all shards)")
        _outputs(r, "csv", "png")
    r = rsub.add_parser("sweep", help="data-size sweep: test accuracy against training-set size")
    r.add_argument("--runs", nargs="+", required=True)
    _references(r)
    _outputs(r, "csv", "png")
    r = rsub.add_parser("grid", help="validation curves of the tuned grids: every point tried, the choice, edges")
    r.add_argument("--tunes", nargs="+", required=True, help="tune result files (tune/<target>/<method>.json)")
    _outputs(r, "csv", "md", "png")
    r = rsub.add_parser("selection", help="the block set each seed's selection picked, and how often they agree")
    r.add_argument("--states", nargs="*", default=[], help="final selection states (none: an empty table)")
    _outputs(r, "csv", "md")
    r = rsub.add_parser("epsilon", help="epsilon sensitivity: the set each epsilon selects, its accuracy")
    r.add_argument("--states", nargs="+", required=True, help="final states of the greedy walks")
    r.add_argument("--runs", nargs="+", required=True, help="final runs of every epsilon's set (SubTuning)")
    r.add_argument("--epsilons", nargs="+", type=float, required=True)
    r.add_argument("--selection-epsilon", type=float, required=True, help="the main selection's epsilon")
    _outputs(r, "csv", "md")
    r = rsub.add_parser("claims", help="the papers' claims against the results: paired tests and verdicts")
    r.add_argument("--runs", nargs="*", default=[], help="final runs (runs/<target>/<method>/seed<S>.json)")
    r.add_argument("--sweep", nargs="*", default=[], help="the data-size sweep's runs")
    r.add_argument("--profiles", nargs="*", default=[], help="round-1 score files of every target and selection seed")
    r.add_argument("--multilora", nargs="*", default=[], help="multilora --compare outputs (one per seed)")
    r.add_argument("--shifts", nargs="*", default=[], help="TARGET=input|output|domain (targets.<t>.shift)")
    r.add_argument("--experiment", default="", help="the experiment's name (a column of claims.csv)")
    _outputs(r, "csv", "md")
    r = rsub.add_parser("multilora", help="Multi-LoRA against K separate LoRA runs: accuracy per task, parameters")
    r.add_argument("--runs", nargs="+", required=True, help="multilora --compare outputs (one per seed)")
    r.add_argument("--ablations", nargs="*", default=[], help="multilora --ablation outputs (one per seed each)")
    r.add_argument("--ranks", nargs="*", type=int, default=[],
                   help="the ranks ablation's ranks (the configured rank's row is the Multi-LoRA row)")
    r.add_argument("--out-ablations-csv", help="the ablations' rows as CSV")
    _references(r)
    _outputs(r, "csv", "md")


def run(a: argparse.Namespace) -> None:
    from ..report import (claims_table, epsilon, grid_table, main_table, multilora, pairs, profile, rounds,
                          selection_table, sweep)  # fmt: skip

    if a.what == "main":
        main_table(a.runs, a.out_csv, a.out_md, out_json=a.out_json, checkpoint_json=a.checkpoint,
                   selected_files=a.selected, references=a.references, backbone=a.backbone,
                   surgical_files=a.surgical, out_cost_png=a.out_cost_png)
    elif a.what == "rounds":
        rounds(a.states, a.out_csv)
    elif a.what == "profile":
        profile(a.scores, a.out_csv, a.out_png)
    elif a.what == "pairs":
        pairs(a.scores, a.out_csv, a.out_png)
    elif a.what == "sweep":
        sweep(a.runs, a.out_csv, a.out_png, references=a.references, backbone=a.backbone)
    elif a.what == "epsilon":
        epsilon(a.states, a.runs, a.epsilons, a.selection_epsilon, a.out_csv, a.out_md)
    elif a.what == "grid":
        grid_table(a.tunes, a.out_csv, a.out_md, a.out_png)
    elif a.what == "selection":
        selection_table(a.states, a.out_csv, a.out_md)
    elif a.what == "claims":
        from ..claims import parse_shifts

        claims_table(a.runs, a.out_csv, a.out_md, sweep_files=a.sweep, profile_files=a.profiles,
                     multilora_files=a.multilora, shifts=parse_shifts(a.shifts), experiment=a.experiment)
    elif a.what == "multilora":
        multilora(a.runs, a.out_csv, a.out_md, references=a.references, backbone=a.backbone,
                  ablation_files=a.ablations, ranks=a.ranks, out_ablations_csv=a.out_ablations_csv)
    print(f"report {a.what}: {a.out_csv}" + (f", {a.out_png}" if getattr(a, "out_png", None) else ""))


STAGE = Stage("report", "aggregate results into tables (csv, markdown) and plots", add_arguments, run, order=140)
