"""Hyperparameter grids: points, validation of keys, the choice (pure logic)."""

import pytest

from subtune import SubtuneError
from subtune.config import validate
from subtune.tune import choose, grid_points, point_label, validate_grid


def test_points_are_the_product_in_sorted_key_order():
    pts = grid_points("lora", {"rank": [4, 8], "lr": [0.1, 0.01]})
    assert pts == [
        {"train": {"lr": 0.1}, "params": {"rank": 4}},
        {"train": {"lr": 0.1}, "params": {"rank": 8}},
        {"train": {"lr": 0.01}, "params": {"rank": 4}},
        {"train": {"lr": 0.01}, "params": {"rank": 8}},
    ]
    assert point_label(pts[1]) == "lr=0.1, rank=8"
    assert grid_points("ft", None) == [{"train": {}, "params": {}}]


def test_unknown_key_names_the_method_and_the_key():
    with pytest.raises(SubtuneError, match=r"methods\.ft\.grid: 'rank'.*'ft'"):
        grid_points("ft", {"rank": [4]})
    with pytest.raises(SubtuneError, match=r"methods\.lp\.grid\.lr: give a non-empty list"):
        grid_points("lp", {"lr": []})


def test_every_point_is_checked():
    validate_grid("lora", {"lr": [0.1], "rank": [4]}, {"epochs": 1}, {})
    with pytest.raises(SubtuneError, match="rank"):
        validate_grid("lora", {"rank": [4, 0]}, {"epochs": 1}, {})
    with pytest.raises(SubtuneError, match=r"methods\.lp\.grid"):
        validate_grid("lp", {"optimizer": ["adamw", "lion"]}, {"epochs": 1}, {})


def test_choice_is_the_best_validation_score_ties_to_the_first():
    assert choose([{"val_acc": 0.5}, {"val_acc": 0.7}, {"val_acc": 0.7}]) == 1
    with pytest.raises(SubtuneError):
        choose([])


def test_default_config_gives_every_method_a_grid():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    cfg = validate(yaml.safe_load((root / "config.yaml").read_text()), root / "schemas/config.schema.yaml")
    ext = validate(yaml.safe_load((root / "configs/extended.yaml").read_text()), root / "schemas/config.schema.yaml")
    from subtune.methods import REGISTRY

    # every registered single-task method runs in the default or in its extension on the same weights and targets
    assert set(cfg["methods"]) | set(ext["methods"]) == set(REGISTRY)
    assert set(cfg["methods"]) <= set(ext["methods"]) and ext["targets"] == cfg["targets"]
    assert ext["backbone"] == cfg["backbone"] and ext["train"] == cfg["train"]
    assert all(spec.get("grid") for c in (cfg, ext) for spec in c["methods"].values())
    assert cfg["tuning"]["extend"] >= 1  # a choice on a grid's edge extends the grid
    assert set(cfg["multilora"]["targets"]) <= set(cfg["targets"]) and len(cfg["multilora"]["targets"]) >= 2


# ---------------------------------------------------------------- per-target overrides, final_data, cv_data
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas/config.schema.yaml"


def _test_config(**edits):
    import copy

    import yaml

    cfg = copy.deepcopy(yaml.safe_load((ROOT / "configs/test.yaml").read_text()))
    for path, value in edits.items():
        node = cfg
        *keys, last = path.split(".")
        for k in keys:
            node = node.setdefault(k, {})
        node[last] = value
    return cfg


def test_per_target_override_merges_over_the_method():
    from subtune.config import method_grid, method_params, method_train

    cfg = validate(_test_config(**{
        "targets.digits.methods": {"lora": {"train": {"lr": 0.01, "weight_decay": 0.05}, "params": {"rank": 2}},
                                   "lp": {"train": {"lr": 0.001}, "grid": {"weight_decay": [0.0, 0.1]}}},
    }), SCHEMA)
    # digits: the target's values over methods.lora over the top-level train
    assert method_train(cfg, "lora", "digits") == {**cfg["train"], "lr": 0.01, "weight_decay": 0.05}
    assert method_params(cfg, "lora", "digits") == {"rank": 2, "alpha": 4}
    # the other target and no target: the method's own
    for t in ("fmnist-new", None):
        assert method_train(cfg, "lora", t) == {**cfg["train"], "lr": 0.003}
        assert method_params(cfg, "lora", t) == {"rank": 4, "alpha": 4}
        assert method_grid(cfg, "lp", t) == {"lr": [0.003, 0.01]}
    # lr fixed for digits: not tuned there; the target's own grid key added
    assert method_grid(cfg, "lp", "digits") == {"weight_decay": [0.0, 0.1]}
    assert method_train(cfg, "lp", "digits")["lr"] == 0.001


@pytest.mark.parametrize("over, needle", [
    ({"nosuch": {}}, "targets.digits.methods.nosuch: 'nosuch' is not one of methods"),
    ({"lora": {"train": {"lrr": 1}}}, "unknown config key targets.digits.methods.lora.train.lrr"),
    ({"lora": {"trian": {}}}, "unknown config key targets.digits.methods.lora.trian"),
    ({"lora": {"params": {"rank": 0}}}, "targets.digits.methods.lora.params"),
    ({"lora": {"params": {"rnak": 4}}}, "targets.digits.methods.lora.params"),
    ({"lp": {"grid": {"rank": [2]}}}, "targets.digits.methods.lp.grid"),
    ({"lp": {"train": {"lr": 0.1}, "grid": {"lr": [0.1, 0.2]}}}, "targets.digits.methods.lp.grid.lr"),
    ({"lp": {"train": {"optimizer": "lion"}}}, "targets.digits.methods.lp.train.optimizer"),
])
def test_bad_per_target_override_is_one_line_naming_the_key(over, needle):
    with pytest.raises(SubtuneError) as e:
        validate(_test_config(**{"targets.digits.methods": over}), SCHEMA)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_final_data_and_cv_data_values():
    cfg = validate(_test_config(), SCHEMA)
    assert cfg["final_data"] == "train" and cfg["selection"]["cv_data"] == "train"  # the defaults
    validate(_test_config(final_data="train+val"), SCHEMA)
    validate(_test_config(**{"selection.scoring": "cv", "selection.cv_data": "train+val"}), SCHEMA)
    with pytest.raises(SubtuneError, match="bad config value final_data"):
        validate(_test_config(final_data="val"), SCHEMA)
    with pytest.raises(SubtuneError, match="selection.cv_data is train\\+val but selection.scoring is val"):
        validate(_test_config(**{"selection.cv_data": "train+val"}), SCHEMA)


@pytest.mark.parametrize("where, edit", [
    ("methods.ft.train", {"methods.ft.train": {"lr": 0.001, "epoch_select": "best_val"}}),
    ("targets.digits.methods.lp.train", {"targets.digits.methods": {"lp": {"train": {"epoch_select": "best_val"}}}}),
    ("train", {"train": {"epochs": 2, "epoch_select": "best_val"}}),
])
def test_final_data_train_val_rejects_best_val_epoch_selection(tmp_path, where, edit):
    """Checked by name, across the config's sections."""
    with pytest.raises(SubtuneError) as e:
        validate(_test_config(final_data="train+val", **edit), SCHEMA)
    assert str(e.value) == (f"final_data is train+val but {where} has epoch_select best_val (no validation split "
                            "is left to choose the epoch on)")


# ---------------------------------------------------------------- edge extension (pure logic, a fake scorer)
def _scorer(f, size=1000, calls=None):
    """A fake ``score``: validation accuracy ``f(values)`` on ``size`` images (the counts decide)."""
    def score(point):
        vals = {**point["train"], **point["params"]}
        if calls is not None:
            calls.append(vals)
        return {"val_acc": round(f(vals) * size) / size, "val_size": size}
    return score


def _peak(key, at):
    import math
    return lambda v: 0.9 - 0.1 * abs(math.log(v[key] / at))


def test_a_peak_inside_the_grid_is_not_extended():
    from subtune.tune import tune_grid

    t = tune_grid("lp", {"lr": [0.001, 0.003, 0.01]}, {"epochs": 1}, {}, _scorer(_peak("lr", 0.003)), extend=2)
    assert [r["source"] for r in t["results"]] == ["grid"] * 3
    assert t["chosen_index"] == 1 and t["edge"] is None and t["extension"] == {}
    assert t["explored"] == {"lr": [0.001, 0.003, 0.01]}


def test_a_monotone_curve_extends_up_to_the_budget_and_flags_the_edge():
    from subtune.tune import tune_grid

    t = tune_grid("lp", {"lr": [0.001, 0.003, 0.01]}, {"epochs": 1}, {}, _scorer(lambda v: v["lr"]), extend=2)
    lrs = [r["train"]["lr"] for r in t["results"]]
    assert lrs == [0.001, 0.003, 0.01, 0.0333333, 0.111111]  # the grid's own ratio (10/3), 6 significant digits
    assert [r["source"] for r in t["results"]] == ["grid"] * 3 + ["extension"] * 2
    assert t["chosen_index"] == 4 and t["edge"] == {"lr": "upper"}
    assert t["extension"] == {"lr": {"upper": {"steps": 2, "stop": "budget"}}}
    assert t["explored"]["lr"] == sorted(lrs)
    # decreasing: the lower edge, by the same ratio; no budget: the grid alone, the edge still flagged
    t = tune_grid("lp", {"lr": [0.001, 0.003, 0.01]}, {"epochs": 1}, {}, _scorer(lambda v: 1 - v["lr"]), extend=1)
    assert [r["train"]["lr"] for r in t["results"]][3:] == [0.000333333] and t["edge"] == {"lr": "lower"}
    t = tune_grid("lp", {"lr": [0.001, 0.003, 0.01]}, {"epochs": 1}, {}, _scorer(lambda v: v["lr"]), extend=0)
    assert len(t["results"]) == 3 and t["edge"] == {"lr": "upper"} and t["chosen_index"] == 2


def test_the_extension_stops_at_the_peak():
    from subtune.tune import tune_grid

    # peak just above the grid: one step beyond is worse, the grid's largest value stays chosen (not an edge now)
    t = tune_grid("lp", {"lr": [0.001, 0.003, 0.01]}, {"epochs": 1}, {}, _scorer(_peak("lr", 0.015)), extend=2)
    assert [r["train"]["lr"] for r in t["results"]] == [0.001, 0.003, 0.01, 0.0333333]
    assert t["chosen_index"] == 2 and t["edge"] is None
    assert t["extension"]["lr"]["upper"] == {"steps": 1, "stop": "peak"}
    # peak at 0.03: the first step wins, the second loses; the choice is the extension point
    t = tune_grid("lp", {"lr": [0.001, 0.003, 0.01]}, {"epochs": 1}, {}, _scorer(_peak("lr", 0.03)), extend=5)
    assert [r["train"]["lr"] for r in t["results"]][3:] == [0.0333333, 0.111111]
    assert t["chosen_index"] == 3 and t["results"][3]["source"] == "extension" and t["edge"] is None


def test_integer_keys_round_and_stop_where_the_value_would_not_change():
    from subtune.tune import next_value, tune_grid

    calls = []
    t = tune_grid("lora", {"rank": [4, 8], "lr": [0.01]}, {"epochs": 1}, {},
                  _scorer(lambda v: v["rank"] / 100, calls=calls), extend=2)
    assert [c["rank"] for c in calls] == [4, 8, 16, 32] and all(isinstance(c["rank"], int) for c in calls)
    assert all(c["lr"] == 0.01 for c in calls)  # the other key held at the chosen point's value
    assert t["edge"] == {"rank": "upper"}
    # down from [2, 4]: 1, then 0.5 rounds to 1 (no change): stop, still on the lower edge
    t = tune_grid("lora", {"rank": [2, 4]}, {"epochs": 1}, {}, _scorer(lambda v: 1 / v["rank"]), extend=3)
    assert [r["params"]["rank"] for r in t["results"]] == [2, 4, 1]
    assert t["edge"] == {"rank": "lower"} and t["extension"]["rank"]["lower"]["stop"] == "no value"
    # epochs 1 is the smallest valid value; an arithmetic step below 1 is invalid
    assert next_value([1, 2], "lower", True, True) is None
    assert next_value([0.0, 0.1], "upper", False, False) == 0.2  # not positive: the arithmetic step
    assert next_value([0.0, 0.1], "lower", False, False) == -0.1  # (refused later by TrainConfig for weight_decay)
    assert next_value([0.1, 0.3], "lower", False, True) == pytest.approx(0.0333333)


def test_a_value_the_method_or_training_config_refuses_stops_that_direction():
    from subtune.tune import tune_grid

    # LLRD's decay must lie in (0, 1]: 0.6, 0.75, 0.9 would continue with 1.05
    calls = []
    t = tune_grid("llrd", {"decay": [0.6, 0.75, 0.9]}, {"epochs": 1}, {},
                  _scorer(lambda v: v["decay"], calls=calls), extend=2)
    assert len(calls) == 3 and t["edge"] == {"decay": "upper"}
    assert t["extension"]["decay"]["upper"]["stop"] == "refused" and "decay" in t["extension"]["decay"]["upper"]["detail"]
    # weight_decay below 0 (TrainConfig)
    t = tune_grid("lp", {"weight_decay": [0.0, 0.1]}, {"epochs": 1}, {}, _scorer(lambda v: 1 - v["weight_decay"]),
                  extend=2)
    assert len(t["results"]) == 2 and t["extension"]["weight_decay"]["lower"]["stop"] == "refused"
    with pytest.raises(SubtuneError, match="--extend"):
        tune_grid("lp", {"lr": [0.1, 0.2]}, {"epochs": 1}, {}, _scorer(lambda v: 0.5), extend=-1)


def test_equal_counts_tie_whatever_the_floats_say():
    from subtune.tune import better

    # 0.1 + 0.2 and 0.3: the same 3 images of 10, float-different accuracies: a tie, the earliest wins
    a, b = {"val_acc": 0.3, "val_size": 10}, {"val_acc": 0.1 + 0.2, "val_size": 10}
    assert b["val_acc"] > a["val_acc"]
    assert choose([a, b]) == 0 and not better(b, a)
    # without the size: a tolerance far below one image
    assert choose([{"val_acc": 0.3}, {"val_acc": 0.1 + 0.2}]) == 0
    assert choose([{"val_acc": 0.3, "val_size": 10}, {"val_acc": 0.4, "val_size": 10}]) == 1


# ---------------------------------------------------------------- the tune stage through the CLI, on tiny data
@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    """A random 8-16-32-64 ResNet-18 checkpoint and 3-class 32x32 data whose class is the bright third."""
    import timm
    import torch

    from subtune.data.prepared import save_prepared
    from subtune.models.checkpoint import Checkpoint, save_checkpoint

    d = tmp_path_factory.mktemp("tune")
    kw = {"channels": [8, 16, 32, 64]}
    torch.manual_seed(0)
    save_checkpoint(d / "ck.safetensors", timm.create_model("resnet18", num_classes=5, **kw),
                    Checkpoint("resnet18", 5, image_size=32, model_kwargs=kw))
    splits = {}
    for i, (s, n) in enumerate((("train", 48), ("val", 30), ("test", 12))):
        g = torch.Generator().manual_seed(i)
        x = torch.randint(0, 120, (n, 1, 32, 32), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 3, (n,), generator=g)
        for j, c in enumerate(y.tolist()):
            x[j, :, :, c * 10: c * 10 + 10] += 100
        splits[f"{s}_x"], splits[f"{s}_y"] = x, y
    save_prepared(d / "d.safetensors", d / "d.json", splits, {
        "name": "toy", "classes": ["0", "1", "2"], "num_classes": 3, "channels": 1, "image_size": 32,
        "splits": {"train": 48, "val": 30, "test": 12}, "seed": 0, "params": {}, "inputs": {}})
    return d


def test_tune_cli_extends_a_grid_whose_optimum_lies_outside(toy_files, tmp_path, monkeypatch):
    """A far too small lr grid: the JSON holds the extension points, chosen and kept exactly as choose() says."""
    import json

    from safetensors import safe_open

    import subtune.data.prepared as prepared
    from subtune.cli import main
    from subtune.tune import edge_of, tune_grid

    d = toy_files
    grid = {"lr": [0.00001, 0.00003]}
    asked, real = [], prepared.load_prepared
    monkeypatch.setattr(prepared, "load_prepared", lambda p, splits=("train", "val"), **kw: asked.append(splits)
                        or real(p, splits, **kw))
    assert main(["tune", "--method", "lp", "--grid", json.dumps(grid), "--data", str(d / "d.safetensors"),
                 "--manifest", str(d / "d.json"), "--checkpoint", str(d / "ck.safetensors"),
                 "--train", json.dumps({"epochs": 2, "lr": 0.001, "batch_size": 16}), "--extend", "2",
                 "--save-chosen", str(tmp_path / "c.safetensors"), "--out", str(tmp_path / "t.json")]) == 0
    assert asked and all("test" not in s for s in asked)  # the extension points too: never the test split
    t = json.loads((tmp_path / "t.json").read_text())
    res = t["results"]
    assert [r["source"] for r in res[:2]] == ["grid", "grid"] and [r["train"]["lr"] for r in res[:2]] == grid["lr"]
    ext = [r for r in res if r["source"] == "extension"]
    assert 1 <= len(ext) <= 2 and t["extend"] == 2  # a 2-point grid's choice is always on an edge: extended
    assert all(r["val_size"] == 30 and r["train_size"] == 48 for r in res)
    # the CLI's choices are the pure logic's, replayed on its own validation numbers
    acc = {r["train"]["lr"]: r["val_acc"] for r in res}
    replay = tune_grid("lp", grid, {"epochs": 2}, {}, lambda p: {"val_acc": acc[p["train"]["lr"]], "val_size": 30},
                       extend=2)
    assert [r["train"]["lr"] for r in replay["results"]] == [r["train"]["lr"] for r in res]
    assert replay["chosen_index"] == t["chosen_index"] and replay["edge"] == t["edge"]
    assert t["explored"] == {"lr": sorted(acc)} and t["chosen"]["train"] == res[t["chosen_index"]]["train"]
    assert (t["edge"] or {}).get("lr") == edge_of(res, t["chosen_index"], "lr")
    # --save-chosen keeps the chosen point's run, from the grid or from the extension
    with safe_open(str(tmp_path / "c.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["key"])["train"]["lr"] == t["chosen"]["train"]["lr"]
    assert json.loads(meta["metrics"])["val_acc"] == res[t["chosen_index"]]["val_acc"]


def test_multilora_tries_loras_grid_unless_it_has_its_own_and_tuning_extend_defaults_to_0():
    from subtune.config import multilora_grid, tune_extend

    cfg = validate(_test_config(**{"methods.lora.grid": {"lr": [0.001, 0.003, 0.01]}}), SCHEMA)
    assert multilora_grid(cfg) == {"lr": [0.001, 0.003, 0.01]}  # both sides tuned as the main table's LoRA
    # absent: the grid alone (the paper configs' grids are their authors'); the embedded default sets 2
    assert tune_extend(cfg) == 0 and cfg["tuning"] == {"extend": 0}
    cfg = validate(_test_config(**{"methods.lora.grid": {"lr": [0.001]}, "multilora.grid": {"lr": [0.01, 0.1]},
                                   "tuning": {"extend": 2}}), SCHEMA)
    assert multilora_grid(cfg) == {"lr": [0.01, 0.1]} and tune_extend(cfg) == 2
    assert multilora_grid(validate(_test_config(), SCHEMA)) == {}  # no grid anywhere: the configured values
    with pytest.raises(SubtuneError, match="tuning.extend"):
        validate(_test_config(tuning={"extend": -1}), SCHEMA)
    # LoRA's grid tries the rank and the ablations try other ranks: one line, naming where the grid came from
    with pytest.raises(SubtuneError, match=r"multilora.ablations.ranks.*from methods.lora.grid"):
        validate(_test_config(**{"methods.lora.grid": {"rank": [2, 4]}}), SCHEMA)
