"""The claims table: verdict rules on synthetic numbers, and every claim's row from result files shaped as the
workflow writes them (loaded by the report stage's own loaders)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from subtune import SubtuneError, claims, report
from subtune.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_RUN

from helpers.reports import run_json, scored, write_json

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]


# ---------------------------------------------------------------- statistics and verdicts
def test_clear_win_holds_clear_loss_fails_noise_is_inconclusive():
    a = {0: 90.0, 1: 91.0, 2: 92.0}
    win = claims.paired(a, {0: 85.0, 1: 86.5, 2: 86.0})
    assert win.seeds == (0, 1, 2) and win.diff_mean == pytest.approx(5.1666667)
    assert claims.verdict_geq(win) == HOLDS
    loss = claims.paired({s: v - 10 for s, v in a.items()}, a)
    assert claims.verdict_geq(loss) == FAILS
    noise = claims.paired(a, {0: 89.0, 1: 92.0, 2: 91.5})  # differences +1, -1, +0.5
    assert noise.ci_low < 0 < noise.ci_high and claims.verdict_geq(noise) == INCONCLUSIVE


def test_exact_and_float_noise_ties_are_not_holds():
    tie = claims.paired({0: 80.0, 1: 81.0, 2: 82.0}, {0: 80.0, 1: 81.0, 2: 82.0})
    assert (tie.ci_low, tie.ci_high) == (0.0, 0.0) and math.isnan(tie.p_value)
    assert claims.verdict_geq(tie) == INCONCLUSIVE
    # the same accuracy reached by different float arithmetic: differences of about 1e-14, not a win
    a = {s: (0.1 + 0.2) * 100 for s in SEEDS}
    b = {s: 0.3 * 100 for s in SEEDS}
    assert all(a[s] - b[s] > 0 for s in SEEDS)
    assert claims.verdict_geq(claims.paired(a, b)) == INCONCLUSIVE
    assert claims.verdict_geq(claims.paired(b, a)) == INCONCLUSIVE


def test_too_few_seeds_give_no_verdict():
    two = claims.paired({0: 90.0, 1: 91.0}, {0: 80.0, 1: 81.5})
    assert two.seeds == (0, 1) and two.diff_mean == pytest.approx(9.75) and not two.unpaired
    assert claims.verdict_geq(two) == INCONCLUSIVE
    assert claims.verdict_geq(two, min_seeds=2) == HOLDS  # +10, +9.5: t = 39, p = 0.016


def test_unpaired_seeds_are_named_and_give_no_verdict():
    # a clear win on the seeds both have, but seed 2 has no B and seed 3 no A: not dropped silently
    p = claims.paired({0: 90.0, 1: 91.0, 2: 92.0, 4: 93.0}, {0: 80.0, 1: 81.5, 3: 80.0, 4: 82.0}, ("SubTuning", "FT"))
    assert p.seeds == (0, 1, 4) and p.unpaired == ("2 (no FT)", "3 (no SubTuning)")
    assert claims.verdict_geq(p) == INCONCLUSIVE and claims.verdict_close(p, margin=100.0) == INCONCLUSIVE
    full = claims.paired({0: 90.0, 1: 91.0, 4: 93.0}, {0: 80.0, 1: 81.5, 4: 82.0})
    assert claims.verdict_geq(full) == HOLDS  # the same pairs without the unpaired seeds


def test_close_to_claims():
    base = {0: 80.0, 1: 82.0, 2: 81.0}
    close = claims.paired({0: 79.6, 1: 81.8, 2: 80.5}, base)  # -0.4, -0.2, -0.5: t interval [-0.75, 0.01]
    assert (close.t_low, close.t_high) == pytest.approx((-0.7461, 0.0128), abs=1e-3)
    assert claims.verdict_close(close) == HOLDS
    # -0.1, -0.9, -0.5: the bootstrap interval [-0.9, -0.1] is inside ±1, the t interval [-1.49, 0.49] is not
    spread = claims.paired({0: 79.9, 1: 81.1, 2: 80.5}, base)
    assert -1 < spread.ci_low and spread.ci_high < 1
    assert (spread.t_low, spread.t_high) == pytest.approx((-1.4936, 0.4936), abs=1e-3)
    assert claims.verdict_close(spread) == INCONCLUSIVE
    far = claims.paired({s: v - 3.0 for s, v in base.items()}, base)
    assert claims.verdict_close(far) == FAILS
    edge = claims.paired({0: 79.5, 1: 80.0, 2: 81.0}, base)  # -0.5, -2, 0: straddles -1
    assert claims.verdict_close(edge) == INCONCLUSIVE
    exact = claims.paired({s: v - 1.0 for s, v in base.items()}, base)  # exactly 1 point: inside the margin
    assert claims.verdict_close(exact) == HOLDS


def test_count_verdicts():
    assert claims.verdict_count(3, 3) == HOLDS
    assert claims.verdict_count(0, 3) == FAILS
    assert claims.verdict_count(2, 3) == INCONCLUSIVE
    assert claims.verdict_count(0, 0) == INCONCLUSIVE
    # one selection (or two) says nothing about chance
    assert claims.verdict_count(1, 1) == INCONCLUSIVE and claims.verdict_count(0, 1) == INCONCLUSIVE
    assert claims.verdict_count(2, 2) == INCONCLUSIVE and claims.verdict_count(1, 1, min_n=1) == HOLDS


def test_bootstrap_is_reproducible_and_a_t_test_beside_it():
    d = [1.0, 2.0, 3.0]
    assert claims.bootstrap_ci(d) == claims.bootstrap_ci(d)
    lo, hi = claims.bootstrap_ci(d)
    assert 1.0 <= lo < 2.0 < hi <= 3.0
    assert claims.bootstrap_ci(d, seed=1) != claims.bootstrap_ci(d, n_boot=500)
    # a wider spread widens the interval
    lo2, hi2 = claims.bootstrap_ci([0.0, 2.0, 4.0])
    assert lo2 < lo and hi2 > hi
    # mean 2, sd 1, n 3: t = 2 * sqrt(3), 2 degrees of freedom: p = 0.0742
    p = claims.paired({0: 11.0, 1: 12.0, 2: 13.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert p.p_value == pytest.approx(0.07418, abs=1e-4)
    assert (p.ci_low, p.ci_high) == claims.bootstrap_ci(d)
    assert (p.t_low, p.t_high) == pytest.approx((2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)), abs=1e-3)


def test_three_agreeing_seeds_need_a_large_t_as_well():
    # with three seeds the bootstrap interval is exactly [min, max]: all three agreeing puts it above 0 ...
    d = [1.0, 2.0, 3.0]
    assert claims.bootstrap_ci(d) == (1.0, 3.0)
    win = claims.paired({0: 11.0, 1: 12.0, 2: 13.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    loss = claims.paired({0: 10.0, 1: 10.0, 2: 10.0}, {0: 11.0, 1: 12.0, 2: 13.0})
    assert win.ci_low > 0 and loss.ci_high < 0
    # ... but p = 0.074: neither holds nor fails
    assert claims.verdict_geq(win) == INCONCLUSIVE and claims.verdict_geq(loss) == INCONCLUSIVE
    assert claims.verdict_geq(win, alpha=0.1) == HOLDS and claims.verdict_geq(loss, alpha=0.1) == FAILS
    # p below alpha but a bootstrap interval reaching 0 is not enough either: -1, +3, +3, +3 (p = 0.14)
    mixed = claims.paired({0: 9.0, 1: 13.0, 2: 13.0, 3: 13.0}, {s: 10.0 for s in range(4)})
    assert mixed.ci_low <= 0 < mixed.p_value < 0.2 and claims.verdict_geq(mixed, alpha=0.2) == INCONCLUSIVE
    # under the null (differences of random sign, constant size) a bootstrap-only rule would hold 1 time in 8
    signs = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    pairs = [claims.paired({0: 1.0 * x, 1: 3.0 * y, 2: 2.0 * z}, {0: 0.0, 1: 0.0, 2: 0.0}) for x, y, z in signs]
    assert sum(p.ci_low > 0 for p in pairs) == 1
    assert all(claims.verdict_geq(p) == INCONCLUSIVE for p in pairs)


# ---------------------------------------------------------------- result files as the workflow writes them
# test accuracy per (method, target), seeds 0, 1, 2
ACC = {
    ("subtuning", "fmnist-new"): [0.90, 0.91, 0.92], ("ft", "fmnist-new"): [0.85, 0.86, 0.88],
    ("lp", "fmnist-new"): [0.80, 0.81, 0.80],
    ("subtuning", "fmnist-c"): [0.70, 0.71, 0.72], ("ft", "fmnist-c"): [0.75, 0.77, 0.76],
    ("lp", "fmnist-c"): [0.71, 0.70, 0.73],
    ("ssf", "fmnist-new"): [0.88, 0.89, 0.90], ("lora", "fmnist-new"): [0.87, 0.88, 0.89],
    ("bitfit", "fmnist-new"): [0.80, 0.82, 0.81],
    ("ssf", "fmnist-c"): [0.70, 0.70, 0.70], ("lora", "fmnist-c"): [0.70, 0.70, 0.70],
    ("bitfit", "fmnist-c"): [0.60, 0.61, 0.62],
}
BLOCKS = ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]


def write_runs(root: Path) -> list[Path]:
    return [write_json(root / "runs" / t / m / f"seed{s}.json",
                       run_json(m, t, s, acc, 1000, method_params={"blocks": ["layer2.1"]} if m == "subtuning" else {}))
            for (m, t), accs in ACC.items() for s, acc in zip(SEEDS, accs)]


def write_sweep(root: Path) -> list[Path]:
    # SubTuning leads FT by ~6 points at 100 examples and trails by ~2 at 1000
    acc = {("subtuning", 100): [0.60, 0.62, 0.61], ("ft", 100): [0.54, 0.55, 0.56],
           ("subtuning", 1000): [0.80, 0.81, 0.82], ("ft", 1000): [0.82, 0.83, 0.84],
           ("lp", 100): [0.50, 0.50, 0.50], ("lp", 1000): [0.70, 0.70, 0.70]}
    return [write_json(root / "sweep" / "digits" / f"n{n}" / m / f"seed{s}.json",
                       run_json(m, "digits", s, a, 1000, train_size=n))
            for (m, n), accs in acc.items() for s, a in zip(SEEDS, accs)]


# the block each (target, seed) profile favours; fmnist-c's is earlier than fmnist-new's in every seed
BEST = {("fmnist-c", 0): "layer1.0", ("fmnist-c", 1): "layer1.1", ("fmnist-c", 2): "layer1.0",
        ("fmnist-new", 0): "layer2.0", ("fmnist-new", 1): "layer2.1", ("fmnist-new", 2): "layer2.0"}


def write_profiles(root: Path, best=BEST, shards: int = 2, blocks=None, dropped=None) -> list[Path]:
    """Round-1 shards per (target, seed); ``blocks``: (target, seed) -> block list (default BLOCKS);
    ``dropped``: (target, seed) -> {block: rung} stopped early by a selection budget (a high rung score)."""
    files = []
    for (t, s), b in best.items():
        order = (blocks or {}).get((t, s), BLOCKS)
        stop = (dropped or {}).get((t, s), {})
        res = [scored([], 0.70, 650)] + [
            {**scored([x], 0.99, 1650), "dropped_at": stop[x]} if x in stop
            else scored([x], 0.80 + (0.05 if x == b else 0.01 * i), 1650) for i, x in enumerate(order)]
        head = {"kind": "greedy", "round": 1, "target": t, "seed": s, "blocks": order, "shards": shards}
        for i in range(shards):
            files.append(write_json(root / "select" / t / f"seed{s}" / f"round1_shard{i}.json",
                                    {**head, "shard": i, "results": res[i::shards]}))
    return files


def _side(accs, trained):
    return {"per_task": {t: {"val_acc": a, "test_acc": a, "optimizer_steps": 10} for t, a in accs.items()},
            "params_trained": trained, "params_stored": trained, "wall_time_s": 10.0, "wall_time_chosen_s": 3.0}


def write_multilora(root: Path, gap: float = 0.004, ml_params: int = 700) -> list[Path]:
    files = []
    for s in SEEDS:
        sep = {"fmnist-new": 0.85 + 0.01 * s, "fmnist-c": 0.70 + 0.01 * s}
        ml = {t: a - gap for t, a in sep.items()}
        files.append(write_json(root / "multilora" / f"seed{s}.json",
                                {"seed": s, "tasks": list(sep), "multilora": _side(ml, ml_params),
                                 "separate_lora": _side(sep, 1200)}))
    return files


def _one(df: pd.DataFrame, cid: str, target: str | None = None) -> pd.Series:
    sub = df[(df["claim_id"] == cid) & ((df["target"] == target) if target else True)]
    assert len(sub) == 1, (cid, target, df[["claim_id", "target"]])
    return sub.iloc[0]


@pytest.fixture
def loaded(tmp_path):
    runs = report.load_runs(write_runs(tmp_path))
    sweep = report.load_runs(write_sweep(tmp_path), need_train_size=True)
    profiles = report.load_profiles(write_profiles(tmp_path))
    ml = report.load_multilora(write_multilora(tmp_path))
    return runs, sweep, profiles, ml


SHIFTS = {"fmnist-c": "input", "fmnist-new": "output", "digits": "domain"}


def test_method_claims_per_target(loaded):
    runs, *_ = loaded
    df = claims.claims(runs, experiment="exp1")
    r = _one(df, "1", "fmnist-new")
    assert r["verdict"] == HOLDS and r["seeds"] == "0,1,2" and r["n"] == 3 and r["experiment"] == "exp1"
    assert r["a_mean"] == pytest.approx(91.0) and r["b_mean"] == pytest.approx(86.3333, abs=1e-3)
    assert r["a_std"] == pytest.approx(1.0) and r["diff_mean"] == pytest.approx(4.6667, abs=1e-3)
    assert r["ci_low"] > 0 and 0 < r["p_value"] < 0.05 and "SubTuning" in r["quantity_a"]
    assert _one(df, "1", "fmnist-c")["verdict"] == FAILS
    assert _one(df, "2", "fmnist-new")["verdict"] == HOLDS
    assert _one(df, "2", "fmnist-c")["verdict"] == INCONCLUSIVE  # -1, +1, -1
    assert _one(df, "7a", "fmnist-new")["verdict"] == HOLDS  # +1 point every seed
    assert _one(df, "7a", "fmnist-c")["verdict"] == INCONCLUSIVE  # an exact tie
    assert _one(df, "7b", "fmnist-c")["verdict"] == HOLDS
    for cid in ("7c", "7d"):  # SAN did not run
        r = _one(df, cid)
        assert r["verdict"] == NOT_RUN and "san" in r["note"]
    # nothing else given: those claims say so
    for cid in ("3", "3b", "4", "5", "6"):
        assert _one(df, cid)["verdict"] == NOT_RUN


def test_sweep_claims(loaded):
    runs, sweep, *_ = loaded
    df = claims.claims(runs, sweep=sweep)
    r = _one(df, "3", "digits")
    # lead at 100: +6, +7, +5; at 1000: -2 each: shrinks by 8, 9, 7 points
    assert r["a_mean"] == pytest.approx(6.0) and r["b_mean"] == pytest.approx(-2.0)
    assert r["diff_mean"] == pytest.approx(8.0) and r["verdict"] == HOLDS
    assert "n=100" in r["quantity_a"] and "n=1000" in r["quantity_b"]
    r = _one(df, "3b", "digits")
    assert r["diff_mean"] == pytest.approx(2.0) and r["verdict"] == HOLDS and "FT" in r["quantity_a"]
    # the reverse pattern fails
    flipped = sweep.assign(method=sweep["method"].map({"ft": "subtuning", "subtuning": "ft", "lp": "lp"}))
    df = claims.claims(runs, sweep=flipped)
    assert _one(df, "3", "digits")["verdict"] == FAILS and _one(df, "3b", "digits")["verdict"] == FAILS


def test_profile_claims(loaded):
    runs, _, profiles, _ = loaded
    assert {(p["target"], p["seed"]) for p in profiles} == set(BEST)
    assert len(profiles[0]["scores"]) == len(BLOCKS)  # both shards merged; LP left out
    df = claims.claims(runs, profiles=profiles, shifts=SHIFTS)
    r = _one(df, "4", "fmnist-new")  # layer2.1 (the last block) is best in seed 1 only
    assert r["verdict"] == INCONCLUSIVE and r["test"].startswith("2 of 3 selections")
    assert "1: layer2.1" in r["note"] and r["seeds"] == "0,1,2"
    assert _one(df, "4", "fmnist-c")["verdict"] == HOLDS
    r = _one(df, "5", "fmnist-c (input) vs fmnist-new (output)")
    assert r["verdict"] == HOLDS and r["test"].startswith("3 of 3")
    assert r["a_mean"] == pytest.approx(4 / 3) and r["b_mean"] == pytest.approx(10 / 3)
    # the shift comes from the config, not the names: swapped, the claim fails
    df = claims.claims(runs, profiles=profiles, shifts={"fmnist-c": "output", "fmnist-new": "input"})
    assert _one(df, "5")["verdict"] == FAILS
    # no input/output pair configured: not run
    assert _one(claims.claims(runs, profiles=profiles, shifts={"fmnist-c": "domain"}), "5")["verdict"] == NOT_RUN


def test_profile_ties_do_not_count(tmp_path):
    best = {("t", s): "layer2.1" for s in SEEDS}
    profiles = report.load_profiles(write_profiles(tmp_path, best, shards=1))
    assert _one(claims.claims(None, profiles=profiles), "4", "t")["verdict"] == FAILS  # the last block best
    for p in profiles:  # another block ties the last one exactly: not "best ≠ last"
        p["scores"]["layer1.0"] = p["scores"]["layer2.1"]
    r = _one(claims.claims(None, profiles=profiles), "4", "t")
    assert r["verdict"] == FAILS and r["diff_mean"] == 0.0 and "layer1.0/layer2.1" in r["note"]
    assert claims.best_position(profiles[0]) == pytest.approx(2.5)  # tied best: mean of positions 1 and 4


def test_multilora_claim(tmp_path):
    r = _one(claims.claims(None, multilora=report.load_multilora(write_multilora(tmp_path / "a"))), "6")
    assert r["verdict"] == HOLDS and r["diff_mean"] == pytest.approx(-0.4) and "700 vs 1.2K" in r["note"]
    r = _one(claims.claims(None, multilora=report.load_multilora(write_multilora(tmp_path / "b", gap=0.03))), "6")
    assert r["verdict"] == FAILS and r["diff_mean"] == pytest.approx(-3.0)
    # as accurate, but not fewer parameters: fails
    r = _one(claims.claims(None, multilora=report.load_multilora(write_multilora(tmp_path / "c", ml_params=1200))),
             "6")
    assert r["verdict"] == FAILS and "does not train fewer" in r["note"]


def test_bad_inputs_are_named(tmp_path):
    bad = write_json(tmp_path / "ml" / "seed0.json", {"seed": 0, "multilora": _side({"a": 0.5}, 10)})
    with pytest.raises(SubtuneError, match="separate_lora"):
        report.load_multilora([bad])
    with pytest.raises(SubtuneError, match="'fmnist-c=bogus'"):
        claims.parse_shifts(["fmnist-c=bogus"])
    with pytest.raises(SubtuneError, match="'x'"):
        claims.parse_shifts(["x=input"], targets=["fmnist-c"])
    assert claims.parse_shifts(["a=input", "b=output"]) == {"a": "input", "b": "output"}


def test_report_stage_writes_markdown_and_csv(tmp_path):
    df = report.claims_table(write_runs(tmp_path), tmp_path / "t" / "claims.csv", tmp_path / "t" / "claims.md",
                             sweep_files=write_sweep(tmp_path), profile_files=write_profiles(tmp_path),
                             multilora_files=write_multilora(tmp_path), shifts=SHIFTS, experiment="default")
    csv = pd.read_csv(tmp_path / "t" / "claims.csv", dtype={"claim_id": str})
    assert list(csv.columns) == [*claims.COLUMNS, "mlflow_run_ids", "config_hash", "code_version", "data_digest"]
    assert len(csv) == len(df)
    assert set(csv["experiment"]) == {"default"} and (csv["verdict"] != NOT_RUN).sum() == len(csv) - 2  # SAN
    r = csv[(csv["claim_id"] == "1") & (csv["target"] == "fmnist-new")].iloc[0]
    assert r["seeds"] == "0,1,2" and r["verdict"] == HOLDS and r["diff_mean"] == pytest.approx(4.6667)
    md = (tmp_path / "t" / "claims.md").read_text()
    assert md.startswith("# Claims of the papers")
    assert "| 1 | SubTuning ≥ FT with about 1k training examples |" in md
    assert "SubTuning test acc (%): 91.00 ± 1.00" in md and "**holds**" in md and "**not run**" in md
    assert "10,000 resamples" in md and "inside ±1 point holds" in md and "800 training examples" in md
    # bad input: nothing written
    with pytest.raises(SubtuneError):
        report.claims_table([tmp_path / "missing.json"], tmp_path / "u" / "c.csv", tmp_path / "u" / "c.md")
    assert not (tmp_path / "u").exists() or not any((tmp_path / "u").iterdir())


def test_cli_report_claims(tmp_path):
    from subtune.cli import main

    out = tmp_path / "o"
    main(["report", "claims", "--runs", *map(str, write_runs(tmp_path)), "--profiles",
          *map(str, write_profiles(tmp_path)), "--shifts", "fmnist-c=input", "fmnist-new=output",
          "--experiment", "e", "--out-csv", str(out / "c.csv"), "--out-md", str(out / "c.md")])
    csv = pd.read_csv(out / "c.csv", dtype={"claim_id": str})
    assert csv[csv["claim_id"] == "5"].iloc[0]["verdict"] == HOLDS
    assert csv[csv["claim_id"] == "6"].iloc[0]["verdict"] == NOT_RUN


def test_shift_is_a_validated_target_key():
    from subtune.config import target_shifts, validate

    cfg = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    t = next(iter(cfg["targets"]))
    cfg["targets"][t]["shift"] = "input"
    assert target_shifts(validate(json.loads(json.dumps(cfg)), ROOT / "schemas" / "config.schema.yaml")) == {
        t: "input"}
    cfg["targets"][t]["shift"] = "sideways"
    with pytest.raises(SubtuneError, match=f"targets.{t}.shift"):
        validate(cfg, ROOT / "schemas" / "config.schema.yaml")
    default = validate(yaml.safe_load((ROOT / "config.yaml").read_text()), ROOT / "schemas" / "config.schema.yaml")
    shifts = target_shifts(default)
    assert "input" in shifts.values() and "output" in shifts.values()


def test_profiles_of_a_target_selected_once_pair_with_every_seed_of_the_other():
    from subtune.claims import _profile_pairs

    assert _profile_pairs([0, 1, 2], [0]) == [(0, 0), (1, 0), (2, 0)]
    assert _profile_pairs([0], [0, 1, 2]) == [(0, 0), (0, 1), (0, 2)]
    assert _profile_pairs([0, 1, 2], [1, 2, 3]) == [(1, 1), (2, 2)]
    assert _profile_pairs([0], [0]) == [(0, 0)]


# ---------------------------------------------------------------- edge cases
def test_a_missing_method_or_seed_is_named_not_dropped(loaded):
    runs, *_ = loaded
    gone = (runs["method"] == "ft") & (runs["target"] == "fmnist-c") & (runs["seed"] == 2)
    gone |= (runs["method"] == "lp") & (runs["target"] == "fmnist-c")
    df = claims.claims(runs[~gone])
    r = _one(df, "1", "fmnist-c")  # SubTuning trails FT in seeds 0 and 1; seed 2 has no FT run
    assert r["verdict"] == INCONCLUSIVE and r["seeds"] == "0,1" and "unpaired seeds 2 (no FT)" in r["note"]
    assert "no verdict" in r["test"]
    r = _one(df, "2", "fmnist-c")  # LP never ran on fmnist-c: a row that says so, not a silent gap
    assert r["verdict"] == NOT_RUN and "fmnist-c: no final runs of lp" in r["note"]
    assert _one(df, "2", "fmnist-new")["verdict"] == HOLDS
    # SSF/SAN: the paper's network and the positions here differ, and the row says so
    assert "ViT" in _one(df, "7a", "fmnist-new")["note"] and "ours on the configured backbone" in _one(
        df, "7b", "fmnist-c")["note"]


def test_sweep_uses_only_sizes_both_methods_ran(loaded):
    runs, sweep, *_ = loaded
    extra = sweep[(sweep["method"] == "subtuning") & (sweep["train_size"] == 1000)].assign(train_size=5000)
    df = claims.claims(runs, sweep=pd.concat([sweep, extra], ignore_index=True))
    r = _one(df, "3", "digits")  # n=5000 has no FT run: the largest common size is 1000
    assert "n=1000" in r["quantity_b"] and r["diff_mean"] == pytest.approx(8.0) and r["verdict"] == HOLDS
    assert "n=5000 left out" in r["note"] and "n=1000" in _one(df, "3b", "digits")["quantity_a"]
    one = sweep[~((sweep["method"] == "ft") & (sweep["train_size"] == 1000))]  # FT at n=100 only
    df = claims.claims(runs, sweep=one)
    for cid in ("3", "3b"):
        r = _one(df, cid, "digits")
        assert r["verdict"] == NOT_RUN and "one training-set size" in r["note"] and "n=1000 left out" in r["note"]
    # a seed without an FT run at one size: its lead is missing, named, and no verdict
    gap = sweep[~((sweep["method"] == "ft") & (sweep["train_size"] == 1000) & (sweep["seed"] == 1))]
    df = claims.claims(runs, sweep=gap)
    r = _one(df, "3", "digits")
    assert r["verdict"] == INCONCLUSIVE and "1 (no FT at n=1000)" in r["note"] and r["seeds"] == "0,2"
    r = _one(df, "3b", "digits")
    assert r["verdict"] == INCONCLUSIVE and "1 (no FT)" in r["note"]


def test_one_selection_gives_no_profile_verdict(tmp_path):
    # fmnist-new selected once (seed 0), fmnist-c per seed; every pair agrees, yet fmnist-new is one outcome
    best = {k: v for k, v in BEST.items() if k[0] == "fmnist-c" or k[1] == 0}
    profiles = report.load_profiles(write_profiles(tmp_path, best))
    df = claims.claims(None, profiles=profiles, shifts=SHIFTS)
    r = _one(df, "4", "fmnist-new")  # layer2.0 beats the last block, once
    assert r["verdict"] == INCONCLUSIVE and r["test"].startswith("1 of 1 selection")
    assert "one selection of fmnist-new (one seed, or selection.per_seed does not name it)" in r["note"]
    assert _one(df, "4", "fmnist-c")["verdict"] == HOLDS
    r = _one(df, "5")
    assert r["verdict"] == INCONCLUSIVE and r["test"].startswith("3 of 3 pairs")
    assert "1 of fmnist-new" in r["test"] and r["seeds"] == "0,1,2"  # the numbers keep the pairing
    assert r["b_mean"] == pytest.approx(3.0) and r["a_mean"] == pytest.approx(4 / 3)
    assert "one selection of fmnist-new (one seed, or selection.per_seed does not name it)" in r["note"]
    assert "one selection of fmnist-c" not in r["note"]  # fmnist-c has three selections


def test_claim_5_note_names_the_departure_from_the_paper(loaded):
    _, _, profiles, _ = loaded
    note = _one(claims.claims(None, profiles=profiles, shifts=SHIFTS), "5")["note"]
    assert "ResNet" in note and "ours on the configured backbone" in note
    assert "fmnist-c (shift: input)" in note and "fmnist-new (shift: output)" in note and "proxy" in note
    note = _one(claims.claims(None, profiles=profiles, shifts={"fmnist-new": "input", "fmnist-c": "output"}),
                "5")["note"]
    assert "fmnist-new (shift: input)" in note  # from the configured shifts, not the names


def test_profiles_stopped_early_are_left_out(tmp_path):
    # seed 1 of fmnist-c: layer2.0 stopped at a rung with a (high) rung score: not a full-schedule score
    profiles = report.load_profiles(write_profiles(tmp_path, dropped={("fmnist-c", 1): {"layer2.0": 1}}))
    p = next(p for p in profiles if (p["target"], p["seed"]) == ("fmnist-c", 1))
    assert "layer2.0" not in p["scores"] and p["stopped"] == ["layer2.0"] and not claims.complete(p)
    df = claims.claims(None, profiles=profiles, shifts=SHIFTS)
    r = _one(df, "4", "fmnist-c")
    assert r["seeds"] == "0,2" and r["verdict"] == INCONCLUSIVE and "seed 1: layer2.0" in r["note"]
    r = _one(df, "5")
    assert r["seeds"] == "0,2" and r["verdict"] == INCONCLUSIVE and "2 selections of fmnist-c" in r["note"]
    # every profile of a target incomplete: not run
    best = {k: v for k, v in BEST.items() if k[0] == "fmnist-c"}
    profiles = report.load_profiles(write_profiles(tmp_path / "b", best,
                                                   dropped={k: {"layer1.1": 2} for k in best}))
    r = _one(claims.claims(None, profiles=profiles), "4", "fmnist-c")
    assert r["verdict"] == NOT_RUN and "no complete fine-tuning profile" in r["note"]


def test_claim_5_needs_the_same_block_list(tmp_path):
    other = ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0"]
    profiles = report.load_profiles(write_profiles(tmp_path, blocks={("fmnist-new", s): other for s in SEEDS}))
    r = _one(claims.claims(None, profiles=profiles, shifts=SHIFTS), "5")
    assert r["verdict"] == NOT_RUN and "block lists differ" in r["note"]


def test_multilora_sides_need_the_same_tasks(tmp_path):
    files = write_multilora(tmp_path)
    d = json.loads(files[1].read_text())
    del d["separate_lora"]["per_task"]["fmnist-c"]
    write_json(files[1], d)
    with pytest.raises(SubtuneError, match=f"{files[1].name}: multilora and separate_lora have different tasks"):
        report.load_multilora(files)
    files = write_multilora(tmp_path / "b")
    d = json.loads(files[2].read_text())
    for side in ("multilora", "separate_lora"):
        d[side]["per_task"]["digits"] = d[side]["per_task"].pop("fmnist-c")
    write_json(files[2], d)
    with pytest.raises(SubtuneError, match=f"{files[2].name}: tasks digits, fmnist-new differ"):
        report.load_multilora(files)
