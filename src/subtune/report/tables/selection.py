"""The block set each seed's greedy selection picked, and how often the seeds agree."""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ... import SubtuneError
from ..format import LP_LABEL, PathLike, md_table, write_csv, write_text
from ..load import as_list, frac, load_state, target_seed
from ..registry import add_outputs, table

SELECTION_COLUMNS = ["target", "seed", "selected", "n_blocks", "val_score", "stop_reason", "n_selections",
                     "n_distinct", "most_common", "most_common_count", "identical_pairs", "mean_jaccard",
                     "block_frequency", "note"]


def jaccard(a: frozenset | set, b: frozenset | set) -> float:
    """Jaccard similarity |a ∩ b| / |a ∪ b| of two block sets; two empty sets (both LP) are identical: 1."""
    union = len(set(a) | set(b))
    return 1.0 if union == 0 else len(set(a) & set(b)) / union


def selection_agreement(sets: Sequence[Sequence[str]], order: Sequence[str] = ()) -> dict[str, Any]:
    """How often the selections of one target (one block set per seed, in seed order) agree.

    Returns n_selections, n_distinct (distinct sets), most_common (the most frequent set, blocks in
    network order; ties: the set of the earliest seed), most_common_count, tied (another set is as
    frequent), identical_pairs (fraction of seed pairs with identical sets) and mean_jaccard (mean
    :func:`jaccard` over seed pairs; both NaN for a single selection), and frequency: block -> the
    number of selections that include it, in network order (``order``; blocks it lacks follow in order
    of appearance), blocks never selected left out.
    """
    fs = [frozenset(s) for s in sets]
    if not fs:
        raise SubtuneError("selection_agreement: no selections")
    pos = {b: i for i, b in enumerate(order)}
    for s in sets:
        for b in s:
            pos.setdefault(b, len(pos))
    counts = {s: fs.count(s) for s in dict.fromkeys(fs)}  # first-seen order: ties go to the earliest seed
    top = max(counts.values())
    mode = next(s for s, c in counts.items() if c == top)
    pairs = [(fs[i], fs[j]) for i in range(len(fs)) for j in range(i + 1, len(fs))]
    freq = {b: sum(b in s for s in fs) for b in sorted({b for s in fs for b in s}, key=pos.__getitem__)}
    return {
        "n_selections": len(fs),
        "n_distinct": len(counts),
        "most_common": sorted(mode, key=pos.__getitem__),
        "most_common_count": top,
        "tied": sum(c == top for c in counts.values()) > 1,
        "identical_pairs": statistics.fmean(a == b for a, b in pairs) if pairs else math.nan,
        "mean_jaccard": statistics.fmean(jaccard(a, b) for a, b in pairs) if pairs else math.nan,
        "frequency": freq,
    }


def _selection_states(state_files: Sequence[PathLike]) -> dict[str, dict[int, tuple[Path, dict]]]:
    """target -> seed -> (file, final selection state), targets in file order, seeds ascending; checks every file."""
    by: dict[str, dict[int, tuple[Path, dict]]] = {}
    for f in as_list(state_files):
        d = load_state(f)
        t, s = target_seed(d, f)
        if s is None:
            raise SubtuneError(f"{f}: no seed (neither a 'seed' key nor a seed<S> directory)")
        if not all(isinstance(b, str) and b for b in d["selected"]):
            raise SubtuneError(f"{f}: 'selected' must be a list of block names")
        frac(d, "score", f, required=False)  # the set's validation score: a fraction when present
        if s in by.get(t, {}):
            raise SubtuneError(f"{f}: a second selection state of target {t!r}, seed {s} "
                               f"(also {by[t][s][0]})")
        by.setdefault(t, {})[s] = (f, d)
    return {t: dict(sorted(per.items())) for t, per in by.items()}


def selection_rows(state_files: Sequence[PathLike]) -> pd.DataFrame:
    """One row per target and selection seed: the set selected and how the target's selections agree.

    Columns (:data:`SELECTION_COLUMNS`): target, seed, selected (blocks in network order, ``+``-joined;
    :data:`LP_LABEL` for the empty set), n_blocks, val_score (the set's selection score, percent),
    stop_reason, and the target's :func:`selection_agreement`, repeated on each of its rows:
    n_selections, n_distinct, most_common, most_common_count, identical_pairs, mean_jaccard,
    block_frequency (``block: count/n``, ``, ``-joined), note (``selected per seed``, or for a target
    with one selection state ``selected once (seed S), reused by every seed``).
    """
    rows = []
    for t, per in _selection_states(state_files).items():
        order: list[str] = []
        for _, d in per.values():
            order += [b for b in d.get("blocks") or [] if isinstance(b, str) and b not in order]
        pos = {b: i for i, b in enumerate(order)}
        sets = {s: sorted(d["selected"], key=lambda b: pos.get(b, len(pos))) for s, (_, d) in per.items()}
        agree = selection_agreement(list(sets.values()), order)
        n = agree["n_selections"]
        note = "selected per seed" if n > 1 else f"selected once (seed {next(iter(per))}), reused by every seed"
        summary = {
            "n_selections": n, "n_distinct": agree["n_distinct"],
            "most_common": "+".join(agree["most_common"]) or LP_LABEL,
            "most_common_count": agree["most_common_count"],
            "identical_pairs": round(agree["identical_pairs"], 4), "mean_jaccard": round(agree["mean_jaccard"], 4),
            "block_frequency": ", ".join(f"{b}: {c}/{n}" for b, c in agree["frequency"].items()),
            "note": note,
        }
        for s, (_, d) in per.items():
            score = d.get("score")
            rows.append({"target": t, "seed": s, "selected": "+".join(sets[s]) or LP_LABEL,
                         "n_blocks": len(sets[s]),
                         "val_score": round(100 * score, 4) if isinstance(score, (int, float)) else math.nan,
                         "stop_reason": d.get("stop_reason") or "", **summary})
    return pd.DataFrame(rows, columns=SELECTION_COLUMNS)


def _selection_md(df: pd.DataFrame) -> str:
    """tables/selection.md: the per-seed sets, then one agreement row per target."""
    def num(v: float, fmt: str) -> str:
        return "n/a" if pd.isna(v) else format(v, fmt)

    seed_rows = [[r["target"], str(r["seed"]), r["selected"].replace("+", ", "), str(r["n_blocks"]),
                  num(r["val_score"], ".2f"), r["stop_reason"]] for _, r in df.iterrows()]
    agree_rows = []
    for t, g in df.groupby("target", sort=False):
        r = g.iloc[0]
        n, pairs = int(r["n_selections"]), int(r["n_selections"]) * (int(r["n_selections"]) - 1) // 2
        top_sets = g["selected"].value_counts()
        tied = int((top_sets == top_sets.max()).sum()) > 1
        same = r["identical_pairs"]
        identical = "n/a" if pairs == 0 else f"{round(same * pairs)}/{pairs} ({same:.2f})"
        agree_rows.append([t, str(n), str(r["n_distinct"]), r["most_common"].replace("+", ", "),
                           f"{r['most_common_count']} of {n}" + (", tied" if tied else ""), identical,
                           num(r["mean_jaccard"], ".2f"), r["block_frequency"] or "none", r["note"]])
    parts = ["# Block sets selected per seed", "",
             "Greedy selection (SubTuning) per target and selection seed: the blocks selected (network order; "
             f"{LP_LABEL}: no block, the linear probe), their number, the set's validation score (%) and why "
             "the walk stopped.", "",
             md_table(["target", "seed", "selected blocks", "blocks", "val score (%)", "stop reason"], seed_rows,
                      ["l", "r", "l", "r", "r", "l"]),
             "", "## Agreement between seeds", "",
             "Per target: the selections, the distinct sets among them, the most common set and how many "
             "selections chose it (ties: the earliest seed's set), the seed pairs whose sets are identical, the "
             "mean Jaccard similarity of the sets over seed pairs (blocks in both over blocks in either; two empty "
             "sets: 1) and how "
             "many selections include each block. Selection variance enters the ± of the main table only for "
             "targets selected per seed; a target selected once reuses that set in every seed.", "",
             md_table(["target", "selections", "distinct sets", "most common set", "chosen by", "identical pairs",
                       "mean Jaccard", "block frequency", "note"], agree_rows,
                      ["l", "r", "r", "l", "r", "r", "r", "l", "l"])]
    if df.empty:
        parts = parts[:2] + ["No greedy selection ran in this experiment."]
    return "\n".join(parts) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--states", nargs="*", default=[], help="final selection states (none: an empty table)")
    add_outputs(p, "csv", "md")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return selection_table(a.states, a.out_csv, a.out_md)


@table("selection", arguments=add_arguments, run=run)
def selection_table(state_files: Sequence[PathLike], out_csv: PathLike, out_md: PathLike) -> pd.DataFrame:
    """The block sets each seed's greedy selection picked and how often they agree (tables/selection.*).

    ``state_files``: the final selection states (``select/<target>/seed<S>/selected.json``), one per
    target and selection seed; every file is checked before anything is written. CSV:
    :func:`selection_rows`; markdown: :func:`_selection_md`.
    """
    df = selection_rows(state_files)
    write_csv(df, out_csv)
    write_text(_selection_md(df), out_md)
    return df
