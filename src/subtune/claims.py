"""The claims table: which claims of the papers an experiment's results support.

Each claim is a comparison of two quantities the workflow measured (test
accuracy of two methods, the fine-tuning profile's best block, ...), written
as one row per claim and target with both quantities (mean ± sample std over
seeds, in percent), the mean difference, the test and a verdict, ``holds``,
``fails`` or ``inconclusive``, whichever way it falls. The rules and their
thresholds are the constants below, fixed before any result was seen; they
are printed under the table so that a reader can check them.

Paired comparisons (claims 1, 2, 3, 6, 7): the two quantities are paired by
seed (the same seed, the same data split); the statistic is the mean of the
per-seed differences A − B in points. Its 95% interval is a percentile
bootstrap over seeds (:data:`N_BOOT` resamples of the seeds with replacement,
a NumPy generator seeded with :data:`BOOT_SEED` afresh for every row, so a
row does not depend on which other rows were computed). A paired t-test
(``scipy.stats.ttest_rel``) is given beside it for reference; the verdict
comes from the interval alone:

- "A ≥ B" claims: the interval's lower bound above zero -> ``holds``; its
  upper bound below zero -> ``fails``; otherwise ``inconclusive``. An exact
  tie (every seed's difference zero) is ``inconclusive``: a tie cannot
  tell "at least as good" from "no better", and deciding it either way
  would rest on float noise. "Zero" is compared with a tolerance of
  :data:`TIE_TOL` points, far below one test image (0.05 points of 2,000).
- "A close to B" claims: the interval inside ±:data:`CLOSE_MARGIN` points ->
  ``holds``; entirely outside it -> ``fails``; otherwise ``inconclusive``.
- Fewer than :data:`MIN_SEEDS` paired seeds: ``inconclusive`` (no interval
  worth the name).

With few seeds a bootstrap over seeds is coarse: with three, its 95%
interval is essentially [smallest, largest] per-seed difference, so a claim
holds only when every seed agrees (which happens by chance with probability
1/8 for a difference with no sign preference); the t-test's p-value says
more and is shown beside it.

Count claims (4, 5; the fine-tuning profile): one outcome per selection
(per seed with ``selection.per_seed``, else the one selection): ``holds``
when every selection agrees with the claim, ``fails`` when none does,
``inconclusive`` otherwise; the counts are in the row. A block "is best"
only when no other block scores within :data:`TIE_TOL` points of it (ties
between the last block and another do not count as "best ≠ last").

Which target is an input-level, output-level or domain shift (claim 5) is
the config's ``targets.<t>.shift``, never guessed from a target's name.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import SubtuneError

PathLike = str | os.PathLike

TIE_TOL = 1e-9  # points: differences within this are zero (one test image of 2,000 is 0.05 points)
N_BOOT = 10_000  # bootstrap resamples of the seeds
BOOT_SEED = 0  # the bootstrap generator's seed (every row starts afresh from it)
CI_LEVEL = 0.95
CLOSE_MARGIN = 1.0  # points: "close to" claims (Multi-LoRA within 1 point of separate LoRA)
MIN_SEEDS = 3  # fewer paired seeds: inconclusive

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "fails", "inconclusive", "not run"

SRC_SUBTUNING = "SubTuning (Kaplun et al., arXiv 2302.06354)"
SRC_SURGICAL = "Surgical fine-tuning (Lee et al., arXiv 2210.11466), Fig. 1 / Table 1"
SRC_SSF = "SSF (Lian et al., arXiv 2210.08823), Table 1"
SRC_SAN = "SAN (Dai et al., arXiv 2409.06706), VTAB/FGVC tables"
SRC_MULTILORA = "Multi-LoRA, shared frozen A (ICLR 2024 submission, withdrawn), GLUE/generation tables"

COLUMNS = ["experiment", "claim_id", "claim", "source", "target", "quantity_a", "a_mean", "a_std", "quantity_b",
           "b_mean", "b_std", "diff_mean", "ci_low", "ci_high", "p_value", "n", "seeds", "test", "verdict",
           "rule", "note"]

RULE_GEQ = f"A − B: 95% bootstrap interval above 0 holds, below 0 fails (≥ {MIN_SEEDS} seeds)"
_POINTS = f"{CLOSE_MARGIN:g} point{'' if CLOSE_MARGIN == 1 else 's'}"
RULE_CLOSE = (f"A − B: 95% bootstrap interval inside ±{_POINTS} holds, entirely outside fails; "
              "fails when A does not train fewer parameters")
RULE_COUNT = "every selection agrees: holds; none: fails; otherwise inconclusive"


# ---------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Paired:
    """Two quantities paired by seed (points) and the statistics of their difference A − B."""

    seeds: tuple[int, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]
    diff_mean: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def n(self) -> int:
        return len(self.seeds)


def _std(x: Sequence[float]) -> float:
    """Sample std (ddof=1); 0.0 for one value, NaN for none."""
    if not len(x):
        return math.nan
    return float(np.std(np.asarray(x, dtype=float), ddof=1)) if len(x) > 1 else 0.0


def bootstrap_ci(diffs: Sequence[float], n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (resampling them with replacement).

    A fresh ``numpy.random.default_rng(seed)`` each call: the same differences give the same interval.
    (NaN, NaN) for no differences.
    """
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired:
    """A and B (points, seed -> value) paired on the seeds both have: mean difference, interval, t-test."""
    seeds = tuple(sorted(set(a) & set(b)))
    av = np.array([a[s] for s in seeds], dtype=float)
    bv = np.array([b[s] for s in seeds], dtype=float)
    d = av - bv
    lo, hi = bootstrap_ci(d)
    p = math.nan
    if len(seeds) >= 2 and np.ptp(d) > TIE_TOL:  # constant differences: no t statistic
        from scipy.stats import ttest_rel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(ttest_rel(av, bv).pvalue)
    return Paired(seeds, tuple(av), tuple(bv), float(d.mean()) if len(d) else math.nan, lo, hi, p)


def verdict_geq(p: Paired, min_seeds: int = MIN_SEEDS, tol: float = TIE_TOL) -> str:
    """An "A ≥ B" claim: holds when the interval lies above 0, fails below 0; a tie is inconclusive."""
    if p.n < min_seeds or math.isnan(p.ci_low):
        return INCONCLUSIVE
    if p.ci_low > tol:
        return HOLDS
    if p.ci_high < -tol:
        return FAILS
    return INCONCLUSIVE


def verdict_close(p: Paired, margin: float = CLOSE_MARGIN, min_seeds: int = MIN_SEEDS,
                  tol: float = TIE_TOL) -> str:
    """An "A close to B" claim: holds when the interval lies inside ±margin, fails when entirely outside."""
    if p.n < min_seeds or math.isnan(p.ci_low):
        return INCONCLUSIVE
    if p.ci_low >= -margin - tol and p.ci_high <= margin + tol:
        return HOLDS
    if p.ci_high < -margin - tol or p.ci_low > margin + tol:
        return FAILS
    return INCONCLUSIVE


def verdict_count(agree: int, n: int) -> str:
    """A claim checked once per selection: all agree -> holds, none -> fails, otherwise inconclusive."""
    if n == 0:
        return INCONCLUSIVE
    return HOLDS if agree == n else FAILS if agree == 0 else INCONCLUSIVE


def _fmt(v: float, nd: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _paired_test(p: Paired) -> str:
    if p.n < MIN_SEEDS:
        return f"{p.n} paired seed{'s' if p.n != 1 else ''} (< {MIN_SEEDS}): no verdict"
    pv = "n/a (constant differences)" if math.isnan(p.p_value) else f"{p.p_value:.3g}"
    return f"95% CI [{_fmt(p.ci_low)}, {_fmt(p.ci_high)}]; paired t-test p = {pv}"


# ---------------------------------------------------------------- rows
def _row(claim_id: str, claim: str, source: str, target: str, qa: str, qb: str, *, a=(), b=(), seeds=(),
         diff=math.nan, lo=math.nan, hi=math.nan, p=math.nan, test: str = "", verdict: str, rule: str,
         note: str = "") -> dict[str, Any]:
    a, b = [float(x) for x in a], [float(x) for x in b]
    return {"claim_id": claim_id, "claim": claim, "source": source, "target": target,
            "quantity_a": qa, "a_mean": float(np.mean(a)) if a else math.nan, "a_std": _std(a),
            "quantity_b": qb, "b_mean": float(np.mean(b)) if b else math.nan, "b_std": _std(b),
            "diff_mean": diff, "ci_low": lo, "ci_high": hi, "p_value": p, "n": len(seeds),
            "seeds": ",".join(str(s) for s in seeds), "test": test, "verdict": verdict, "rule": rule,
            "note": note}


def _paired_row(claim_id: str, claim: str, source: str, target: str, qa: str, qb: str, p: Paired, verdict: str,
                rule: str, note: str = "") -> dict[str, Any]:
    return _row(claim_id, claim, source, target, qa, qb, a=p.a, b=p.b, seeds=p.seeds, diff=p.diff_mean,
                lo=p.ci_low, hi=p.ci_high, p=p.p_value, test=_paired_test(p), verdict=verdict, rule=rule,
                note=note)


def _not_run(claim_id: str, claim: str, source: str, why: str, rule: str) -> dict[str, Any]:
    return _row(claim_id, claim, source, "–", "", "", verdict=NOT_RUN, rule=rule, note=why)


def _by_seed(runs: pd.DataFrame, method: str, target: str, **where: Any) -> dict[int, float]:
    """Test accuracy (points) per seed of one method on one target (runs as :func:`subtune.report.load_runs`)."""
    m = (runs["method"] == method) & (runs["target"] == target)
    for k, v in where.items():
        m &= runs[k] == v
    sub = runs[m]
    return {int(s): 100.0 * float(a) for s, a in zip(sub["seed"], sub["test_acc"])}


# ---------------------------------------------------------------- claims 1, 2, 7: method A ≥ method B
def _label(method: str) -> str:
    from .methods import method_label  # the registry's table label (the name for an unregistered method)

    return method_label(method)


def claim_geq(runs: pd.DataFrame | None, a: str, b: str, claim_id: str, claim: str, source: str,
              note: str = "") -> list[dict[str, Any]]:
    """"Method a ≥ method b" per target, from the final runs (test accuracy, paired by seed)."""
    have = set(runs["method"]) if runs is not None else set()
    missing = [m for m in (a, b) if m not in have]
    if missing:
        return [_not_run(claim_id, claim, source, f"no final runs of {', '.join(missing)} in this experiment",
                         RULE_GEQ)]
    rows = []
    for t in dict.fromkeys(runs["target"]):
        pa, pb = _by_seed(runs, a, t), _by_seed(runs, b, t)
        if not pa or not pb:
            continue
        p = paired(pa, pb)
        sizes = runs[(runs["target"] == t) & runs["method"].isin([a, b])]["train_size"].dropna()
        size = f"{int(sizes.iloc[0])} training examples" if len(sizes) and sizes.nunique() == 1 else ""
        rows.append(_paired_row(claim_id, claim, source, t, f"{_label(a)} test acc (%)",
                                f"{_label(b)} test acc (%)", p, verdict_geq(p), RULE_GEQ,
                                "; ".join(x for x in (note, size) if x)))
    return rows


# ---------------------------------------------------------------- claim 3: the data-size sweep
def claim_sweep(sweep: pd.DataFrame | None, a: str = "subtuning", b: str = "ft") -> list[dict[str, Any]]:
    """SubTuning's lead over FT shrinks from the smallest to the largest training set (3), FT ahead at the largest (3b).

    ``sweep``: the sweep's runs (:func:`subtune.report.load_runs` with ``need_train_size``). Per seed, the lead
    d(n) = SubTuning − FT at size n; claim 3 pairs d(smallest) with d(largest) (A − B = the lead's shrinkage),
    claim 3b pairs FT with SubTuning at the largest size.
    """
    c3 = "SubTuning's lead over FT shrinks as the training set grows"
    c3b = "FT overtakes SubTuning at the largest training set"
    src = f"{SRC_SUBTUNING}, Fig. 4"
    have = set(sweep["method"]) if sweep is not None else set()
    missing = [m for m in (a, b) if m not in have]
    if sweep is None or missing:
        why = "no data-size sweep in this experiment" if sweep is None else \
            f"the data-size sweep has no runs of {', '.join(missing)}"
        return [_not_run("3", c3, src, why, RULE_GEQ), _not_run("3b", c3b, src, why, RULE_GEQ)]
    rows = []
    for t in dict.fromkeys(sweep["target"]):
        sub = sweep[sweep["target"] == t]
        sizes = sorted({int(n) for n in sub["train_size"]})
        if len(sizes) < 2:
            rows += [_not_run("3", c3, src, f"{t}: one training-set size only", RULE_GEQ)]
            continue
        n0, n1 = sizes[0], sizes[-1]

        def lead(n: int) -> dict[int, float]:
            sa, sb = _by_seed(sub, a, t, train_size=n), _by_seed(sub, b, t, train_size=n)
            return {s: sa[s] - sb[s] for s in set(sa) & set(sb)}

        p = paired(lead(n0), lead(n1))
        rows.append(_paired_row("3", c3, src, t, f"{_label(a)} − {_label(b)} at n={n0} (points)",
                                f"{_label(a)} − {_label(b)} at n={n1} (points)", p, verdict_geq(p), RULE_GEQ,
                                f"sizes {', '.join(map(str, sizes))}"))
        p = paired(_by_seed(sub, b, t, train_size=n1), _by_seed(sub, a, t, train_size=n1))
        rows.append(_paired_row("3b", c3b, src, t, f"{_label(b)} test acc at n={n1} (%)",
                                f"{_label(a)} test acc at n={n1} (%)", p, verdict_geq(p), RULE_GEQ))
    return rows


# ---------------------------------------------------------------- claims 4, 5: the fine-tuning profile
def single_block_scores(profile: Mapping[str, Any]) -> dict[str, float]:
    """Validation accuracy (points) of each block alone, in network order (the profile's block order)."""
    order = list(profile["blocks"])
    got = {b: 100.0 * float(v) for b, v in profile["scores"].items() if b in order}
    return {b: got[b] for b in order if b in got}


def best_blocks(scores: Mapping[str, float], tol: float = TIE_TOL) -> list[str]:
    """The blocks within ``tol`` points of the best score (several on a tie), in network order."""
    top = max(scores.values())
    return [b for b, v in scores.items() if v >= top - tol]


def claim_best_not_last(profiles: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The profile's best single block is not the last block (4), per target, one outcome per selection.

    A = the best block other than the last (val acc, points), B = the last block; a selection agrees when A
    exceeds B by more than :data:`TIE_TOL` (a tie with the last block does not).
    """
    claim = "The fine-tuning profile's best single block is not the last block"
    src = f"{SRC_SUBTUNING}, Figs 1–2"
    if not profiles:
        return [_not_run("4", claim, src, "no fine-tuning profile (round 1 of selection) in this experiment",
                         RULE_COUNT)]
    rows = []
    for t in dict.fromkeys(p["target"] for p in profiles):
        a, b, seeds, best, agree, last = [], [], [], [], 0, ""
        for prof in sorted((p for p in profiles if p["target"] == t), key=lambda p: p["seed"]):
            sc = single_block_scores(prof)
            last = prof["blocks"][-1]
            if last not in sc or len(sc) < 2:
                continue  # not a profile of every block (e.g. backward selection's round 1)
            other = max(v for k, v in sc.items() if k != last)
            a.append(other)
            b.append(sc[last])
            seeds.append(prof["seed"])
            agree += other > sc[last] + TIE_TOL
            best.append("/".join(best_blocks(sc)))
        if not seeds:
            rows.append(_not_run("4", claim, src, f"{t}: no single-block scores of every block", RULE_COUNT))
            continue
        rows.append(_row("4", claim, src, t, "best block other than the last, val acc (%)",
                         f"last block ({last}), val acc (%)", a=a, b=b, seeds=seeds,
                         diff=float(np.mean(np.subtract(a, b))),
                         test=f"{agree} of {len(seeds)} selection{'s' if len(seeds) != 1 else ''}: best ≠ last",
                         verdict=verdict_count(agree, len(seeds)), rule=RULE_COUNT,
                         note="best block per selection seed " + ", ".join(
                             f"{s}: {bb}" for s, bb in zip(seeds, best))))
    return rows


def best_position(profile: Mapping[str, Any]) -> float:
    """1-based network position of the best single block (the mean position of tied best blocks)."""
    sc = single_block_scores(profile)
    order = list(profile["blocks"])
    return float(np.mean([order.index(b) + 1 for b in best_blocks(sc)]))


def _profile_pairs(seeds_a: Sequence[int], seeds_b: Sequence[int]) -> list[tuple[int, int]]:
    """Which profiles of two targets are compared: the same seed where both selected per seed; a target that
    selected once (``selection.per_seed`` names only the other) is compared with each of the other's seeds."""
    if len(seeds_b) == 1 and len(seeds_a) > 1:
        return [(s, seeds_b[0]) for s in seeds_a]
    if len(seeds_a) == 1 and len(seeds_b) > 1:
        return [(seeds_a[0], s) for s in seeds_b]
    return [(s, s) for s in seeds_a if s in seeds_b]


def claim_shift_depth(profiles: Sequence[Mapping[str, Any]] | None,
                      shifts: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """Under input-level shift the best profile block is earlier than under output-level shift (5).

    One row per (input-shift target, output-shift target) pair (``shifts``: target -> input | output |
    domain, from the config); one outcome per selection seed both targets have: agrees when the input-shift
    target's best block comes strictly earlier (tied best blocks: their mean position).
    """
    claim = "Under input-level shift the best single block is earlier than under output-level shift"
    shifts = dict(shifts or {})
    inputs = [t for t, s in shifts.items() if s == "input"]
    outputs = [t for t, s in shifts.items() if s == "output"]
    if not inputs or not outputs:
        return [_not_run("5", claim, SRC_SURGICAL, "needs a target with shift: input and one with shift: output "
                         "(targets.<t>.shift)", RULE_COUNT)]
    usable = {}
    for p in profiles or []:
        sc = single_block_scores(p)
        if len(sc) == len(p["blocks"]) and len(sc) >= 2:
            usable[(p["target"], int(p["seed"]))] = p
    rows = []
    for ti in inputs:
        for to in outputs:
            pairs = _profile_pairs(sorted(s for t, s in usable if t == ti), sorted(s for t, s in usable if t == to))
            label = f"{ti} (input) vs {to} (output)"
            if not pairs:
                rows.append(_not_run("5", claim, SRC_SURGICAL, f"{label}: no fine-tuning profiles of both",
                                     RULE_COUNT))
                continue
            seeds = [si for si, _ in pairs]
            a = [best_position(usable[(ti, si)]) for si, _ in pairs]
            b = [best_position(usable[(to, so)]) for _, so in pairs]
            agree = sum(x < y - TIE_TOL for x, y in zip(a, b))
            n_blocks = len(usable[(ti, pairs[0][0])]["blocks"])
            rows.append(_row("5", claim, SRC_SURGICAL, label, f"best block position in {ti} (1–{n_blocks})",
                             f"best block position in {to} (1–{n_blocks})", a=a, b=b, seeds=seeds,
                             diff=float(np.mean(np.subtract(a, b))),
                             test=f"{agree} of {len(seeds)} selection{'s' if len(seeds) != 1 else ''}: earlier",
                             verdict=verdict_count(agree, len(seeds)), rule=RULE_COUNT,
                             note="negative difference: earlier under input-level shift"))
    return rows


# ---------------------------------------------------------------- claim 6: Multi-LoRA
def claim_multilora(ml: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Multi-LoRA's mean test accuracy over tasks within :data:`CLOSE_MARGIN` points of separate LoRA's (6),
    with fewer trained parameters (every seed). ``ml``: :func:`load_multilora`'s rows."""
    claim = f"Multi-LoRA is close to separate LoRA (within {_POINTS}) with fewer trained parameters"
    if ml is None or ml.empty:
        return [_not_run("6", claim, SRC_MULTILORA, "no Multi-LoRA comparison in this experiment", RULE_CLOSE)]
    per = ml.groupby(["kind", "seed"], sort=True).agg(acc=("test_acc", "mean"), params=("params_trained", "first"))
    acc = {k: {int(s): 100.0 * float(v) for s, v in per.loc[k, "acc"].items()} for k in ("multilora", "separate_lora")}
    prm = {k: {int(s): float(v) for s, v in per.loc[k, "params"].items()} for k in ("multilora", "separate_lora")}
    p = paired(acc["multilora"], acc["separate_lora"])
    fewer = all(prm["multilora"][s] < prm["separate_lora"][s] for s in p.seeds)
    from .report import fmt_params

    pm = fmt_params(float(np.mean([prm["multilora"][s] for s in p.seeds])))
    ps = fmt_params(float(np.mean([prm["separate_lora"][s] for s in p.seeds])))
    tasks = ", ".join(dict.fromkeys(ml["task"]))
    verdict = verdict_close(p) if fewer else FAILS
    note = (f"tasks {tasks}; trained parameters {pm} vs {ps}" +
            ("" if fewer else " (Multi-LoRA does not train fewer)"))
    return [_paired_row("6", claim, SRC_MULTILORA, "mean over tasks", "Multi-LoRA test acc (%)",
                        "separate LoRA test acc (%)", p, verdict, RULE_CLOSE, note)]


# ---------------------------------------------------------------- all claims
GEQ_CLAIMS = [  # (id, a, b, claim, source, note)
    ("1", "subtuning", "ft", "SubTuning ≥ FT with about 1k training examples", f"{SRC_SUBTUNING}, Table 1 / Fig. 4",
     ""),
    ("2", "subtuning", "lp", "SubTuning ≥ LP", f"{SRC_SUBTUNING}, Table 1", ""),
    ("7a", "ssf", "lora", "SSF ≥ LoRA", SRC_SSF, ""),
    ("7b", "ssf", "bitfit", "SSF ≥ BitFit", SRC_SSF, ""),
    ("7c", "san", "lora", "SAN ≥ LoRA", SRC_SAN, ""),
    ("7d", "san", "bitfit", "SAN ≥ BitFit", SRC_SAN, ""),
]


def claims(runs: pd.DataFrame | None, *, sweep: pd.DataFrame | None = None,
           profiles: Sequence[Mapping[str, Any]] | None = None, multilora: pd.DataFrame | None = None,
           shifts: Mapping[str, str] | None = None, experiment: str = "") -> pd.DataFrame:
    """Every claim's rows (:data:`COLUMNS`), claims in order; a claim whose results are missing says ``not run``.

    ``runs``/``sweep``: :func:`subtune.report.load_runs` of the final runs / the sweep's runs;
    ``profiles``: :func:`load_profiles`; ``multilora``: :func:`load_multilora`; ``shifts``: target -> shift.
    """
    rows: list[dict[str, Any]] = []
    for cid, a, b, text, src, note in GEQ_CLAIMS[:2]:
        rows += claim_geq(runs, a, b, cid, text, src, note)
    rows += claim_sweep(sweep)
    rows += claim_best_not_last(profiles)
    rows += claim_shift_depth(profiles, shifts)
    rows += claim_multilora(multilora)
    for cid, a, b, text, src, note in GEQ_CLAIMS[2:]:
        rows += claim_geq(runs, a, b, cid, text, src, note)
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "experiment"])
    df.insert(0, "experiment", experiment)
    return df


# ---------------------------------------------------------------- loaders
def load_profiles(score_files: Sequence[PathLike]) -> list[dict[str, Any]]:
    """Round-1 score files (every shard of every target and selection seed) as profiles, one per target and seed:
    {target, seed, blocks (network order), scores (block -> val acc fraction, single blocks only), files}.

    Shards are grouped by directory (``select/<target>/seed<S>/``); :func:`subtune.report._load_scores`
    checks them (kind, round 1, one target and seed, no duplicate block set). With a selection budget
    (``selection.budget``) the scores of candidates it stopped early come from their shorter training.
    """
    from .report import _load_scores, _members, _target_seed

    groups: dict[Path, list[Path]] = {}
    for f in score_files:
        groups.setdefault(Path(f).parent, []).append(Path(f))
    out = []
    for files in groups.values():
        head, results, blocks = _load_scores(files, ("greedy", "profile"))
        target, seed = _target_seed(head, files[0])
        if seed is None:
            raise SubtuneError(f"{files[0]}: no seed (neither a 'seed' key nor a seed<S> directory)")
        scores = {}
        for r in results:
            mem = _members(r)
            if len(mem) == 1:
                if mem[0] not in blocks:
                    raise SubtuneError(f"{files[0]}: block {mem[0]!r} not among the file's blocks")
                scores[mem[0]] = float(r["score"])
        out.append({"target": target, "seed": int(seed), "blocks": list(blocks), "scores": scores,
                    "files": [str(f) for f in files]})
    keys = [(p["target"], p["seed"]) for p in out]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise SubtuneError(f"two fine-tuning profiles of target {dup[0]}, seed {dup[1]}")
    return out


def load_multilora(files: Sequence[PathLike]) -> pd.DataFrame:
    """``multilora --compare`` results, one row per kind (multilora | separate_lora), seed and task:
    test_acc (fraction) and params_trained (the kind's, all tasks)."""
    from .report import _frac, _load, _need

    rows = []
    for f in [Path(x) for x in files]:
        d = _load(f)
        seed = int(_need(d, "seed", f, int))
        for kind in ("multilora", "separate_lora"):
            r = d.get(kind)
            if not isinstance(r, dict) or not isinstance(r.get("per_task"), dict) or not r["per_task"]:
                raise SubtuneError(f"{f}: no {kind!r} result (run `multilora --compare`)")
            for t, v in r["per_task"].items():
                rows.append({"kind": kind, "seed": seed, "task": str(t), "test_acc": _frac(v, "test_acc", f),
                             "params_trained": float(_need(r, "params_trained", f))})
    df = pd.DataFrame(rows, columns=["kind", "seed", "task", "test_acc", "params_trained"])
    dup = df[df.duplicated(["kind", "seed", "task"], keep=False)]
    if len(dup):
        raise SubtuneError(f"two Multi-LoRA results for seed {int(dup['seed'].iloc[0])}")
    return df


def parse_shifts(items: Sequence[str], targets: Sequence[str] | None = None) -> dict[str, str]:
    """``target=shift`` items (the config's ``targets.<t>.shift``) as a dict; a bad item is named."""
    out = {}
    for it in items:
        t, sep, s = it.partition("=")
        if not sep or not t or s not in ("input", "output", "domain"):
            raise SubtuneError(f"--shifts: {it!r} is not TARGET=input|output|domain")
        if targets is not None and t not in targets:
            raise SubtuneError(f"--shifts: {t!r} is not one of the targets ({', '.join(targets)})")
        out[t] = s
    return out


# ---------------------------------------------------------------- writers
def _cell(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def markdown(df: pd.DataFrame) -> str:
    """The claims table as markdown: one row per claim and target, then the decision rules."""
    from .report import _md_table

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
        _md_table(["#", "claim", "source", "target", "A", "B", "Δ (A − B)", "test", "verdict", "note"], rows,
                  ["l", "l", "l", "l", "r", "r", "r", "l", "l", "l"]),
        "",
        "## Decision rules (fixed in src/subtune/claims.py before any result)",
        "",
        f"- Paired claims (1, 2, 3, 3b, 6, 7): A and B paired by seed; the {CI_LEVEL:.0%} interval of the mean "
        f"difference is a percentile bootstrap over seeds ({N_BOOT:,} resamples, NumPy generator seeded "
        f"{BOOT_SEED}); the paired t-test's p-value (scipy.stats.ttest_rel) is shown for reference. Fewer than "
        f"{MIN_SEEDS} paired seeds: inconclusive.",
        "- \"A ≥ B\": interval above 0 holds, below 0 fails, otherwise inconclusive; an exact tie is "
        f"inconclusive (differences within {TIE_TOL:g} points count as 0).",
        f"- \"Close to\" (6): interval inside ±{_POINTS} holds, entirely outside fails, otherwise "
        "inconclusive; fails when Multi-LoRA does not train fewer parameters in every seed.",
        "- Profile claims (4, 5): one outcome per selection (per seed with selection.per_seed, else the one "
        "selection); all agree holds, none fails, otherwise inconclusive. A tie for the best block does not "
        "count as the claim's outcome; tied best blocks' positions are averaged.",
        "- With three seeds a bootstrap over seeds is coarse: its interval is about [smallest, largest] "
        "difference, so \"holds\" means every seed agrees.",
        "",
    ])


def write(df: pd.DataFrame, out_csv: PathLike, out_md: PathLike) -> None:
    """claims.csv (every column of :data:`COLUMNS`, numbers rounded to 4 decimals) and claims.md."""
    from .io import atomic_path

    csv = df.copy()
    for c in ("a_mean", "a_std", "b_mean", "b_std", "diff_mean", "ci_low", "ci_high"):
        csv[c] = pd.to_numeric(csv[c]).round(4)
    csv["p_value"] = [v if math.isnan(v) else float(f"{v:.4g}") for v in pd.to_numeric(csv["p_value"])]
    with atomic_path(out_csv) as tmp:
        csv.to_csv(tmp, index=False, lineterminator="\n")
    with atomic_path(out_md) as tmp:
        tmp.write_text(markdown(df))
