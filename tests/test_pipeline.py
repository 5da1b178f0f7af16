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
pytestmark = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST mirror missing: apt-get install dataset-fashion-mnist (make test does)",
)

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
