"""The main table: method x target test accuracy (mean ± std over seeds), parameters, cost.

Its Markdown adds the sections around the table (see :func:`main_table`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ...io import atomic_path
from ...methods import method_label, method_order
from ...provenance import columns, mlflow_run_ids
from ..cost import attach_costs, cost_md, cost_plot, params_plot, selection_costs
from ..format import LP_LABEL, PathLike, fmt_params, md_table, write_csv, write_text
from ..load import as_list, load_json, load_runs, load_state, target_seed
from ..published import attach_published, load_references, published_md
from ..registry import add_outputs, add_references, table
from ..summary import ordered, summarize
from ..vtab import VTAB_GROUP_OF, VTAB_MEAN_GROUPS, VTAB_MEAN_TASKS, vtab_md, vtab_rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--checkpoint", help="checkpoint sidecar JSON (source accuracy)")
    p.add_argument("--selected", nargs="*", help="final selection states")
    p.add_argument("--surgical", nargs="*", help="Surgical's group scores (select/<target>/seed<S>/surgical.json)")
    p.add_argument("--out-cost-png", help="also the plot of accuracy against total cost, a panel per target")
    p.add_argument("--out-params-png", help="also the plot of accuracy against trainable parameters, a panel per "
                   "target")
    add_references(p)
    add_outputs(p, "csv", "md")
    p.add_argument("--out-json", help="also the table as JSON, method -> target -> numbers (DVC metrics)")
    p.add_argument("--config-hash", default="", help="the validated config's hash (subtune.provenance.config_hash): "
                   "a column of every row")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return main_table(a.runs, a.out_csv, a.out_md, out_json=a.out_json, checkpoint_json=a.checkpoint,
                      selected_files=a.selected, references=a.references, backbone=a.backbone,
                      surgical_files=a.surgical, out_cost_png=a.out_cost_png,
                      out_params_png=a.out_params_png, config_hash=a.config_hash)


@table("main", arguments=add_arguments, run=run)
def main_table(
    run_files: Sequence[PathLike],
    out_csv: PathLike,
    out_md: PathLike,
    checkpoint_json: PathLike | None = None,
    selected_files: Sequence[PathLike] | None = None,
    references: Sequence[PathLike] | None = None,
    backbone: str | None = None,
    out_json: PathLike | None = None,
    surgical_files: Sequence[PathLike] | None = None,
    out_cost_png: PathLike | None = None,
    out_params_png: PathLike | None = None,
    config_hash: str = "",
) -> pd.DataFrame:
    """Method x target test accuracy (percent, mean ± sample std over seeds), params, seeds.

    CSV (tidy, one row per method and target): method, target, n_seeds, seeds,
    test_acc_mean, test_acc_std, val_acc_mean, val_acc_std, trainable_params
    (mean over seeds), trainable_params_min/max, total_params, trainable_pct,
    wall_time_s_mean, blocks (the distinct block sets, SubTuning), tuned (the
    values chosen on validation, when the method had a grid), train_data
    (train or train+val), best_epochs (the epochs chosen on validation, seed
    order, for runs with ``epoch_select: best_val``), published, diff and published_source (``references``: published
    numbers for ``backbone``, :func:`~subtune.report.published.attach_published`). With VTAB-1k targets,
    two more rows per method, target ``VTAB-1k mean of tasks`` and ``VTAB-1k
    mean of group means`` (n_tasks, tasks: how many per group; published: the
    same average of the published numbers, :func:`~subtune.report.vtab.vtab_means`). Markdown: the
    pivot (cells ``mean ± std (params)``), the source checkpoint's accuracy,
    the selected blocks per target and seed, the hyperparameters chosen on
    validation, the epochs chosen on validation, the VTAB-1k averages, the cost
    of every method and the greedy selections (``selected_files``: selection
    state files) when given. Cost columns (:func:`~subtune.report.cost.attach_costs`):
    selection_candidates, selection_wall_time_s, selection_ft_equiv_flops,
    ft_wall_time_s, selection_ft_units (the selection in plain full
    fine-tunes), selection_ft_basis (``ft wall time`` or ``FLOPs``),
    total_time_s (one final run + the selection), for methods that need a
    selection (``selected_files``) or Surgical's scores (``surgical_files``).
    ``out_cost_png``: accuracy against total cost (:func:`~subtune.report.cost.cost_plot`).
    ``out_params_png``: accuracy against trainable parameters (:func:`~subtune.report.cost.params_plot`).
    Provenance columns of every row (:func:`subtune.provenance.columns`): mlflow_run_ids (the MLflow runs of the
    row's metrics files logged so far), config_hash (``config_hash``), code_version and data_digest (what each
    run recorded when it trained). A section of the Markdown appears only when the runs call for it: the epochs
    chosen on validation only for runs that chose them (their metrics' ``train.epoch_select``).
    """
    runs = _chosen_epochs_only(load_runs(run_files))
    targets = list(dict.fromkeys(runs["target"]))
    summ = _main_rows(runs, targets, references, backbone, selected_files, surgical_files)
    vtab = vtab_rows(summ)
    ids = mlflow_run_ids(runs["file"])  # the MLflow runs of the metrics files (never fails the table)
    summ, vtab = _with_provenance(runs, summ, ids, config_hash), _with_provenance(runs, vtab, ids, config_hash)
    write_csv(pd.concat([summ, vtab], ignore_index=True) if len(vtab) else summ, out_csv)

    parts = _accuracy_md(runs, summ, vtab, targets)
    if checkpoint_json is not None:
        parts += ["", _checkpoint_line(Path(checkpoint_json))]
    parts += published_md(summ)
    parts += vtab_md(vtab)
    parts += _selected_blocks_md(runs, targets)
    parts += _tuned_md(runs, targets)
    parts += cost_md(summ, targets)
    parts += _best_epoch_md(runs, targets)
    if out_cost_png is not None:
        cost_plot(summ, targets, out_cost_png)
    if out_params_png is not None:
        params_plot(summ, targets, out_params_png)
    if selected_files:
        parts += _greedy_md(selected_files)
    parts += _provenance_md(summ)
    write_text("\n".join(parts) + "\n", out_md)
    if len(vtab):
        summ = pd.concat([summ, vtab], ignore_index=True)
    if out_json is not None:  # DVC metrics
        with atomic_path(out_json) as tmp:
            tmp.write_text(json.dumps(main_metrics(summ), indent=2, sort_keys=True) + "\n")
    return summ


def _main_rows(runs: pd.DataFrame, targets: list[str], references: Sequence[PathLike] | None, backbone: str | None,
               selected_files: Sequence[PathLike] | None,
               surgical_files: Sequence[PathLike] | None) -> pd.DataFrame:
    """The CSV's rows (without the VTAB-1k averages): the summary over seeds, the blocks and values each run
    used, the published numbers and the cost."""
    summ = ordered(summarize(runs, ["method", "target"]), targets)
    blocks = (runs.dropna(subset=["blocks"]).groupby(["method", "target"], sort=False)["blocks"]
                  .agg(lambda s: " | ".join(dict.fromkeys(b or LP_LABEL for b in s))))
    summ["blocks"] = [blocks.get((m, t), "") for m, t in zip(summ["method"], summ["target"])]
    chosen = (runs.dropna(subset=["tuned"]).groupby(["method", "target"], sort=False)["tuned"]
                  .agg(lambda s: " | ".join(dict.fromkeys(s))))
    summ["tuned"] = [chosen.get((m, t), "") for m, t in zip(summ["method"], summ["target"])]
    summ["train_data"] = _per_pair(runs, summ, "train_data", lambda s: " | ".join(dict.fromkeys(s)))
    summ["best_epochs"] = _per_pair(runs.sort_values("seed"), summ, "best_epoch",
                                    lambda s: ",".join(str(int(e)) for e in s))
    summ = attach_published(summ, load_references(references), backbone)
    return attach_costs(summ, selection_costs(selected_files, surgical_files))


def _per_pair(runs: pd.DataFrame, summ: pd.DataFrame, col: str, fn) -> list:
    """``fn`` of the runs' ``col`` per (method, target) row of ``summ`` ('' where no run has one)."""
    got = runs.dropna(subset=[col]).groupby(["method", "target"], sort=False)[col].agg(fn)
    return [got.get((m, t), "") for m, t in zip(summ["method"], summ["target"])]


def _chosen_epochs_only(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``best_epoch`` kept only where the run chose its epoch on validation (``train.epoch_select:
    best_val`` in its metrics file): a run with ``last`` records its last epoch there, which nobody chose."""
    chose = [(load_json(Path(f)).get("train") or {}).get("epoch_select") == "best_val" for f in runs["file"]]
    return runs.assign(best_epoch=runs["best_epoch"].where(chose))


def _with_provenance(runs: pd.DataFrame, rows: pd.DataFrame, ids: dict[str, str], config_hash: str) -> pd.DataFrame:
    """``rows`` (the summary or the VTAB-1k averages) with the provenance columns of the runs each row aggregates
    (:func:`subtune.provenance.columns`; ``ids``: :func:`subtune.provenance.mlflow_run_ids` of the runs)."""
    if rows.empty:
        return rows
    ordered_runs = runs.sort_values(["target", "seed"], kind="stable")
    cols = []
    for m, t in zip(rows["method"], rows["target"]):
        mine = ordered_runs["method"] == m
        mine &= ordered_runs["target"].isin(list(VTAB_GROUP_OF)) if t in (VTAB_MEAN_TASKS, VTAB_MEAN_GROUPS) \
            else ordered_runs["target"] == t
        cols.append(columns(ordered_runs.loc[mine, "file"], ids, config_hash))
    return pd.concat([rows.reset_index(drop=True), pd.DataFrame(cols)], axis=1)


def _provenance_md(summ: pd.DataFrame) -> list[str]:
    """One line naming the code and config that made the table (per row, with the MLflow runs: main.csv)."""
    code = " | ".join(dict.fromkeys(v for x in summ.get("code_version", []) for v in str(x).split(" | ") if v))
    config = " | ".join(dict.fromkeys(v for v in summ.get("config_hash", []) if v))
    if not code and not config:
        return []
    return ["", f"Made by code {code or 'unrecorded'} with config {config or 'unrecorded'}; each row's code "
            "version, data digest and MLflow runs are in main.csv."]


def _cell(r: pd.Series, n_max: int) -> str:
    """A pivot cell: ``mean ± std (params)``, the seeds counted where fewer than ``n_max``."""
    params = fmt_params(r["trainable_params"])
    if r["trainable_params_min"] != r["trainable_params_max"]:
        params += " mean"
    seeds = "" if r["n_seeds"] == n_max else f", n={r['n_seeds']}"
    return f"{r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f} ({params}{seeds})"


def _accuracy_md(runs: pd.DataFrame, summ: pd.DataFrame, vtab: pd.DataFrame, targets: list[str]) -> list[str]:
    """The Markdown's head: the method x target pivot and which runs trained on train+val."""
    n_max = int(summ["n_seeds"].max())
    cells = {(r["method"], r["target"]): _cell(r, n_max) for _, r in summ.iterrows()}
    means = ([VTAB_MEAN_TASKS, VTAB_MEAN_GROUPS] if len(vtab) else [])
    for _, r in vtab.iterrows():
        cells[(r["method"], r["target"])] = f"{r['test_acc_mean']:.2f}"
    methods = method_order(summ["method"])
    rows = [[method_label(m)] + [cells.get((m, t), "–") for t in [*targets, *means]] for m in methods]
    header = ["method", *targets, *(["mean of tasks", "mean of group means"] if means else [])]
    parts = [
        "# Test accuracy (%)",
        "",
        f"Mean ± sample standard deviation over seeds ({n_max} seed{'s' if n_max != 1 else ''} unless "
        "marked n=...); trainable parameters in parentheses (mean over seeds where they differ)."
        + (" The last two columns average the VTAB-1k tasks (see VTAB-1k averages)." if means else ""),
        "",
        md_table(header, rows),
    ]
    tv = runs[runs["train_data"] == "train+val"]
    if len(tv):
        which = ", ".join(method_label(m) for m in method_order(tv["method"]))
        parts += ["", f"Final runs trained on train+val (final_data): {which}. They have no validation accuracy "
                  "(the validation split was training data); hyperparameters were still chosen on train/val."]
    return parts


def _selected_blocks_md(runs: pd.DataFrame, targets: list[str]) -> list[str]:
    """The blocks SubTuning and the group Surgical fine-tuned, per target and seed (nothing without either)."""
    sel = _selection_rows(runs, targets)
    if not sel:
        return []
    has_sub = any(r[2] for r in sel)
    has_sur = any(r[3] for r in sel)
    header = ["target", "seed"] + (["SubTuning blocks"] if has_sub else []) + (["Surgical group"] if has_sur else [])
    rows = [[t, s] + ([b or "–"] if has_sub else []) + ([g or "–"] if has_sur else []) for t, s, b, g in sel]
    return ["", "## Selected blocks per target and seed", "", md_table(header, rows, ["l"] * len(header))]


def _tuned_md(runs: pd.DataFrame, targets: list[str]) -> list[str]:
    """The hyperparameters chosen on validation per method and target (nothing when no method had a grid)."""
    tuned = runs.dropna(subset=["tuned"])
    if not len(tuned):
        return []
    trows = []
    for m in method_order(tuned["method"]):
        sub = tuned[tuned["method"] == m]
        chosen = [_chosen_cell(sub[sub["target"] == t]) for t in targets]
        trows.append([method_label(m), " | ".join(dict.fromkeys(sub["grid"].dropna())) or "–", *chosen])
    return ["", "## Hyperparameters chosen on validation", "",
            "Each grid point trained on the training split with the selection seed and scored by final-epoch "
            "validation accuracy (ties: the first point); test accuracy was read once, for the chosen values. "
            + ("The grid column is the configured grid; \"tried also\" lists the values tuning added beyond it "
               "(tuning.extend). " if tuned["extended"].notna().any() else "")
            + "Methods without a grid use the config's values.", "",
            md_table(["method", "grid", *targets], trows, ["l"] * (2 + len(targets)))] + _edge_note(tuned)


def _chosen_cell(rows: pd.DataFrame) -> str:
    """A method's chosen values on one target, with the values tried beyond its configured grid."""
    chosen = " | ".join(dict.fromkeys(rows["tuned"])) or "–"
    extended = " | ".join(dict.fromkeys(rows["extended"].dropna())) if "extended" in rows else ""
    return f"{chosen} (tried also {extended})" if extended else chosen


def _edge_note(tuned: pd.DataFrame) -> list[str]:
    """The sentence explaining the edge flags of tables/main.md's chosen values (nothing when none is flagged)."""
    if not tuned["tuned"].astype(str).str.contains("edge").any():
        return []
    return ["", "↑edge / ↓edge: the chosen value is the largest / smallest value tried, after any extension of "
            "the grid (config tuning.extend; an extension stops when its budget is spent or the next value is "
            "refused), so the optimum may lie outside the values tried; widen that method's grid (tables/grid.md "
            "and plots/grid.png show the validation curve)."]


def _greedy_md(selected_files: Sequence[PathLike]) -> list[str]:
    """The greedy selections (selection state files): the set, its validation score, rounds and why it stopped."""
    st = _states_table(selected_files)
    rows = [[r["target"], str(r["seed"]), r["selected"] or LP_LABEL,
             "n/a" if pd.isna(r["score"]) else f"{r['score']:.2f}", str(r["rounds"]), r["stop_reason"] or ""]
            for _, r in st.iterrows()]
    return ["", "## Greedy selection (validation)", "",
            md_table(["target", "selection seed", "selected", "val acc (%)", "rounds", "stop reason"], rows,
                     ["l", "l", "l", "r", "r", "l"])]


def _best_epoch_md(runs: pd.DataFrame, targets: list[str]) -> list[str]:
    """The epoch chosen on validation (train metrics' ``best_epoch``, epoch_select: best_val) per method and target."""
    be = runs.dropna(subset=["best_epoch"])
    if be.empty:
        return []
    rows = []
    for m in method_order(be["method"]):
        cells = []
        for t in targets:
            sub = be[(be["method"] == m) & (be["target"] == t)].sort_values("seed")
            eps = [int(e) for e in sub["best_epoch"]]
            cells.append("–" if not eps else f"{statistics.fmean(eps):.3g} ({', '.join(map(str, eps))})")
        rows.append([method_label(m), *cells])
    return ["", "## Epoch chosen on validation (epoch_select: best_val)", "",
            "The epoch whose weights the final run kept (best validation accuracy): mean over seeds, then each "
            "seed's in seed order.", "", md_table(["method", *targets], rows)]


def main_metrics(summ: pd.DataFrame) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """The main table as nested numbers, method -> target -> {test_acc_mean, ...}: DVC metrics (main.json)."""
    def num(key: str, v: Any) -> float | int | None:
        if v is None or pd.isna(v):
            return None  # e.g. the std of one seed
        f = float(v)
        if key in ("trainable_params", "n_seeds"):
            return int(f) if f.is_integer() else round(f, 2)
        return round(f, 4)

    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for _, r in summ.iterrows():
        out.setdefault(str(r["method"]), {})[str(r["target"])] = {
            k: num(k, r[k]) for k in ("test_acc_mean", "test_acc_std", "val_acc_mean", "val_acc_std",
                                      "trainable_params", "n_seeds") if k in r
        }
    return out


def _checkpoint_line(path: Path) -> str:
    """The source checkpoint and its accuracy on its source task, where it was measured here."""
    d = load_json(path)
    origin = d.get("origin") or {}
    arch = d.get("arch", "?")
    kind = origin.get("kind", "?")
    if kind == "pretrained":
        src = origin.get("source", "?")
        acc = origin.get("source_test_acc")
        val = origin.get("source_val_acc")
        acc_s = f"{100 * acc:.2f}%" if isinstance(acc, (int, float)) else "n/a"
        val_s = f" (val {100 * val:.2f}%)" if isinstance(val, (int, float)) else ""
        return f"Source checkpoint: `{arch}` pretrained here on {src}; source test accuracy {acc_s}{val_s}."
    name = origin.get("name") or arch
    return f"Source checkpoint: `{name}` ({kind}); source test accuracy not measured here."


def _selection_rows(runs: pd.DataFrame, targets: list[str]) -> list[tuple[str, str, str, str]]:
    """(target, seed, SubTuning's blocks, Surgical's group) of every target and seed either method ran."""
    sub = runs[runs["method"] == "subtuning"]
    sur = runs[runs["method"] == "surgical"]
    keys = sorted({(t, s) for t, s in zip(sub["target"], sub["seed"])}
                  | {(t, s) for t, s in zip(sur["target"], sur["seed"])},
                  key=lambda k: (targets.index(k[0]), k[1]))
    out = []
    for t, s in keys:
        b = sub[(sub["target"] == t) & (sub["seed"] == s)]["blocks"]
        g = sur[(sur["target"] == t) & (sur["seed"] == s)]["group"]
        bs = "" if b.empty or b.iloc[0] is None else (b.iloc[0].replace("+", ", ") or LP_LABEL)
        gs = "" if g.empty or g.iloc[0] is None or pd.isna(g.iloc[0]) else str(int(g.iloc[0]))
        out.append((t, str(s), bs, gs))
    return out


def _states_table(state_files: Sequence[PathLike]) -> pd.DataFrame:
    """One row per final selection state: target, seed, selected, score (percent), rounds, stop_reason."""
    rows = []
    for f in as_list(state_files):
        d = load_state(f)
        t, s = target_seed(d, f)
        score = d.get("score")
        rows.append({"target": t, "seed": s, "selected": "+".join(d["selected"]),
                     "score": 100 * score if isinstance(score, (int, float)) else math.nan,
                     "rounds": len(d["rounds"]), "stop_reason": d.get("stop_reason") or ""})
    return pd.DataFrame(rows)
