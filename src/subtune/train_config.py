"""Hyperparameters of one training run (importable without torch: config validation uses it).

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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from . import SubtuneError, dataclass_from_dict

AUGMENTS = ("none", "flip", "crop", "crop_flip", "rrc_flip", "timm")
BN_MODES = ("tuned", "frozen")
EPOCH_SELECTS = ("last", "best_val")
SCHEDULE_UNITS = ("step", "epoch")


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (the ``train`` section of the config)."""

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: int = 0
    augment: str = "none"
    label_smoothing: float = 0.0
    eval_batch_size: int = 512
    no_weight_decay_1d: bool = False
    drop_path: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    bn_mode: str = "tuned"
    epoch_select: str = "last"
    schedule_unit: str = "step"
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    cooldown_epochs: int = 0
    drop_last: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "train") -> "TrainConfig":
        cfg = dataclass_from_dict(cls, d, where)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "train") -> None:
        if self.optimizer not in ("adamw", "sgd", "adam"):
            raise SubtuneError(f"{where}.optimizer must be adamw, adam or sgd, not {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise SubtuneError(f"{where}.schedule must be cosine or constant, not {self.schedule!r}")
        if self.augment not in AUGMENTS:
            raise SubtuneError(f"{where}.augment must be one of {', '.join(AUGMENTS)}, not {self.augment!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise SubtuneError(f"{where}: epochs, batch_size and lr must be positive")
        if not isinstance(self.no_weight_decay_1d, bool):
            raise SubtuneError(f"{where}.no_weight_decay_1d must be true or false, not {self.no_weight_decay_1d!r}")
        for k in ("drop_path", "mixup", "cutmix", "label_smoothing", "weight_decay"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise SubtuneError(f"{where}.{k} must be a number >= 0, not {v!r}")
        if self.drop_path >= 1:
            raise SubtuneError(f"{where}.drop_path must be below 1, not {self.drop_path!r}")
        if self.label_smoothing > 1:
            raise SubtuneError(f"{where}.label_smoothing must be at most 1, not {self.label_smoothing!r}")
        if self.bn_mode not in BN_MODES:
            raise SubtuneError(f"{where}.bn_mode must be one of {', '.join(BN_MODES)}, not {self.bn_mode!r}")
        if self.epoch_select not in EPOCH_SELECTS:
            raise SubtuneError(
                f"{where}.epoch_select must be one of {', '.join(EPOCH_SELECTS)}, not {self.epoch_select!r}")
        self._validate_schedule(where)

    def _validate_schedule(self, where: str) -> None:
        if self.schedule_unit not in SCHEDULE_UNITS:
            raise SubtuneError(
                f"{where}.schedule_unit must be one of {', '.join(SCHEDULE_UNITS)}, not {self.schedule_unit!r}")
        for k in ("warmup_epochs", "cooldown_epochs"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SubtuneError(f"{where}.{k} must be an integer >= 0, not {v!r}")
        for k in ("warmup_lr", "min_lr"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise SubtuneError(f"{where}.{k} must be a number >= 0, not {v!r}")
        if not isinstance(self.drop_last, bool):
            raise SubtuneError(f"{where}.drop_last must be true or false, not {self.drop_last!r}")
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
        """Extra ``timm.create_model`` arguments this config needs (``drop_path_rate``); none by default."""
        return {"drop_path_rate": float(self.drop_path)} if self.drop_path else {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
