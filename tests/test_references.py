"""Published numbers beside ours: the reference files, matching, and the tables' columns."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from subtune import SubtuneError
from subtune.report import attach_published, load_references, main_table, multilora
from subtune.report.vtab import VTAB_GROUP_OF

ROOT = Path(__file__).resolve().parents[1]


def test_every_reference_row_names_its_source():
    refs = load_references(sorted((ROOT / "references").glob("*.csv")))
    assert len(refs) >= 19 + 4
    assert refs[["paper", "table", "arxiv"]].notna().all().all()
    ssf = refs[(refs["method"] == "ssf") & (refs["source"] == "SSF paper")]
    assert len(ssf) == 19 and round(ssf["value"].mean(), 2) == 73.10  # the SSF paper's mean of 19


# the means of the 19 tasks each file's header states: V-PETL Bench's README Mean column; PETL_Vision's (none is
# committed beside its final_result.json files) as computed from them
MEANS = {"vpetl-bench-vtab1k.csv": {"ft": 65.57, "lp": 52.94, "bitfit": 62.05, "lora": 72.25, "ssf": 73.10},
         "petl-vision-vtab1k.csv": {"ft": 58.49, "lp": 55.86, "bitfit": 72.18, "lora": 72.91, "ssf": 72.98}}


@pytest.mark.parametrize("name", sorted(MEANS))
def test_per_task_rows_reproduce_the_published_means(name):
    """Every method of the file has one row per VTAB-1k task, and their mean is the one the source states (to 0.01),
    which the header repeats: a mistyped or missing task shows."""
    f = ROOT / "references" / name
    refs = load_references([f])
    for method, mean in MEANS[name].items():
        rows = refs[refs["method"] == method]
        assert sorted(rows["target"]) == sorted(VTAB_GROUP_OF), (name, method)
        assert round(rows["value"].mean(), 2) == mean, (name, method, rows["value"].mean())
        assert f"{mean:.2f}" in "".join(line for line in f.read_text().splitlines() if line.startswith("#"))
    assert refs["source"].nunique() == 1 and refs["table"].notna().all()


def test_vpetl_rows_say_what_they_copied():
    """V-PETL Bench's FT and LP rows are VPT's (marked in the note); its SSF row is the SSF paper's, value for value,
    so it carries SSF's backbone (AugReg) while the benchmark's own code loads the original ImageNet-21k release."""
    v = load_references([ROOT / "references/vpetl-bench-vtab1k.csv"])
    copied = v[v["note"].fillna("").str.contains("copied from VPT")]
    assert set(copied["method"]) == {"ft", "lp"} and len(copied) == 38
    ssf = load_references([ROOT / "references/ssf-vtab1k.csv"])
    mine = v[v["method"] == "ssf"].set_index("target")["value"]
    assert mine.to_dict() == ssf.set_index("target")["value"].to_dict()
    assert set(v[v["method"] == "ssf"]["backbone"]) == {"vit_base_patch16_224.augreg_in21k"}
    assert set(v[v["method"] != "ssf"]["backbone"]) == {"vit_base_patch16_224.orig_in21k"}
    p = load_references([ROOT / "references/petl-vision-vtab1k.csv"])
    assert set(p["backbone"]) == {"vit_base_patch16_224.orig_in21k"}


def test_a_row_without_a_source_is_refused(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("backbone,target,method,train_size,metric,value,paper,table,arxiv,note\n"
                 "resnet50,cifar10,ft,,test_acc,90.0,,,,\n")
    with pytest.raises(SubtuneError, match="row 2 has no source"):
        load_references([f])
    with pytest.raises(SubtuneError, match="missing references file"):
        load_references([tmp_path / "nope.csv"])


def _run(tmp_path, method, target, seed, acc):
    f = tmp_path / f"{method}_{target}_{seed}.json"
    f.write_text(json.dumps({"method": method, "target": target, "seed": seed, "test_acc": acc, "val_acc": acc,
                             "trainable_params": 10, "total_params": 100}))
    return f


def test_main_table_has_published_and_difference(tmp_path):
    runs = [_run(tmp_path, "ssf", "vtab-dtd", s, a) for s, a in ((0, 0.70), (1, 0.72))]
    runs.append(_run(tmp_path, "ft", "vtab-dtd", 0, 0.6))
    refs = [ROOT / "references/ssf-vtab1k.csv"]
    out = main_table(runs, tmp_path / "m.csv", tmp_path / "m.md", references=refs,
                     backbone="vit_base_patch16_224.augreg_in21k")
    row = out[out["method"] == "ssf"].iloc[0]
    assert row["published"] == 75.1 and row["diff"] == pytest.approx(71.0 - 75.1)
    assert pd.isna(out[out["method"] == "ft"].iloc[0]["published"])
    md = (tmp_path / "m.md").read_text()
    assert "## Published numbers beside ours" in md and "75.10" in md and "-4.10" in md
    csv = pd.read_csv(tmp_path / "m.csv")
    assert {"published", "diff", "published_source"} <= set(csv.columns)
    # another backbone: nothing matches
    other = main_table(runs, tmp_path / "o.csv", tmp_path / "o.md", references=refs, backbone="resnet50.tv2_in1k")
    assert other["published"].isna().all() and "Published numbers" not in (tmp_path / "o.md").read_text()


def test_match_ignores_the_pretrained_tag_only_when_the_reference_has_none(tmp_path):
    refs = pd.DataFrame([{"backbone": "resnet50", "target": "t", "method": "ft", "train_size": pd.NA,
                          "metric": "test_acc", "value": 80.0, "paper": "p", "table": "1", "arxiv": "x"}])
    summ = pd.DataFrame([{"method": "ft", "target": "t", "test_acc_mean": 81.0}])
    assert attach_published(summ, refs, "resnet50.tv2_in1k")["diff"].iloc[0] == 1.0
    refs.loc[0, "backbone"] = "resnet50.a1_in1k"
    assert pd.isna(attach_published(summ, refs, "resnet50.tv2_in1k")["published"].iloc[0])


AUGREG, ORIG = "vit_base_patch16_224.augreg_in21k", "vit_base_patch16_224.orig_in21k"
VTAB_REFS = [ROOT / f"references/{n}.csv" for n in ("ssf-vtab1k", "vpetl-bench-vtab1k", "petl-vision-vtab1k")]


def test_each_source_gets_its_own_column(tmp_path):
    """Two sources for one backbone, target and method (SSF's paper and V-PETL Bench) sit side by side; a source
    with other pretrained weights of the same architecture gets a column saying so; ``published`` (the VTAB
    averages' and the sweep's) stays the first source listed with our weights."""
    runs = [_run(tmp_path, "ssf", "vtab-dtd", 0, 0.70), _run(tmp_path, "lora", "vtab-dtd", 0, 0.70)]
    out = main_table(runs, tmp_path / "m.csv", tmp_path / "m.md", references=VTAB_REFS, backbone=AUGREG)
    ssf, lora = (out[out["method"] == m].iloc[0] for m in ("ssf", "lora"))
    assert ssf["published"] == 75.1 and ssf["published_source"].startswith("SSF (Lian et al. 2022)")
    assert ssf["published: SSF paper"] == 75.1 and ssf["published: V-PETL Bench"] == 75.1
    assert ssf["published: PETL_Vision, orig_in21k weights"] == 68.35
    assert pd.isna(lora["published"]) and pd.isna(lora["published: V-PETL Bench"])  # no LoRA number for AugReg
    assert lora["published: V-PETL Bench, orig_in21k weights"] == 69.4
    md = (tmp_path / "m.md").read_text()
    assert ("| method | target | ours | SSF paper | V-PETL Bench, orig_in21k weights | V-PETL Bench | "
            "PETL_Vision, orig_in21k weights |") in md
    assert "| SSF | vtab-dtd | 70.00 | 75.10 (-5.10) | – | 75.10 (-5.10) | 68.35 (+1.65) |" in md
    assert "| LoRA | vtab-dtd | 70.00 | – | 69.40 (+0.60) | – | 68.99 (+1.01) |" in md
    assert "**PETL_Vision, orig_in21k weights**: PETL_Vision (Mai et al., CVPR 2025)" in md
    assert "published: SSF paper" in pd.read_csv(tmp_path / "m.csv").columns
    # with the original release's weights the roles swap: V-PETL Bench's own rows are the first match
    orig = main_table(runs, tmp_path / "o.csv", tmp_path / "o.md", references=VTAB_REFS, backbone=ORIG)
    lora = orig[orig["method"] == "lora"].iloc[0]
    assert lora["published"] == 69.4 and lora["published: V-PETL Bench"] == 69.4
    assert "published: SSF paper, augreg_in21k weights" in orig.columns


def test_a_file_without_a_source_column_names_the_paper():
    refs = load_references([ROOT / "references/multilora.csv"])
    assert (refs["source"] == refs["paper"]).all()


def test_the_vtab_means_of_each_source(tmp_path):
    """main.md's published section ends with the mean of our VTAB tasks for each source that has all of them:
    with all 19, the means the sources publish."""
    runs = [_run(tmp_path, m, t, 0, 0.7) for m in ("ft", "ssf") for t in VTAB_GROUP_OF]
    main_table(runs, tmp_path / "m.csv", tmp_path / "m.md", references=VTAB_REFS, backbone=AUGREG)
    md = (tmp_path / "m.md").read_text()
    assert "| FT | VTAB-1k mean of tasks | 70.00 | – | 65.57 (+4.43) | – | 58.49 (+11.51) |" in md
    assert "| SSF | VTAB-1k mean of tasks | 70.00 | 73.10 (-3.10) | – | 73.10 (-3.10) | 72.98 (-2.98) |" in md


def test_multilora_table_lists_the_papers_numbers_as_not_comparable(tmp_path):
    d = {"seed": 0, "tasks": ["a", "b"]}
    for kind, accs, trained, stored in (("multilora", (0.8, 0.6), 300, 400), ("separate_lora", (0.82, 0.62), 500, 500)):
        d[kind] = {"per_task": {t: {"val_acc": a, "test_acc": a} for t, a in zip("ab", accs)},
                   "params_trained": trained, "params_stored": stored}
    f = tmp_path / "ml.json"
    f.write_text(json.dumps(d))
    out = multilora([f], tmp_path / "ml.csv", tmp_path / "ml.md", references=[ROOT / "references/multilora.csv"],
                    backbone="resnet18")
    mean = out[(out["kind"] == "multilora") & (out["task"] == "mean")].iloc[0]
    assert mean["test_acc_mean"] == pytest.approx(70.0) and mean["params_stored"] == 400
    md = (tmp_path / "ml.md").read_text()
    assert "not comparable" in md and "85.1" in md and "Multi-LoRA" in md


# ---------------------------------------------------------------- every paper config gets its published rows
CONFIGS = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "configs").glob("*.yaml"))}


def _fake_runs(tmp_path, pairs):
    return [_run(tmp_path, m, t, 0, 0.5) for m, t in pairs]


@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if c.get("references")])
def test_every_config_with_references_gets_its_published_rows(name, tmp_path):
    """The table the workflow makes for the config shows every published row it lists: matched on the config's
    backbone.arch (main table, VTAB averages), or listed as not comparable (Multi-LoRA's language models)."""
    cfg = CONFIGS[name]
    arch, files = cfg["backbone"]["arch"], [ROOT / r for r in cfg["references"]]
    refs = load_references(files)
    if "multilora" in cfg:  # the Multi-LoRA table (report multilora): one result per seed
        tasks = cfg["multilora"]["targets"]
        d = {"seed": 0, "tasks": tasks}
        for kind in ("multilora", "separate_lora"):
            d[kind] = {"per_task": {t: {"val_acc": 0.5, "test_acc": 0.5} for t in tasks},
                       "params_trained": 1, "params_stored": 1}
        f = tmp_path / "ml.json"
        f.write_text(json.dumps(d))
        out = multilora([f], tmp_path / "ml.csv", tmp_path / "ml.md", references=files, backbone=arch)
        md = (tmp_path / "ml.md").read_text()
        matched = out.dropna(subset=["published"])
        shown = md.split("not comparable", 1)[1] if "not comparable" in md else ""
        for _, r in refs.iterrows():  # each row: beside ours, or in the not-comparable list
            assert (len(matched[(matched["kind"] == r["method"]) & (matched["task"] == r["target"])])
                    or (f"{float(r['value']):.1f}" in shown and str(r["backbone"]) in shown)), (name, dict(r))
        return
    pairs = [(m, t) for m in cfg["methods"] for t in cfg["targets"]]
    named = pd.Series([(m, t) in set(pairs) for m, t in zip(refs["method"], refs["target"])], index=refs.index)
    mine = refs[named & (refs["backbone"].str.split(".").str[0] == arch.split(".")[0])]  # the same architecture
    assert len(mine), f"{name}: no reference row names one of its methods and targets"
    out = main_table(_fake_runs(tmp_path, pairs), tmp_path / "m.csv", tmp_path / "m.md", references=files,
                     backbone=arch)
    shown = {(m, t, s, float(v)) for c in out.columns if c.startswith("published: ")
             for m, t, v in zip(out["method"], out["target"], out[c]) if not pd.isna(v)
             for s in [c.removeprefix("published: ").split(", ")[0]]}
    missing = {(m, t, s, v) for m, t, s, v in zip(mine["method"], mine["target"], mine["source"], mine["value"])
               if (m, t, s, float(v)) not in shown}
    assert not missing, f"{name} ({arch}): published rows not shown in their source's column: {sorted(missing)}"
    mine = mine[mine["backbone"].isin([arch, arch.split(".")[0]])]  # our weights: the published column too
    got = out.dropna(subset=["published"])
    missing = set(zip(mine["method"], mine["target"])) - set(zip(got["method"], got["target"]))
    assert not missing, f"{name} ({arch}): published rows not attached: {sorted(missing)}"
    vt = out[out["target"].str.startswith("VTAB-1k mean")]
    for m in set(mine["method"]) & set(vt["method"]):  # a method published on every VTAB task: both averages
        if len(mine[mine["method"] == m]) == len(cfg["targets"]):
            assert vt[vt["method"] == m]["published"].notna().all(), (name, m)


@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if not c.get("references")])
def test_a_config_without_references_leaves_no_published_row_out(name, tmp_path):
    """No reference file matches the backbone of a config that lists none (peft-vtab-dinov2: SSF's numbers are
    AugReg ViT-B/16's, not DINOv2's), so nothing is missing from its tables."""
    cfg = CONFIGS[name]
    refs = load_references(sorted((ROOT / "references").glob("*.csv")))
    summ = pd.DataFrame([{"method": m, "target": t, "test_acc_mean": 50.0}
                         for m in cfg["methods"] for t in cfg["targets"]])
    assert attach_published(summ, refs, cfg["backbone"]["arch"])["published"].isna().all()
