"""The core library end to end through its CLI, on real data: pretrain, select, train, beat chance.

Also: the selection stages never read the test split.
"""

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from subtune.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,  # pretrains and trains on real data (the module's fixture alone: minutes on 2 cores)
    pytest.mark.skipif(
        not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
        reason="Fashion-MNIST mirror missing: apt-get install dataset-fashion-mnist (make test does)",
    ),
]

TRAIN = json.dumps({"epochs": 3, "lr": 0.002, "batch_size": 32})
SEL = json.dumps({"k": 2, "epsilon": 0.0})
SMALL = {"train_size": 200, "val_size": 100, "test_size": 1000}
TARGETS = {"fmnist-new": (5, SMALL), "fmnist-c": (5, SMALL), "digits": (10, {"train_size": 200, "val_size": 100})}


def cli(*args):
    assert main([str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pipe")
    cli("download", "--dataset", "fashion-mnist", "--out", wd / "raw")
    cli("prepare", "--target", "fmnist-source", "--raw", wd / "raw", "--params",
        json.dumps({"train_size": 3000, "val_size": 300}), "--out", wd / "src.safetensors", "--manifest", wd / "src.json")
    cli("pretrain", "--arch", "resnet18", "--model-kwargs", json.dumps({"channels": [16, 32, 64, 128]}),
        "--data", wd / "src.safetensors", "--manifest", wd / "src.json",
        "--train", json.dumps({"epochs": 3, "lr": 0.003, "batch_size": 64}), "--out", wd / "ckpt.safetensors",
        "--metrics", wd / "pretrain.json")
    for name, (_, params) in TARGETS.items():
        cli("prepare", "--target", name, "--raw", wd / "raw", "--params", json.dumps(params),
            "--out", wd / f"{name}.safetensors", "--manifest", wd / f"{name}.json")
    return wd


def test_pretraining_beats_chance_on_the_source(work):
    meta = json.loads((work / "ckpt.json").read_text())
    assert meta["origin"]["kind"] == "pretrained"
    assert meta["origin"]["source_test_acc"] > 0.6  # 5 classes: chance is 0.2


@pytest.mark.parametrize("target", list(TARGETS))
def test_select_then_train_beats_chance(work, target):
    k, _ = TARGETS[target]
    common = ["--data", work / f"{target}.safetensors", "--manifest", work / f"{target}.json",
              "--checkpoint", work / "ckpt.safetensors", "--train", TRAIN]
    state = None
    for r in (1, 2, 3):
        scores = work / f"{target}_r{r}.json"
        cli("score", "--sets", "greedy", *(["--state", state] if state else []), "--selection", SEL, *common,
            "--out", scores)
        new = work / f"{target}_state{r}.json"
        cli("decide", *(["--state", state] if state else []), "--scores", scores, "--selection", SEL, "--out", new)
        state = new
        if json.loads(new.read_text())["done"]:
            break
    final = json.loads(state.read_text())
    assert final["done"] and 1 <= len(final["selected"]) <= 2
    # the profile (round 1) scored the linear probe and each of the 8 blocks alone
    assert len(json.loads((work / f"{target}_r1.json").read_text())["results"]) == 9
    for method in ("subtuning", "lp"):
        out = work / f"{target}_{method}.json"
        cli("train", "--method", method, "--selection-state", state, *common, "--out", out)
        m = json.loads(out.read_text())
        assert m["test_acc"] > 1.5 / k, (method, m["test_acc"])
    assert json.loads((work / f"{target}_subtuning.json").read_text())["method_params"]["blocks"] == final["selected"]


def test_selection_never_reads_the_test_split(work, monkeypatch):
    # 1. a copy of the prepared data with no test split at all: selection still works
    src = work / "digits.safetensors"
    with safe_open(str(src), framework="pt") as fh:
        kept = {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith("test_")}
    assert set(kept) >= {"train_x", "train_y", "val_x", "val_y"}
    notest = work / "digits_notest.safetensors"
    save_file(kept, str(notest))
    common = ["--data", notest, "--manifest", work / "digits.json", "--checkpoint", work / "ckpt.safetensors",
              "--train", json.dumps({"epochs": 1, "batch_size": 64})]
    cli("score", "--sets", "surgical", *common, "--out", work / "surg.json")
    cli("score", "--sets", "greedy", "--selection", SEL, *common, "--out", work / "nt_r1.json")
    cli("decide", "--scores", work / "nt_r1.json", "--selection", SEL, "--out", work / "nt_state1.json")
    # 2. and what the stages ask the loader for never includes it
    import subtune.data.prepared as prepared

    asked = []
    real = prepared.load_prepared
    monkeypatch.setattr(prepared, "load_prepared", lambda p, splits=("train", "val"), **kw: asked.append(splits) or real(p, splits, **kw))
    cli("score", "--sets", "greedy", "--state", work / "nt_state1.json", "--selection", SEL, *common,
        "--out", work / "nt_r2.json")
    assert asked and all("test" not in s for s in asked)
    # 3. whereas final training does need it (and says so in one line)
    assert main([str(a) for a in ("train", "--method", "lp", *common, "--out", work / "nt_lp.json")]) == 2


def test_tuning_chooses_on_validation_and_never_reads_the_test_split(work, monkeypatch):
    import subtune.data.prepared as prepared

    src = work / "digits.safetensors"
    with safe_open(str(src), framework="pt") as fh:
        kept = {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith("test_")}
    notest = work / "digits_notest_tune.safetensors"
    save_file(kept, str(notest))
    asked = []
    real = prepared.load_prepared
    monkeypatch.setattr(prepared, "load_prepared", lambda p, splits=("train", "val"), **kw: asked.append(splits) or real(p, splits, **kw))
    common = ["--manifest", work / "digits.json", "--checkpoint", work / "ckpt.safetensors",
              "--train", json.dumps({"epochs": 1, "batch_size": 64, "lr": 0.001})]
    out = work / "tune_lora.json"
    cli("tune", "--method", "lora", "--method-params", json.dumps({"rank": 4}),
        "--grid", json.dumps({"lr": [0.0001, 0.01], "rank": [2, 4]}), "--data", notest, *common, "--out", out)
    assert asked and all("test" not in s for s in asked)
    t = json.loads(out.read_text())
    # the product, keys sorted (lr, rank), values in the order given
    assert [(r["train"]["lr"], r["params"]["rank"]) for r in t["results"]] == [(0.0001, 2), (0.0001, 4), (0.01, 2), (0.01, 4)]
    accs = [r["val_acc"] for r in t["results"]]
    assert t["chosen_index"] == accs.index(max(accs))
    assert t["chosen"] == {"train": t["results"][t["chosen_index"]]["train"], "params": t["results"][t["chosen_index"]]["params"]}
    # rank 2 trains fewer parameters than rank 4: the method parameter reached the method
    assert t["results"][0]["trainable_params"] < t["results"][1]["trainable_params"]
    # the final run applies the chosen values and records them
    final = work / "tuned_lora_final.json"
    monkeypatch.setattr(prepared, "load_prepared", real)
    cli("train", "--method", "lora", "--method-params", json.dumps({"rank": 4}), "--tuned", out,
        "--data", src, *common, "--out", final)
    m = json.loads(final.read_text())
    assert m["train"]["lr"] == t["chosen"]["train"]["lr"]
    assert m["method_params"]["rank"] == t["chosen"]["params"]["rank"]
    assert m["tuned"]["grid"] == {"lr": [0.0001, 0.01], "rank": [2, 4]}
    # a tuning file for another method is refused
    assert main([str(a) for a in ("train", "--method", "ssf", "--tuned", out, "--data", src, *common,
                                  "--out", work / "x.json")]) == 2


def _union_file(work, name):
    """A copy of the prepared target whose train split is train then val (val kept as it is)."""
    import torch

    with safe_open(str(work / f"{name}.safetensors"), framework="pt") as fh:
        t = {k: fh.get_tensor(k) for k in fh.keys()}
    for f in ("x", "y", "idx"):
        t[f"train_{f}"] = torch.cat([t[f"train_{f}"], t[f"val_{f}"]])
    out = work / f"{name}_union.safetensors"
    save_file(t, str(out))
    return out, t


def test_final_training_on_train_and_val(work, monkeypatch, capsys):
    import subtune.data.prepared as prepared

    union, t = _union_file(work, "digits")
    common = ["--manifest", work / "digits.json", "--checkpoint", work / "ckpt.safetensors",
              "--train", json.dumps({"epochs": 2, "batch_size": 32, "lr": 0.003}), "--seed", 3]
    asked = []
    real = prepared.load_prepared
    monkeypatch.setattr(prepared, "load_prepared", lambda p, splits=("train", "val"), **kw: asked.append(splits) or real(p, splits, **kw))
    cli("train", "--method", "ft", "--data", work / "digits.safetensors", "--train-splits", "train,val", *common,
        "--out", work / "tv.json")
    assert asked == [("train", "val", "test")]  # the test split read once, with the others
    monkeypatch.setattr(prepared, "load_prepared", real)
    m = json.loads((work / "tv.json").read_text())
    assert m["train_data"] == "train+val" and m["train_size"] == 300  # 200 train + 100 val
    assert "val_acc" not in m and all("val_acc" not in row for row in m["history"])
    # exactly training on a split that is the union (train first, then val)
    cli("train", "--method", "ft", "--data", union, *common, "--out", work / "u.json")
    u = json.loads((work / "u.json").read_text())
    assert u["train_data"] == "train" and u["train_size"] == len(t["train_y"]) == 300
    assert m["test_acc"] == u["test_acc"] and [r["train_loss"] for r in m["history"]] == [r["train_loss"] for r in u["history"]]
    # the default trains on the train split alone, validating every epoch
    cli("train", "--method", "ft", "--data", work / "digits.safetensors", *common, "--out", work / "t.json")
    d = json.loads((work / "t.json").read_text())
    assert d["train_data"] == "train" and d["train_size"] == 200 and "val_acc" in d
    # no validation split is left to choose an epoch on (checked by name, before anything is loaded)
    bad = ["--train", json.dumps({"epochs": 2, "epoch_select": "best_val"})]
    capsys.readouterr()
    assert main([str(a) for a in ("train", "--method", "ft", "--data", work / "digits.safetensors", "--train-splits",
                                  "train,val", *common, *bad, "--out", work / "x.json")]) == 2
    assert "epoch_select best_val" in capsys.readouterr().err
    assert main([str(a) for a in ("train", "--method", "ft", "--data", work / "digits.safetensors", "--train-splits",
                                  "val", *common, "--out", work / "x.json")]) == 2


def test_cross_validation_over_train_and_val(work, capsys):
    union, _ = _union_file(work, "digits")
    sel = json.dumps({"k": 1, "epsilon": 0.0, "scoring": "cv", "folds": 3})
    common = ["--sets", "explicit", "--candidate", "layer4.1", "--candidate", "", "--manifest", work / "digits.json",
              "--checkpoint", work / "ckpt.safetensors", "--train", json.dumps({"epochs": 1, "batch_size": 64})]
    cli("score", "--selection", sel, "--data", work / "digits.safetensors", "--cv-data", "train+val", *common,
        "--out", work / "cv_tv.json")
    cli("score", "--selection", sel, "--data", union, *common, "--out", work / "cv_u.json")
    cli("score", "--selection", sel, "--data", work / "digits.safetensors", *common, "--out", work / "cv_t.json")
    tv, u, t = (json.loads((work / f"cv_{k}.json").read_text()) for k in ("tv", "u", "t"))
    assert (tv["cv_data"], tv["train_size"]) == ("train+val", 300) and (t["cv_data"], t["train_size"]) == ("train", 200)
    # the folds run over the 300: the same scores as a file whose train split is the union
    assert [r["fold_accs"] for r in tv["results"]] == [r["fold_accs"] for r in u["results"]]
    assert [r["fold_accs"] for r in tv["results"]] != [r["fold_accs"] for r in t["results"]]
    # with scoring on the validation split, cv data makes no sense: refused in one line
    capsys.readouterr()
    assert main([str(a) for a in ("score", "--selection", json.dumps({"k": 1, "epsilon": 0.0, "scoring": "val"}),
                                  "--data", work / "digits.safetensors", "--cv-data", "train+val", *common,
                                  "--out", work / "x.json")]) == 2
    assert "--cv-data train+val needs scoring cv" in capsys.readouterr().err


def test_tuning_records_its_training_size(work):
    out = work / "tune_size.json"
    cli("tune", "--method", "lp", "--grid", json.dumps({"lr": [0.01]}), "--data", work / "digits.safetensors",
        "--manifest", work / "digits.json", "--checkpoint", work / "ckpt.safetensors",
        "--train", json.dumps({"epochs": 1, "batch_size": 64}), "--out", out)
    assert [r["train_size"] for r in json.loads(out.read_text())["results"]] == [200]  # train only, never val
