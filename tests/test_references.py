"""Published numbers beside ours: the reference files, matching, and the tables' columns."""

import json
from pathlib import Path

import pandas as pd
import pytest

from subtune import SubtuneError
from subtune.report import attach_published, load_references, main_table, multilora

ROOT = Path(__file__).resolve().parents[1]


def test_every_reference_row_names_its_source():
    refs = load_references(sorted((ROOT / "references").glob("*.csv")))
    assert len(refs) >= 19 + 4
    assert refs[["paper", "table", "arxiv"]].notna().all().all()
    ssf = refs[(refs["method"] == "ssf") & refs["target"].str.startswith("vtab-")]
    assert len(ssf) == 19 and round(ssf["value"].mean(), 2) == 73.10  # the SSF paper's mean of 19


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
                     backbone="vit_base_patch16_224.orig_in21k")
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
