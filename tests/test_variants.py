"""Method variants: a registered method run under a name of its own, ``<method>-<variant>`` (peft-vtab's
``ssf-val-tuned``: SSF tuned on validation beside the ``ssf`` row that runs the authors' per-task values).

The name alone says which method runs, so the registry lookups, the config check, the plan, the ``tune`` and
``train`` stages and the tables all resolve it the same way; these tests follow one variant through each.
"""

import json

import pytest

from subtune import SubtuneError
from subtune.cli import main
from subtune.config import validate
from subtune.methods import (
    REGISTRY,
    Method,
    base_method,
    get_method,
    method_class,
    method_label,
    method_needs,
    method_order,
    register,
)
from subtune.plan import Plan, method_grid
from subtune.report import main_table

from helpers.configs import SCHEMA, base_config
from helpers.methods import small, toy


def test_a_variant_runs_its_method_under_its_own_name():
    assert base_method("ssf-val-tuned") == "ssf" and base_method("ssf") == "ssf"
    assert base_method("nothing-here") == "nothing-here"  # unknown: left for method_class to name
    assert method_class("ssf-val-tuned") is REGISTRY["ssf"]
    assert type(get_method("lora-r4", rank=4)) is REGISTRY["lora"]
    assert method_needs("subtuning-fast") == "selection" and method_needs("ssf-val-tuned") is None
    assert method_label("ssf-val-tuned") == "SSF (val-tuned)" and method_label("ssf") == "SSF"
    # right after its method, before the next one; unknown names last
    assert method_order(["san", "zz", "ssf-val-tuned", "ssf", "lora"]) == ["lora", "ssf", "ssf-val-tuned", "san", "zz"]


def test_a_variant_takes_its_methods_parameters_only():
    with pytest.raises(SubtuneError, match="method 'ssf' takes no parameter 'rank'"):
        get_method("ssf-val-tuned", rank=4)


def test_an_unknown_method_in_a_variant_is_named_in_one_line():
    with pytest.raises(SubtuneError, match=r"unknown method 'ssfx' in variant 'ssfx-val' \(<method>-<variant>; "
                                           r"known methods: adalora, ") as e:
        method_class("ssfx-val")
    assert "\n" not in str(e.value)
    with pytest.raises(SubtuneError, match=r"unknown method 'ssfx' \(known: "):
        method_class("ssfx")
    with pytest.raises(SubtuneError, match="unknown method 'ssf-'"):  # no variant part
        method_class("ssf-")


def test_a_registered_name_has_no_dash():
    with pytest.raises(SubtuneError, match="has a '-', which names a variant"):
        register(type("Dashed", (Method,), {"name": "zz-dash", "label": "Dashed"}))
    assert "zz-dash" not in REGISTRY


def config(**methods) -> dict:
    cfg = base_config()
    cfg["methods"].update(methods)
    return cfg


def test_the_config_check_takes_a_variant_beside_its_method():
    cfg = validate(config(**{"lp-tuned": {"train": {"lr": 0.01}, "grid": {"lr": [0.01, 0.1]}}}), SCHEMA)
    assert {"lp", "lp-tuned"} <= set(cfg["methods"])
    with pytest.raises(SubtuneError, match=r"^unknown method methods\.lpx-tuned \(known: .*; or a variant "
                                           r"<method>-<variant> of one, e.g\. ssf-val-tuned\)$"):
        validate(config(**{"lpx-tuned": {}}), SCHEMA)
    with pytest.raises(SubtuneError, match=r"methods\.lora-big\.params.*rank"):  # its method's parameter check
        validate(config(**{"lora-big": {"params": {"rank": 0}}}), SCHEMA)
    with pytest.raises(SubtuneError, match="lp-tuned"):  # its method's grid check, under its own name
        validate(config(**{"lp-tuned": {"grid": {"rank": [2, 4]}}}), SCHEMA)


def test_the_plan_gives_a_variant_its_own_jobs():
    cfg = validate(config(**{"lp-tuned": {"grid": {"lr": [0.01, 0.1]}}}), SCHEMA)
    plan = Plan(cfg)
    t = plan.targets[0]
    assert plan.tuned_input("lp-tuned", t) == {"tuned": f"results/test/tune/{t}/lp-tuned.json"}
    assert method_grid(cfg, "lp-tuned", t) == {"lr": [0.01, 0.1]}
    assert f"results/test/runs/{t}/lp-tuned/seed0.json" in plan.final_runs()
    sub = Plan(validate(config(**{"subtuning-b": {}}), SCHEMA))  # needs the selection like SubTuning
    assert sub.stage_inputs("subtuning-b", t, 0) == {"selection": f"results/test/select/{t}/seed0/selected.json"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from subtune.data.prepared import save_prepared
    from subtune.models.checkpoint import Checkpoint, save_checkpoint

    wd = tmp_path_factory.mktemp("variants")
    kwargs = {"channels": [8, 16, 32, 64], "zero_init_last": False}
    save_checkpoint(wd / "ckpt.safetensors", small("resnet"),
                    Checkpoint("resnet18", 3, 3, 16, kwargs, (0.5,) * 3, (0.25,) * 3, {"kind": "test"}))
    splits = {}
    for i, s in enumerate(("train", "val", "test")):
        splits[f"{s}_x"], splits[f"{s}_y"] = toy("resnet", 32 if s == "train" else 8, i, 3)
    save_prepared(wd / "t.safetensors", wd / "t.json", splits, {
        "name": "t", "classes": ["0", "1", "2"], "num_classes": 3, "channels": 1, "image_size": 16,
        "splits": {"train": 32, "val": 8, "test": 8}, "seed": 0, "params": {}, "inputs": {}})
    return wd


def test_tune_and_train_run_a_variant_under_its_name(files):
    """``tune`` and ``train`` take the variant's name as ``--method`` (as the rules pass it): SSF trains, the
    files and the table say ``ssf-val-tuned``; a tuning result of the method itself is refused for the variant."""
    common = ["--data", files / "t.safetensors", "--manifest", files / "t.json", "--checkpoint",
              files / "ckpt.safetensors", "--train", json.dumps({"epochs": 1, "batch_size": 16})]
    run = lambda *a: main([str(x) for x in a])  # noqa: E731
    assert run("tune", "--method", "ssf-val-tuned", "--grid", '{"lr": [0.01, 0.001]}', *common,
               "--out", files / "tune.json") == 0
    tuned = json.loads((files / "tune.json").read_text())
    assert tuned["method"] == "ssf-val-tuned" and len(tuned["results"]) == 2
    for name, extra in (("ssf-val-tuned", ["--tuned", files / "tune.json"]), ("ssf", [])):
        assert run("train", "--method", name, *extra, *common, "--out", files / f"{name}.json") == 0
    ours, plain = (json.loads((files / f"{n}.json").read_text()) for n in ("ssf-val-tuned", "ssf"))
    assert ours["method"] == "ssf-val-tuned" and ours["tuned"]["train"]["lr"] in (0.01, 0.001)
    assert ours["trainable_params"] == plain["trainable_params"]  # the same method: SSF's scales and shifts
    assert run("train", "--method", "ssf", "--tuned", files / "tune.json", *common, "--out", files / "x.json") == 2
    out = main_table([files / "ssf.json", files / "ssf-val-tuned.json"], files / "m.csv", files / "m.md")
    assert list(out["method"]) == ["ssf", "ssf-val-tuned"]
    assert "| SSF (val-tuned) |" in (files / "m.md").read_text()
