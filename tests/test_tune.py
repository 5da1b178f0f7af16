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
    from subtune.methods import REGISTRY

    assert set(cfg["methods"]) == set(REGISTRY)  # every registered single-task method runs in the default
    assert all(spec.get("grid") for spec in cfg["methods"].values())
    assert set(cfg["multilora"]["targets"]) == set(cfg["targets"])


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
    """Checked by name: the key is another work package's; the schema here may not know it yet."""
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())
    schema["$defs"]["train"]["properties"].setdefault("epoch_select", {"enum": ["last", "best_val"]})
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    with pytest.raises(SubtuneError) as e:
        validate(_test_config(final_data="train+val", **edit), tmp_path / "schema.yaml")
    assert str(e.value) == (f"final_data is train+val but {where} has epoch_select best_val (no validation split "
                            "is left to choose the epoch on)")
