"""Hyperparameters of one training run (importable without torch: config validation uses it).

Each key is declared once, as a field with its JSON-schema constraints (:func:`option`): :meth:`TrainConfig.validate`
checks them and :meth:`TrainConfig.json_schema` is the ``train`` section of the config schema. The checker of
such fragments (:func:`conforms`) lives here, at the bottom of the import graph, because the methods' typed
parameters (:class:`subtune.methods.base.Param`) are declared the same way.

Keys beyond the basic optimisation ones select a published protocol; each
default keeps the plain behaviour (see :mod:`subtune.train` and
:mod:`subtune.augment` for the exact forms):

- ``no_weight_decay_1d``: biases, 1-D tensors and the model's
  ``no_weight_decay()`` names get weight decay 0 (timm's optimizer factory, SSF).
- ``drop_path``: stochastic-depth rate (timm's ``drop_path_rate``), active in
  every block during training, frozen ones included (SSF calls model.train()).
- ``augment``: ``none``, ``flip``, ``crop``, ``crop_flip`` (pad-and-crop),
  ``rrc_flip`` (SubTuning: RandomResizedCrop + flip), ``timm`` (timm's ImageNet
  recipe with SAN's defaults: RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25).
- ``mixup`` / ``cutmix``: alphas of timm's ``Mixup`` (SAN: 0.8 and 1.0).
- ``bn_mode``: ``tuned`` (BatchNorm in trained modules in train mode) or
  ``frozen`` (every BatchNorm in eval mode, Surgical fine-tuning's code).
- ``epoch_select``: ``last`` or ``best_val`` (restore the epoch with the best
  validation accuracy before the test split is read).
- ``schedule_unit``: ``step`` (the learning rate changes every optimizer
  step) or ``epoch`` (once per epoch: timm's ``CosineLRScheduler`` with
  ``t_in_epochs``, SSF/SAN; torch's per-epoch ``CosineAnnealingLR``, SubTuning).
- ``warmup_lr``: the linear warm-up's starting learning rate (SSF 1e-7).
- ``min_lr``: the cosine's floor (SSF/SAN 1e-8).
- ``cooldown_epochs``: epochs trained at ``min_lr`` after the cosine (timm's
  ``cooldown_epochs``, 10 in SSF/SAN); a run trains ``epochs + cooldown_epochs``.
- ``drop_last``: drop each epoch's incomplete last batch (SSF/SAN's loaders).
- ``head_init``: how a new classifier head is initialised: ``default`` (what
  timm's ``reset_classifier`` gives, torch's ``nn.Linear`` default) or
  ``trunc_normal`` (weights from a normal of std 0.02 truncated at +-2, biases 0:
  timm 0.6.5's ``init_weights_vit_timm``, which SSF's ``models/vision_transformer.py``
  and SAN's timm install apply to the head ``create_model(num_classes=...)`` builds).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from . import SubtuneError, dataclass_from_dict

AUGMENTS = ("none", "flip", "crop", "crop_flip", "rrc_flip", "timm")
BN_MODES = ("tuned", "frozen")
EPOCH_SELECTS = ("last", "best_val")
SCHEDULE_UNITS = ("step", "epoch")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
HEAD_INITS = ("default", "trunc_normal")

# ------------------------------------------------------------------ JSON-schema fragments as Python checks
# A typed declaration here (a TrainConfig field) or in a method (``subtune.methods.base.Param``) is a JSON-schema
# fragment: the config schema embeds it as is, and ``conforms`` checks a value against it in Python. ``conforms``
# knows the keywords below and no others, so a declaration cannot use one it would silently ignore; it types
# strictly (an integer is an int, not a bool or 3.0; an array is a list or a tuple), as the code needs.
_TYPES = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, (list, tuple)),
    "object": lambda v: isinstance(v, dict),
}
_BOUNDS = {"minimum": (">=", lambda v, b: v >= b), "exclusiveMinimum": (">", lambda v, b: v > b),
           "maximum": ("<=", lambda v, b: v <= b), "exclusiveMaximum": ("<", lambda v, b: v < b)}
_SUBSCHEMAS = ("items", "additionalProperties", "propertyNames")
_ANNOTATIONS = ("description", "$comment", "title")
KEYWORDS = frozenset({"type", "enum", "minItems", "minLength", *_BOUNDS, *_SUBSCHEMAS, *_ANNOTATIONS})


def check_keywords(schema: Mapping[str, Any], where: str) -> None:
    """Refuse a fragment using a keyword :func:`conforms` does not check (a programming error: TypeError)."""
    unknown = sorted(set(schema) - KEYWORDS)
    types = schema.get("type", [])
    bad_types = sorted(set([types] if isinstance(types, str) else types) - set(_TYPES))
    if unknown or bad_types:
        raise TypeError(f"{where}: schema keyword or type {(unknown or bad_types)[0]!r} is not one subtune checks "
                        f"(keywords: {', '.join(sorted(KEYWORDS))})")
    for k in _SUBSCHEMAS:
        if k in schema:
            check_keywords(schema[k], f"{where}.{k}")


def conforms(schema: Mapping[str, Any], value: Any) -> bool:
    """Whether ``value`` is valid against the JSON-schema fragment ``schema`` (the keywords of :data:`KEYWORDS`)."""
    types = schema.get("type")
    if types is not None and not any(_TYPES[t](value) for t in ([types] if isinstance(types, str) else types)):
        return False
    if "enum" in schema and not any(value == e and isinstance(value, bool) == isinstance(e, bool)
                                      for e in schema["enum"]):
        return False
    if _TYPES["number"](value) and not all(ok(value, schema[k]) for k, (_, ok) in _BOUNDS.items() if k in schema):
        return False
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        return False
    if _TYPES["array"](value):
        if len(value) < schema.get("minItems", 0):
            return False
        if "items" in schema and not all(conforms(schema["items"], v) for v in value):
            return False
    if isinstance(value, dict):
        if "propertyNames" in schema and not all(conforms(schema["propertyNames"], k) for k in value):
            return False
        if "additionalProperties" in schema and not all(conforms(schema["additionalProperties"], v)
                                                        for v in value.values()):
            return False
    return True


def describe(schema: Mapping[str, Any]) -> str:
    """What a valid value of a scalar fragment is, in words ("an integer >= 1"), for error messages."""
    if "enum" in schema:
        return "one of " + ", ".join(str(e) for e in schema["enum"])
    kind = {"boolean": "true or false", "integer": "an integer", "number": "a number", "string": "a string"}.get(
        schema.get("type"), "a valid value")
    bounds = [f"{op} {schema[k]}" for k, (op, _) in _BOUNDS.items() if k in schema]
    return " ".join([kind, " and ".join(bounds)]) if bounds else kind


# ------------------------------------------------------------------ the training config
_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def option(default: Any, description: str, **schema: Any) -> Any:
    """A :class:`TrainConfig` field: its default, what it does, and its JSON-schema constraints (``minimum=1``,
    ``enum=AUGMENTS``; the type comes from the annotation): the one declaration the check and the config schema
    read."""
    check_keywords(schema, description)
    return field(default=default, metadata={"description": description, "schema": schema})


def _field_schema(f) -> dict[str, Any]:
    """The JSON-schema fragment of one field: its type (from the annotation; an ``enum`` needs none), then its
    constraints (the enum a list, as JSON has no tuple)."""
    own = {k: list(v) if k == "enum" else v for k, v in f.metadata["schema"].items()}
    name = getattr(f.type, "__name__", f.type)  # a string under ``from __future__ import annotations``
    return own if "enum" in own else {"type": _JSON_TYPES[name], **own}


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (the ``train`` section of the config).

    Each field's ``option(...)`` declares its constraints once: :meth:`validate` checks them and
    :meth:`json_schema` is the config schema's ``$defs.train`` (:func:`subtune.config.config_schema`).
    """

    epochs: int = option(10, "epochs of the warm-up and the cosine (cooldown_epochs come on top)", minimum=1)
    lr: float = option(1e-3, "peak learning rate", exclusiveMinimum=0)
    weight_decay: float = option(1e-2, "weight decay (decoupled for adamw)", minimum=0)
    batch_size: int = option(64, "training batch size", minimum=1)
    optimizer: str = option("adamw", "the optimizer", enum=OPTIMIZERS)
    schedule: str = option("cosine", "the learning-rate schedule after the warm-up", enum=SCHEDULES)
    warmup_epochs: int = option(0, "epochs of linear warm-up", minimum=0)
    augment: str = option("none", "training augmentation (rrc_flip: SubTuning's; timm: SAN's RandAugment recipe)",
                       enum=AUGMENTS)
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy", minimum=0, maximum=1)
    eval_batch_size: int = option(512, "batch size of evaluation (no effect on results)", minimum=1)
    no_weight_decay_1d: bool = option(False, "biases, 1-D tensors and no_weight_decay() names: weight decay 0 (timm, "
                                          "SSF)")
    drop_path: float = option(0.0, "timm's drop_path_rate, active in frozen blocks too", minimum=0, exclusiveMaximum=1)
    mixup: float = option(0.0, "alpha of timm's Mixup (0: off)", minimum=0)
    cutmix: float = option(0.0, "alpha of timm's CutMix (0: off)", minimum=0)
    bn_mode: str = option("tuned", "frozen: every BatchNorm in eval mode (Surgical fine-tuning's code)", enum=BN_MODES)
    epoch_select: str = option("last", "best_val: restore the best-validation epoch before testing", enum=EPOCH_SELECTS)
    schedule_unit: str = option("step", "epoch: the learning rate changes once per epoch (timm's t_in_epochs; SSF, "
                                     "SAN, SubTuning)", enum=SCHEDULE_UNITS)
    warmup_lr: float = option(0.0, "the linear warm-up's starting learning rate (SSF 1e-7); needs warmup_epochs",
                           minimum=0)
    min_lr: float = option(0.0, "the cosine's floor (SSF/SAN 1e-8)", minimum=0)
    cooldown_epochs: int = option(0, "extra epochs at min_lr after the cosine (timm; SSF/SAN 10)", minimum=0)
    drop_last: bool = option(False, "drop each epoch's incomplete last batch (SSF/SAN's loaders)")
    head_init: str = option("default", "a new head's initialisation: trunc_normal = weights N(0, 0.02) truncated, "
                                       "biases 0 (timm 0.6.5's ViT init: SSF, SAN)", enum=HEAD_INITS)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "train") -> "TrainConfig":
        cfg = dataclass_from_dict(cls, d, where)
        cfg.validate(where)
        return cfg

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The ``train`` section's JSON schema, from the fields' declarations.

        Each default is stated in the description, not as a ``default`` keyword: the config check fills
        schema defaults into the config, and a ``train`` section's missing key must stay missing (it falls
        back to the top-level ``train``, then to the default here).
        """
        props = {f.name: {**_field_schema(f), "description": f"{f.metadata['description']}; default "
                                                              f"{json.dumps(f.default)}"} for f in fields(cls)}
        return {"type": "object", "additionalProperties": False, "properties": props}

    def validate(self, where: str = "train") -> None:
        for f in fields(self):
            v, schema = getattr(self, f.name), _field_schema(f)
            if not conforms(schema, v):
                raise SubtuneError(f"{where}.{f.name} must be {describe(schema)}, not {v!r}")
        self._validate_combinations(where)

    def _validate_combinations(self, where: str) -> None:
        """The rules between keys (no schema states them)."""
        if self.warmup_lr and not self.warmup_epochs:
            raise SubtuneError(f"{where}.warmup_lr needs warmup_epochs above 0")
        if self.min_lr > self.lr:
            raise SubtuneError(f"{where}.min_lr ({self.min_lr}) is above lr ({self.lr})")
        if self.schedule == "constant":
            for k in ("min_lr", "cooldown_epochs"):
                if getattr(self, k):
                    raise SubtuneError(f"{where}.{k} needs schedule cosine (the constant schedule has no floor)")

    @property
    def total_epochs(self) -> int:
        """Epochs a run trains: ``epochs`` (warm-up and cosine) plus ``cooldown_epochs`` at ``min_lr``."""
        return self.epochs + self.cooldown_epochs

    @property
    def mixes(self) -> bool:
        """Whether mixup or cutmix is on (soft targets, timm's ``Mixup``)."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def fixed_prefix(self) -> bool:
        """Whether a frozen prefix of the network is a fixed function of the stored image during training:
        no augmentation, no mixing, no drop-path (which stays active in frozen blocks)."""
        return self.augment == "none" and not self.mixes and not self.drop_path

    def model_kwargs(self) -> dict[str, Any]:
        """Extra arguments of building the model (:func:`subtune.models.checkpoint.build_model`, ``create``) this
        config needs: timm's ``drop_path_rate``, and ``head_init`` when not the default; none by default, so that
        a default config builds the model exactly as before these keys existed."""
        kw: dict[str, Any] = {"drop_path_rate": float(self.drop_path)} if self.drop_path else {}
        if self.head_init != "default":
            kw["head_init"] = self.head_init
        return kw

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
