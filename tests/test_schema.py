"""The config schema's typed parts come from the Python declarations: TrainConfig's fields and each method's
Param fragments (composed by subtune.config.config_schema when a config is validated).

Checked here: the composed sections match the declarations key for key; the Python check of a fragment
(subtune.train_config.conforms) agrees with JSON Schema itself (jsonschema, with the code's strict types) on
every declared key; errors stay one line naming the key or the method's parameter; the YAML file keeps a
placeholder for each generated part. Imports no torch.
"""

import copy
import json
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest
import yaml

from subtune import SubtuneError
from subtune.config import MULTILORA_PARAMS, apply_overrides, config_schema, main, validate
from subtune.methods import REGISTRY, Method, Param, register
from subtune.train_config import TrainConfig, conforms, option

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas/config.schema.yaml"
#: values tried against every declared key: each type, each side of the bounds in use
SAMPLES = [None, True, False, -1, 0, 1, 2, 0.0, 0.5, 1.0, 1.5, 2.0, -0.5, "", "x", "lora", "group", "adamw",
           "none", "tuned", "step", "last", [], ["a"], [""], ["a", 1], ("a",), {}, {"q": 2}, {"q": 0}, {"": 1}]


def _strict_validator(schema):
    """jsonschema with the code's types: an integer is an int (not a bool or 2.0), an array a list or a tuple."""
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many({
        "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
        "array": lambda _, v: isinstance(v, (list, tuple)),
    })
    return jsonschema.validators.extend(base, type_checker=checker)(schema)


def _composed():
    return config_schema(SCHEMA)


def _config():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["selection"].pop("epsilons", None)
    return cfg


def _error(cfg) -> str:
    with pytest.raises(SubtuneError) as e:
        validate(json.loads(json.dumps(cfg)), SCHEMA)
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------ the composed sections
def test_train_section_is_train_config():
    train = _composed()["$defs"]["train"]
    assert train["additionalProperties"] is False
    assert list(train["properties"]) == [f.name for f in fields(TrainConfig)]
    for f in fields(TrainConfig):
        prop = train["properties"][f.name]
        assert prop["description"].endswith(f"default {json.dumps(f.default)}")
        assert "default" not in prop  # the config check would fill it into every train section
        assert _strict_validator(prop).is_valid(f.default)
    assert train == TrainConfig.json_schema()


def test_method_params_are_each_methods_parameters():
    composed = _composed()["$defs"]
    by_name = composed["method_params"]["properties"]
    assert set(by_name) == set(REGISTRY)
    for name, cls in REGISTRY.items():
        params = by_name[name]["properties"]["params"]
        assert params["additionalProperties"] is False and set(params["properties"]) == set(cls.parameters)
        for key, spec in cls.parameters.items():
            assert params["properties"][key]["description"] == f"{spec.kind}; default {json.dumps(spec.default)}"
    lora = REGISTRY["lora"].parameters
    assert composed["multilora_params"]["properties"] == {k: lora[k].json_schema() for k in MULTILORA_PARAMS}


def test_the_yaml_file_holds_placeholders_only():
    raw = yaml.safe_load(SCHEMA.read_text())["$defs"]
    for name in ("train", "method_params", "multilora_params"):
        assert raw[name]["$comment"].startswith("generated") and not raw[name].get("properties")


def test_a_hand_written_generated_section_is_refused(tmp_path):
    raw = yaml.safe_load(SCHEMA.read_text())
    raw["$defs"]["train"] = {"type": "object"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SubtuneError, match=r"\$defs.train must be the placeholder"):
        config_schema(tmp_path / "s.yaml")


def test_the_printed_schema_is_the_composed_one_and_a_valid_schema(capsys):
    main([str(SCHEMA)])
    printed = json.loads(capsys.readouterr().out)
    assert printed == _composed()
    jsonschema.Draft202012Validator.check_schema(printed)


def test_a_method_registered_later_is_in_the_schema():
    cls = type("ZzSchema", (Method,), {"name": "zz_schema", "label": "ZzSchema",
                                        "parameters": {"width": Param(2, "a positive integer",
                                                                      {"type": "integer", "minimum": 1})}})
    register(cls)
    try:
        assert "width" in _composed()["$defs"]["method_params"]["properties"]["zz_schema"]["properties"]["params"][
            "properties"]
        cfg = _config()
        cfg["methods"]["zz_schema"] = {"params": {"width": 0}}
        assert _error(cfg).startswith("zz_schema: width must be a positive integer, not 0")
    finally:
        REGISTRY.pop("zz_schema", None)


# ------------------------------------------------------------------ the Python check is JSON Schema's
@pytest.mark.parametrize("name", [f.name for f in fields(TrainConfig)])
def test_train_check_agrees_with_json_schema(name):
    prop = _composed()["$defs"]["train"]["properties"][name]
    for v in SAMPLES:
        ours = True
        try:
            TrainConfig.from_dict({name: v, **({"warmup_epochs": 1} if name == "warmup_lr" else {}),
                                   **({"lr": 10} if name == "min_lr" else {})})
        except SubtuneError as e:
            ours = False
            assert str(e).startswith(f"train.{name} must be "), e
        assert ours == _strict_validator(prop).is_valid(v), (name, v)


@pytest.mark.parametrize("name,key", [(n, k) for n in sorted(REGISTRY) for k in REGISTRY[n].parameters])
def test_param_check_agrees_with_json_schema(name, key):
    spec = REGISTRY[name].parameters[key]
    assert isinstance(spec.schema, dict), "a registered method declares a JSON-schema fragment"
    for v in SAMPLES:
        assert conforms(spec.schema, v) == _strict_validator(spec.json_schema()).is_valid(v), (name, key, v)


def test_an_unsupported_keyword_is_refused_at_declaration():
    with pytest.raises(TypeError, match="pattern"):
        Param("a", "a word", {"type": "string", "pattern": "^a"})
    with pytest.raises(TypeError, match="uniqueItems"):
        option([], "names", uniqueItems=True)


# ------------------------------------------------------------------ messages
@pytest.mark.parametrize("edit, needle", [
    (lambda c: c["train"].update(epochs=0), "bad config value train.epochs: "),
    (lambda c: c["train"].update(bn_mode="eval"), "bad config value train.bn_mode: "),
    (lambda c: c["train"].update(lrr=1), "unknown config key train.lrr"),
    (lambda c: c["methods"].update(lora={"params": {"rank": 0}}), "lora: rank must be a positive integer, not 0"),
    (lambda c: c["methods"].update(lora={"params": {"rnk": 4}}), "method 'lora' takes no parameter 'rnk'"),
    (lambda c: c["methods"].update(lora={"params": {"head": "keep"}}), "methods.lora.params: head is set per target"),
    (lambda c: c["targets"]["digits"].update(methods={"lp": {"params": {"rank": 2}}}),
     "targets.digits.methods.lp.params: method 'lp' takes no parameter 'rank'"),
    (lambda c: c.update(multilora={"targets": ["fmnist", "digits"], "params": {"rank": 0}}),
     "bad config value multilora.params.rank: "),
])
def test_bad_values_are_one_line_naming_the_key(edit, needle):
    cfg = copy.deepcopy(_config())
    edit(cfg)
    assert needle in _error(cfg)


# ------------------------------------------------------------------ snakemake --config overrides
def test_nested_overrides_get_the_config_files_types_and_merge_into_their_section():
    cfg = _config()
    # as Snakemake leaves them: its YAML base loader keeps every nested scalar a string, deep-merged
    cfg["selection"].update(epsilon="0.05", fast="false")
    cfg["sweep"]["sizes"] = ["60"]
    apply_overrides(cfg, ["selection={epsilon: 0.05, fast: false}", "sweep={sizes: [60]}", "experiment=x",
                          "final_data=train"])
    assert cfg["selection"]["epsilon"] == 0.05 and cfg["selection"]["fast"] is False
    assert cfg["selection"]["k"] == _config()["selection"]["k"]  # the rest of the section is kept
    assert cfg["sweep"] == {**_config()["sweep"], "sizes": [60]}
    validate(cfg, SCHEMA)
    with pytest.raises(SubtuneError, match=r"^--config selection: not valid YAML \(month must be in 1\.\.12\)$"):
        apply_overrides(_config(), ["selection={epsilon: 2025-13-01}"])
    unparsed = _config()  # not YAML to Snakemake either: it keeps the string, which the schema check names
    apply_overrides(unparsed, ["selection={epsilon: [}"])
    assert unparsed["selection"] == _config()["selection"]


@pytest.mark.slow
def test_snakemake_config_overrides_plan_with_the_new_value_or_fail_in_one_line(tmp_path):
    """``snakemake --config 'SECTION={key: value}'``: the dry run plans with the value (typed as in the config
    file, the rest of the section kept); a bad value stops it before any job with one line naming the key."""
    from helpers.workflow import job_stats, smk, workdir

    wd = workdir(tmp_path)
    base = job_stats(smk(wd, "-n").stdout)
    p = smk(wd, "-n", "-p", "--config", "selection={epsilon: 0.05}", "sweep={sizes: [60]}")
    assert '"epsilon":0.05,' in p.stdout  # the decision's config, a number
    stats = job_stats(p.stdout)
    assert stats["train_sweep"] == base["train_sweep"] // 2 and stats["train"] == base["train"]
    cfg = yaml.safe_load((wd / "configs/test.yaml").read_text())
    cfg["selection"]["epsilon"], cfg["sweep"]["sizes"] = 0.05, [60]
    from subtune.provenance import config_hash

    assert f"--config-hash {config_hash(validate(cfg, SCHEMA))} " in p.stdout  # what `subtune status` computes

    bad = smk(wd, "-n", "--config", "selection={epsilon: x}", check=False)
    out = bad.stdout + bad.stderr
    lines = [line for line in out.splitlines() if "selection.epsilon" in line]
    assert bad.returncode != 0 and "Traceback" not in out and job_stats(out) == {}
    assert lines == ["config error: bad config value selection.epsilon: 'x' is not of type 'number'"], out[-2000:]
