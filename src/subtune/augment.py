"""Training-time augmentation of stored uint8 batches, seeded by the run's generator.

:class:`Augmenter` maps a batch of stored images (uint8 [N, C, H, W], C = 1 or
3) and its labels to the batch the model trains on. Every choice is drawn
from the run's ``torch.Generator`` (directly, or through one seed per batch
drawn from it), so a run with the same seed sees the same images; the global
RNGs of Python, NumPy and torch are left as they were.

``augment`` (the ``train`` config key):

- ``none``, ``flip``, ``crop``, ``crop_flip``: :func:`augment_batch`, a
  pad-and-crop (zero padding of H/16 pixels, random offset per image) and/or
  horizontal flip with probability 1/2, drawn from the generator. Hand-written
  because it works on whole uint8 batches with one generator, which keeps
  these runs bit-identical to earlier ones.
- ``rrc_flip`` (SubTuning's training transform, ``datamodules.get_transforms``):
  torchvision.transforms.v2 ``RandomResizedCrop`` to the stored size (scale
  (0.08, 1), ratio (3/4, 4/3), bilinear, antialias) then ``RandomHorizontalFlip``,
  per image. The authors apply it to PIL images of any size and resize to
  224; ours are already stored at the model's size, on uint8 tensors.
- ``timm`` (timm's ImageNet training recipe with SAN-PEFT's defaults,
  ``args.py``): ``timm.data.create_transform(is_training=True)`` with
  RandomResizedCrop (0.08-1, 3/4-4/3, bicubic), flip 0.5, RandAugment
  ``rand-m9-mstd0.5-inc1`` (fill: the checkpoint's mean), colour jitter 0.4
  (which timm, like SAN's copy of its factory, drops when RandAugment is on),
  then timm's ``RandomErasing`` (prob 0.25, mode ``pixel``, one region) on the
  normalised image, as SAN's prefetcher does. Per image through PIL;
  grayscale images are expanded to RGB first (RandAugment's colour ops need
  3 channels), so the output has 3 channels. The output is float32 on the
  0-255 scale (the erased noise lies outside the uint8 range), which
  :class:`subtune.train.Preprocess` normalises as it does uint8.

``mixup`` / ``cutmix`` > 0: ``timm.data.Mixup`` (prob 1, switch prob 0.5,
mode ``batch``, label smoothing ``label_smoothing``) after the augmentation;
the labels become soft [N, num_classes] targets (trained with the soft-target
cross-entropy). Mixing is applied before normalisation, which gives the same
result as timm's mixing of normalised images (normalisation is affine and
mixup/cutmix are convex combinations). timm's Mixup needs an even batch:
like timm's training loader (``drop_last=True``), the training loop drops the
incomplete last batch when mixing is on.

timm's RandAugment, RandomResizedCrop, RandomErasing and Mixup draw from
Python's ``random``, NumPy's global RNG and torch's global RNG:
:func:`seeded` seeds all three from one per-batch seed and restores them.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import SubtuneError
from .train_config import TrainConfig

#: SAN-PEFT's timm recipe (train_code/args.py defaults)
TIMM_RECIPE = dict(
    scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), hflip=0.5, color_jitter=0.4,
    auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic",
)
TIMM_RE_PROB, TIMM_RE_MODE, TIMM_RE_COUNT = 0.25, "pixel", 1


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Seeded pad-and-crop / flip on uint8 batches (before normalisation)."""
    if kind == "none":
        return x
    n = x.shape[0]
    if "crop" in kind:
        pad = max(1, x.shape[-1] // 16)
        xp = F.pad(x, (pad, pad, pad, pad), mode="constant", value=0)
        offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
        h, w = x.shape[-2:]
        x = torch.stack([xp[i, :, oy : oy + h, ox : ox + w] for i, (oy, ox) in enumerate(offs.tolist())])
    if "flip" in kind:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def batch_seed(gen: torch.Generator) -> int:
    """One seed for a batch's library augmentation, drawn from the run's generator."""
    return int(torch.randint(0, 2**62, (1,), generator=gen).item())


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU) global RNGs seeded from ``seed``; their states restored after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class Augmenter:
    """The training batch from a stored batch: augmentation, then optional mixup/cutmix.

    ``mean``/``std`` (the checkpoint's normalisation) are needed by ``timm``
    (RandAugment's fill colour, erasing in normalised space); ``num_classes``
    by mixup/cutmix (the soft targets).
    """

    def __init__(self, cfg: TrainConfig, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 num_classes: int | None = None):
        self.kind = cfg.augment
        if self.kind == "timm" and (mean is None or std is None):
            raise SubtuneError("augment timm needs the checkpoint's mean and std (a preprocessing step)")
        self.mean = tuple(float(v) for v in mean) if mean is not None else None
        self.std = tuple(float(v) for v in std) if std is not None else None
        self.mixup = None
        if cfg.mixes:
            if not num_classes:
                raise SubtuneError("mixup/cutmix need the number of classes (the model has no num_classes)")
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=1.0, switch_prob=0.5,
                               mode="batch", label_smoothing=cfg.label_smoothing, num_classes=int(num_classes))
        self._tf: dict[tuple[int, int], object] = {}

    @property
    def drop_last(self) -> bool:
        """Whether the incomplete last batch is dropped (timm's loader with Mixup needs even batches)."""
        return self.mixup is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind in ("none", "flip", "crop", "crop_flip"):
            x = augment_batch(x, self.kind, gen)
        else:
            seed = batch_seed(gen)
            with seeded(seed):
                x = self._rrc_flip(x) if self.kind == "rrc_flip" else self._timm(x)
        if self.mixup is not None:
            with seeded(batch_seed(gen)):
                x, y = self.mixup(x.float(), y)
        return x, y

    def _transform(self, size: tuple[int, int]):
        if size not in self._tf:
            if self.kind == "rrc_flip":
                from torchvision.transforms import v2

                self._tf[size] = v2.Compose([
                    v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), antialias=True),
                    v2.RandomHorizontalFlip(),
                ])
            else:
                import timm.data

                # use_prefetcher=True: timm's transform stops at a uint8 tensor (no normalisation, no erasing)
                self._tf[size] = timm.data.create_transform(
                    input_size=size, is_training=True, mean=self.mean, std=self.std, re_prob=0.0,
                    use_prefetcher=True, **TIMM_RECIPE)
        return self._tf[size]

    def _rrc_flip(self, x: torch.Tensor) -> torch.Tensor:
        tf = self._transform(tuple(x.shape[-2:]))
        return torch.stack([tf(img) for img in x])

    def _timm(self, x: torch.Tensor) -> torch.Tensor:
        from timm.data.random_erasing import RandomErasing
        from torchvision.transforms.v2.functional import to_pil_image

        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        tf = self._transform(tuple(x.shape[-2:]))
        out = torch.stack([tf(to_pil_image(img)) for img in x]).float()
        mean = torch.tensor(self.mean[:3]).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.std[:3]).view(1, -1, 1, 1) * 255.0
        xn = (out - mean) / std
        xn = RandomErasing(TIMM_RE_PROB, mode=TIMM_RE_MODE, max_count=TIMM_RE_COUNT, device="cpu")(xn)
        return xn * std + mean
