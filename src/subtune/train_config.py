"""Hyperparameters of one training run (importable without torch: config validation uses it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from . import SubtuneError, dataclass_from_dict

AUGMENTS = ("none", "flip", "crop", "crop_flip")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
