"""Validation of the workflow config.

``validate`` checks a config against ``schemas/config.schema.yaml`` (unknown
keys, wrong types, missing values) and then against the code's registries
(method names and their parameters, dataset names, training keys), and raises
a one-line :class:`SubtuneError` naming the key. The Snakefile calls it before
any job runs, after :func:`apply_overrides` has given ``--config``'s nested
values the types the config file would give them.

The values each rule receives (the merged training configs, parameters and
grids, the selection's configs, the CLI flags) are :mod:`subtune.plan`'s;
they are importable from here too. A target may not fix a key
(``targets.<t>.methods.<m>.train`` or ``params``) and grid it at once.

Training data of the final runs: ``final_data: train+val`` trains the final
``train`` jobs on the union of the train and val splits (VTAB-1k's
train800val200), with no per-epoch validation; ``tune`` and the selection keep
train/val, and the data-size sweep keeps train (its x axis is the training-set
size; its per-size selection needs val). ``selection.cv_data: train+val`` runs
``scoring: cv``'s folds over the union (SubTuning's 5-fold CV over the 1,000).

The schema's typed parts come from the Python declarations, composed at validation time
(:func:`config_schema`): ``$defs.train`` from :class:`~subtune.train_config.TrainConfig`'s fields,
``$defs.method_params`` from each registered method's :attr:`~subtune.methods.base.Method.parameters`
(``methods.<m>.params`` and ``targets.<t>.methods.<m>.params``), ``$defs.multilora_params`` from LoRA's
rank, alpha and target. The YAML file holds everything else and a ``generated`` placeholder for each.
Composed at run time rather than written into the file by a generator: the method registry is open (a
method is one module dropped into :mod:`subtune.methods`, listed nowhere else), so a generated file would
need regenerating for every new method and could disagree with the code in between; composed, it cannot.
``python -m subtune.config`` prints the whole schema (for an editor or another validator). An error inside
a method's ``params`` is reported with the method's own message (the check reads the same fragment).
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Sequence

from . import SubtuneError
from .plan import (  # noqa: F401  (the values the rules receive: importable from here too)
    cache_flags,
    cv_flags,
    dataset_params,
    decision_config,
    dumps,
    final_flags,
    method_grid,
    method_override,
    method_params,
    method_train,
    multilora_ablations,
    multilora_grid,
    multilora_train,
    scoring_config,
    scoring_flags,
    selection_budget,
    selection_epsilons,
    selection_train,
    selects_per_seed,
    target_head,
    target_shifts,
    tune_extend,
)
from .tune import multilora_grid_points  # noqa: F401  (importable from here too)


#: the keys of ``multilora.params``: LoRA's parameters that Multi-LoRA takes
MULTILORA_PARAMS = ("rank", "alpha", "target")
#: how the ``$comment`` of each placeholder in the YAML file starts (the ``$defs`` :func:`config_schema` fills in)
GENERATED = "generated"


def _path(err) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(top level)"


def _schema_error(err, config: dict[str, Any]) -> str:
    import jsonschema

    params_message = _method_params_error(list(err.absolute_path), config)
    if params_message:
        return params_message
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        where = _path(err)
        key = f"{where}.{extra[0]}" if where != "(top level)" else extra[0]
        allowed = ", ".join(sorted(err.schema.get("properties", {}))) or "none"
        return f"unknown config key {key} (allowed here: {allowed})"
    if err.validator == "required":
        missing = err.message.split("'")[1]
        where = _path(err)
        return f"missing config value {where + '.' if where != '(top level)' else ''}{missing}"
    best = jsonschema.exceptions.best_match([err])
    return f"bad config value {_path(best)}: {best.message}"


def _method_params_error(path: list, config: dict[str, Any]) -> str | None:
    """For a schema error inside ``methods.<m>.params`` or ``targets.<t>.methods.<m>.params``: the method's own
    message (as the registry check would give it), else None."""
    from .methods import REGISTRY

    if path[:1] == ["methods"] and len(path) >= 3 and path[2] == "params":
        name, section = path[1], config["methods"].get(path[1])
    elif path[:1] == ["targets"] and len(path) >= 5 and path[2] == "methods" and path[4] == "params":
        name, section = path[3], ((config["targets"].get(path[1]) or {}).get("methods") or {}).get(path[3])
    else:
        return None
    where = ".".join(str(p) for p in path[:3 if path[0] == "methods" else 5])
    params = (section or {}).get("params")
    if name not in REGISTRY or not isinstance(params, dict):
        return None
    try:
        _check_method_params(name, params, where)
    except SubtuneError as e:
        return str(e) if path[0] == "methods" or str(e).startswith(where) else f"{where}: {e}"
    return None


def _check_method_params(name: str, params: dict[str, Any], where: str) -> None:
    """A method's ``params`` (at ``where``): no head (set per target) and the method's typed parameters."""
    from .methods import base_method, get_method

    if "head" in params:
        raise SubtuneError(f"{where}: head is set per target (targets.<name>.head: new | keep)")
    try:
        get_method(name, **params)  # raises naming the method and the parameter
    except SubtuneError as e:
        if base_method(name) == name:
            raise
        raise SubtuneError(f"{where}: {e}") from None  # a variant: the message names its method, not the entry


def load_schema(path: str | Path) -> dict:
    """The YAML schema at ``path``, parsed; each call gets its own copy (:func:`config_schema` fills it in).

    Parsing is most of a validation's time (~50 ms), and Snakemake validates on every invocation: the parsed
    file is kept per version (absolute path, modification time, size), so an edited schema is read again.
    """
    st = Path(path).stat()  # a missing file is reported by the name given
    return copy.deepcopy(_parsed_schema(str(Path(path).absolute()), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=8)
def _parsed_schema(path: str, mtime_ns: int, size: int) -> dict:
    """The file at ``path`` parsed (``mtime_ns`` and ``size`` key the cache: a changed file is another entry)."""
    import yaml

    return yaml.safe_load(Path(path).read_text())


def config_schema(path: str | Path) -> dict:
    """The schema at ``path`` with its generated ``$defs`` filled in from the Python declarations (see above)."""
    from .methods import REGISTRY, method_order
    from .train_config import TrainConfig

    schema = load_schema(path)
    lora = REGISTRY["lora"].parameters
    generated = {
        "train": TrainConfig.json_schema(),
        "method_params": {"type": "object", "properties": {
            m: {"properties": {"params": REGISTRY[m].params_schema()}} for m in method_order(REGISTRY)}},
        "multilora_params": {"type": "object", "additionalProperties": False,
                             "properties": {k: lora[k].json_schema() for k in MULTILORA_PARAMS}},
    }
    defs = schema.get("$defs") or {}
    for name, part in generated.items():
        if not str((defs.get(name) or {}).get("$comment", "")).startswith(GENERATED):
            raise SubtuneError(f"{path}: $defs.{name} must be the placeholder {{$comment: {GENERATED} ...}} "
                               "(subtune.config fills it in)")
        defs[name] = json.loads(json.dumps(part))  # a copy: the declarations' fragments are shared
    return schema


def apply_overrides(config: dict[str, Any], entries: Sequence[str] | None) -> dict[str, Any]:
    """Snakemake's ``--config KEY=VALUE`` entries (``entries``, as given) merged into ``config`` with YAML types.

    Snakemake reads a nested value (``--config 'selection={epsilon: 0.05}'``) with YAML's base loader, which
    keeps every scalar a string, and deep-merges it into the config; a value that is a mapping or a list is read
    again here as the config file is read (YAML: ``0.05`` a number, ``true`` a boolean) and deep-merged once
    more, so an override is checked as the same value in the config file would be. Top-level scalars keep
    Snakemake's reading. Returns ``config``.
    """
    import yaml

    for entry in entries or []:
        key, sep, text = str(entry).partition("=")
        text = text.strip("'\"")  # as Snakemake strips them (snakemake.common.parse_key_value_arg)
        if not sep or not text:
            continue
        try:
            loose = yaml.load(text, Loader=yaml.BaseLoader)
        except yaml.YAMLError:
            continue  # Snakemake read it as a string: so does the config
        if not isinstance(loose, (dict, list)):
            continue
        try:
            typed = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. a date YAML reads as one, 2025-13-01
            raise SubtuneError(f"--config {key}: not valid YAML ({str(exc).splitlines()[0]})") from None
        _deep_merge(config, {key: typed})
    return config


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """``src`` into ``dst``: mappings merged key by key, anything else replaced (Snakemake's ``update_config``)."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


def validate(config: dict[str, Any], schema_path: str | Path) -> dict[str, Any]:
    """Validate ``config`` in place (schema defaults filled in); raise SubtuneError naming the key.

    Imports no torch, timm or peft (the methods load them on first use): Snakemake runs
    this on every invocation and in every cluster job step.
    """
    import jsonschema

    schema = config_schema(schema_path)
    validator_cls = jsonschema.validators.validator_for(schema)
    set_defaults = validator_cls.VALIDATORS["properties"]

    def with_defaults(validator, properties, instance, sch):
        for prop, sub in properties.items():
            if isinstance(instance, dict) and "default" in sub:
                instance.setdefault(prop, json.loads(json.dumps(sub["default"])))
        yield from set_defaults(validator, properties, instance, sch)

    Validator = jsonschema.validators.extend(validator_cls, {"properties": with_defaults})
    errors = sorted(Validator(schema).iter_errors(config), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        raise SubtuneError(_schema_error(errors[0], config))
    _check_registries(config)
    return config


def _check_registries(config: dict[str, Any]) -> None:
    from .data.targets import TARGETS
    from .data.targets import validate as validate_dataset
    from .methods import REGISTRY, base_method, get_method, method_class, method_needs
    from .models.names import check_arch
    from .train_config import TrainConfig
    from .tune import validate_grid

    _check_data_choices(config)  # first: it names epoch_select, which a training config check would also reject
    for name, spec in config["methods"].items():
        if base_method(name) not in REGISTRY:  # a variant (<method>-<variant>) runs its method under its own name
            raise SubtuneError(f"unknown method methods.{name} (known: {', '.join(sorted(REGISTRY))}; or a variant "
                               "<method>-<variant> of one, e.g. ssf-val-tuned)")
        params = spec.get("params") or {}
        _check_method_params(name, params, f"methods.{name}.params")
        TrainConfig.from_dict(method_train(config, name), f"methods.{name}.train")
        validate_grid(name, spec.get("grid"), method_train(config, name), params)
    for name, spec in config["targets"].items():
        if name not in TARGETS:
            raise SubtuneError(f"unknown dataset targets.{name} (known: {', '.join(sorted(TARGETS))})")
        validate_dataset(name, dataset_params(config, name))
    for name, spec in config["targets"].items():
        for m, over in (spec.get("methods") or {}).items():
            _check_target_override(config, name, m, over or {})
    for name in config["targets"]:  # a method that supports only some heads (Siamese SubTuning: a new one)
        head = target_head(config, name)
        for m in config["methods"]:
            if head not in method_class(m).heads:
                raise SubtuneError(f"targets.{name}.head is {head} but method {m!r} supports head "
                                   f"{' or '.join(method_class(m).heads)} only")
    bb = config["backbone"]
    check_arch(bb["arch"], "backbone.arch")  # reads timm's source: no torch
    if bb["checkpoint"] == "pretrain":
        if "source" not in config:
            raise SubtuneError("backbone.checkpoint is pretrain but the config has no source section")
        if config["source"]["dataset"] not in TARGETS:
            raise SubtuneError(f"unknown dataset source.dataset {config['source']['dataset']!r}")
        validate_dataset(config["source"]["dataset"], dataset_params(config, config["source"]["dataset"]))
    if bb["checkpoint"] == "file" and not bb.get("file"):
        raise SubtuneError("backbone.checkpoint is file but backbone.file is not set")
    if bb["checkpoint"] == "package":
        from .models.packaged import check_package  # package metadata only: no torch

        if not bb.get("package"):
            raise SubtuneError("backbone.checkpoint is package but backbone.package is not set")
        check_package(bb["package"], bb["arch"])
    _check_budget(config)
    _check_multilora_inputs(config)
    per = config["selection"].get("per_seed")
    for t in per if isinstance(per, list) else []:
        if t not in config["targets"]:
            raise SubtuneError(f"selection.per_seed names {t!r}, which is not one of targets")
    for section in ("sweep", "pairs"):
        if section in config and config[section]["target"] not in config["targets"]:
            raise SubtuneError(f"{section}.target {config[section]['target']!r} is not one of targets")
    for ref in config.get("references") or []:
        if not Path(ref).is_file():
            raise SubtuneError(f"references: missing file {ref}")
    if "multilora" in config:
        for t in config["multilora"]["targets"]:
            if t not in config["targets"]:
                raise SubtuneError(f"multilora.targets: {t!r} is not one of targets")
        TrainConfig.from_dict(multilora_train(config), "multilora.train")
        where = "multilora.grid" if config["multilora"].get("grid") else "multilora.grid (from methods.lora.grid)"
        try:
            for point in multilora_grid_points(multilora_grid(config)):
                TrainConfig.from_dict({**multilora_train(config), **point["train"]}, "multilora.grid")
                get_method("lora", **{**(config["multilora"].get("params") or {}), **point["params"]})
        except SubtuneError as e:
            if config["multilora"].get("grid"):
                raise
            raise SubtuneError(f"methods.lora.grid is the multilora comparison's grid (multilora.grid is not set): "
                               f"{e}; give multilora.grid") from None
        if (config["multilora"].get("ablations") or {}).get("ranks") and "rank" in multilora_grid(config):
            raise SubtuneError(f"multilora.ablations.ranks: the rank is already in {where} (chosen on "
                               "validation); drop one of the two")
    if config["selection"].get("epsilons") and "subtuning" not in config["methods"]:
        raise SubtuneError("selection.epsilons: the epsilon sets train with SubTuning's config: add subtuning to "
                           "methods")
    for m in config.get("sweep", {}).get("methods", []):
        if m not in config["methods"]:
            raise SubtuneError(f"sweep.methods: {m!r} is not one of methods")
        if method_needs(m) == "surgical":
            raise SubtuneError(f"sweep.methods: {m!r} is not supported in the sweep")


def _check_budget(config: dict[str, Any]) -> None:
    from .halving import Budget
    from .train_config import TrainConfig

    s = config.get("selection") or {}
    b = Budget.from_dict(s.get("budget"))
    if b is None:
        return
    b.check(TrainConfig.from_dict(selection_train(config), "selection.train").epochs)
    if b.one_job:
        if s["scoring"] != "val":
            raise SubtuneError(f"selection.budget: {b.kind} needs selection.scoring: val")
        if s.get("shards", 1) != 1:
            raise SubtuneError(f"selection.budget: {b.kind} needs selection.shards: 1 "
                               "(a round's candidates compete in one job)")
        if b.kind == "halving" and not s.get("fast", True):
            raise SubtuneError("selection.budget: halving needs selection.fast: true (candidates trained together)")
        if s.get("profile", True) and s["strategy"] == "forward":  # backward: the profile has exact jobs of its own
            raise SubtuneError(f"selection.budget: with {b.kind}, round 1 of a forward walk is no fine-tuning "
                               "profile (candidates dropped early keep a shorter run's score): set "
                               "selection.profile: false")


def _check_target_override(config: dict[str, Any], target: str, method: str, over: dict[str, Any]) -> None:
    """``targets.<target>.methods.<method>``: a configured method, a valid merged training config and grid."""
    from .methods import get_method
    from .train_config import TrainConfig
    from .tune import validate_grid

    where = f"targets.{target}.methods.{method}"
    if method not in config["methods"]:
        raise SubtuneError(f"{where}: {method!r} is not one of methods ({', '.join(config['methods'])})")
    both = sorted(set(over.get("grid") or {}) & (set(over.get("train") or {}) | set(over.get("params") or {})))
    if both:
        raise SubtuneError(f"{where}.grid.{both[0]}: fixed for this target in {where} and also in its grid")
    params = method_params(config, method, target)
    try:
        get_method(method, **params)
    except SubtuneError as e:
        raise SubtuneError(f"{where}.params: {e}") from None
    train = method_train(config, method, target)
    TrainConfig.from_dict(train, f"{where}.train")
    try:
        validate_grid(method, method_grid(config, method, target), train, params)
    except SubtuneError as e:
        raise SubtuneError(f"{where}.grid (merged over methods.{method}.grid): {e}") from None


def _check_data_choices(config: dict[str, Any]) -> None:
    """final_data and selection.cv_data against the rest of the config."""
    sel = config.get("selection") or {}
    if sel.get("cv_data", "train") != "train" and sel.get("scoring") != "cv":
        raise SubtuneError(f"selection.cv_data is {sel['cv_data']} but selection.scoring is {sel['scoring']} "
                           "(cv_data applies to scoring: cv only)")
    if config.get("final_data", "train") == "train":
        return
    for m in config["methods"]:
        for t in config["targets"]:
            in_grid = "best_val" in (method_grid(config, m, t).get("epoch_select") or [])
            if method_train(config, m, t).get("epoch_select") != "best_val" and not in_grid:
                continue
            if in_grid:
                raise SubtuneError(f"final_data is train+val but the grid of {m} on {t} tries epoch_select best_val "
                                   "(no validation split is left to choose the epoch on)")
            over = method_override(config, m, t)
            where = (f"targets.{t}.methods.{m}.train" if "epoch_select" in (over.get("train") or {})
                     else f"methods.{m}.train" if "epoch_select" in (config["methods"][m].get("train") or {})
                     else "train")
            raise SubtuneError(f"final_data is train+val but {where} has epoch_select best_val (no validation split "
                               "is left to choose the epoch on)")


def _check_multilora_inputs(config: dict[str, Any]) -> None:
    """data.standardize and train.head_init against the multilora section, which builds its inputs' normalisation
    (one for every task) and its task heads itself."""
    if "multilora" not in config:
        return
    if config["data"].get("standardize", "backbone") != "backbone":
        raise SubtuneError(f"data.standardize is {config['data']['standardize']} but the multilora comparison "
                           "normalises every task with the backbone's statistics: set data.standardize: backbone")
    head_init = multilora_train(config).get("head_init", "default")
    if head_init != "default":
        raise SubtuneError(f"head_init {head_init} (train or multilora.train): Multi-LoRA builds its task heads "
                           "itself (torch's default initialisation); drop head_init from the multilora training")


def main(argv: list[str] | None = None) -> None:
    """``python -m subtune.config [SCHEMA]``: print the composed schema as JSON (default: the workflow's)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m subtune.config", description=main.__doc__)
    p.add_argument("schema", nargs="?", default="schemas/config.schema.yaml", help="the YAML schema file")
    print(json.dumps(config_schema(p.parse_args(argv).schema), indent=2))


if __name__ == "__main__":
    main()
