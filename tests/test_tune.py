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
