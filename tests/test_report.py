"""Tables and plots from small, well-formed fake inputs (no training)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from subtune import SubtuneError
from subtune import report

from helpers.reports import BLOCKS, TRAIN, greedy_state, run_json, scored, tune_json, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# accuracies per (method, target): three seeds
ACC = {
    ("lp", "fmnist"): [0.80, 0.82, 0.81],
    ("ft", "fmnist"): [0.90, 0.91, 0.95],
    ("subtuning", "fmnist"): [0.92, 0.93, 0.94],
    ("surgical", "fmnist"): [0.85, 0.86, 0.87],
    ("bitfit", "fmnist"): [0.70, 0.72, 0.74],
    ("lp", "kmnist"): [0.60, 0.62, 0.64],
    ("ft", "kmnist"): [0.75, 0.77, 0.79],
    ("subtuning", "kmnist"): [0.78],  # one seed only
}
PARAMS = {"lp": 650, "ft": 100_000, "surgical": 30_650, "bitfit": 2_650}
SUB_BLOCKS = {("fmnist", 0): ["layer2.1"], ("fmnist", 1): ["layer1.0", "layer2.1"],
              ("fmnist", 2): ["layer2.1"], ("kmnist", 0): ["layer1.1"]}
SUB_PARAMS = {"layer1.0": 1_000, "layer1.1": 1_000, "layer2.0": 5_000, "layer2.1": 5_000}


@pytest.fixture
def run_files(tmp_path):
    files = []
    for (m, t), accs in ACC.items():
        for seed, acc in enumerate(accs):
            mp, params = {}, PARAMS.get(m)
            if m == "subtuning":
                blocks = SUB_BLOCKS[(t, seed)]
                mp = {"blocks": blocks}
                params = 650 + sum(SUB_PARAMS[b] for b in blocks)
            if m == "surgical":
                mp = {"group": 1}
            files.append(write_json(tmp_path / "runs" / t / m / f"seed{seed}.json",
                                    run_json(m, t, seed, acc, params, val_acc=acc + 0.01, method_params=mp)))
    return files


def test_main_table(run_files, tmp_path):
    ck = write_json(tmp_path / "checkpoints" / "backbone.json",
                    {"arch": "resnet18", "origin": {"kind": "pretrained", "source": "mnist", "source_test_acc": 0.9912,
                                                    "source_val_acc": 0.9901}})
    csv, md = tmp_path / "t" / "main.csv", tmp_path / "t" / "main.md"
    report.main_table(run_files, csv, md, checkpoint_json=ck)
    df = pd.read_csv(csv)
    assert set(zip(df["method"], df["target"])) == set(ACC)
    # display order: lp, ft, surgical, subtuning, then the others alphabetically; targets in input order
    assert list(dict.fromkeys(df["method"])) == ["lp", "ft", "surgical", "subtuning", "bitfit"]
    assert list(df["target"][df["method"] == "lp"]) == ["fmnist", "kmnist"]
    for (m, t), accs in ACC.items():
        r = df[(df["method"] == m) & (df["target"] == t)].iloc[0]
        assert r["n_seeds"] == len(accs)
        assert r["test_acc_mean"] == pytest.approx(100 * statistics.mean(accs), abs=1e-4)
        want_std = 100 * statistics.stdev(accs) if len(accs) > 1 else 0.0
        assert r["test_acc_std"] == pytest.approx(want_std, abs=1e-4)
        assert r["val_acc_mean"] == pytest.approx(100 * statistics.mean(accs) + 1, abs=1e-4)
    sub = df[(df["method"] == "subtuning") & (df["target"] == "fmnist")].iloc[0]
    assert sub["trainable_params"] == pytest.approx((5650 + 6650 + 5650) / 3, abs=0.01)  # seeds differ: the mean
    assert (sub["trainable_params_min"], sub["trainable_params_max"]) == (5650, 6650)
    assert sub["blocks"] == "layer2.1 | layer1.0+layer2.1"
    kms = df[(df["method"] == "subtuning") & (df["target"] == "kmnist")].iloc[0]
    assert kms["trainable_params"] == 1650 and kms["seeds"] == "0"
    assert df[df["method"] == "ft"]["trainable_params"].tolist() == [100_000, 100_000]
    assert "1650" in csv.read_text()  # whole counts written as integers, not 1650.0

    text = md.read_text()
    # ft fmnist: mean 92.00, std = stdev(90, 91, 95) = 2.65
    assert "| FT | 92.00 ± 2.65 (100K) | 77.00 ± 2.00 (100K) |" in text
    assert "| LP | 81.00 ± 1.00 (650) | 62.00 ± 2.00 (650) |" in text
    assert "| SubTuning | 93.00 ± 1.00 (5.98K mean) | 78.00 ± 0.00 (1.65K, n=1) |" in text
    assert "| BitFit | 72.00 ± 2.00 (2.65K) | – |" in text
    assert "| method | fmnist | kmnist |" in text
    lines = text.splitlines()
    order = [next(i for i, l in enumerate(lines) if l.startswith(f"| {lab} |"))
             for lab in ("LP", "FT", "Surgical", "SubTuning", "BitFit")]
    assert order == sorted(order)
    assert "source test accuracy 99.12% (val 99.01%)" in text and "mnist" in text
    assert "## Selected blocks per target and seed" in text
    assert "| fmnist | 1 | layer1.0, layer2.1 | 1 |" in text
    assert "| kmnist | 0 | layer1.1 | – |" in text


def test_main_table_selected_states(run_files, tmp_path):
    st = write_json(tmp_path / "select" / "fmnist" / "seed0" / "selected.json", {
        "selected": ["layer2.1"], "score": 0.905, "done": True, "stop_reason": "gain below epsilon",
        "rounds": [{"round": 1}, {"round": 2}]})
    md = tmp_path / "main.md"
    report.main_table(run_files, tmp_path / "main.csv", md, selected_files=[st])
    assert "| fmnist | 0 | layer2.1 | 90.50 | 2 | gain below epsilon |" in md.read_text()


def _cost_state(target, seed, rounds):
    """A final selection state whose rounds record (n candidates, wall time, ft_equiv)."""
    rs = [{"round": i + 1, "base": [], "base_score": 0.5, "scores": {f"c{j}": 0.5 for j in range(n)},
           "cost": {"wall_time_s": w, "ft_equiv": f}} for i, (n, w, f) in enumerate(rounds)]
    return {"selected": ["layer2.1"], "score": 0.9, "done": True, "stop_reason": "x", "rounds": rs,
            "config": {}, "blocks": BLOCKS}


def test_main_table_cost_of_every_method(run_files, tmp_path):
    st = [write_json(tmp_path / "select" / "fmnist" / "seed0" / "selected.json",
                     _cost_state("fmnist", 0, [(5, 2.0, 0.5), (4, 1.0, 0.25)])),
          write_json(tmp_path / "select" / "kmnist" / "seed0" / "selected.json",
                     _cost_state("kmnist", 0, [(5, 3.0, 0.5)]))]
    sur = write_json(tmp_path / "select" / "fmnist" / "seed0" / "surgical.json", {
        "kind": "surgical", "target": "fmnist", "seed": 0, "blocks": BLOCKS,
        "results": [{"key": "layer1.0", "score": 0.8, "wall_time_s": 0.5}, {"key": "layer2.0", "score": 0.7,
                                                                           "wall_time_s": 0.5}],
        "cost": {"wall_time_s": 1.2, "ft_equiv": 0.4}})
    csv, md, png = tmp_path / "main.csv", tmp_path / "main.md", tmp_path / "cost.png"
    report.main_table(run_files, csv, md, selected_files=st, surgical_files=[sur], out_cost_png=png)
    df = pd.read_csv(csv).set_index(["method", "target"])
    # every run took 1.5 s: one FT is 1.5 s on each target; SubTuning's 9 candidates took 3 s = 2 FTs
    sub = df.loc[("subtuning", "fmnist")]
    assert sub["selection_candidates"] == 9 and sub["selection_wall_time_s"] == 3.0
    assert sub["selection_ft_units"] == pytest.approx(2.0) and sub["selection_ft_basis"] == "ft wall time"
    assert sub["selection_ft_equiv_flops"] == pytest.approx(0.75) and sub["total_time_s"] == pytest.approx(4.5)
    surg = df.loc[("surgical", "fmnist")]
    assert surg["selection_candidates"] == 2 and surg["selection_ft_units"] == pytest.approx(0.8)
    lp = df.loc[("lp", "fmnist")]
    assert math.isnan(lp["selection_candidates"]) and lp["total_time_s"] == pytest.approx(1.5)
    text = md.read_text()
    assert "## Cost" in text and "| SubTuning | fmnist | " in text.replace("subtuning", "SubTuning")
    assert "2.00 (ft wall time)" in text and "FT method's final run" in text
    _png_ok(png)
    # without FT among the runs: the FLOPs estimate the selection recorded
    no_ft = [f for f in run_files if "/ft/" not in str(f)]
    report.main_table(no_ft, csv, md, selected_files=st, surgical_files=[sur])
    df = pd.read_csv(csv).set_index(["method", "target"])
    assert df.loc[("subtuning", "fmnist")]["selection_ft_units"] == pytest.approx(0.75)
    assert df.loc[("subtuning", "fmnist")]["selection_ft_basis"] == "FLOPs"
    assert "estimated from FLOPs" in md.read_text()


def test_epsilon_table(tmp_path):
    from subtune.select import SelectionConfig, greedy

    vals = {"layer1.0": 0.012, "layer1.1": 0.03, "layer2.0": -0.004, "layer2.1": 0.007}

    def scorer(sets):
        return {s: 0.5 + sum(vals[b] for b in s) for s in sets}

    walk = greedy(BLOCKS, scorer, SelectionConfig(k=None, epsilon=0.0))
    for r in walk["rounds"]:
        r["cost"] = {"wall_time_s": 1.0, "ft_equiv": 0.1}
    st = write_json(tmp_path / "select" / "fmnist" / "seed0" / "state4.json", walk)
    # epsilon 0 and 0.005: layer1.1, layer1.0, layer2.1; 0.01 (main): layer1.1, layer1.0; 0.02: layer1.1
    sets = {"layer1.0+layer1.1+layer2.1": 0.9, "layer1.0+layer1.1": 0.8, "layer1.1": 0.7}
    runs = []
    for i, (b, acc) in enumerate(sets.items()):
        for seed in (0, 1):
            d = "runs/fmnist/subtuning" if b == "layer1.0+layer1.1" else f"epsilon/fmnist/{b}"
            runs.append(write_json(
                tmp_path / d / f"seed{seed}.json" if "runs/" in d else tmp_path / d / f"seed{seed}.json",
                run_json("subtuning", "fmnist", seed, acc + seed / 100, 10, method_params={"blocks": b.split("+")})))
    csv, md = tmp_path / "eps.csv", tmp_path / "eps.md"
    df = report.epsilon([st], runs, [0.0, 0.005, 0.02], 0.01, csv, md)
    assert list(df["epsilon"]) == [0.0, 0.005, 0.01, 0.02]
    assert list(df["blocks"]) == ["layer1.0+layer1.1+layer2.1"] * 2 + ["layer1.0+layer1.1", "layer1.1"]
    assert list(df["main"]) == [False, False, True, False]
    assert list(df["trained_for"]) == ["epsilon", "epsilon", "main", "epsilon"]
    assert list(df["rounds"]) == [4, 4, 3, 2] and list(df["candidates"]) == [5 + 3 + 2 + 1, 11, 10, 8]
    assert list(df["selection_wall_time_s"]) == [4.0, 4.0, 3.0, 2.0]
    assert df["test_acc_mean"].tolist() == pytest.approx([90.5, 90.5, 80.5, 70.5])
    assert df["test_acc_std"].iloc[0] == pytest.approx(100 * statistics.stdev([0.9, 0.91]), abs=1e-4)
    text = md.read_text()
    assert "| fmnist | 0.01 (main) | layer1.0, layer1.1 |" in text and "epsilon 0, 11 candidates" in text
    with pytest.raises(SubtuneError, match="no run of blocks"):
        report.epsilon([st], runs[2:], [0.0], 0.01, csv, md)


def test_one_seed_std_is_zero(tmp_path):
    f = write_json(tmp_path / "a.json", run_json("lp", "x", 0, 0.5, 10))
    report.main_table([f], tmp_path / "m.csv", tmp_path / "m.md")
    assert "| LP | 50.00 ± 0.00 (10) |" in (tmp_path / "m.md").read_text()
    assert pd.read_csv(tmp_path / "m.csv")["test_acc_std"].tolist() == [0.0]


def test_missing_test_acc_names_file(tmp_path):
    good = write_json(tmp_path / "good.json", run_json("lp", "x", 0, 0.5, 10))
    bad_obj = run_json("ft", "x", 0, 0.5, 10)
    del bad_obj["test_acc"]
    bad = write_json(tmp_path / "bad_run.json", bad_obj)
    with pytest.raises(SubtuneError, match=r"bad_run\.json.*test_acc"):
        report.main_table([good, bad], tmp_path / "m.csv", tmp_path / "m.md")
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "m.md").exists()


def test_bad_runs(tmp_path):
    pct = write_json(tmp_path / "pct.json", run_json("lp", "x", 0, 91.2, 10))
    with pytest.raises(SubtuneError, match=r"pct\.json.*fraction"):
        report.main_table([pct], tmp_path / "m.csv", tmp_path / "m.md")
    a = write_json(tmp_path / "a.json", run_json("lp", "x", 0, 0.5, 10))
    b = write_json(tmp_path / "b.json", run_json("lp", "x", 0, 0.6, 10))
    with pytest.raises(SubtuneError, match="two run files"):
        report.main_table([a, b], tmp_path / "m.csv", tmp_path / "m.md")
    with pytest.raises(SubtuneError, match="missing file"):
        report.main_table([tmp_path / "nope.json"], tmp_path / "m.csv", tmp_path / "m.md")


def _png_ok(path: Path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


def test_profile_merges_shards(tmp_path):
    head = {"kind": "greedy", "round": 1, "target": "fmnist", "seed": 0, "blocks": BLOCKS}
    s0 = write_json(tmp_path / "round1_shard0.json", {**head, "shard": 0, "shards": 2, "results": [
        scored([], 0.80, 650), scored(["layer1.1"], 0.83, 1650), scored(["layer2.1"], 0.88, 5650)]})
    s1 = write_json(tmp_path / "round1_shard1.json", {**head, "shard": 1, "shards": 2, "results": [
        scored(["layer1.0"], 0.81, 1650), scored(["layer2.0"], 0.86, 5650)]})
    csv, png = tmp_path / "out" / "profile.csv", tmp_path / "out" / "profile.png"
    df = report.profile([s0, s1], csv, png)
    got = pd.read_csv(csv)
    assert list(got["block"]) == ["(lp)", *BLOCKS]
    assert list(got["index"]) == [-1, 0, 1, 2, 3]
    assert list(got["trainable_params"]) == [650, 1650, 1650, 5650, 5650]
    assert got["val_acc"].tolist() == pytest.approx([80.0, 81.0, 83.0, 86.0, 88.0])
    assert got["delta_vs_lp"].tolist() == pytest.approx([0.0, 1.0, 3.0, 6.0, 8.0])
    assert len(df) == 5
    _png_ok(png)
    # a single file works too; a later greedy round is refused
    report.profile(s0, tmp_path / "p1.csv", tmp_path / "p1.png")
    late = write_json(tmp_path / "round2.json", {**head, "round": 2, "results": []})
    with pytest.raises(SubtuneError, match=r"round2\.json.*round 2"):
        report.profile([late], tmp_path / "p2.csv", tmp_path / "p2.png")
    dup = write_json(tmp_path / "dup.json", {**head, "results": [scored(["layer1.0"], 0.5, 1)]})
    with pytest.raises(SubtuneError, match="scored twice"):
        report.profile([s1, dup], tmp_path / "p3.csv", tmp_path / "p3.png")


def test_rounds(tmp_path):
    st = {
        "config": {}, "blocks": BLOCKS, "current": ["layer2.1", "layer1.0"], "current_score": 0.9,
        "selected": ["layer1.0", "layer2.1"], "score": 0.9, "done": True,
        "stop_reason": "gain below epsilon (+0.0020, epsilon 0.01)",
        "rounds": [
            {"round": 1, "base": [], "base_score": 0.8, "scores": {"": 0.8, "layer1.0": 0.81, "layer2.1": 0.88},
             "chosen": "layer2.1", "chosen_score": 0.88, "gain": 0.08, "accepted": True},
            {"round": 2, "base": ["layer2.1"], "base_score": 0.88, "scores": {"layer1.0+layer2.1": 0.9},
             "chosen": "layer1.0", "chosen_score": 0.9, "gain": 0.02, "accepted": True},
            {"round": 3, "base": ["layer1.0", "layer2.1"], "base_score": 0.9, "scores": {"x": 0.902},
             "chosen": "layer1.1", "chosen_score": 0.902, "gain": 0.002, "accepted": False},
        ],
    }
    a = write_json(tmp_path / "select" / "fmnist" / "seed0" / "selected.json", st)
    b = write_json(tmp_path / "select" / "kmnist" / "seed3" / "selected.json",
                   {**st, "rounds": st["rounds"][:1], "stop_reason": "reached k=1 blocks", "selected": ["layer2.1"]})
    out = tmp_path / "rounds.csv"
    report.rounds([a, b], out)
    df = pd.read_csv(out, keep_default_na=False)
    assert list(zip(df["target"], df["seed"], df["round"])) == [
        ("fmnist", 0, 1), ("fmnist", 0, 2), ("fmnist", 0, 3), ("kmnist", 3, 1)]
    assert list(df["chosen"]) == ["layer2.1", "layer1.0", "layer1.1", "layer2.1"]
    assert [float(x) for x in df["gain"]] == pytest.approx([8.0, 2.0, 0.2, 8.0])
    assert [float(x) for x in df["chosen_score"]] == pytest.approx([88.0, 90.0, 90.2, 88.0])
    assert list(df["accepted"].astype(str)) == ["True", "True", "False", "True"]
    assert list(df["base"]) == ["(lp)", "layer2.1", "layer1.0+layer2.1", "(lp)"]
    assert list(df["n_candidates"]) == [3, 1, 1, 3]
    assert list(df["stop_reason"]) == ["", "", "gain below epsilon (+0.0020, epsilon 0.01)", "reached k=1 blocks"]
    assert list(df["selected"]) == ["", "", "layer1.0+layer2.1", "layer2.1"]
    assert list(df["dropped"]) == ["", "", "", ""] and list(df["ft_equiv"]) == ["", "", "", ""]
    # a round under a selection budget: dropped candidates per rung and the round's cost
    r1 = {**st["rounds"][0], "dropped": {"layer1.0": 1, "": 2, "layer1.1": 1},
          "cost": {"candidate_epochs": 7, "exact_candidate_epochs": 18, "wall_time_s": 3.456, "ft_equiv": 0.41234}}
    c = write_json(tmp_path / "select" / "fmnist" / "seed1" / "selected.json", {**st, "rounds": [r1]})
    df = pd.read_csv(report.rounds([c], tmp_path / "r3.csv") is not None and tmp_path / "r3.csv")
    assert df.loc[0, "dropped"] == "1:layer1.0,layer1.1;2:(lp)" and df.loc[0, "n_dropped"] == 3
    assert (df.loc[0, "candidate_epochs"], df.loc[0, "exact_candidate_epochs"]) == (7, 18)
    assert df.loc[0, "wall_time_s"] == pytest.approx(3.46) and df.loc[0, "ft_equiv"] == pytest.approx(0.412)
    with pytest.raises(SubtuneError, match=r"notstate\.json.*selected"):
        report.rounds([write_json(tmp_path / "notstate.json", {"kind": "greedy"})], tmp_path / "r2.csv")


def test_pairs(tmp_path):
    blocks = BLOCKS[:3]
    res = [scored([b], 0.8 + 0.01 * i, 1000) for i, b in enumerate(blocks)]
    res += [scored(["layer1.0", "layer1.1"], 0.85, 2000), scored(["layer1.0", "layer2.0"], 0.87, 6000),
            scored(["layer1.1", "layer2.0"], 0.9, 6000)]
    head = {"kind": "pairs", "target": "fmnist", "seed": 0, "blocks": BLOCKS}
    s0 = write_json(tmp_path / "shard0.json", {**head, "results": res[:4]})
    s1 = write_json(tmp_path / "shard1.json", {**head, "results": res[4:]})
    csv, png = tmp_path / "pairs.csv", tmp_path / "pairs.png"
    report.pairs([s0, s1], csv, png)
    df = pd.read_csv(csv)
    assert list(zip(df["block_a"], df["block_b"])) == [
        ("layer1.0", "layer1.0"), ("layer1.0", "layer1.1"), ("layer1.0", "layer2.0"),
        ("layer1.1", "layer1.1"), ("layer1.1", "layer2.0"), ("layer2.0", "layer2.0")]
    assert df["val_acc"].tolist() == pytest.approx([80.0, 85.0, 87.0, 81.0, 90.0, 82.0])
    assert df["trainable_params"].tolist() == [1000, 2000, 6000, 1000, 6000, 1000]
    _png_ok(png)
    with pytest.raises(SubtuneError, match="expected pairs"):
        report.pairs([write_json(tmp_path / "g.json", {**head, "kind": "greedy", "round": 1})], csv, png)


def test_sweep(tmp_path):
    files = []
    acc = {("lp", 100): [0.5, 0.6], ("lp", 1000): [0.7, 0.7], ("ft", 100): [0.4, 0.5], ("ft", 1000): [0.8, 0.9],
           ("subtuning", 100): [0.6], ("subtuning", 1000): [0.85, 0.87]}
    for (m, n), accs in acc.items():
        for seed, a in enumerate(accs):
            files.append(write_json(tmp_path / "sweep" / f"n{n}" / m / f"seed{seed}.json",
                                    run_json(m, "fmnist", seed, a, 10, train_size=n)))
    csv, png = tmp_path / "sweep.csv", tmp_path / "sweep.png"
    report.sweep(files, csv, png)
    df = pd.read_csv(csv)
    assert list(zip(df["method"], df["train_size"])) == [
        ("lp", 100), ("lp", 1000), ("ft", 100), ("ft", 1000), ("subtuning", 100), ("subtuning", 1000)]
    assert df["n_seeds"].tolist() == [2, 2, 2, 2, 1, 2]
    assert df["test_acc_mean"].tolist() == pytest.approx([55.0, 70.0, 45.0, 85.0, 60.0, 86.0])
    want = [100 * statistics.stdev([0.5, 0.6]), 0.0, 100 * statistics.stdev([0.4, 0.5]),
            100 * statistics.stdev([0.8, 0.9]), 0.0, 100 * math.sqrt(2) * 0.01]
    assert df["test_acc_std"].tolist() == pytest.approx(want, abs=1e-4)
    _png_ok(png)
    nosize = run_json("lp", "fmnist", 9, 0.5, 10)
    del nosize["train_size"]
    with pytest.raises(SubtuneError, match=r"nosize\.json.*train_size"):
        report.sweep([*files, write_json(tmp_path / "nosize.json", nosize)], csv, png)


# ---------------------------------------------------------------- VTAB-1k averages, train+val runs, best epochs
SSF_REF = Path(__file__).resolve().parents[1] / "references" / "ssf-vtab1k.csv"
VIT = "vit_base_patch16_224.augreg_in21k"  # the weights of SSF's published numbers


def test_vtab_groups_are_the_19_tasks():
    from subtune.data import vtab

    assert set(report.VTAB_GROUP_OF) == {f"vtab-{t}" for t in vtab.TASKS}
    assert [len(ts) for ts in report.VTAB_GROUPS.values()] == [7, 4, 8]


def test_vtab_means_reproduce_the_published_ssf_averages():
    refs = report.load_references([SSF_REF])
    ssf = dict(zip(refs["target"], refs["value"]))
    tasks, groups, counts = report.vtab_means(ssf)
    assert round(tasks, 2) == 73.10 and round(groups, 2) == 75.69  # SSF's two published averages
    assert counts == {"Natural": 7, "Specialized": 4, "Structured": 8}
    # over a subset: only the tasks given, a group without a task drops out
    tasks, groups, counts = report.vtab_means({"vtab-dtd": 70.0, "vtab-svhn": 90.0, "vtab-kitti": 50.0, "other": 1.0})
    assert tasks == pytest.approx(70.0) and groups == pytest.approx((80.0 + 50.0) / 2)
    assert counts == {"Natural": 2, "Specialized": 0, "Structured": 1}


def test_main_table_vtab_averages_ours_and_published(tmp_path):
    refs = report.load_references([SSF_REF])
    pub = dict(zip(refs["target"], refs["value"]))
    tasks = ["vtab-cifar100", "vtab-dtd", "vtab-eurosat", "vtab-kitti"]  # 2 natural, 1 specialized, 1 structured
    files = []
    for m, shift in (("ssf", 1.0), ("ft", -5.0)):
        for t in tasks:
            for seed in (0, 1):
                acc = (pub[t] + shift + (0.2 if seed else -0.2)) / 100
                files.append(write_json(tmp_path / "runs" / t / m / f"seed{seed}.json", run_json(m, t, seed, acc, 10)))
    files.append(write_json(tmp_path / "runs" / "fmnist" / "ft" / "seed0.json", run_json("ft", "fmnist", 0, 0.9, 10)))
    csv, md = tmp_path / "main.csv", tmp_path / "main.md"
    report.main_table(files, csv, md, references=[SSF_REF], backbone=VIT)
    df = pd.read_csv(csv)
    ours = {t: pub[t] + 1.0 for t in tasks}
    want_tasks = statistics.fmean(ours.values())
    want_groups = statistics.fmean([statistics.fmean([ours["vtab-cifar100"], ours["vtab-dtd"]]),
                                    ours["vtab-eurosat"], ours["vtab-kitti"]])
    row = df[(df["method"] == "ssf") & (df["target"] == "VTAB-1k mean of tasks")].iloc[0]
    assert row["test_acc_mean"] == pytest.approx(want_tasks, abs=1e-3) and row["n_tasks"] == 4
    assert row["published"] == pytest.approx(want_tasks - 1.0, abs=1e-3) and row["diff"] == pytest.approx(1.0, abs=1e-3)
    row = df[(df["method"] == "ssf") & (df["target"] == "VTAB-1k mean of group means")].iloc[0]
    assert row["test_acc_mean"] == pytest.approx(want_groups, abs=1e-3)
    assert row["published"] == pytest.approx(want_groups - 1.0, abs=1e-3)
    # no published FT numbers per task: ours only; the non-VTAB target is not averaged
    row = df[(df["method"] == "ft") & (df["target"] == "VTAB-1k mean of tasks")].iloc[0]
    assert row["test_acc_mean"] == pytest.approx(want_tasks - 6.0, abs=1e-3) and pd.isna(row["published"])
    text = md.read_text()
    assert "| method | vtab-cifar100 | vtab-dtd | vtab-eurosat | vtab-kitti | fmnist | mean of tasks | mean of group means |" in text
    assert "## VTAB-1k averages" in text and "4 of 19 (Natural 2/7, Specialized 1/4, Structured 1/8)" in text
    line = next(l for l in text.splitlines() if l.startswith("| SSF | 4 of 19"))
    assert f"| {want_tasks:.2f} | {want_groups:.2f} | {want_tasks - 1:.2f} | {want_groups - 1:.2f} | +1.00 | +1.00 |" in line
    # no VTAB target: no averages
    report.main_table(files[-1:], csv, md)
    assert "VTAB" not in md.read_text() and "VTAB" not in csv.read_text()


def test_train_val_runs_show_no_validation_accuracy(tmp_path):
    a = write_json(tmp_path / "a.json", run_json("ft", "fmnist", 0, 0.9, 10, val_acc=0.99, train_data="train+val",
                                                 train_size=1000))
    b = write_json(tmp_path / "b.json", run_json("lp", "fmnist", 0, 0.8, 10, val_acc=0.7, train_data="train"))
    csv, md = tmp_path / "main.csv", tmp_path / "main.md"
    report.main_table([a, b], csv, md)
    df = pd.read_csv(csv).set_index("method")
    assert pd.isna(df.loc["ft", "val_acc_mean"]) and df.loc["ft", "train_data"] == "train+val"
    assert df.loc["lp", "val_acc_mean"] == pytest.approx(70.0) and df.loc["lp", "train_data"] == "train"
    assert "Final runs trained on train+val (final_data): FT." in md.read_text()


def test_main_table_shows_the_epoch_chosen_on_validation(run_files, tmp_path):
    best_val = {**TRAIN, "epoch_select": "best_val"}
    extra = [write_json(tmp_path / "be" / f"seed{s}.json",
                        run_json("ssf", "fmnist", s, 0.9, 10, best_epoch=e, train=best_val))
             for s, e in ((0, 7), (1, 4), (2, 10))]
    # runs with epoch_select: last record their last epoch as best_epoch too: nobody chose it on validation
    last = [write_json(tmp_path / "last" / f"seed{s}.json",
                       run_json("lora", "fmnist", s, 0.9, 10, best_epoch=2, train={**TRAIN, "epoch_select": "last"}))
            for s in (0, 1, 2)]
    csv, md = tmp_path / "main.csv", tmp_path / "main.md"
    report.main_table([*run_files, *extra, *last], csv, md)
    text = md.read_text()
    assert "## Epoch chosen on validation (epoch_select: best_val)" in text
    assert "| SSF | 7 (7, 4, 10) | – |" in text
    section = text.split("## Epoch chosen")[1]
    assert "| LP |" not in section and "| LoRA |" not in section  # only the runs that chose their epoch
    df = pd.read_csv(csv, keep_default_na=False)
    assert df[df["method"] == "ssf"]["best_epochs"].tolist() == ["7,4,10"]
    assert df[df["method"] == "lora"]["best_epochs"].tolist() == [""]
    report.main_table([*run_files, *last], csv, md)  # every run used epoch_select: last
    assert "Epoch chosen" not in md.read_text() and "best_val" not in md.read_text()


def test_sweep_shows_blocks_per_size(tmp_path):
    files = []
    for n, blocks in ((100, ["layer2.1"]), (1000, ["layer1.0", "layer2.1"])):
        for seed in (0, 1):
            files.append(write_json(tmp_path / f"n{n}" / f"sub{seed}.json",
                                    run_json("subtuning", "fmnist", seed, 0.8, 10, train_size=n,
                                             method_params={"blocks": blocks})))
        files.append(write_json(tmp_path / f"n{n}" / "lp.json", run_json("lp", "fmnist", 0, 0.7, 10, train_size=n)))
    csv, png = tmp_path / "sweep.csv", tmp_path / "sweep.png"
    report.sweep(files, csv, png)
    df = pd.read_csv(csv, keep_default_na=False)
    assert list(zip(df["method"], df["train_size"], df["blocks"])) == [
        ("lp", 100, ""), ("lp", 1000, ""), ("subtuning", 100, "layer2.1"), ("subtuning", 1000, "layer1.0+layer2.1")]
    _png_ok(png)


# ---------------------------------------------------------------- report captions (report/*.rst) per config
ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = {p.stem: p for p in [*sorted((ROOT / "configs").glob("*.yaml")), ROOT / "config.yaml"]}


def render_captions(config: dict) -> dict[str, str]:
    """Every report/*.rst as ``snakemake --report`` renders it (its Jinja settings; StrictUndefined here, so a
    misspelt key fails instead of printing nothing), each checked by docutils (a warning fails)."""
    import jinja2
    from docutils.core import publish_parts

    class Snakemake:  # what snakemake.report gives a caption: config, params, wildcards
        params = type("Params", (), {"backbone": config["backbone"]["arch"]})
        wildcards = type("Wildcards", (), {"target": next(iter(config["targets"]))})

    Snakemake.config = config
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    out = {}
    for f in sorted((ROOT / "report").glob("*.rst")):
        text = env.from_string(f.read_text()).render(snakemake=Snakemake, categories={}, files={})
        publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 5})
        out[f.stem] = " ".join(text.split())
    return out


def _config(name: str, **selection) -> dict:
    import yaml

    from subtune.config import validate

    cfg = yaml.safe_load(CONFIG_FILES[name].read_text())
    cfg["selection"].update(selection)
    return validate(cfg, ROOT / "schemas" / "config.schema.yaml")


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_captions_describe_each_configs_protocol(name):
    cfg = _config(name)
    cap = render_captions(cfg)
    sel, wf = cfg["selection"], cap["workflow"]
    assert "None" not in wf and "None" not in cap["rounds"]  # no "k = None"
    selects = any(m in ("subtuning", "subtuning_lora")
                  for m in [*cfg["methods"], *cfg.get("sweep", {}).get("methods", [])])
    if selects:
        assert f"greedy {sel['strategy']} selection" in wf and f"stop_rule: {sel['stop_rule']}" in wf
        assert ("cross-validation" in wf) == (sel["scoring"] == "cv")
        assert "Exact selection" in wf and "no ``selection.budget``" in wf
        if sel["strategy"] == "backward":
            assert "removes the block" in wf and "k is not used" in wf and "the linear probe" in wf
        elif sel["k"] is None:
            assert "no limit on the number of blocks" in wf
        else:
            assert f"at most k = {sel['k']} block" in wf
    else:
        assert "no greedy selection runs" in wf and "stop_rule" not in wf
    if sel["stop_rule"] == "code" or sel["strategy"] == "backward":
        assert "more than epsilon below the best so far" in cap["rounds"]
    else:
        assert "gain below epsilon" in cap["rounds"]
    assert "candidate_epochs" in cap["rounds"] and "dropped" in cap["rounds"]
    assert f"final_data: {cfg['final_data']}" in wf
    vtab = any(t.startswith("vtab-") for t in cfg["targets"])
    assert ("mean of group means" in cap["main"]) == vtab and ("mean of tasks" in cap["main"]) == vtab
    best_val = cfg["train"].get("epoch_select") == "best_val"
    assert ("epoch_select: best_val" in cap["main"]) == best_val
    assert ("Surgical fine-tuning's block group" in wf) == ("surgical" in cfg["methods"])
    sw = (cfg.get("sweep") or {}).get("methods", [])
    selects = any(m in sw for m in ("subtuning", "subtuning_lora"))
    assert ("re-runs greedy selection at every size" in cap["sweep"]) == selects and "main regime and" not in cap["sweep"]
    # the analyses: epsilon sensitivity (which epsilon walks furthest), the cost's FT unit, Multi-LoRA ablations
    forward_paper = (sel["strategy"], sel["stop_rule"]) == ("forward", "paper")
    assert f"runs with the {'smallest' if forward_paper else 'largest'} epsilon" in cap["epsilon"]
    selecting = any(m in cfg["methods"] for m in ("subtuning", "subtuning_lora", "siamese", "surgical"))
    assert ("one FT = the FT method's final run" in cap["main"]) == ("ft" in cfg["methods"] and selecting)
    assert "Accuracy against cost" in cap["cost"] and "Grid tuning is not counted" in cap["cost"]
    ab = (cfg.get("multilora") or {}).get("ablations") or {}
    assert ("**Ablations**" in cap["multilora"]) == bool(ab.get("train_a") or ab.get("sequential") or ab.get("ranks"))


def test_captions_describe_the_selection_budget():
    cap = render_captions(_config("test", budget={"kind": "halving", "min_epochs": 1, "eta": 2}, profile=False))
    assert "successive halving inside each round" in cap["workflow"] and "Exact selection" not in cap["workflow"]
    assert "this experiment uses successive halving" in cap["rounds"]
    cap = render_captions(_config("test", budget={"epochs": 1}))
    assert "scored after a shorter 1-epoch schedule" in cap["workflow"]
    cap = render_captions(_config("test", budget={"kind": "shortlist", "screen_epochs": 1, "keep": 2},
                                  profile=False))
    assert "a shortlist in each round: every candidate trains a complete 1-epoch schedule, the best 2" in \
        " ".join(cap["workflow"].split())
    assert "this experiment uses a shortlist" in cap["rounds"] and "Exact selection" not in cap["workflow"]


# ---------------------------------------------------------------- validation curves of the tuned grids, edge flags
def test_grid_table_and_plot_from_tune_files(tmp_path):
    files = [
        write_json(tmp_path / "t/fmnist/lp.json", tune_json("lp", "fmnist", [
            (0.003, 0.70, "grid"), (0.01, 0.75, "grid"), (0.0333333, 0.78, "extension"), (0.111111, 0.80, "extension")],
            3, {"lr": "upper"})),
        write_json(tmp_path / "t/fmnist/ft.json", tune_json("ft", "fmnist", [
            (0.0003, 0.80, "grid"), (0.001, 0.85, "grid"), (0.003, 0.82, "grid")], 1)),
        write_json(tmp_path / "t/kmnist/lp.json", tune_json("lp", "kmnist", [
            (0.003, 0.60, "grid"), (0.01, 0.65, "grid"), (0.0333333, 0.62, "extension")], 1)),
        write_json(tmp_path / "t/kmnist/llrd.json", tune_json("llrd", "kmnist", [
            (0.6, 0.5, "grid"), (0.75, 0.55, "grid"), (0.9, 0.6, "grid")], 2, {"decay": "upper"}, key="decay")),
    ]
    out = report.grid_table(files, tmp_path / "grid.csv", tmp_path / "grid.md", tmp_path / "grid.png")
    csv = pd.read_csv(tmp_path / "grid.csv").fillna({"edge": ""})
    assert len(csv) == len(out) == 13
    # one row per (method, target, point), methods in table order, points in the order tried
    lp = csv[(csv["method"] == "lp") & (csv["target"] == "fmnist")]
    assert lp["value_lr"].tolist() == [0.003, 0.01, 0.0333333, 0.111111]
    assert lp["val_acc"].tolist() == [70.0, 75.0, 78.0, 80.0]
    assert lp["source"].tolist() == ["grid", "grid", "extension", "extension"]
    assert lp["chosen"].tolist() == [False, False, False, True] and lp["edge"].tolist()[-1] == "lr upper"
    ft = csv[csv["method"] == "ft"]
    assert ft["chosen"].tolist() == [False, True, False] and set(ft["edge"]) == {""}
    assert csv[csv["method"] == "llrd"]["value_decay"].tolist() == [0.6, 0.75, 0.9]
    assert csv[csv["method"] == "llrd"]["value_lr"].isna().all()  # not a key of LLRD's grid
    md = (tmp_path / "grid.md").read_text()
    assert "| fmnist | lr=0.111111 | 80.00 | ✓ | extension | lr upper |" in md
    assert "| fmnist | lr=0.0333333 | 78.00 |  | extension |  |" in md
    edges = md.split("## Choices still on an edge")[1]
    assert "fmnist: lr=0.111111 (lr upper)" in edges and "kmnist: decay=0.9 (decay upper)" in edges
    assert edges.count("\n- ") == 2 and f"- {report.method_label('ft')} on" not in edges  # FT's is inside its grid
    assert (tmp_path / "grid.png").read_bytes()[:8] == PNG_MAGIC
    # no edge anywhere: the list says so
    report.grid_table(files[1:3], tmp_path / "g2.csv", tmp_path / "g2.md", tmp_path / "g2.png")
    assert "None: every choice lies inside the values tried." in (tmp_path / "g2.md").read_text()
    # a file that is not a tune result: one line naming it
    bad = write_json(tmp_path / "bad.json", {"method": "lp", "target": "fmnist", "results": [], "chosen_index": 0})
    with pytest.raises(SubtuneError, match="bad.json: not a tune file"):
        report.grid_table([bad], tmp_path / "x.csv", tmp_path / "x.md", tmp_path / "x.png")


def test_grid_plot_panels_and_styles(tmp_path, monkeypatch):
    """A column per target, a row per tuned key; a distinct (colour, marker) per method; log x for lr only."""
    from matplotlib.figure import Figure

    from subtune.report.tables import grid

    figs = []
    monkeypatch.setattr(grid, "save_png", lambda fig, out: figs.append(fig))
    files = [write_json(tmp_path / f"{m}_{t}.json", tune_json(m, t, [(0.001, 0.5, "grid"), (0.01, 0.6, "grid"),
                                                                     (0.1, 0.55, "extension")], 1))
             for m in ("lp", "ft", "bitfit") for t in ("a", "b")]
    files.append(write_json(tmp_path / "llrd.json", tune_json("llrd", "a", [(0.6, 0.5, "grid"), (0.9, 0.6, "grid")], 1,
                                                              {"decay": "upper"}, key="decay")))
    report.grid_table(files, tmp_path / "g.csv", tmp_path / "g.md", tmp_path / "g.png")
    fig = figs[0]
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_title() in ("a", "b")]
    assert len(axes) == 4  # keys decay and lr x targets a and b
    by = {(ax.get_xlabel(), ax.get_title()): ax for ax in axes}
    assert by[("lr", "a")].get_xscale() == "log" and by[("decay", "a")].get_xscale() == "linear"
    lines = [ln for ln in by[("lr", "a")].get_lines() if ln.get_linestyle() != "None"]
    styles = {(str(ln.get_color()), ln.get_marker()) for ln in lines}
    assert len(lines) == 3 and len(styles) == 3 and len({m for _, m in styles}) == 3


def test_main_md_flags_a_choice_still_on_an_edge(tmp_path):
    files = []
    for m, edge, lr in (("lp", {"lr": "upper"}, 0.111111), ("ft", None, 0.001)):
        for seed in (0, 1):
            tuned = {"train": {"lr": lr}, "params": {}, "grid": {"lr": [0.003, 0.01]}, "val_acc": 0.8, "seed": 0,
                     "edge": edge, "explored": {"lr": [0.003, 0.01, lr]}}
            files.append(write_json(tmp_path / f"{m}{seed}.json", run_json(m, "fmnist", seed, 0.8, 650, tuned=tuned)))
    report.main_table(files, tmp_path / "m.csv", tmp_path / "m.md")
    md = (tmp_path / "m.md").read_text()
    section = md.split("## Hyperparameters chosen on validation")[1]
    assert "lr=0.111111 ↑edge (tried also lr: 0.111111)" in section
    assert "lr=0.001 (tried also lr: 0.001)" in section  # the grid column keeps the configured grid
    assert section.count("lr ∈ {0.003, 0.01}") == 2
    assert "lr=0.001 ↑edge" not in section and "↑edge / ↓edge: the chosen value is the largest / smallest value tried" in section
    csv = pd.read_csv(tmp_path / "m.csv")
    assert csv.set_index("method").loc["lp", "tuned"] == "lr=0.111111 ↑edge"
    # no edge: no flag, no sentence
    report.main_table(files[2:], tmp_path / "m2.csv", tmp_path / "m2.md")
    assert "edge" not in (tmp_path / "m2.md").read_text()


def test_report_stage_writes_claims_table(run_files, tmp_path):
    """The claims table from the main table's inputs alone: per-target rows with paired tests, `not run` for the
    claims whose results (sweep, profiles, Multi-LoRA, SSF/SAN) the tree does not have."""
    csv, md = tmp_path / "tables" / "claims.csv", tmp_path / "tables" / "claims.md"
    df = report.claims_table(run_files, csv, md, experiment="exp")
    rows = {(r["claim_id"], r["target"]): r for _, r in df.iterrows()}
    # fmnist, SubTuning - FT = +2, +2, -1 (inconclusive); SubTuning - LP = +12, +11, +13 (holds)
    assert rows[("1", "fmnist")]["verdict"] == "inconclusive" and rows[("1", "fmnist")]["seeds"] == "0,1,2"
    assert rows[("2", "fmnist")]["verdict"] == "holds"
    assert rows[("2", "fmnist")]["diff_mean"] == pytest.approx(12.0)
    assert rows[("1", "kmnist")]["n"] == 1 and "no verdict" in rows[("1", "kmnist")]["test"]  # one SubTuning seed
    assert {cid for (cid, t), r in rows.items() if r["verdict"] == "not run"} == {"3", "3b", "4", "5", "6", "7a",
                                                                                   "7b", "7c", "7d"}
    text = md.read_text()
    assert "| 2 | SubTuning ≥ LP |" in text and "**holds**" in text and "Experiment `exp`" in text
    assert set(pd.read_csv(csv)["experiment"]) == {"exp"}


def test_main_and_claims_rows_name_the_code_data_config_and_mlflow_runs(tmp_path, monkeypatch):
    """Each row: the code versions and data digests its runs recorded, the config's hash, the MLflow runs of its
    metrics files (a real store: two of the files logged, the others still queued)."""
    from subtune import track
    from subtune.provenance import COLUMNS

    code = {"lp": "cccccccccccc", "ft": "aaaaaaaaaaaa", "subtuning": "bbbbbbbbbbbb+dirty"}
    files = {(m, s): write_json(tmp_path / "runs" / "fmnist" / m / f"seed{s}.json",
                                run_json(m, "fmnist", s, acc + 0.01 * s, 10,
                                         provenance={"code_version": code[m], "data_digest": "d" * 64}))
             for m, acc in (("lp", 0.8), ("ft", 0.85), ("subtuning", 0.9)) for s in (0, 1, 2)}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SUBTUNE_MLFLOW_EXPERIMENT", "prov")
    ids = {k: track.log_run(json.loads(files[k].read_text()), experiment="prov", artifact=files[k])
           for k in (("ft", 0), ("subtuning", 0))}
    main = report.main_table(list(files.values()), tmp_path / "main.csv", tmp_path / "main.md", config_hash="c0ffee")
    csv = pd.read_csv(tmp_path / "main.csv", dtype=str, keep_default_na=False).set_index("method")
    assert list(csv.columns[-4:]) == list(COLUMNS) and list(main.columns[-4:]) == list(COLUMNS)
    assert csv.loc["subtuning", "mlflow_run_ids"] == ids[("subtuning", 0)] and csv.loc["lp", "mlflow_run_ids"] == ""
    assert csv.loc["ft", "code_version"] == code["ft"] and set(csv["config_hash"]) == {"c0ffee"}
    assert set(csv["data_digest"]) == {"d" * 64}

    claims = report.claims_table(list(files.values()), tmp_path / "claims.csv", tmp_path / "claims.md",
                                 config_hash="c0ffee")
    rows = pd.read_csv(tmp_path / "claims.csv", dtype=str, keep_default_na=False).set_index("claim_id")
    assert len(claims) == len(rows) and list(rows.columns[-4:]) == list(COLUMNS)
    sub_ft, sub_lp = rows.loc["1"], rows.loc["2"]  # SubTuning ≥ FT, SubTuning ≥ LP on fmnist
    assert set(sub_ft["code_version"].split(" | ")) == {code["ft"], code["subtuning"]}
    assert set(sub_lp["code_version"].split(" | ")) == {code["lp"], code["subtuning"]}
    assert sub_ft["mlflow_run_ids"].split(",") == [ids[("ft", 0)], ids[("subtuning", 0)]]
    assert sub_lp["mlflow_run_ids"] == ids[("subtuning", 0)]
    not_run = rows[rows["verdict"] == "not run"]
    assert len(not_run) and set(not_run["code_version"]) == {""} and set(not_run["config_hash"]) == {"c0ffee"}


def _selection_files(tmp_path) -> list[Path]:
    """fmnist: three seeds, two agree (layer1.0 + layer2.1) and one differs (layer2.1); kmnist: two seeds that
    agree (layer1.1); digits: selected once (seed 0), nothing gains epsilon: the empty set (LP)."""
    walks = {("fmnist", 0): {"layer1.0": 0.05, "layer2.1": 0.10}, ("fmnist", 1): {"layer2.1": 0.08, "layer1.0": 0.06},
             ("fmnist", 2): {"layer2.1": 0.10, "layer1.0": 0.002}, ("kmnist", 0): {"layer1.1": 0.04},
             ("kmnist", 1): {"layer1.1": 0.03, "layer2.0": 0.001}, ("digits", 0): {"layer1.0": 0.005}}
    return [write_json(tmp_path / "select" / t / f"seed{s}" / "selected.json", greedy_state(g))
            for (t, s), g in walks.items()]


def test_selection_agreement_of_sets():
    a = report.selection_agreement([["b1", "b3"], ["b3", "b1"], ["b3"]], order=["b1", "b2", "b3"])
    assert (a["n_selections"], a["n_distinct"], a["most_common"], a["most_common_count"], a["tied"]) == (
        3, 2, ["b1", "b3"], 2, False)
    assert a["identical_pairs"] == pytest.approx(1 / 3)
    assert a["mean_jaccard"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert a["frequency"] == {"b1": 2, "b3": 3} and list(a["frequency"]) == ["b1", "b3"]
    # every set differs: a tie goes to the earliest seed's set; disjoint sets and LP share nothing
    d = report.selection_agreement([["b2"], ["b1"], []], order=["b1", "b2"])
    assert (d["n_distinct"], d["most_common"], d["most_common_count"], d["tied"]) == (3, ["b2"], 1, True)
    assert d["identical_pairs"] == 0 and d["mean_jaccard"] == 0 and list(d["frequency"]) == ["b1", "b2"]
    one = report.selection_agreement([[]])
    assert one["n_selections"] == 1 and math.isnan(one["identical_pairs"]) and math.isnan(one["mean_jaccard"])
    assert report.jaccard(set(), set()) == 1 and report.jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)


def test_selection_table_per_seed_sets_and_agreement(tmp_path):
    files = _selection_files(tmp_path)
    csv, md = tmp_path / "tables" / "selection.csv", tmp_path / "tables" / "selection.md"
    report.selection_table(files, csv, md)
    df = pd.read_csv(csv, keep_default_na=False)
    assert list(zip(df["target"], df["seed"])) == [("fmnist", 0), ("fmnist", 1), ("fmnist", 2), ("kmnist", 0),
                                                   ("kmnist", 1), ("digits", 0)]
    assert list(df["selected"]) == ["layer1.0+layer2.1", "layer1.0+layer2.1", "layer2.1", "layer1.1", "layer1.1",
                                    "(lp)"]
    assert list(df["n_blocks"]) == [2, 2, 1, 1, 1, 0]
    assert [float(x) for x in df["val_score"]] == pytest.approx([65.0, 64.0, 60.0, 54.0, 53.0, 50.0])
    assert all(r.startswith("gain below epsilon") for r in df["stop_reason"])
    by = {t: g.iloc[0] for t, g in df.groupby("target")}
    f, k, d = by["fmnist"], by["kmnist"], by["digits"]
    assert (f["n_selections"], f["n_distinct"], f["most_common"], f["most_common_count"]) == (
        3, 2, "layer1.0+layer2.1", 2)
    assert float(f["identical_pairs"]) == pytest.approx(1 / 3, abs=1e-4)
    assert float(f["mean_jaccard"]) == pytest.approx(2 / 3, abs=1e-4)
    assert f["block_frequency"] == "layer1.0: 2/3, layer2.1: 3/3" and f["note"] == "selected per seed"
    assert (k["n_distinct"], k["most_common_count"], float(k["identical_pairs"]), float(k["mean_jaccard"])) == (
        1, 2, 1.0, 1.0)
    assert k["block_frequency"] == "layer1.1: 2/2"
    assert d["note"] == "selected once (seed 0), reused by every seed"
    assert (d["n_selections"], d["identical_pairs"], d["mean_jaccard"], d["block_frequency"]) == (1, "", "", "")
    text = md.read_text()
    assert "| fmnist | 0 | layer1.0, layer2.1 | 2 | 65.00 |" in text and "| digits | 0 | (lp) | 0 | 50.00 |" in text
    assert ("| fmnist | 3 | 2 | layer1.0, layer2.1 | 2 of 3 | 1/3 (0.33) | 0.67 | layer1.0: 2/3, layer2.1: 3/3 | "
            "selected per seed |") in text
    assert "| kmnist | 2 | 1 | layer1.1 | 2 of 2 | 1/1 (1.00) | 1.00 | layer1.1: 2/2 |" in text
    assert ("| digits | 1 | 1 | (lp) | 1 of 1 | n/a | n/a | none | selected once (seed 0), reused by every seed |"
            in text)
    assert "only for targets selected per seed" in text


def test_selection_table_network_order_and_bad_states(tmp_path):
    st = greedy_state({"layer1.0": 0.05, "layer2.1": 0.10})
    # a set stored out of order is shown in network order (the state's blocks)
    a = write_json(tmp_path / "a" / "fmnist" / "seed0" / "selected.json", {**st, "selected": ["layer2.1", "layer1.0"]})
    df = report.selection_table([a], tmp_path / "s.csv", tmp_path / "s.md")
    assert df.loc[0, "selected"] == "layer1.0+layer2.1" and df.loc[0, "most_common"] == "layer1.0+layer2.1"
    # the same target and seed twice, a file that is no selection state, a score that is no fraction: each named
    twin = write_json(tmp_path / "b" / "x" / "selected.json", {**st, "target": "fmnist", "seed": 0})
    with pytest.raises(SubtuneError, match=r"b/x/selected\.json.*second selection state of target 'fmnist', seed 0"):
        report.selection_table([a, twin], tmp_path / "s2.csv", tmp_path / "s2.md")
    with pytest.raises(SubtuneError, match=r"notstate\.json.*selected"):
        report.selection_table([write_json(tmp_path / "notstate.json", {"kind": "greedy"})], tmp_path / "s3.csv",
                               tmp_path / "s3.md")
    bad = write_json(tmp_path / "c" / "fmnist" / "seed1" / "selected.json", {**st, "score": 65.0})
    with pytest.raises(SubtuneError, match=r"seed1/selected\.json: score = 65"):
        report.selection_table([a, bad], tmp_path / "s4.csv", tmp_path / "s4.md")
    assert not (tmp_path / "s2.csv").exists() and not (tmp_path / "s4.md").exists()


def test_cli_report_selection(tmp_path):
    from subtune.cli import main

    out = tmp_path / "tables"
    main(["report", "selection", "--states", *map(str, _selection_files(tmp_path)),
          "--out-csv", str(out / "selection.csv"), "--out-md", str(out / "selection.md")])
    assert len(pd.read_csv(out / "selection.csv")) == 6
    assert "## Agreement between seeds" in (out / "selection.md").read_text()
