"""The claims table: which claims of the papers an experiment's results support.

Each claim is a comparison of two quantities the workflow measured (test
accuracy of two methods, the fine-tuning profile's best block, ...), written
as one row per claim and target with both quantities (mean ± sample std over
seeds, in percent), the mean difference, the test and a verdict, ``holds``,
``fails`` or ``inconclusive``, whichever way it falls. The rules and their
thresholds are the constants below, fixed before any result was seen; they
are printed under the table so that a reader can check them. This module
decides from data already loaded; :mod:`subtune.report` reads the inputs and
writes the table (:mod:`subtune.report.tables.claims`).

Paired comparisons (claims 1, 2, 3, 6, 7): the two quantities are paired by
seed (the same seed, the same data split); the statistic is the mean of the
per-seed differences A − B in points. Every row shows two tests of it: a 95%
percentile bootstrap interval over seeds (:data:`N_BOOT` resamples of the
seeds with replacement, a NumPy generator seeded with :data:`BOOT_SEED` afresh
for every row, so a row does not depend on which other rows were computed)
and the two-sided paired t-test's p-value (``scipy.stats.ttest_rel``):

- "A ≥ B" claims: the bootstrap interval's lower bound above zero and
  p < :data:`ALPHA` -> ``holds``; its upper bound below zero and
  p < :data:`ALPHA` -> ``fails``; otherwise ``inconclusive``. An exact tie
  (every seed's difference zero) is ``inconclusive``: a tie cannot tell "at
  least as good" from "no better", and deciding it either way would rest on
  float noise. "Zero" is compared with a tolerance of :data:`TIE_TOL` points,
  far below one test image (0.05 points of 2,000); differences constant
  within it are exactly constant (a nonzero constant: t = ±∞, p = 0).
- "A close to B" claims: the paired t interval of the mean difference (mean
  ± ``scipy.stats.t.ppf`` at n − 1 degrees of freedom × standard error)
  inside ±:data:`CLOSE_MARGIN` points -> ``holds``; entirely outside it ->
  ``fails``; otherwise ``inconclusive``.
- Fewer than :data:`MIN_SEEDS` paired seeds, or a seed that only one side
  has (named in the row's note, never dropped silently): ``inconclusive``.

Why both tests: with three seeds a resample of three equal draws has
probability 1/27 > 2.5%, so the bootstrap's 95% interval is exactly
[smallest, largest] per-seed difference, and alone it would call every
unanimous sign a verdict (``holds`` 1 time in 8 under the null). With three
seeds a verdict needs every seed to agree *and* a large t (|t| > 4.30 for
p < 0.05 at two degrees of freedom).

Count claims (4, 5; the fine-tuning profile): one outcome per selection
(per seed with ``selection.per_seed``, else the one selection): ``holds``
when every selection agrees with the claim, ``fails`` when none does,
``inconclusive`` otherwise, and ``inconclusive`` when a target has fewer
than :data:`MIN_SEEDS` distinct selections (one selection is one outcome,
whichever seeds it is paired with); the counts are in the row. Only complete
profiles count: every block scored alone over the full schedule (a candidate
a selection budget stopped early has a rung score, not comparable). A block
"is best" only when no other block scores within :data:`TIE_TOL` points of it
(ties between the last block and another do not count as "best ≠ last").

Which target is an input-level, output-level or domain shift (claim 5) is
the config's ``targets.<t>.shift``, never guessed from a target's name.
Claims 5 and 7 come from papers on other networks and benchmarks (Surgical:
ResNet on shifts of its source task, with that task's head; SSF, SAN: ViT
on VTAB-1k/FGVC); their rows' notes say how this experiment departs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from . import SubtuneError

TIE_TOL = 1e-9  # points: differences within this are zero (one test image of 2,000 is 0.05 points)
N_BOOT = 10_000  # bootstrap resamples of the seeds
BOOT_SEED = 0  # the bootstrap generator's seed (every row starts afresh from it)
CI_LEVEL = 0.95
CLOSE_MARGIN = 1.0  # points: "close to" claims (Multi-LoRA within 1 point of separate LoRA)
MIN_SEEDS = 3  # fewer paired seeds (or selections, on either side of a profile claim): inconclusive
ALPHA = 0.05  # "A ≥ B" needs the paired t-test's two-sided p below this as well as the bootstrap interval

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "fails", "inconclusive", "not run"

SRC_SUBTUNING = "SubTuning (Kaplun et al., arXiv 2302.06354)"
SRC_SURGICAL = "Surgical fine-tuning (Lee et al., arXiv 2210.11466), Fig. 1 / Table 1"
SRC_SSF = "SSF (Lian et al., arXiv 2210.08823), Table 1"
SRC_SAN = "SAN (Dai et al., arXiv 2409.06706), VTAB/FGVC tables"
SRC_MULTILORA = "Multi-LoRA, shared frozen A (ICLR 2024 submission, withdrawn), GLUE/generation tables"

COLUMNS = ["experiment", "claim_id", "claim", "source", "target", "quantity_a", "a_mean", "a_std", "quantity_b",
           "b_mean", "b_std", "diff_mean", "ci_low", "ci_high", "p_value", "n", "seeds", "test", "verdict",
           "rule", "note"]

RULE_GEQ = (f"A − B: holds when the 95% bootstrap interval lies above 0 and the paired t-test's p < {ALPHA:g}, "
            f"fails when it lies below 0 and p < {ALPHA:g}; ≥ {MIN_SEEDS} seeds, the same seeds on both sides")
CLOSE_POINTS = f"{CLOSE_MARGIN:g} point{'' if CLOSE_MARGIN == 1 else 's'}"
RULE_CLOSE = (f"A − B: 95% paired t interval inside ±{CLOSE_POINTS} holds, entirely outside fails; "
              "fails when A does not train fewer parameters")
RULE_COUNT = (f"every selection agrees: holds; none: fails; otherwise inconclusive; fewer than {MIN_SEEDS} "
              "distinct selections (of either target): inconclusive")


# ---------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Paired:
    """Two quantities paired by seed (points) and the statistics of their difference A − B.

    ``ci_low``/``ci_high``: the percentile bootstrap interval; ``t_low``/``t_high``: the paired t interval;
    ``unpaired``: the seeds only one side has, each with what it lacks (``"2 (no FT)"``): any makes the
    verdict inconclusive.
    """

    seeds: tuple[int, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]
    diff_mean: float
    ci_low: float
    ci_high: float
    p_value: float
    t_low: float = math.nan
    t_high: float = math.nan
    unpaired: tuple[str, ...] = ()

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


def t_test(a: Sequence[float], b: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float, float]:
    """Paired t-test of A − B (two-sided ``scipy.stats.ttest_rel`` p-value) and the t interval of the mean
    difference (mean ± ``t.ppf`` at n − 1 degrees of freedom × standard error): (p, low, high).

    Differences constant within :data:`TIE_TOL` are taken as exactly constant (float noise must not make a
    t statistic): the interval is their mean, p is 0 for a nonzero mean (t = ±∞, as scipy gives) and NaN for
    a tie (t = 0/0). NaNs for fewer than two pairs.
    """
    av, bv = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = av - bv
    if d.size < 2:
        return math.nan, math.nan, math.nan
    m = float(d.mean())
    if np.ptp(d) <= TIE_TOL:
        return (0.0 if abs(m) > TIE_TOL else math.nan), m, m
    from scipy.stats import t, ttest_rel

    half = float(t.ppf((1 + level) / 2, d.size - 1)) * float(np.std(d, ddof=1)) / math.sqrt(d.size)
    return float(ttest_rel(av, bv).pvalue), m - half, m + half


def paired(a: Mapping[int, float], b: Mapping[int, float], names: tuple[str, str] = ("A", "B")) -> Paired:
    """A and B (points, seed -> value) paired by seed: mean difference, bootstrap interval, t-test, t interval.

    The statistics use the seeds both sides have; a seed only one side has is named in ``unpaired`` (with
    ``names``: what it lacks) rather than dropped silently, and makes every verdict inconclusive.
    """
    seeds = tuple(sorted(set(a) & set(b)))
    av = np.array([a[s] for s in seeds], dtype=float)
    bv = np.array([b[s] for s in seeds], dtype=float)
    d = av - bv
    lo, hi = bootstrap_ci(d)
    p, t_lo, t_hi = t_test(av, bv)
    unpaired = tuple(f"{s} (no {names[1] if s in a else names[0]})" for s in sorted(set(a) ^ set(b)))
    return Paired(seeds, tuple(av), tuple(bv), float(d.mean()) if len(d) else math.nan, lo, hi, p, t_lo, t_hi,
                  unpaired)


def _decidable(p: Paired, min_seeds: int) -> bool:
    """Enough paired seeds, none unpaired, and an interval."""
    return p.n >= min_seeds and not p.unpaired and not math.isnan(p.ci_low)


def verdict_geq(p: Paired, min_seeds: int = MIN_SEEDS, tol: float = TIE_TOL, alpha: float = ALPHA) -> str:
    """An "A ≥ B" claim: holds when the bootstrap interval lies above 0 and the t-test's p < ``alpha``; fails
    when it lies below 0 and p < ``alpha``; otherwise (a tie, a large p, unpaired seeds) inconclusive.

    Both tests, because with three seeds the bootstrap interval is [smallest, largest] difference and would
    give a verdict whenever the seeds agree in sign (1 time in 4 under the null); the t-test also weighs the spread.
    """
    if not _decidable(p, min_seeds) or math.isnan(p.p_value) or p.p_value >= alpha:
        return INCONCLUSIVE
    if p.ci_low > tol:
        return HOLDS
    if p.ci_high < -tol:
        return FAILS
    return INCONCLUSIVE


def verdict_close(p: Paired, margin: float = CLOSE_MARGIN, min_seeds: int = MIN_SEEDS,
                  tol: float = TIE_TOL) -> str:
    """An "A close to B" claim: holds when the paired t interval lies inside ±margin, fails when it lies
    entirely outside, otherwise inconclusive (the bootstrap interval is coarse with few seeds)."""
    if not _decidable(p, min_seeds) or math.isnan(p.t_low):
        return INCONCLUSIVE
    if p.t_low >= -margin - tol and p.t_high <= margin + tol:
        return HOLDS
    if p.t_high < -margin - tol or p.t_low > margin + tol:
        return FAILS
    return INCONCLUSIVE


def verdict_count(agree: int, n: int, min_n: int = MIN_SEEDS) -> str:
    """A claim checked once per selection: all agree -> holds, none -> fails, otherwise inconclusive; fewer
    than ``min_n`` selections give no verdict (one selection says nothing about chance)."""
    if n < max(min_n, 1):
        return INCONCLUSIVE
    return HOLDS if agree == n else FAILS if agree == 0 else INCONCLUSIVE


def _fmt(v: float, nd: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _paired_test(p: Paired, close: bool = False) -> str:
    """The row's test cell: the bootstrap interval and the t-test's p (and, for "close to", the t interval that
    decides); "no verdict" where seeds are too few or unpaired."""
    if p.n < MIN_SEEDS:
        return f"{p.n} paired seed{'s' if p.n != 1 else ''} (< {MIN_SEEDS}): no verdict"
    pv = "n/a (a tie)" if math.isnan(p.p_value) else f"{p.p_value:.3g}"
    if not math.isnan(p.p_value) and p.t_low == p.t_high:
        pv += " (constant differences)"
    text = f"95% bootstrap CI [{_fmt(p.ci_low)}, {_fmt(p.ci_high)}]; paired t-test p = {pv}"
    if close:
        text += f"; 95% t interval [{_fmt(p.t_low)}, {_fmt(p.t_high)}]"
    return text + ("; unpaired seeds: no verdict" if p.unpaired else "")


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


def _join(*notes: str) -> str:
    return "; ".join(x for x in notes if x)


def _paired_row(claim_id: str, claim: str, source: str, target: str, qa: str, qb: str, p: Paired, verdict: str,
                rule: str, note: str = "", close: bool = False) -> dict[str, Any]:
    """A paired claim's row; the seeds without a pair are named in the note."""
    unpaired = f"unpaired seeds {', '.join(p.unpaired)}: no verdict" if p.unpaired else ""
    return _row(claim_id, claim, source, target, qa, qb, a=p.a, b=p.b, seeds=p.seeds, diff=p.diff_mean,
                lo=p.ci_low, hi=p.ci_high, p=p.p_value, test=_paired_test(p, close), verdict=verdict, rule=rule,
                note=_join(unpaired, note))


def _not_run(claim_id: str, claim: str, source: str, why: str, rule: str, target: str = "–") -> dict[str, Any]:
    return _row(claim_id, claim, source, target, "", "", verdict=NOT_RUN, rule=rule, note=why)


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
    """"Method a ≥ method b" per target, from the final runs (test accuracy, paired by seed); a target where
    one of the two has no final run gets a ``not run`` row naming it."""
    have = set(runs["method"]) if runs is not None else set()
    missing = [m for m in (a, b) if m not in have]
    if missing:
        return [_not_run(claim_id, claim, source, f"no final runs of {', '.join(missing)} in this experiment",
                         RULE_GEQ)]
    rows = []
    for t in dict.fromkeys(runs["target"]):
        pa, pb = _by_seed(runs, a, t), _by_seed(runs, b, t)
        if not pa or not pb:
            gone = ", ".join(m for m, d in ((a, pa), (b, pb)) if not d)
            rows.append(_not_run(claim_id, claim, source, f"{t}: no final runs of {gone}", RULE_GEQ, target=t))
            continue
        p = paired(pa, pb, (_label(a), _label(b)))
        sizes = runs[(runs["target"] == t) & runs["method"].isin([a, b])]["train_size"].dropna()
        size = f"{int(sizes.iloc[0])} training examples" if len(sizes) and sizes.nunique() == 1 else ""
        rows.append(_paired_row(claim_id, claim, source, t, f"{_label(a)} test acc (%)",
                                f"{_label(b)} test acc (%)", p, verdict_geq(p), RULE_GEQ, _join(note, size)))
    return rows


# ---------------------------------------------------------------- claim 3: the data-size sweep
def claim_sweep(sweep: pd.DataFrame | None, a: str = "subtuning", b: str = "ft") -> list[dict[str, Any]]:
    """SubTuning's lead over FT shrinks from the smallest to the largest training set (3), FT ahead at the largest (3b).

    ``sweep``: the sweep's runs (:func:`subtune.report.load_runs` with ``need_train_size``). Only the sizes both
    methods ran count. Per seed, the lead d(n) = SubTuning − FT at size n; claim 3 pairs d(smallest) with
    d(largest) (A − B = the lead's shrinkage), claim 3b pairs FT with SubTuning at the largest size. A seed
    one method lacks at either size is named and makes both verdicts inconclusive.
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
    la, lb = _label(a), _label(b)
    rows = []
    for t in dict.fromkeys(sweep["target"]):
        sub = sweep[sweep["target"] == t]
        ran = {m: {int(n) for n in sub[sub["method"] == m]["train_size"]} for m in (a, b)}
        sizes = sorted(ran[a] & ran[b])
        alone = sorted(ran[a] ^ ran[b])
        left_out = f"n={', '.join(map(str, alone))} left out (not run by both)" if alone else ""
        if len(sizes) < 2:
            why = _join(f"{t}: {'one training-set size' if sizes else 'no training-set size'} that both {la} and "
                        f"{lb} ran", left_out)
            rows += [_not_run("3", c3, src, why, RULE_GEQ, target=t),
                     _not_run("3b", c3b, src, why, RULE_GEQ, target=t)]
            continue
        n0, n1 = sizes[0], sizes[-1]
        gaps: list[str] = []

        def lead(n: int) -> dict[int, float]:
            sa, sb = _by_seed(sub, a, t, train_size=n), _by_seed(sub, b, t, train_size=n)
            gaps.extend(f"{s} (no {lb if s in sa else la} at n={n})" for s in sorted(set(sa) ^ set(sb)))
            return {s: sa[s] - sb[s] for s in set(sa) & set(sb)}

        p = paired(lead(n0), lead(n1), (f"lead at n={n0}", f"lead at n={n1}"))
        if gaps:  # a seed one method lacks at a size is unpaired too (its lead is missing)
            named = {g.split(" ", 1)[0] for g in gaps}
            p = replace(p, unpaired=tuple(gaps) + tuple(u for u in p.unpaired if u.split(" ", 1)[0] not in named))
        rows.append(_paired_row("3", c3, src, t, f"{la} − {lb} at n={n0} (points)",
                                f"{la} − {lb} at n={n1} (points)", p, verdict_geq(p), RULE_GEQ,
                                _join(f"sizes {', '.join(map(str, sizes))}", left_out)))
        p = paired(_by_seed(sub, b, t, train_size=n1), _by_seed(sub, a, t, train_size=n1), (lb, la))
        rows.append(_paired_row("3b", c3b, src, t, f"{lb} test acc at n={n1} (%)", f"{la} test acc at n={n1} (%)",
                                p, verdict_geq(p), RULE_GEQ))
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


def complete(profile: Mapping[str, Any]) -> bool:
    """Whether a profile scores every one of its blocks alone over the full schedule (at least two blocks):
    only then is "the best block" defined (backward selection's round 1 and candidates a selection budget
    stopped early leave gaps)."""
    return len(profile["blocks"]) >= 2 and len(single_block_scores(profile)) == len(profile["blocks"])


def _incomplete(profile: Mapping[str, Any]) -> str:
    missing = [b for b in profile["blocks"] if b not in single_block_scores(profile)]
    return f"seed {profile['seed']}: {', '.join(missing) or 'fewer than two blocks'}"


def _few_selections(target: str, n: int) -> str:
    """Why a profile claim has no verdict: fewer than :data:`MIN_SEEDS` distinct selections of ``target``."""
    if n == 1:
        return f"one selection of {target} (one seed, or selection.per_seed does not name it): no verdict"
    return f"{n} selections of {target} (< {MIN_SEEDS}): no verdict"


def claim_best_not_last(profiles: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The profile's best single block is not the last block (4), per target, one outcome per selection.

    A = the best block other than the last (val acc, points), B = the last block; a selection agrees when A
    exceeds B by more than :data:`TIE_TOL` (a tie with the last block does not). Incomplete profiles
    (:func:`complete`) are left out and named; fewer than :data:`MIN_SEEDS` selections give no verdict.
    """
    claim = "The fine-tuning profile's best single block is not the last block"
    src = f"{SRC_SUBTUNING}, Figs 1–2"
    if not profiles:
        return [_not_run("4", claim, src, "no fine-tuning profile in this experiment (selection.profile)",
                         RULE_COUNT)]
    rows = []
    for t in dict.fromkeys(p["target"] for p in profiles):
        mine = sorted((p for p in profiles if p["target"] == t), key=lambda p: p["seed"])
        usable = [p for p in mine if complete(p)]
        gaps = "; ".join(_incomplete(p) for p in mine if not complete(p))
        gaps = f"incomplete profiles left out (blocks without a full-schedule single-block score): {gaps}" \
            if gaps else ""
        if not usable:
            rows.append(_not_run("4", claim, src, _join(f"{t}: no complete fine-tuning profile", gaps), RULE_COUNT,
                                 target=t))
            continue
        a, b, seeds, best, agree = [], [], [], [], 0
        last = usable[0]["blocks"][-1]
        for prof in usable:
            sc = single_block_scores(prof)
            other = max(v for k, v in sc.items() if k != prof["blocks"][-1])
            a.append(other)
            b.append(sc[prof["blocks"][-1]])
            seeds.append(prof["seed"])
            agree += other > sc[prof["blocks"][-1]] + TIE_TOL
            best.append("/".join(best_blocks(sc)))
        few = _few_selections(t, len(seeds)) if len(seeds) < MIN_SEEDS else ""
        rows.append(_row("4", claim, src, t, "best block other than the last, val acc (%)",
                         f"last block ({last}), val acc (%)", a=a, b=b, seeds=seeds,
                         diff=float(np.mean(np.subtract(a, b))),
                         test=f"{agree} of {len(seeds)} selection{'s' if len(seeds) != 1 else ''}: best ≠ last",
                         verdict=verdict_count(agree, len(seeds)), rule=RULE_COUNT,
                         note=_join("best block per selection seed " + ", ".join(
                             f"{s}: {bb}" for s, bb in zip(seeds, best)), few, gaps)))
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


def _surgical_note(ti: str, to: str) -> str:
    """How claim 5 here departs from the paper's setting (named from the targets and their shifts)."""
    return (f"Surgical's claim is for ResNet on CIFAR-C-style shifts of its source task, keeping the source task's "
            f"head; the blocks here are ours on the configured backbone, and {ti} (shift: input) and {to} (shift: "
            f"output) are both new tasks for the pretrained network: {ti}'s input-level shift is a proxy for "
            "Surgical's input-level shift of the source task, not its exact setting")


def claim_shift_depth(profiles: Sequence[Mapping[str, Any]] | None,
                      shifts: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """Under input-level shift the best profile block is earlier than under output-level shift (5).

    One row per (input-shift target, output-shift target) pair (``shifts``: target -> input | output |
    domain, from the config), over complete profiles (:func:`complete`) with the same block list. Profiles
    are paired by seed; a target that selected once is paired with each of the other's seeds
    (:func:`_profile_pairs`) for the numbers shown, but the verdict needs :data:`MIN_SEEDS` distinct
    selections on both sides (one profile counted three times is one outcome, not three). A pair agrees when
    the input-shift target's best block comes strictly earlier (tied best blocks: their mean position).
    """
    claim = "Under input-level shift the best single block is earlier than under output-level shift"
    shifts = dict(shifts or {})
    inputs = [t for t, s in shifts.items() if s == "input"]
    outputs = [t for t, s in shifts.items() if s == "output"]
    if not inputs or not outputs:
        return [_not_run("5", claim, SRC_SURGICAL, "needs a target with shift: input and one with shift: output "
                         "(targets.<t>.shift)", RULE_COUNT)]
    usable = {(p["target"], int(p["seed"])): p for p in profiles or [] if complete(p)}
    rows = []
    for ti in inputs:
        for to in outputs:
            pairs = _profile_pairs(sorted(s for t, s in usable if t == ti), sorted(s for t, s in usable if t == to))
            label = f"{ti} (input) vs {to} (output)"
            if not pairs:
                rows.append(_not_run("5", claim, SRC_SURGICAL, f"{label}: no complete fine-tuning profiles of both",
                                     RULE_COUNT, target=label))
                continue
            lists = {tuple(usable[(ti, si)]["blocks"]) for si, _ in pairs} | \
                {tuple(usable[(to, so)]["blocks"]) for _, so in pairs}
            if len(lists) > 1:
                rows.append(_not_run("5", claim, SRC_SURGICAL, f"{label}: the profiles' block lists differ (block "
                                     "positions are not comparable)", RULE_COUNT, target=label))
                continue
            n_in, n_out = len({si for si, _ in pairs}), len({so for _, so in pairs})
            seeds = [si for si, _ in pairs] if n_in >= n_out else [so for _, so in pairs]
            a = [best_position(usable[(ti, si)]) for si, _ in pairs]
            b = [best_position(usable[(to, so)]) for _, so in pairs]
            agree = sum(x < y - TIE_TOL for x, y in zip(a, b))
            few = [_few_selections(t, n) for t, n in ((ti, n_in), (to, n_out)) if n < MIN_SEEDS]
            n_blocks = len(next(iter(lists)))
            rows.append(_row("5", claim, SRC_SURGICAL, label, f"best block position in {ti} (1–{n_blocks})",
                             f"best block position in {to} (1–{n_blocks})", a=a, b=b, seeds=seeds,
                             diff=float(np.mean(np.subtract(a, b))),
                             test=f"{agree} of {len(pairs)} pair{'s' if len(pairs) != 1 else ''}: earlier "
                                  f"({n_in} selection{'s' if n_in != 1 else ''} of {ti}, {n_out} of {to})",
                             verdict=INCONCLUSIVE if few else verdict_count(agree, len(pairs)), rule=RULE_COUNT,
                             note=_join("negative difference: earlier under input-level shift", *few,
                                        _surgical_note(ti, to))))
    return rows


# ---------------------------------------------------------------- claim 6: Multi-LoRA
def claim_multilora(ml: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Multi-LoRA's mean test accuracy over tasks within :data:`CLOSE_MARGIN` points of separate LoRA's (6),
    with fewer trained parameters (every seed); the verdict comes from the paired t interval of the mean
    difference. ``ml``: :func:`subtune.report.load_multilora`'s rows (the same tasks on both sides of every file)."""
    claim = f"Multi-LoRA is close to separate LoRA (within {CLOSE_POINTS}) with fewer trained parameters"
    if ml is None or ml.empty:
        return [_not_run("6", claim, SRC_MULTILORA, "no Multi-LoRA comparison in this experiment", RULE_CLOSE)]
    per = ml.groupby(["kind", "seed"], sort=True).agg(acc=("test_acc", "mean"), params=("params_trained", "first"))
    acc = {k: {int(s): 100.0 * float(v) for s, v in per.loc[k, "acc"].items()} for k in ("multilora", "separate_lora")}
    prm = {k: {int(s): float(v) for s, v in per.loc[k, "params"].items()} for k in ("multilora", "separate_lora")}
    p = paired(acc["multilora"], acc["separate_lora"], ("Multi-LoRA", "separate LoRA"))
    fewer = all(prm["multilora"][s] < prm["separate_lora"][s] for s in p.seeds)
    from .report.format import fmt_params  # the tables' format; imported here, as the report imports this module

    pm = fmt_params(float(np.mean([prm["multilora"][s] for s in p.seeds])))
    ps = fmt_params(float(np.mean([prm["separate_lora"][s] for s in p.seeds])))
    tasks = ", ".join(dict.fromkeys(ml["task"]))
    verdict = verdict_close(p) if fewer else FAILS
    note = (f"tasks {tasks}; trained parameters {pm} vs {ps}" +
            ("" if fewer else " (Multi-LoRA does not train fewer)"))
    return [_paired_row("6", claim, SRC_MULTILORA, "mean over tasks", "Multi-LoRA test acc (%)",
                        "separate LoRA test acc (%)", p, verdict, RULE_CLOSE, note, close=True)]


# ---------------------------------------------------------------- all claims
_POSITIONS_OURS = ("the paper's claim is for ViT on VTAB-1k/FGVC; the {} positions here are ours on the configured "
                   "backbone")
GEQ_CLAIMS = [  # (id, a, b, claim, source, note)
    ("1", "subtuning", "ft", "SubTuning ≥ FT with about 1k training examples", f"{SRC_SUBTUNING}, Table 1 / Fig. 4",
     ""),
    ("2", "subtuning", "lp", "SubTuning ≥ LP", f"{SRC_SUBTUNING}, Table 1", ""),
    ("7a", "ssf", "lora", "SSF ≥ LoRA", SRC_SSF, _POSITIONS_OURS.format("scale-and-shift")),
    ("7b", "ssf", "bitfit", "SSF ≥ BitFit", SRC_SSF, _POSITIONS_OURS.format("scale-and-shift")),
    ("7c", "san", "lora", "SAN ≥ LoRA", SRC_SAN, _POSITIONS_OURS.format("scaling")),
    ("7d", "san", "bitfit", "SAN ≥ BitFit", SRC_SAN, _POSITIONS_OURS.format("scaling")),
]


def claims(runs: pd.DataFrame | None, *, sweep: pd.DataFrame | None = None,
           profiles: Sequence[Mapping[str, Any]] | None = None, multilora: pd.DataFrame | None = None,
           shifts: Mapping[str, str] | None = None, experiment: str = "") -> pd.DataFrame:
    """Every claim's rows (:data:`COLUMNS`), claims in order; a claim whose results are missing says ``not run``.

    ``runs``/``sweep``: :func:`subtune.report.load_runs` of the final runs / the sweep's runs;
    ``profiles``: :func:`subtune.report.load_profiles`; ``multilora``: :func:`subtune.report.load_multilora`;
    ``shifts``: target -> shift.
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


# ---------------------------------------------------------------- config
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
