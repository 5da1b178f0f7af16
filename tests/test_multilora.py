"""Multi-LoRA against separate LoRA on equal terms: the same updates per task, the same grid chosen on validation.

Every optimizer step is seen through torch's global optimizer hooks: for each
step, which task's parameters it holds and whether they changed.
"""

import json

import pytest
import timm
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import subtune.train
from subtune import SubtuneError
from subtune.config import multilora_grid_points
from subtune.methods.multilora import Task, train_multilora
from subtune.methods.multilora_compare import compare, train_separate_lora, tuned_grid
from subtune.report import multilora as multilora_table
from subtune.train import Preprocess, TrainConfig

PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)
CFG = TrainConfig(epochs=2, lr=1e-2, batch_size=8)


def small():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=3, channels=(8, 16, 32, 64), zero_init_last=False)


def toy(n, seed, classes):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g),
            torch.randint(0, classes, (n,), generator=g))


def tasks(test_seed=2):
    # unequal sizes: 20 and 12 training images, batch 8: 3 and 2 steps per epoch
    return [Task("a", 3, toy(20, 0, 3), toy(8, 1, 3), toy(8, test_seed, 3)),
            Task("b", 2, toy(12, 3, 2), toy(8, 4, 2), toy(8, test_seed + 10, 2))]


class StepLog:
    """Every optimizer step: the ids of its parameters and whether they changed."""

    def __init__(self):
        self.steps, self._before = [], {}

    def __enter__(self):
        def pre(opt, args, kwargs):
            self._before[id(opt)] = [p.detach().clone() for g in opt.param_groups for p in g["params"]]

        def post(opt, args, kwargs):
            params = [p for g in opt.param_groups for p in g["params"]]
            moved = any(not torch.equal(b, p) for b, p in zip(self._before.pop(id(opt)), params))
            self.steps.append((frozenset(id(p) for p in params), moved))

        self._handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()

    def per_optimizer(self):
        """Steps per distinct parameter set, in the order first seen."""
        counts = {}
        for ids, moved in self.steps:
            assert moved
            counts[ids] = counts.get(ids, 0) + 1
        return counts


def test_each_task_gets_as_many_updates_as_in_its_separate_run():
    ts = tasks()
    with StepLog() as sep_log:
        sep = train_separate_lora(small(), ts, PRE, CFG, rank=2, alpha=4)
    with StepLog() as ml_log:
        ml = train_multilora(small(), ts, PRE, CFG, rank=2, alpha=4)
    expected = {"a": 3 * CFG.epochs, "b": 2 * CFG.epochs}  # ceil(n / batch) per epoch, as fit
    # separate: one optimizer per task, stepped ceil(n_t / batch) times per epoch
    assert list(sep_log.per_optimizer().values()) == [expected["a"], expected["b"]]
    assert sep["optimizer_steps"] == expected
    assert {t: v["optimizer_steps"] for t, v in sep["per_task"].items()} == expected
    # Multi-LoRA: every optimizer holds exactly one task's B's and head, and steps as often
    model = ml["model"]
    by_task = {}
    for ids, n in ml_log.per_optimizer().items():
        (t,) = [t for t in range(2) if ids == frozenset(id(p) for p in model.task_params(t))]
        by_task[ts[t].name] = n
    assert by_task == expected == ml["optimizer_steps"]
    assert {t: v["optimizer_steps"] for t, v in ml["per_task"].items()} == expected
    assert ml["history"][-1]["a_lr"] == pytest.approx(sep["grid_results"]["a"][0]["history"][-1]["lr"])
    # the shared A never moves, every task's B did
    for _, layer in model.layers():
        assert not layer.A.requires_grad
        assert all(layer.B[t].abs().sum() > 0 for t in range(2))


def test_a_stays_bit_identical_while_every_b_trains():
    ts = tasks()
    ref = train_multilora(small(), ts, PRE, TrainConfig(epochs=1, batch_size=8), rank=2, seed=5)["model"]
    # the same seed builds the same A: training changed none of it
    from subtune.methods.multilora import MultiLoRAModel

    fresh = MultiLoRAModel(small(), [3, 2], rank=2, seed=5)
    for (_, trained), (_, new) in zip(ref.layers(), fresh.layers()):
        assert torch.equal(trained.A.cpu(), new.A)


def test_grid_is_chosen_on_validation_and_test_is_read_once_by_the_chosen_models(monkeypatch):
    grid = {"lr": [1e-4, 3e-2]}
    reads = []
    real = subtune.train.evaluate

    def spy(model, pre, x, y, *args, **kwargs):
        reads.append(x)
        return real(model, pre, x, y, *args, **kwargs)

    monkeypatch.setattr(subtune.train, "evaluate", spy)
    outs = []
    for test_seed in (2, 50):  # different test splits must change nothing chosen
        ts = tasks(test_seed)
        reads.clear()
        out = compare(small(), ts, PRE, TrainConfig(epochs=1, batch_size=8), rank=2, alpha=4, grid=grid)
        tests = [t.test[0] for t in ts]
        assert sum(any(x is t for t in tests) for x in reads) == 4  # each task once per side
        outs.append(out)
    ml, sep = outs[0]["multilora"], outs[0]["separate_lora"]
    ml2, sep2 = outs[1]["multilora"], outs[1]["separate_lora"]
    assert [r["label"] for r in ml["grid_results"]] == ["lr=0.0001", "lr=0.03"]
    vals = [r["val_acc"] for r in ml["grid_results"]]
    assert ml["chosen_index"] == max(range(2), key=lambda i: (vals[i], -i)) == ml2["chosen_index"]
    assert vals == [r["val_acc"] for r in ml2["grid_results"]]
    assert ml["train"]["lr"] == grid["lr"][ml["chosen_index"]]
    for t in ("a", "b"):
        v = [r["val_acc"] for r in sep["grid_results"][t]]
        assert sep["per_task"][t]["chosen_index"] == max(range(2), key=lambda i: (v[i], -i))
        assert sep["per_task"][t]["chosen_index"] == sep2["per_task"][t]["chosen_index"]
        assert v == [r["val_acc"] for r in sep2["grid_results"][t]]
        assert sep["per_task"][t]["train"]["lr"] == grid["lr"][sep["per_task"][t]["chosen_index"]]
        assert "test_acc" in sep["per_task"][t] and "test_acc" in ml["per_task"][t]
        assert all("test_acc" not in r for r in sep["grid_results"][t])
    assert all("test_acc" not in r for r in ml["grid_results"])
    # wall time: the whole grid, and the chosen point's share of it
    for r in (ml, sep):
        assert 0 < r["wall_time_chosen_s"] < r["wall_time_s"]


def test_other_seeds_train_each_side_at_the_point_it_chose_on_the_tuning_seed():
    grid = {"lr": [1e-4, 3e-2], "rank": [2]}
    first = compare(small(), tasks(), PRE, TrainConfig(epochs=1, batch_size=8), rank=2, alpha=4, grid=grid)
    first["seed"] = 0
    # make the two tasks' own choices differ from each other whatever training gave, to see each kept apart
    sep = first["separate_lora"]["per_task"]
    sep["a"]["train"]["lr"], sep["b"]["train"]["lr"] = 1e-4, 3e-2
    first["multilora"]["chosen"] = {"train": {"lr": 3e-2}, "params": {"rank": 2}, "label": "lr=0.03, rank=2"}
    out = compare(small(), tasks(), PRE, TrainConfig(epochs=1, batch_size=8), seed=1, rank=2, alpha=4, grid=grid,
                  tuned=json.loads(json.dumps(first)))
    assert out["tuned_on_seed"] == 0
    ml, sep2 = out["multilora"], out["separate_lora"]
    assert [r["train"] for r in ml["grid_results"]] == [{"lr": 3e-2}]  # one point: the one it chose
    assert ml["train"]["lr"] == 3e-2
    assert [r["train"] for r in sep2["grid_results"]["a"]] == [{"lr": 1e-4}]
    assert [r["train"] for r in sep2["grid_results"]["b"]] == [{"lr": 3e-2}]
    assert all("test_acc" in v for v in sep2["per_task"].values())
    bad = {**first, "tasks": ["b", "a"]}
    with pytest.raises(SubtuneError, match="tuned comparison's tasks"):
        compare(small(), tasks(), PRE, TrainConfig(epochs=1, batch_size=8), seed=1, grid=grid, tuned=bad)
    with pytest.raises(SubtuneError, match="tuned on the grid"):
        compare(small(), tasks(), PRE, TrainConfig(epochs=1, batch_size=8), seed=1, grid={"lr": [1e-4]},
                tuned=first)
    alone = {k: v for k, v in first.items() if k != "separate_lora"}  # an ablation's output: Multi-LoRA alone
    with pytest.raises(SubtuneError, match="not a multilora --compare result"):
        compare(small(), tasks(), PRE, TrainConfig(epochs=1, batch_size=8), seed=1, grid=grid, tuned=alone)
    assert tuned_grid(alone) == {"lr": [3e-2], "rank": [2]}


def test_grid_keys_are_checked():
    assert multilora_grid_points(None) == [{"train": {}, "params": {}}]
    assert multilora_grid_points({"rank": [2, 4], "lr": [0.1]}) == [
        {"train": {"lr": 0.1}, "params": {"rank": 2}}, {"train": {"lr": 0.1}, "params": {"rank": 4}}]
    with pytest.raises(SubtuneError, match="multilora.grid: 'variant'"):
        multilora_grid_points({"variant": ["dora"]})
    with pytest.raises(SubtuneError, match="multilora.grid.lr"):
        multilora_grid_points({"lr": []})


def _result(accs, steps, wall, trained):
    return {"per_task": {t: {"val_acc": a, "test_acc": a, "optimizer_steps": s} for t, a, s in zip("ab", accs, steps)},
            "params_trained": trained, "params_stored": trained, "wall_time_s": wall, "wall_time_chosen_s": wall / 3}


def test_table_shows_steps_per_task_and_wall_time(tmp_path):
    files = []
    for seed, wall in ((0, 100.0), (1, 120.0)):
        d = {"seed": seed, "tasks": ["a", "b"], "multilora": _result((0.8, 0.6), (75, 50), wall, 300),
             "separate_lora": _result((0.82, 0.62), (75, 50), 2 * wall, 500)}
        files.append(tmp_path / f"seed{seed}.json")
        files[-1].write_text(json.dumps(d))
    out = multilora_table(files, tmp_path / "ml.csv", tmp_path / "ml.md")
    row = out[(out["kind"] == "separate_lora") & (out["task"] == "b")].iloc[0]
    assert row["optimizer_steps"] == 50 and row["wall_time_s"] == 220.0
    mean = out[(out["kind"] == "multilora") & (out["task"] == "mean")].iloc[0]
    assert mean["wall_time_s"] == 110.0 and mean["wall_time_chosen_s"] == pytest.approx(110.0 / 3)
    md = (tmp_path / "ml.md").read_text()
    assert "steps per task" in md and "wall time (s)" in md
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert lines["Multi-LoRA"].rstrip(" |").endswith("75 / 50 | 110")
    assert lines["separate LoRA"].rstrip(" |").endswith("75 / 50 | 220")
    # result files from before (no steps, no times) still make a table
    d = json.loads(files[0].read_text())
    for kind in ("multilora", "separate_lora"):
        del d[kind]["wall_time_s"], d[kind]["wall_time_chosen_s"]
        for v in d[kind]["per_task"].values():
            del v["optimizer_steps"]
    files[0].write_text(json.dumps(d))
    multilora_table(files[:1], tmp_path / "old.csv", tmp_path / "old.md")
    assert "| n/a | n/a |" in (tmp_path / "old.md").read_text()


@pytest.mark.parametrize("grid, culprit", [({"variant": ["dora"]}, "multilora.grid: 'variant'"),
                                           ({"lr": [-1.0]}, "multilora.grid"),
                                           ({"rank": [0]}, "rank"),
                                           ({"lr": 0.1}, "multilora.grid.lr")])
def test_config_names_a_bad_multilora_grid(grid, culprit):
    from pathlib import Path

    import yaml

    from subtune.config import validate

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "configs/test.yaml").read_text())
    validate(json.loads(json.dumps(cfg)), root / "schemas/config.schema.yaml")
    cfg["multilora"]["grid"] = grid
    with pytest.raises(SubtuneError, match=culprit):
        validate(cfg, root / "schemas/config.schema.yaml")


# ---------------------------------------------------------------- ablations: A trained, sequential, ranks
def test_trained_a_changes_and_is_counted():
    from subtune.methods.multilora import MultiLoRAModel

    ts = tasks()
    with StepLog() as log:
        ml = train_multilora(small(), ts, PRE, TrainConfig(epochs=1, batch_size=8), rank=2, seed=5, train_a=True)
    model, fresh = ml["model"], MultiLoRAModel(small(), [3, 2], rank=2, seed=5)
    assert ml["train_a"] and not ml["sequential"]
    for (_, trained), (_, new) in zip(model.layers(), fresh.layers()):
        assert not torch.equal(trained.A.cpu(), new.A)  # A moved
    # one more optimizer, over every A, stepped every step (3 steps: the longer task's)
    shared = frozenset(id(p) for p in model.shared_params())
    assert log.per_optimizer()[shared] == 3
    dims = [(m.d, m.m) for _, m in model.layers()]
    assert ml["adapter_trained"] == sum(d * 2 + 2 * m * 2 for d, m in dims) == ml["adapter_stored"]
    heads = sum(p.numel() for p in model.heads.parameters())
    assert ml["trainable_params"] == ml["params_trained"] == ml["adapter_trained"] + heads


def test_sequential_updates_each_task_only_in_its_stage_and_never_a():
    from subtune.methods.multilora import MultiLoRAModel

    ts = tasks()
    cfg = TrainConfig(epochs=2, batch_size=8)
    with StepLog() as log:
        seq = train_multilora(small(), ts, PRE, cfg, rank=2, seed=5, sequential=True)
    model = seq["model"]
    ids = [frozenset(id(p) for p in model.task_params(t)) for t in range(2)]
    # stage 1: only task a's optimizer (3 steps x 2 epochs), then stage 2: only task b's (2 x 2)
    assert [s for s, _ in log.steps] == [ids[0]] * 6 + [ids[1]] * 4
    assert all(moved for _, moved in log.steps)
    assert seq["optimizer_steps"] == {"a": 6, "b": 4}
    assert [r["stage"] for r in seq["history"]] == [1, 1, 2, 2]
    fresh = MultiLoRAModel(small(), [3, 2], rank=2, seed=5)
    for (_, trained), (_, new) in zip(model.layers(), fresh.layers()):
        assert torch.equal(trained.A.cpu(), new.A)
    # with A frozen and the backbone in eval mode the tasks do not interact: sequential reaches what together does
    tog = train_multilora(small(), ts, PRE, cfg, rank=2, seed=5)
    for t in ("a", "b"):
        assert seq["per_task"][t]["val_acc"] == pytest.approx(tog["per_task"][t]["val_acc"], abs=0.13)
    for (_, a), (_, b) in zip(model.layers(), tog["model"].layers()):
        for t in range(2):
            torch.testing.assert_close(a.B[t], b.B[t], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("rank", [2, 4, 8, 16])
def test_each_rank_has_its_exact_parameter_counts(rank):
    from subtune.methods.multilora import MultiLoRAModel

    model = MultiLoRAModel(small(), [3, 2], rank=rank, seed=0)
    layers = model.layers()
    # ResNet-18's 3x3 block convolutions: d = in_channels * 9 inputs, m = out_channels outputs
    dims = [(m.base.in_channels * 9, m.base.out_channels) for _, m in layers]
    assert len(dims) == 16
    heads = 64 * 3 + 3 + 64 * 2 + 2
    c = model.counts()
    assert c["multilora"]["params_trained"] == sum(2 * m * rank for _, m in dims) + heads
    assert c["multilora"]["params_stored"] == sum(d * rank + 2 * m * rank for d, m in dims) + heads
    assert c["separate_lora"]["params_trained"] == sum(2 * (d * rank + m * rank) for d, m in dims) + heads
    assert model.trainable().num_params == c["multilora"]["params_trained"]
    a = MultiLoRAModel(small(), [3, 2], rank=rank, seed=0, train_a=True)
    assert a.trainable().num_params == a.counts()["multilora"]["params_trained"] == c["multilora"]["params_stored"]


def test_table_shows_the_ablations(tmp_path):
    files, ab = [], []
    for seed in (0, 1):
        ml = {**_result((0.8, 0.6), (75, 50), 100.0, 300), "rank": 8}
        d = {"seed": seed, "tasks": ["a", "b"], "multilora": ml, "separate_lora": _result((0.8, 0.6), (75, 50), 1, 5)}
        files.append(tmp_path / f"seed{seed}.json")
        files[-1].write_text(json.dumps(d))
        for name, rank, acc, trained, extra in (("train_a", 8, 0.7 + seed / 10, 400, {"train_a": True}),
                                                 ("sequential", 8, 0.8, 300, {"sequential": True}),
                                                 ("rank2", 2, 0.5, 100, {})):
            r = {**_result((acc, acc), (75, 50), 50.0, trained), "rank": rank, **extra}
            ab.append(tmp_path / name / f"seed{seed}.json")
            ab[-1].parent.mkdir(exist_ok=True)
            ab[-1].write_text(json.dumps({"seed": seed, "ablation": name, "tasks": ["a", "b"], "multilora": r}))
    multilora_table(files, tmp_path / "ml.csv", tmp_path / "ml.md", ablation_files=ab, ranks=[2, 8],
                    out_ablations_csv=tmp_path / "ml_ablations.csv")
    md = (tmp_path / "ml.md").read_text()
    assert "## Ablations" in md
    lines = {ln.split("|")[1].strip(): ln for ln in md.split("## Ablations")[1].splitlines() if ln.startswith("| ")}
    assert lines["Multi-LoRA, A trained"].startswith("| Multi-LoRA, A trained | 8 | 75.00 ± 7.07 | 75.00 ± 7.07 |")
    assert lines["Multi-LoRA, A trained"].rstrip(" |").endswith("400 | 400 | 50")
    assert "| Multi-LoRA, tasks one after another | 8 | 80.00 ± 0.00 |" in md
    # the configured rank's row is the Multi-LoRA runs themselves
    assert lines["Multi-LoRA, rank 2"].startswith("| Multi-LoRA, rank 2 | 2 | 50.00 ± 0.00 |")
    assert lines["Multi-LoRA, rank 8"].startswith("| Multi-LoRA, rank 8 | 8 | 80.00 ± 0.00 | 60.00 ± 0.00 | 70.00")
    import pandas as pd

    df = pd.read_csv(tmp_path / "ml_ablations.csv")
    assert list(df["ablation"]) == ["train_a", "sequential", "rank2", "rank8"] and (df["n_seeds"] == 2).all()
