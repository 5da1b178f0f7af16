"""The Snakemake workflow end to end on configs/test.yaml: outputs, MLflow runs, reruns, config errors."""

import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from helpers.workflow import FMNIST, edit_config, job_stats, smk, workdir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # the first test builds `finished`: a whole run of the small config
    pytest.mark.skipif(not FMNIST.exists(),
                       reason="Fashion-MNIST mirror missing: apt-get install dataset-fashion-mnist (make test does)"),
]



# Any config change rewrites the tables whose rows carry the config's hash (a param of their rules), and those
# made from them: seconds of work, no training.
CONFIG_HASH_TABLES = {"report_main": 1, "report_claims": 1, "report_metrics": 1, "report_start": 1}

def dry_run(wd: Path, config: str = "configs/test.yaml") -> dict[str, int]:
    p = smk(wd, "--dry-run", config=config)
    return job_stats(p.stdout + p.stderr)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete run of the small config with 2 cores."""
    wd = workdir(tmp_path_factory.mktemp("wf"))
    p = smk(wd)
    return wd, p.stdout + p.stderr


def test_end_to_end_outputs(finished):
    wd, _ = finished
    res = wd / "results/test"
    for rel in ["tables/main.csv", "tables/main.md", "tables/rounds.csv", "tables/profile_digits.csv",
                "tables/profile_fmnist-new.csv", "plots/profile_digits.png", "tables/pairs_digits.csv",
                "plots/pairs_digits.png", "tables/sweep.csv", "plots/sweep.png", "tables/multilora.csv",
                "tables/multilora.md", "tables/epsilon.csv", "tables/epsilon.md", "tables/grid.csv",
                "tables/grid.md", "plots/grid.png", "tables/selection.csv", "tables/selection.md"]:
        assert (res / rel).stat().st_size > 0, rel
    # selection.per_seed: false here: each target's one selection (seed 0), reused by both seeds
    import pandas as pd

    sel = pd.read_csv(res / "tables/selection.csv")
    assert list(sel["seed"]) == [0, 0] and set(sel["note"]) == {"selected once (seed 0), reused by every seed"}
    md = (res / "tables/main.md").read_text()
    for method in ("lp", "ft", "surgical", "subtuning", "lora"):
        assert method in md.lower()
    # LP's learning rate was chosen on validation from its grid, and the table says which
    assert "## Hyperparameters chosen on validation" in md and "lr ∈ {0.003, 0.01}" in md
    for t in ("digits", "fmnist-new"):
        tuned = json.loads((res / f"tune/{t}/lp.json").read_text())
        assert [r["train"]["lr"] for r in tuned["results"] if r["source"] == "grid"] == [0.003, 0.01]
        best = max(r["val_acc"] for r in tuned["results"])
        assert tuned["results"][tuned["chosen_index"]]["val_acc"] == best
        for seed in (0, 1):
            run = json.loads((res / f"runs/{t}/lp/seed{seed}.json").read_text())
            assert run["train"]["lr"] == tuned["chosen"]["train"]["lr"] and run["tuned"]["train"] == tuned["chosen"]["train"]
            # the selection seed's final run is the chosen tuning run (subtune.reuse): loaded, the test evaluated
            assert ("reused" in run) == (seed == 0)
            if seed == 0:
                assert run["val_acc"] == tuned["results"][tuned["chosen_index"]]["val_acc"]
    ml = (res / "tables/multilora.md").read_text()
    assert "Multi-LoRA" in ml and "separate LoRA" in ml and "params stored" in ml
    # every rule writes its log and benchmark
    assert any((wd / "logs/test/train").iterdir()) and any((wd / "benchmarks/test/train").iterdir())


def test_second_run_runs_nothing(finished):
    wd, _ = finished
    assert dry_run(wd) == {}


def test_every_training_job_logged_one_mlflow_run(finished):
    wd, _ = finished
    n_jobs = sum(1 for _ in (wd / "results/test").glob("runs/*/*/seed*.json"))
    n_jobs += sum(1 for _ in (wd / "results/test").glob("sweep/*/*/*/seed*.json"))
    n_jobs += sum(1 for _ in (wd / "results/test").glob("select/**/round*_shard*.json"))
    n_jobs += sum(1 for _ in (wd / "results/test").glob("select/*/*/surgical.json"))
    n_jobs += sum(1 for _ in (wd / "results/test").glob("pairs/*/shard*.json"))
    n_jobs += sum(1 for _ in (wd / "results/test").glob("tune/*/*.json"))
    n_jobs += sum(1 for _ in (wd / "results/test").glob("multilora/seed*.json"))
    n_jobs += sum(1 for _ in (wd / "results/test").glob("epsilon/*/*/seed*.json"))
    n_jobs += sum(1 for _ in (wd / "results/test").glob("multilora/*/seed*.json"))
    con = sqlite3.connect(wd / "mlflow.db")
    (n_runs,) = con.execute("select count(*) from runs where lifecycle_stage='active'").fetchone()
    assert n_runs == n_jobs + 1 and n_jobs > 20  # and the invocation's parent run
    # names unique within the experiment
    assert con.execute("select name from runs group by experiment_id, name having count(*) > 1").fetchall() == []

    import mlflow

    from subtune import track

    client = mlflow.MlflowClient(f"sqlite:///{wd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("subtune-test").experiment_id], max_results=5000)
    (parent,) = [r for r in runs if r.data.tags.get("stage") == "workflow"]
    jobs = {r.data.tags[track.KEY_TAG]: r for r in runs if r is not parent}
    # one parent per invocation, finished; every job's run its child, named from its tags
    assert parent.info.status == "FINISHED" and parent.info.run_name == f"workflow/{parent.data.tags['invocation']}"
    assert {r.data.tags.get(track.PARENT_TAG) for r in jobs.values()} == {parent.info.run_id}
    assert {r.data.tags["invocation"] for r in jobs.values()} == {parent.data.tags["invocation"]}
    assert all(r.info.run_name == track.run_name_for(r.data.tags) for r in jobs.values())
    assert all(r.data.tags[k] for r in jobs.values() for k in ("stage", "method", "target", "seed", "experiment"))

    def tags_of(path: Path) -> dict[str, str]:
        return jobs[track.run_key({}, path)].data.tags

    res = wd / "results/test"
    for f in res.glob("sweep/*/n*/*/seed*.json"):  # a data-size sweep's runs and selections: their size
        assert tags_of(f)["stage"] == "sweep" and tags_of(f)["train_size"] == f.parts[-3][1:]
    sized = list(res.glob("select/*/n*/seed*/round*_shard*.json"))
    assert sized and all(tags_of(f)["train_size"] == f.parts[-3][1:] for f in sized)
    assert all("train_size" not in tags_of(f) for f in res.glob("select/*/seed*/round*_shard*.json"))
    for f in res.glob("multilora/*/seed*.json"):
        assert tags_of(f)["ablation"] == f.parent.name and tags_of(f)["stage"] == "multilora"
    for f in res.glob("epsilon/*/*/seed*.json"):
        assert tags_of(f)["blockset"] == f.parent.name
    # a tuning run: every grid point's validation accuracy, and the point chosen
    for f in res.glob("tune/*/*.json"):
        tune, r = json.loads(f.read_text()), jobs[track.run_key({}, f)]
        assert r.data.tags["grid_point"] == tune["results"][tune["chosen_index"]]["label"]
        assert {k: v for k, v in r.data.metrics.items() if k.startswith("grid/")} == {
            track.grid_metric(x["label"]): pytest.approx(x["val_acc"]) for x in tune["results"]}
    for f in res.glob("runs/*/lp/seed*.json"):  # trained at the point chosen on validation
        tune = json.loads((res / "tune" / f.parts[-3] / "lp.json").read_text())
        assert tags_of(f)["tuned"] == tune["results"][tune["chosen_index"]]["label"]


def epsilon_sets_of(wd: Path, epsilons, main: float = 0.01) -> dict[str, set[str]]:
    """Per target: the distinct block sets (as directory names) the epsilons select that differ from ``main``'s,
    replayed from the finished walks."""
    from subtune.select import epsilon_sets, key, replay

    out = {}
    for t in ("fmnist-new", "digits"):
        d = wd / "results/test/select" / t / "seed0"
        walk = json.loads(max(d.glob("state*.json"), key=lambda p: int(p.stem[5:])).read_text())
        m = replay(walk, main)["selected"]
        out[t] = {key(e["selected"]) or "lp" for e in epsilon_sets(walk, epsilons) if e["selected"] != m}
    return out


def test_epsilon_sensitivity_outputs(finished):
    wd, _ = finished
    res = wd / "results/test"
    csv = (res / "tables/epsilon.csv").read_text()
    md = (res / "tables/epsilon.md").read_text()
    assert "# Epsilon sensitivity" in md and "(main)" in md
    import pandas as pd

    df = pd.read_csv(res / "tables/epsilon.csv")
    assert sorted(set(df["epsilon"])) == [0.0, 0.01, 1.0] and len(df) == 6, csv
    assert set(df[df["epsilon"] == 1.0]["blocks"]) == {"(lp)"} and (df["n_seeds"] == 2).all()
    # the walk ran with the smallest epsilon; selected.json is the main epsilon's selection, replayed
    for t in ("fmnist-new", "digits"):
        sel = json.loads((res / f"select/{t}/seed0/selected.json").read_text())
        assert sel["config"]["epsilon"] == 0.01
        state1 = json.loads((res / f"select/{t}/seed0/state1.json").read_text())
        assert state1["config"]["epsilon"] == 0.0
    assert json.loads((res / "select/digits/n60/seed0/state1.json").read_text())["config"]["epsilon"] == 0.01
    # the main selection's set is not trained twice: exactly the other sets have runs here
    want = epsilon_sets_of(wd, [0.0, 0.01, 1.0])
    for t, sets in want.items():
        assert {p.name for p in (res / "epsilon" / t).iterdir()} == sets
        for s in sets:
            runs = [json.loads(p.read_text()) for p in sorted((res / "epsilon" / t / s).glob("seed*.json"))]
            assert len(runs) == 2 and all(r["method"] == "subtuning" for r in runs)
            assert all((("+".join(r["method_params"]["blocks"])) or "lp") == s for r in runs)


def test_epsilon_list_change_trains_only_the_new_sets(finished):
    wd, _ = finished
    old = epsilon_sets_of(wd, [0.0, 0.01, 1.0])
    # the walk's epsilon (the smallest) stays: no selection job; only sets not trained yet, then the table
    new_list = [0.0, 0.005, 0.02, 0.05, 0.1, 1.0]
    cfg = edit_config(wd, "epsl.yaml", lambda c: c["selection"].update(epsilons=new_list))
    new = epsilon_sets_of(wd, new_list)
    n_new = sum(len(new[t] - old[t]) for t in new)
    stats = dry_run(wd, cfg)
    assert stats == {"report_epsilon": 1, **CONFIG_HASH_TABLES, **({"train_epsilon": 2 * n_new} if n_new else {})}, stats
    # dropping an epsilon retrains nothing
    cfg = edit_config(wd, "epsd.yaml", lambda c: c["selection"].update(epsilons=[0.0, 0.01]))
    assert dry_run(wd, cfg) == {"report_epsilon": 1, **CONFIG_HASH_TABLES}
    # the main epsilon moving inside the walk: no scoring or 1k decision job reruns (selected.json is replayed);
    # only the sweep's n60 selection decides again (it walks with selection.epsilon)
    cfg = edit_config(wd, "epsm.yaml", lambda c: c["selection"].update(epsilon=1.0))
    stats = dry_run(wd, cfg)
    assert stats["selected"] == 3 and stats["decide"] == 1 and "score_round" not in stats, stats
    # a larger smallest epsilon is another walk: the 1k selections' decisions rerun (not the sweep's n60: it
    # walks with selection.epsilon)
    cfg = edit_config(wd, "epsw.yaml", lambda c: c["selection"].update(epsilons=[0.05, 1.0]))
    assert dry_run(wd, cfg)["decide"] == 2


def test_epsilon_change_reruns_selection_onward_only(finished):
    wd, _ = finished
    # without the epsilon list the walk runs with selection.epsilon itself
    cfg = edit_config(wd, "eps.yaml", lambda c: (c["selection"].pop("epsilons"), c["selection"].update(epsilon=0.2)))
    stats = dry_run(wd, cfg)
    assert set(stats) == {"decide", "selected", "train", "train_sweep", "report_main", "report_rounds",
                          "report_selection", "report_sweep", "report_claims", "report_metrics", "report_start"}, stats
    # only SubTuning's final runs: 2 targets x 2 seeds, and its sweep runs: 2 sizes x 2 seeds
    assert stats["train"] == 4 and stats["train_sweep"] == 4
    # round 1 of each target and of the sweep's n60 selection (n120 is digits' 1k regime); later rounds
    # follow from its decision
    assert stats["decide"] == 3


def test_method_lr_change_reruns_that_method_and_aggregation_only(finished):
    wd, _ = finished
    cfg = edit_config(wd, "lr.yaml", lambda c: c["methods"]["lora"]["train"].update(lr=0.01))
    stats = dry_run(wd, cfg)
    assert stats == {"train": 4, "report_main": 1, "report_metrics": 1, "report_start": 1, "report_claims": 1}, stats  # LoRA: 2 targets x 2 seeds


def test_adding_a_seed_trains_only_the_new_seeds_runs(finished):
    wd, _ = finished
    cfg = edit_config(wd, "seed.yaml", lambda c: c.update(seeds=[*c["seeds"], 2]))
    stats = dry_run(wd, cfg)
    n_eps = sum(len(s) for s in epsilon_sets_of(wd, [0.0, 0.01, 1.0]).values())  # the epsilons' other sets
    # seed 2 only: every method on both targets (5 x 2), the sweep's two methods at two sizes (2 x 2), Multi-LoRA
    # once, each other epsilon set once; selection (first seed), tuning, data and the backbone stay; the tables
    assert stats == {"train": 10, "train_sweep": 4, "multilora": 1, "multilora_ablation": 3, "train_epsilon": n_eps,
                     "report_main": 1, "report_metrics": 1, "report_start": 1,
                     "report_sweep": 1, "report_multilora": 1, "report_epsilon": 1, "report_claims": 1}, stats  # fmt: skip
    p = smk(wd, "--dry-run", config=cfg)
    outputs = " ".join(re.findall(r"output: (.+)", p.stdout))
    assert set(re.findall(r"seed(\d+)", outputs)) == {"2"}, outputs


def test_method_param_change_reruns_that_method_and_aggregation_only(finished):
    wd, _ = finished
    cfg = edit_config(wd, "rank.yaml", lambda c: c["methods"]["lora"]["params"].update(rank=2))
    assert dry_run(wd, cfg) == {"train": 4, "report_main": 1, "report_metrics": 1, "report_start": 1, "report_claims": 1}


def test_grid_change_reruns_that_methods_tuning_and_runs_only(finished):
    wd, _ = finished
    cfg = edit_config(wd, "grid.yaml", lambda c: c["methods"]["lp"]["grid"].update(lr=[0.001, 0.01]))
    stats = dry_run(wd, cfg)
    # LP: a tuning job per target, its final runs and its sweep runs (LP is in the sweep)
    assert stats == {"tune": 2, "train": 4, "train_sweep": 4, "report_main": 1, "report_metrics": 1, "report_start": 1, "report_sweep": 1,
                     "report_grid": 1, "report_claims": 1}, stats


def test_sweep_selects_blocks_per_size(finished):
    from safetensors import safe_open

    wd, _ = finished
    res = wd / "results/test"
    # n60: its own selection on its 60 training images; n120 has the 1k regime's data (digits' train_size 120)
    n60 = json.loads((res / "select/digits/n60/seed0/selected.json").read_text())
    k1 = json.loads((res / "select/digits/seed0/selected.json").read_text())
    assert n60["done"] and not (res / "select/digits/n120").exists()
    r1 = json.loads((res / "select/digits/n60/seed0/round1_shard0.json").read_text())
    assert r1["target"] == "digits" and r1["kind"] == "greedy"
    # the n60 regime shares the 1k regime's validation split; its training images are the first 60 of the 1k's
    with safe_open(str(wd / "data/prepared/test/digits/n60.safetensors"), "pt") as a, \
            safe_open(str(wd / "data/prepared/test/digits/1k.safetensors"), "pt") as b:
        assert a.get_tensor("val_idx").tolist() == b.get_tensor("val_idx").tolist()
        assert a.get_tensor("train_idx").tolist() == b.get_tensor("train_idx")[:60].tolist()
    # each size's SubTuning runs fine-tuned that size's blocks, and sweep.csv says which
    for size, state in ((60, n60), (120, k1)):
        for seed in (0, 1):
            run = json.loads((res / f"sweep/digits/n{size}/subtuning/seed{seed}.json").read_text())
            assert run["method_params"]["blocks"] == state["selected"] and run["train_size"] == size
    import pandas as pd

    sweep = pd.read_csv(res / "tables/sweep.csv", keep_default_na=False)
    got = dict(zip(zip(sweep["method"], sweep["train_size"]), sweep["blocks"]))
    assert got[("subtuning", 60)] == ("+".join(n60["selected"]) or "(lp)")
    assert got[("subtuning", 120)] == ("+".join(k1["selected"]) or "(lp)")
    assert got[("lp", 60)] == got[("lp", 120)] == ""


def test_final_data_change_reruns_the_final_runs_only(finished):
    wd, _ = finished
    cfg = edit_config(wd, "tv.yaml", lambda c: c.update(final_data="train+val"))
    n_eps = sum(len(s) for s in epsilon_sets_of(wd, [0.0, 0.01, 1.0]).values())  # the epsilons' other sets
    # 5 methods x 2 targets x 2 seeds, and the epsilon sets' runs (SubTuning's final runs)
    assert dry_run(wd, cfg) == {"train": 20, "train_epsilon": 2 * n_eps, "report_main": 1, "report_metrics": 1, "report_start": 1, "report_epsilon": 1,
                                "report_claims": 1}


def test_cv_data_change_reruns_the_scoring_only(finished):
    wd, _ = finished
    cv = edit_config(wd, "cv.yaml", lambda c: c["selection"].update(scoring="cv", folds=2))
    cvtv = edit_config(wd, "cvtv.yaml", lambda c: c["selection"].update(scoring="cv", folds=2, cv_data="train+val"))
    # (a dry run sees round 1 only: the selection checkpoint decides the rest)
    for cfg in (cv, cvtv):
        p = smk(wd, "--dry-run", "--printshellcmds", config=cfg)
        stats = job_stats(p.stdout + p.stderr)
        assert stats["score_round"] == 3 and stats["score_surgical"] == 2 and stats["score_pairs"] == 1, stats
        assert ("--cv-data train+val" in p.stdout) == (cfg == cvtv)
        assert not {"prepare", "pretrain", "tune"} & set(stats), stats


def test_per_target_override_reruns_that_targets_jobs_only(finished):
    wd, _ = finished
    cfg = edit_config(wd, "pt.yaml", lambda c: c["targets"]["fmnist-new"].update(
        methods={"lora": {"train": {"lr": 0.01}, "params": {"rank": 2}}}))
    p = smk(wd, "--dry-run", "--printshellcmds", config=cfg)
    assert job_stats(p.stdout + p.stderr) == {"train": 2, "report_main": 1, "report_metrics": 1, "report_start": 1, "report_claims": 1}  # LoRA, fmnist-new, 2 seeds
    cmds = [l for l in p.stdout.splitlines() if " -m subtune train " in l and "--method lora" in l]
    assert len(cmds) == 2 and all("fmnist-new" in c for c in cmds)
    # the job receives the merged values: the target's lr and rank over the method's and the top-level config
    for c in cmds:
        train = json.loads(re.search(r"--train '([^']*)'", c).group(1))
        assert train == {"epochs": 2, "lr": 0.01, "weight_decay": 0.01, "batch_size": 32, "optimizer": "adamw",
                         "schedule": "cosine", "augment": "none"}
        assert json.loads(re.search(r"--method-params '([^']*)'", c).group(1)) == {"rank": 2, "alpha": 4}
    # a per-target grid: that target's tuning and what depends on it (digits is the sweep's target; LP is swept)
    cfg = edit_config(wd, "ptg.yaml", lambda c: c["targets"]["digits"].update(
        methods={"lp": {"grid": {"lr": [0.001, 0.01]}}}))
    assert dry_run(wd, cfg) == {"tune": 1, "train": 2, "train_sweep": 4, "report_main": 1, "report_metrics": 1, "report_start": 1, "report_sweep": 1,
                                "report_grid": 1, "report_claims": 1}


def test_final_training_on_train_and_val(finished, tmp_path):
    """final_data: train+val, run for real on a copy: the final runs train on train+val, tuning on train."""
    src, _ = finished
    wd = tmp_path / "wf"
    shutil.copytree(src, wd, symlinks=True)
    cfg = edit_config(wd, "tv.yaml", lambda c: c.update(final_data="train+val"))
    smk(wd, "--", "results/test/runs/digits/lp/seed0.json", config=cfg)  # "--": not a second --configfile
    run = json.loads((wd / "results/test/runs/digits/lp/seed0.json").read_text())
    assert run["train_data"] == "train+val" and run["train_size"] == 180  # 120 train + 60 val
    assert "val_acc" not in run and "test_acc" in run
    tuned = json.loads((wd / "results/test/tune/digits/lp.json").read_text())
    assert [r["train_size"] for r in tuned["results"]] == [120, 120]  # tuning never trains on val
    assert run["train"]["lr"] == tuned["chosen"]["train"]["lr"]
    assert "reused" not in run  # the tuning run trained on train alone: nothing to reuse


def test_multilora_change_reruns_multilora_only(finished):
    wd, _ = finished
    cfg = edit_config(wd, "ml.yaml", lambda c: c["multilora"]["params"].update(rank=2))
    # the comparison, the two ablations at that rank and the rank-4 row (rank 2 is now the Multi-LoRA row)
    assert dry_run(wd, cfg) == {"multilora": 2, "multilora_ablation": 6, "report_multilora": 1, **CONFIG_HASH_TABLES}
    # another rank in the list: only its runs
    cfg = edit_config(wd, "mlr.yaml", lambda c: c["multilora"]["ablations"].update(ranks=[2, 4, 16]))
    assert dry_run(wd, cfg) == {"multilora_ablation": 2, "report_multilora": 1, **CONFIG_HASH_TABLES}
    # dropping an ablation reruns the table only
    cfg = edit_config(wd, "mls.yaml", lambda c: c["multilora"]["ablations"].update(sequential=False))
    assert dry_run(wd, cfg) == {"report_multilora": 1, **CONFIG_HASH_TABLES}


def test_multilora_ablations_outputs(finished):
    wd, _ = finished
    res = wd / "results/test"
    for name in ("train_a", "sequential", "rank2"):
        for seed in (0, 1):
            d = json.loads((res / f"multilora/{name}/seed{seed}.json").read_text())
            assert d["ablation"] == name and "separate_lora" not in d
            r = d["multilora"]
            assert (r["train_a"], r["sequential"], r["rank"]) == (name == "train_a", name == "sequential",
                                                                  2 if name == "rank2" else 4)
    md = (res / "tables/multilora.md").read_text()
    for label in ("A trained", "tasks one after another", "rank 2", "rank 4"):
        assert f"| Multi-LoRA, {label} |" in md


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c["selection"].update(epsilonn=0.1), "selection.epsilonn"),
        (lambda c: c["selection"].update(epsilon="small"), "selection.epsilon"),
        (lambda c: c["selection"].pop("k"), "selection.k"),
        (lambda c: c["methods"].update(nosuch={}), "methods.nosuch"),
        (lambda c: c["methods"]["lp"].update(params={"rank": 4}), "'rank'"),
        (lambda c: c["targets"].update(cifar1000={}), "targets.cifar1000"),
        (lambda c: c["methods"]["lp"]["grid"].update(rnk=[4]), "methods.lp.grid: 'rnk'"),
        (lambda c: c["methods"]["lora"].update(grid={"alpha": [-1]}), "methods.lora.grid point alpha=-1"),
        (lambda c: c["multilora"].update(targets=["digits", "cifar9"]), "multilora.targets: 'cifar9'"),
        (lambda c: c["targets"]["digits"].update(methods={"nosuch": {}}), "targets.digits.methods.nosuch"),
        (lambda c: c["targets"]["digits"].update(methods={"lp": {"train": {"lrr": 1}}}),
         "targets.digits.methods.lp.train.lrr"),
        (lambda c: c.update(final_data="all"), "final_data"),
        (lambda c: c["selection"].update(cv_data="train+val"), "selection.cv_data"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, edit, needle):
    wd = workdir(tmp_path)
    cfg = edit_config(wd, "bad.yaml", edit)
    p = smk(wd, config=cfg, check=False)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert needle in out and "config error" in out
    assert not (wd / "results").exists() and not (wd / "data").exists()


def test_fast_path_is_the_default_and_can_be_turned_off(finished):
    wd, _ = finished
    cfg = edit_config(wd, "slow.yaml", lambda c: c["selection"].update(fast=False))
    p = smk(wd, "--dry-run", "--printshellcmds", config=cfg)
    stats = job_stats(p.stdout + p.stderr)
    assert {"score_round", "score_surgical", "score_pairs"} <= set(stats)
    assert "--no-fast" in p.stdout and "prepare" not in stats and "pretrain" not in stats
    default = smk(wd, "--dry-run", "--printshellcmds", "--forceall", config="configs/test.yaml")
    assert "subtune score" in default.stdout and "--no-fast" not in default.stdout


def main_cell(wd: Path) -> tuple[str, str]:
    """A cell of the finished run's main table, from tables/main.csv: FT's label and its first target's
    ``mean ± std``."""
    import pandas as pd

    from subtune.methods import method_label

    main = pd.read_csv(wd / "results/test/tables/main.csv")
    ft = main[main["method"] == "ft"].iloc[0]
    return method_label("ft"), f"{ft['test_acc_mean']:.2f} ± {ft['test_acc_std']:.2f}"


def claim_verdict(wd: Path) -> str:
    """The start page's line of claim 1 (SubTuning ≥ FT) up to its first verdict, from tables/claims.csv."""
    import pandas as pd

    claims = pd.read_csv(wd / "results/test/tables/claims.csv", dtype={"claim_id": str})
    first = claims[claims["claim_id"] == "1"].iloc[0]
    return f"Claim 1, {first['claim']} ({first['source']}): {first['verdict']}"


def test_html_report(finished):
    """The report's start page quotes the results (the workflow wrote it; the Snakefile's `report:` reads it), and
    every table is a page of its own inside the report."""
    wd, _ = finished
    start = (wd / "results/test/report/start.rst").read_text()
    label, cell = main_cell(wd)
    assert f"* - {label}" in start and cell in start and claim_verdict(wd) in start
    smk(wd, "--report", "report.html")
    html = (wd / "report.html").read_text(errors="replace")
    assert "main.html" in html and "profile_digits.png" in html and "data:text/html" in html
    assert json.dumps(cell).strip('"') in html  # in the description, which the page holds as JSON


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of the report: drives the report app through its own navigation functions (the
# ones its menu entries and links call), and records the text each view rendered and the decoded size
# of each figure, in a hidden element that --dump-dom then prints.
REPORT_DRIVER = """
<script>
window.addEventListener("load", async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const views = document.createElement("div");
  views.id = "ux-views";
  views.hidden = true;
  const note = (kind, key, text) => {
    const d = document.createElement("pre");
    d.dataset.kind = kind; d.dataset.key = key; d.textContent = text;
    views.appendChild(d);
  };
  await sleep(500);
  note("start", "", document.querySelector("#app").innerText);
  for (const cat of Object.keys(categories)) {
    app.setView({navbarMode: "menu"}); await sleep(300);  // back to the menu, as a reader would
    app.showCategory(cat); await sleep(300);
    note("category", cat, document.querySelector("#app").innerText);
  }
  for (const [path, res] of Object.entries(results)) {
    app.showResultInfo(path); await sleep(300);
    note("result", path, document.querySelector("#app").innerText);
    note("mime", path, res.mime_type);
    if (res.mime_type === "image/png") {
      app.setView({content: "img", contentPath: res.data_uri, resultPath: path}); await sleep(500);
      const img = document.querySelector("#app img[src^='data:image/png']");
      note("img", path, img && img.complete ? img.naturalWidth + "x" + img.naturalHeight : "missing");
    }
    if (res.mime_type === "text/html") {  // a table's page: shown in a frame; its first table's rows, cells by tabs
      app.setView({content: "html", contentPath: res.data_uri, resultPath: path}); await sleep(300);
      const frame = document.querySelector("#app iframe[src^='data:text/html']");
      const bytes = Uint8Array.from(atob(res.data_uri.split(",")[1]), (c) => c.charCodeAt(0));
      const page = new DOMParser().parseFromString(new TextDecoder().decode(bytes), "text/html");
      const table = page.querySelector("table");
      note("html", path, !frame ? "no frame" : !table ? "no table" : [...table.rows].map(
        (r) => [...r.cells].map((c) => c.textContent.trim()).join("\\t")).join("\\n"));
    }
  }
  document.body.appendChild(views);
});
</script>
"""


def rendered_views(html: Path) -> dict[tuple[str, str], str]:
    """Open ``html`` plus REPORT_DRIVER in headless chromium: {(kind, key): text} of each rendered view."""
    import html as html_mod

    driven = html.with_name("report_driven.html")
    head, tag, tail = html.read_text(errors="replace").rpartition("</body>")  # the last: JS sources hold others
    driven.write_text(head + REPORT_DRIVER + tag + tail)
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=60000",
                        "--dump-dom", driven.as_uri()], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    views = re.findall(r'<pre data-kind="(\w+)" data-key="([^"]*)">(.*?)</pre>', p.stdout, re.S)
    assert views, f"the report did not render: {p.stdout[:2000]}"
    return {(k, html_mod.unescape(key)): html_mod.unescape(text) for k, key, text in views}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: make chromium (apt-get install chromium)")
def test_html_report_renders_with_captions_in_a_browser(finished):
    """The report as a browser shows it: the description with the results quoted, every category with its files,
    each file's caption (what it shows, how it was made), every table as a page and every figure decoded."""
    wd, _ = finished
    smk(wd, "--report", "report.html")
    views = rendered_views(wd / "report.html")
    start = views[("start", "")]
    assert "subtune: test" in start and "How the numbers were made" in start
    assert "Backbone resnet18 (pretrained here on fmnist-source)" in start and "2 seed(s) (0, 1)" in start
    # the start page quotes the results: a cell of the main table in its row, a claim's verdict
    label, cell = main_cell(wd)
    assert re.search(rf"^{re.escape(label)}\t.*{re.escape(cell)}", start, re.M), start[:3000]
    assert claim_verdict(wd) in " ".join(start.split())
    cats = {"Tables", "Selection", "Fine-tuning profiles", "Pair grid", "Data-size sweep", "Tuning"}
    assert {key for kind, key in views if kind == "category"} == cats
    for cat in cats:
        assert cat in start  # the menu, and the description's list of categories
    listed = {cat: set(re.findall(r"results/test/(\S+)", views[("category", cat)])) for cat in cats}
    # the tables are pages (their Markdown or CSV rendered); main.csv and claims.csv also to download
    assert {"tables/main.html", "tables/main.csv", "tables/claims.html", "tables/claims.csv",
            "tables/multilora.html", "plots/cost.png"} <= listed["Tables"]
    assert not {"tables/main.md", "tables/multilora.md", "tables/multilora.csv"} & listed["Tables"]
    assert "profile_digits.png" in views[("category", "Fine-tuning profiles")]
    assert {"tables/rounds.html", "tables/selection.html", "tables/epsilon.html"} == listed["Selection"]
    assert "pairs_digits.png" in views[("category", "Pair grid")] and "sweep.png" in views[("category", "Data-size sweep")]
    # every table a page inside the report (text/html, shown in a frame), its table there
    pages = {key: text for (kind, key), text in views.items() if kind == "html"}
    mimes = {key: text for (kind, key), text in views.items() if kind == "mime"}
    names = {Path(k).name for k, m in mimes.items() if m == "text/html"}
    assert names == {f.name for f in (wd / "results/test/tables").glob("*.html")} and len(names) == 11, names
    assert all(text not in ("no frame", "no table") for text in pages.values()), pages
    (main_page,) = [text for key, text in pages.items() if key.endswith("tables/main.html")]
    assert re.search(rf"^{re.escape(label)}\t.*{re.escape(cell)}", main_page, re.M), main_page
    want = {  # file -> words from its caption, as rendered (Jinja values filled in)
        "tables/main.html": "Main table of experiment test: test accuracy (%) of each method on each target, "
                            "mean ± std over 2 seed(s)",
        "tables/main.csv": "Made by subtune report main from the final training runs",
        "tables/claims.html": "Claims of the papers against this experiment's results",
        "tables/rounds.html": "Greedy selection rounds (SubTuning)",
        "tables/selection.html": "Block sets selected per seed by greedy forward selection",
        "tables/profile_digits.html": "Fine-tuning profile of target digits (as in SubTuning, Figs. 1-2)",
        "plots/profile_fmnist-new.png": "Fine-tuning profile of target fmnist-new",
        "plots/pairs_digits.png": "Pair grid of target digits",
        "plots/sweep.png": "Data-size sweep (as in SubTuning, Fig. 4)",
        "tables/multilora.html": "No grid: both sides train at fixed values, lr = 0.003, rank = 4, alpha = 4",
    }
    results = {key: text for (kind, key), text in views.items() if kind == "result"}
    for rel, caption in want.items():
        (text,) = [t for k, t in results.items() if k.endswith(rel)]
        assert caption in " ".join(text.split()), (rel, text[:1500])
    for key, text in results.items():  # every file has a caption (headings are upper-cased by the page's CSS)
        caption = re.search(r"DESCRIPTION\s+(.*?)\s+SIZE\s", text, re.S)
        assert caption and len(caption.group(1)) > 100, (key, text[:1500])
    imgs = {key: text for (kind, key), text in views.items() if kind == "img"}
    # every plot the run wrote (profiles, pair grid, sweep, cost, grid curves, ...): each decodes to an image
    assert {Path(k).name for k in imgs} == {f.name for f in (wd / "results/test/plots").glob("*.png")}
    assert len(imgs) >= 6
    for key, size in imgs.items():
        w, h = map(int, size.split("x"))
        assert w > 200 and h > 100, (key, size)
