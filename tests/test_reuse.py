"""Work not done twice in final and tuning runs (issue 15): a run's frozen prefix computed once
(subtune.prefix.run_start / run_inputs through fit_phases), and the tuning run of the chosen grid point reused
as the selection seed's final run (subtune.reuse: tune --save-chosen, train --reuse-tuned)."""

import json

import pytest
import timm
import torch

import subtune.prefix as prefix_mod
from subtune.cli import main
from subtune.data.prepared import save_prepared
from subtune.methods import fit_phases, get_method
from subtune.models.checkpoint import Checkpoint, build_model, save_checkpoint
from subtune.prefix import run_start
from subtune.train import Preprocess, TrainConfig

KW = {"channels": [8, 16, 32, 64]}
CFG = TrainConfig(epochs=2, lr=3e-3, batch_size=16)


def toy(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 120, (n, 1, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    for i, c in enumerate(y.tolist()):  # learnable: the class is the bright third
        x[i, :, :, c * 10 : c * 10 + 10] += 100
    return x, y


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("reuse")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=5, **KW)
    save_checkpoint(d / "ck.safetensors", model, Checkpoint("resnet18", 5, image_size=32, model_kwargs=KW))
    splits = {}
    for i, (s, n) in enumerate((("train", 48), ("val", 16), ("test", 24))):
        splits[f"{s}_x"], splits[f"{s}_y"] = toy(n, i)
    save_prepared(d / "d.safetensors", d / "d.json", splits, {
        "name": "toy", "classes": ["0", "1", "2"], "num_classes": 3, "channels": 1, "image_size": 32,
        "splits": {"train": 48, "val": 16, "test": 24}, "seed": 0, "params": {}, "inputs": {}})
    return d, splits


def _run(files, method, params, cfg=CFG, cached=True, monkeypatch=None):
    d, s = files
    model, ck = build_model(str(d / "ck.safetensors"), 3, seed=0, **KW)
    m = get_method(method, **params)
    torch.manual_seed(0)
    model = m.wrap(model)
    phases = m.phases(model)
    if not cached:
        monkeypatch.setattr(prefix_mod, "run_start", lambda *a: None)
    out = fit_phases(model, phases, Preprocess(ck.mean, ck.std, ck.in_chans), (s["train_x"], s["train_y"]),
                     {"val": (s["val_x"], s["val_y"])}, cfg, 0, final_evals={"test": (s["test_x"], s["test_y"])})
    monkeypatch.undo() if monkeypatch is not None else None
    return out, model


@pytest.mark.parametrize("method, params, start", [
    ("lp", {}, 8), ("subtuning", {"blocks": ["layer3.0"]}, 4), ("subtuning", {"blocks": ["layer4.1", "layer2.1"]}, 3),
    ("surgical", {"group": 3}, 6), ("lpft", {}, 8),
])
def test_a_cached_prefix_run_is_the_runs_own_computation(files, method, params, start, monkeypatch):
    """Same accuracies, losses and trained weights with the frozen prefix computed once as without."""
    a, ma = _run(files, method, params)
    b, mb = _run(files, method, params, cached=False, monkeypatch=monkeypatch)
    if method == "lpft":  # the first phase (LP) starts after the last block, the second trains everything
        assert "prefix_block" not in a and a["phases"][0]["val_acc"] == b["phases"][0]["val_acc"]
    else:
        assert a["prefix_block"] == start and "prefix_block" not in b
    for k in ("val_acc", "test_acc", "trainable_params", "epochs"):
        assert a[k] == b[k], k
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
    for ra, rb in zip(a["history"], b["history"]):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
    sa, sb = ma.state_dict(), mb.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("method, params, train", [
    ("ft", {}, {}), ("lora", {"rank": 2, "alpha": 2}, {}), ("bitfit", {}, {}), ("gradual", {}, {}),
    ("autorgn", {}, {}), ("lp", {}, {"augment": "flip"}), ("subtuning", {"blocks": ["layer1.0"]}, {}),
])
def test_no_cache_where_it_would_not_be_exact(files, method, params, train):
    """The stem or block 0 trains, the model is peft's, the run has stages or step hooks, or the inputs are
    augmented: the run computes everything itself."""
    model, _ = build_model(str(files[0] / "ck.safetensors"), 3, seed=0, **KW)
    m = get_method(method, **params)
    model = m.wrap(model)
    cfg = TrainConfig.from_dict({**CFG.to_dict(), **train})
    assert all(run_start(model, t, cfg) is None for t, _ in m.phases(model))


def _cli(files, tmp_path, stage, *args, seed=0, method="lora", train=None):
    d, _ = files
    train = {"epochs": 2, "lr": 0.003, "batch_size": 16, **(train or {})}
    base = [stage, "--method", method, "--data", str(d / "d.safetensors"), "--manifest", str(d / "d.json"),
            "--checkpoint", str(d / "ck.safetensors"), "--train", json.dumps(train), "--seed", str(seed)]
    if method == "lora":
        base += ["--method-params", json.dumps({"rank": 2, "alpha": 2})]
    return main(base + list(args))


@pytest.mark.parametrize("method", ["lora", "lpft", "ft"])
def test_the_chosen_tuning_run_is_the_selection_seeds_final_run(files, tmp_path, capsys, method):
    grid = {"lr": [0.001, 0.003]} if method != "lpft" else {"lr": [0.001, 0.003], "lp_lr": [0.01]}
    assert _cli(files, tmp_path, "tune", "--grid", json.dumps(grid), "--save-chosen", str(tmp_path / "c.safetensors"),
                "--out", str(tmp_path / "tune.json"), method=method) == 0
    tuned = ["--tuned", str(tmp_path / "tune.json")]
    reuse = ["--reuse-tuned", str(tmp_path / "c.safetensors")]
    capsys.readouterr()
    assert _cli(files, tmp_path, "train", *tuned, *reuse, "--out", str(tmp_path / "r0.json"), method=method) == 0
    assert "reusing the tuning run" in capsys.readouterr().out
    assert _cli(files, tmp_path, "train", *tuned, "--out", str(tmp_path / "f0.json"), method=method) == 0
    r, f = (json.loads((tmp_path / n).read_text()) for n in ("r0.json", "f0.json"))
    assert r["reused"] and "reused" not in f
    assert r["history"] == f["history"]
    for k in ("val_acc", "test_acc", "trainable_params", "total_params", "method_params", "train", "best_epoch"):
        assert r[k] == f[k], k
    assert r["test_loss"] == pytest.approx(f["test_loss"], rel=1e-6)
    tune = json.loads((tmp_path / "tune.json").read_text())
    assert tune["results"][tune["chosen_index"]]["val_acc"] == r["val_acc"]

    # another seed, or another value than the tuning run's: trained, with one line naming what differs
    for seed, train, what in ((1, None, "seed"), (0, {"weight_decay": 0.5}, "train")):
        capsys.readouterr()
        assert _cli(files, tmp_path, "train", *tuned, *reuse, "--out", str(tmp_path / "x.json"), seed=seed,
                    train=train, method=method) == 0
        out = capsys.readouterr().out
        assert f"its {what} differs from this run's; training" in out
        assert "reused" not in json.loads((tmp_path / "x.json").read_text())


def test_reuse_of_a_file_tune_did_not_write_is_one_line(files, tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    assert _cli(files, tmp_path, "train", "--reuse-tuned", str(tmp_path / "other.safetensors"),
                "--out", str(tmp_path / "x.json")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other.safetensors is not a file written by tune --save-chosen" in err[0]
    assert not (tmp_path / "x.json").exists()
