"""Frozen-prefix caching: compute the frozen blocks' output once, train only the rest.

When the earliest trainable block of a run is ``b`` (everything before it
frozen, in eval mode) and the inputs are not augmented, the output of the stem
and blocks ``0..b-1`` is a fixed function of each image. :class:`PrefixCache`
computes it once per (checkpoint, dataset, split, b) and hands it to every run
that starts at ``b``; the run's forward is then only ``blocks[b:]`` and the
head (:class:`subtune.models.split.Staged`).

- Exact: the cached tensor is what the run would compute itself (same modules
  in eval mode, same dtype and autocast); only the batch size of the prefix
  computation differs, which on the CPU changes nothing or the last bits of a
  float32 (tests/test_prefix.py bounds the features at atol 1e-5 and requires
  identical validation accuracies).
- Memory-bounded: entries live in memory up to ``memory_mb`` (least recently
  used evicted first); an entry that does not fit goes to ``disk_dir`` (a
  memory-mapped file) when one is given, else it is recomputed when asked for.
- Invalidated by construction: the key holds the SHA-256 of the checkpoint
  file and of the prepared data file, the split, the block index, the
  normalisation and the device type, so a changed input never hits an old
  entry (on-disk entries are named by the key's digest).
- Not used when the training transform is random (augmentation): the run
  then computes its prefix itself, and says so.

Final and tuning runs use it too (:func:`run_start`, :func:`run_inputs`,
through :func:`subtune.methods.base.fit_phases`): a run whose trainable
parameters all lie in block ``b >= 1`` or later (LP, LP-FT's first phase,
SubTuning and Surgical past the first block) computes its prefix once for the
training, validation and test images instead of once per epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .io import atomic_path
from .timing import counted
from .train import to_layout

log = logging.getLogger(__name__)


class PrefixCache:
    def __init__(self, memory_mb: float = 2048, disk_dir: str | Path | None = None):
        self.budget = int(memory_mb * 2**20)
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self._mem: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def digest(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]

    def _used(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._mem.values())

    def peek(self, key: dict) -> torch.Tensor | None:
        """The entry for ``key`` if it is held (memory or disk), else None; not counted as a hit or a miss."""
        d = self.digest(key)
        if d in self._mem:
            return self._mem[d]
        if self.disk_dir is not None and (self.disk_dir / f"{d}.npy").is_file():
            return torch.from_numpy(np.load(self.disk_dir / f"{d}.npy", mmap_mode="c"))
        return None

    def get(self, key: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        d = self.digest(key)
        if d in self._mem:
            self._mem.move_to_end(d)
            self.hits += 1
            return self._mem[d]
        if self.disk_dir is not None:
            path = self.disk_dir / f"{d}.npy"
            if path.is_file():
                self.hits += 1
                return torch.from_numpy(np.load(path, mmap_mode="c"))
        self.misses += 1
        t = compute()
        size = t.numel() * t.element_size()
        if size <= self.budget:
            while self._mem and self._used() + size > self.budget:
                self._mem.popitem(last=False)
            self._mem[d] = t
        elif self.disk_dir is not None and t.dtype != torch.bfloat16:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.disk_dir / f"{d}.npy", suffix=".npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, t.cpu().numpy())
            t = torch.from_numpy(np.load(self.disk_dir / f"{d}.npy", mmap_mode="c"))
        else:
            log.info("prefix cache: entry of %.0f MiB exceeds the %.0f MiB budget; not kept", size / 2**20,
                     self.budget / 2**20)
        return t


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    """``model`` in eval mode (frozen blocks: BN running statistics, no dropout), each module's mode restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, t in modes.items():
            m.train(t)


@counted
@torch.no_grad()
def compute_prefix(staged, pre, x: torch.Tensor, stop: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """The frozen prefix (stem and blocks before ``stop``) of uint8 images ``x``, in eval mode."""
    out = []
    with _eval_mode(staged.model):
        for i in range(0, len(x), batch_size):
            xb = to_layout(pre(x[i : i + batch_size].to(device)))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out.append(staged.prefix(xb, stop))
    return torch.cat(out)


@counted
@torch.no_grad()
def continue_prefix(staged, h: torch.Tensor, start: int, stop: int, batch_size: int,
                    device: torch.device) -> torch.Tensor:
    """The prefix up to ``stop`` from ``h``, the prefix up to ``start`` (<= ``stop``): blocks ``start..stop-1``
    in eval mode, the same modules in the same order as :func:`compute_prefix`, so a cache filled in network
    order runs each frozen block once per image instead of once per later start block."""
    out = []
    with _eval_mode(staged.model):
        for i in range(0, len(h), batch_size):
            hb = h[i : i + batch_size].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                for b in range(start, stop):
                    hb = staged.run(b, hb)
            out.append(hb)
    return torch.cat(out)


#: Memory budget of a final or tuning run's cached prefix features (all its splits together); over it the
#: run computes its prefix itself (selection has its own, ``selection.cache_mb``).
RUN_CACHE_MB = 2048


def run_start(model, trainable, cfg) -> int | None:
    """The block a final/tuning run of ``trainable`` can start at, its frozen prefix computed once; None when
    that would not be exactly the run's own computation (or would save nothing).

    Applies when: the training transform is not random (:attr:`TrainConfig.fixed_prefix`); the model is a
    plain backbone of a known family with no model-level forward hook (not peft's or Siamese's wrapper:
    :class:`~subtune.models.split.Staged` calls the model's own modules); the run has no stages or step
    hooks (gradual unfreezing, AdaLoRA, Auto-RGN); and every trainable parameter and every module in train
    mode lies in block ``b >= 1`` or after it (the head, the tail): the stem and blocks ``0..b-1`` then run
    in eval mode without gradients, a fixed function of each image.
    """
    from . import SubtuneError
    from .models.split import Staged

    if not cfg.fixed_prefix or trainable.stages or trainable.hooks is not None:
        return None
    if model._forward_hooks or model._forward_pre_hooks or "" in trainable.train_modules:
        return None
    try:
        staged = Staged(model)
    except SubtuneError:
        return None
    start = staged.first_trainable([n for n, _ in trainable.params] + list(trainable.train_modules))
    return start if start else None


def run_inputs(model, pre, start: int, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], batch_size: int,
               device: torch.device, budget_mb: float = RUN_CACHE_MB):
    """``splits`` with their images replaced by the prefix's output up to block ``start``, and the forward
    that runs the rest (:meth:`Staged.suffix`); None when the features of every split would exceed
    ``budget_mb`` (the run then computes its prefix itself)."""
    from .models.split import Staged

    staged = Staged(model.to(device))
    pre = pre.to(device)
    n = sum(len(x) for x, _ in splits.values())
    probe = compute_prefix(staged, pre, next(iter(splits.values()))[0][:1], start, 1, device)
    size = n * probe.numel() * probe.element_size()
    if size > budget_mb * 2**20:
        log.info("prefix cache: %.0f MiB of features exceed the %.0f MiB budget; the run computes its prefix",
                 size / 2**20, budget_mb)
        return None
    feats = {k: (compute_prefix(staged, pre, x, start, batch_size, device), y) for k, (x, y) in splits.items()}
    return feats, (lambda h: staged.suffix(h, start))
