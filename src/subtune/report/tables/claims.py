"""The papers' claims against this experiment's results: paired tests and verdicts.

The verdicts and their rules are :mod:`subtune.claims`'s; this module reads the inputs and writes the table.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from ... import claims as rules
from ...claims import ALPHA, BOOT_SEED, CI_LEVEL, CLOSE_POINTS, MIN_SEEDS, N_BOOT, TIE_TOL
from ...io import atomic_path
from ...provenance import COLUMNS as PROVENANCE
from ...provenance import columns, mlflow_run_ids
from ..format import PathLike, md_table
from ..load import load_json, load_multilora, load_profiles, load_runs
from ..registry import add_outputs, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="*", default=[], help="final runs (runs/<target>/<method>/seed<S>.json)")
    p.add_argument("--sweep", nargs="*", default=[], help="the data-size sweep's runs")
    p.add_argument("--profiles", nargs="*", default=[], help="round-1 score files of every target and selection seed")
    p.add_argument("--multilora", nargs="*", default=[], help="multilora --compare outputs (one per seed)")
    p.add_argument("--shifts", nargs="*", default=[], help="TARGET=input|output|domain (targets.<t>.shift)")
    p.add_argument("--experiment", default="", help="the experiment's name (a column of claims.csv)")
    p.add_argument("--config-hash", default="", help="the validated config's hash (subtune.provenance.config_hash): "
                   "a column of every row")
    add_outputs(p, "csv", "md")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return claims_table(a.runs, a.out_csv, a.out_md, sweep_files=a.sweep, profile_files=a.profiles,
                        multilora_files=a.multilora, shifts=rules.parse_shifts(a.shifts), experiment=a.experiment,
                        config_hash=a.config_hash)


@table("claims", arguments=add_arguments, run=run)
def claims_table(run_files: Sequence[PathLike], out_csv: PathLike, out_md: PathLike, *,
                 sweep_files: Sequence[PathLike] = (), profile_files: Sequence[PathLike] = (),
                 multilora_files: Sequence[PathLike] = (), shifts: dict[str, str] | None = None,
                 experiment: str = "", config_hash: str = "") -> pd.DataFrame:
    """The claims table (:mod:`subtune.claims`): which of the papers' claims this experiment's results support.

    ``run_files``: final runs; ``sweep_files``: the data-size sweep's runs; ``profile_files``: round-1 score
    files of every target and selection seed; ``multilora_files``: ``multilora --compare`` results; ``shifts``:
    target -> input | output | domain (``targets.<t>.shift``). A claim whose inputs are not given says
    ``not run``. Every input is loaded and checked before anything is computed or written. Every row also
    carries the provenance columns of the result files it compares (:func:`subtune.provenance.columns`:
    mlflow_run_ids, config_hash = ``config_hash``, code_version, data_digest; none for a claim not run).
    """
    runs = load_runs(run_files) if run_files else None
    sweep = load_runs(sweep_files, need_train_size=True) if sweep_files else None
    profiles = load_profiles(profile_files)
    ml = load_multilora(multilora_files) if multilora_files else None
    df = rules.claims(runs, sweep=sweep, profiles=profiles, multilora=ml, shifts=shifts, experiment=experiment)
    df = _with_provenance(df, _sources(runs, sweep, profiles, multilora_files), config_hash)
    write(df, out_csv, out_md)
    return df


def _sources(runs: pd.DataFrame | None, sweep: pd.DataFrame | None, profiles: list[dict],
             multilora_files: Sequence[PathLike]) -> list[tuple[str, str, int, str]]:
    """(claim id, target, seed, file) for every input file a claim's rows compare (the claims' rules:
    :data:`subtune.claims.GEQ_CLAIMS`' two methods, the sweep's SubTuning and FT, the profiles, Multi-LoRA)."""
    out = []
    for cid, a, b, *_ in rules.GEQ_CLAIMS if runs is not None else []:
        sub = runs[runs["method"].isin([a, b])]
        out += [(cid, t, int(s), f) for t, s, f in zip(sub["target"], sub["seed"], sub["file"])]
    if sweep is not None:  # rules.claim_sweep compares SubTuning with FT
        sub = sweep[sweep["method"].isin(["subtuning", "ft"])]
        out += [(cid, t, int(s), f) for cid in ("3", "3b") for t, s, f in zip(sub["target"], sub["seed"], sub["file"])]
    out += [(cid, p["target"], int(p["seed"]), f) for p in profiles for f in p["files"] for cid in ("4", "5")]
    out += [("6", "", int(load_json(Path(f)).get("seed", -1)), str(f)) for f in multilora_files]
    return sorted(out, key=lambda x: (x[1], x[2], x[3]))


def _compared(row: pd.Series, cid: str, target: str, seed: int) -> bool:
    """Whether a row of the claims table compares the result file of (claim ``cid``, ``target``, ``seed``)."""
    if cid != row["claim_id"] or row["verdict"] == rules.NOT_RUN:
        return False
    if cid == "5":  # target "<ti> (input) vs <to> (output)": a target selected once is paired with every seed
        return row["target"].startswith(f"{target} (input) vs ") or row["target"].endswith(f" vs {target} (output)")
    return (cid == "6" or target == row["target"]) and str(seed) in str(row["seeds"]).split(",")


def _with_provenance(df: pd.DataFrame, sources: list[tuple[str, str, int, str]], config_hash: str) -> pd.DataFrame:
    """``df`` with the provenance columns of the files each row compares (the MLflow lookup never fails it)."""
    ids = mlflow_run_ids(dict.fromkeys(f for *_, f in sources))
    cols = [columns([f for cid, t, s, f in sources if _compared(r, cid, t, s)], ids, config_hash)
            for _, r in df.iterrows()]
    return pd.concat([df.reset_index(drop=True), pd.DataFrame(cols, columns=list(PROVENANCE))], axis=1)


def _cell(mean: float, std: float) -> str:
    """A quantity's cell: ``mean ± std`` (– when there is none)."""
    return "–" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def markdown(df: pd.DataFrame) -> str:
    """The claims table as markdown: one row per claim and target, then the decision rules."""
    rows = []
    for _, r in df.iterrows():
        q = (lambda label, m, s: "–" if not label else f"{label}: {_cell(m, s)}")  # noqa: E731
        diff = "–" if math.isnan(r["diff_mean"]) else f"{r['diff_mean']:+.2f}"
        rows.append([r["claim_id"], r["claim"], r["source"], r["target"], q(r["quantity_a"], r["a_mean"], r["a_std"]),
                     q(r["quantity_b"], r["b_mean"], r["b_std"]), diff, r["test"] or "–",
                     f"**{r['verdict']}**", r["note"] or ""])
    exp = df["experiment"].iloc[0] if len(df) else ""
    seeds = ", ".join(dict.fromkeys(s for x in df["seeds"] for s in str(x).split(",") if s))
    counts = ", ".join(f"{v} {k}" for k, v in df["verdict"].value_counts().items())
    return "\n".join([
        "# Claims of the papers against this experiment's results",
        "",
        f"Experiment `{exp}`; seeds {seeds or 'none'}; verdicts: {counts or 'none'}. A and B: mean ± sample "
        "standard deviation over seeds (paired claims) or over selections (profile claims); Δ: the mean of the "
        "per-seed differences A − B.",
        "",
        md_table(["#", "claim", "source", "target", "A", "B", "Δ (A − B)", "test", "verdict", "note"], rows,
                 ["l", "l", "l", "l", "r", "r", "r", "l", "l", "l"]),
        "",
        "## Decision rules (fixed in src/subtune/claims.py before any result)",
        "",
        f"- Paired claims (1, 2, 3, 3b, 6, 7): A and B paired by seed; shown: the {CI_LEVEL:.0%} percentile "
        f"bootstrap interval of the mean difference ({N_BOOT:,} resamples of the seeds, NumPy generator seeded "
        f"{BOOT_SEED}) and the paired t-test's two-sided p-value (scipy.stats.ttest_rel). Fewer than {MIN_SEEDS} "
        "paired seeds, or a seed that only one side has (named in the note): inconclusive.",
        f"- \"A ≥ B\": holds when the bootstrap interval lies above 0 and p < {ALPHA:g}; fails when it lies below 0 "
        f"and p < {ALPHA:g}; otherwise inconclusive. An exact tie is inconclusive (differences within {TIE_TOL:g} "
        "points count as 0; constant nonzero differences have t = ±∞, p = 0).",
        f"- \"Close to\" (6): the {CI_LEVEL:.0%} paired t interval of the mean difference (n − 1 degrees of "
        f"freedom) inside ±{CLOSE_POINTS} holds, entirely outside fails, otherwise inconclusive; fails when "
        "Multi-LoRA does not train fewer parameters in every seed.",
        "- Profile claims (4, 5): one outcome per selection (per seed with selection.per_seed, else the one "
        "selection); all agree holds, none fails, otherwise inconclusive. Fewer than "
        f"{MIN_SEEDS} distinct selections of a target (one, where selection.per_seed does not name it): "
        "inconclusive; claim 5 pairs a target selected once with each seed of the other for the numbers shown, "
        "but counts it as one selection. Profiles with a block not scored alone over the full schedule (stopped "
        "early by a selection budget) are left out. A tie for the best block does not count as the claim's "
        "outcome; tied best blocks' positions are averaged.",
        "- With three seeds the bootstrap interval is [smallest, largest] per-seed difference, so a verdict "
        "needs every seed to agree and, from the t-test, a large t (|t| > 4.30 for p < 0.05 at 2 degrees of "
        "freedom).",
        "",
    ])


def write(df: pd.DataFrame, out_csv: PathLike, out_md: PathLike) -> None:
    """claims.csv (every column of :data:`subtune.claims.COLUMNS`, numbers rounded to 4 decimals, then the
    provenance columns when ``df`` has them) and claims.md."""
    csv = df.copy()
    for c in ("a_mean", "a_std", "b_mean", "b_std", "diff_mean", "ci_low", "ci_high"):
        csv[c] = pd.to_numeric(csv[c]).round(4)
    csv["p_value"] = [v if math.isnan(v) else float(f"{v:.4g}") for v in pd.to_numeric(csv["p_value"])]
    with atomic_path(out_csv) as tmp:
        csv.to_csv(tmp, index=False, lineterminator="\n")
    with atomic_path(out_md) as tmp:
        tmp.write_text(markdown(df))
