"""The one training / evaluation loop.

``fit`` fine-tunes a model whose trainable parameters were chosen by a method
(:class:`subtune.methods.Trainable`), evaluating on named splits after every
epoch, and returns plain-JSON metrics.

Conventions (tested in tests/test_train.py):

- Only the method's parameters get ``requires_grad``; everything else is
  bit-identical after training (the optimizer never sees it).
- BatchNorm in frozen modules: running statistics are frozen. The whole model
  is put in eval mode and only the method's ``train_modules`` are switched to
  train mode (the SubTuning authors' convention: frozen part in eval mode,
  tuned blocks in train mode). So LP never moves a BatchNorm statistic, and
  SubTuning moves only those inside the selected blocks.
- Seeds fix data order and augmentation (a dedicated ``torch.Generator``) and
  any other randomness (``torch.manual_seed``); on the CPU a rerun with the
  same seed and thread count is bit-for-bit identical.
- Images are stored uint8 [N, C, H, W]; they are scaled to [0, 1], repeated to
  the model's input channels when grayscale, and normalised with the
  checkpoint's mean/std, batch by batch.
- The device is chosen at run time (CUDA if present); on CUDA the forward pass
  runs under bf16 autocast and the model is channels_last.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import SubtuneError
from .train_config import AUGMENTS, TrainConfig  # noqa: F401  (TrainConfig is part of this module's API)

def pick_device(requested: str | None = None) -> torch.device:
    if requested and requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Preprocess(nn.Module):
    """uint8 [N,C,H,W] -> normalised float [N,in_chans,H,W]."""

    def __init__(self, mean, std, in_chans: int = 3):
        super().__init__()
        self.in_chans = in_chans
        self.register_buffer("mean", torch.tensor(mean[:in_chans], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std[:in_chans], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0)
        if x.shape[1] != self.in_chans:
            if x.shape[1] != 1:
                raise SubtuneError(f"images have {x.shape[1]} channels, the model takes {self.in_chans}")
            x = x.expand(-1, self.in_chans, -1, -1)
        return (x - self.mean) / self.std


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Seeded augmentation on uint8 batches (before normalisation)."""
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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    pre: Preprocess | None,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Accuracy (fraction) and mean cross-entropy on (x, y); restores train/eval modes.

    ``x`` holds uint8 images (preprocessed with ``pre`` and run through
    ``model``) or, with ``forward``, whatever ``forward`` takes (e.g. cached
    prefix features).
    """
    device = device or next(model.parameters()).device
    forward = forward or _image_forward(model, pre, device)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    correct, loss_sum = 0, 0.0
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device, non_blocking=True)
            yb = y[i : i + batch_size].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = forward(xb)
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
    finally:
        for m, t in modes.items():
            m.train(t)
    n = max(len(x), 1)
    return {"acc": correct / n, "loss": loss_sum / n}


def _image_forward(model: nn.Module, pre: Preprocess | None, device: torch.device):
    """The default forward: uint8 images -> preprocessing -> the whole model."""

    def forward(xb: torch.Tensor) -> torch.Tensor:
        xb = pre(xb) if pre is not None else xb
        if device.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        return model(xb)

    return forward


def set_modes(model: nn.Module, train_modules: list[str]) -> None:
    """Eval mode everywhere, train mode in ``train_modules`` ("" = the whole model)."""
    model.eval()
    for name in train_modules:
        model.get_submodule(name).train() if name else model.train()


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9)


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Run:
    """One model to train: its trainable parameters and, optionally, its own forward.

    ``forward`` maps a batch of the training inputs to logits; by default the
    inputs are uint8 images run through ``pre`` and the whole model. With
    frozen-prefix caching the inputs are cached prefix features and the
    forward runs only the suffix.
    """

    model: nn.Module
    trainable: Any
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    desc: str = "train"


def fit(
    model: nn.Module,
    trainable,
    pre: Preprocess | None,
    train: tuple[torch.Tensor, torch.Tensor],
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    seed: int = 0,
    device: torch.device | str | None = None,
    final_evals: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    desc: str = "train",
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train ``trainable`` (a :class:`subtune.methods.Trainable`) of ``model`` on ``train``.

    ``evals`` are evaluated after every epoch (validation); ``final_evals`` only
    once, after the last epoch (the test split: read once, never for choices).
    Returns metrics: ``history`` (per epoch), ``{split}_acc``/``{split}_loss``
    of the final model, ``trainable_params``, ``total_params``,
    ``wall_time_s``, ``device``.
    """
    run = Run(model, trainable, forward, desc)
    return fit_group([run], pre, train, evals, cfg, seed, device, final_evals, progress, on_epoch)[0]


def has_randomness(model: nn.Module) -> bool:
    """Whether training mode draws random numbers (dropout, drop-path, ...)."""
    for m in model.modules():
        p = getattr(m, "p", None) if isinstance(m, nn.modules.dropout._DropoutNd) else getattr(m, "drop_prob", None)
        if p:
            return True
    return bool(getattr(model, "drop_rate", 0))


def fit_group(
    runs: list[Run],
    pre: Preprocess | None,
    train: tuple[torch.Tensor, torch.Tensor],
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    seed: int = 0,
    device: torch.device | str | None = None,
    final_evals: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop: Callable[[int, dict[int, dict[str, Any]]], Any] | None = None,
) -> list[dict[str, Any]]:
    """Train several runs in lockstep on the same batches: the one training loop.

    Each batch (same seeded order and augmentation for every run) is read
    once and fed to every run, each with its own optimizer and schedule.
    A run's computation is exactly what it would be alone with the same
    seed, as long as training draws no random numbers from the global RNG
    (no dropout / drop-path): callers group only such runs (see
    :func:`has_randomness`); ``fit`` is the group of one.

    ``stop(epoch, rows)``, called after each epoch with the latest history row
    of every run still training (run index -> row), returns the indices of
    runs to stop there (early stopping, e.g. successive halving). A stopped
    run keeps its history so far; the others go on exactly as if it had
    never been there (same batches, their own optimizers and schedules).
    """
    device = pick_device(device if isinstance(device, str) or device is None else str(device))
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = train
    n = len(x_train)
    if n == 0:
        raise SubtuneError("empty training set")
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = steps_per_epoch * cfg.warmup_epochs
    if pre is not None:
        pre = pre.to(device)

    states = []
    for run in runs:
        model = run.model
        for p in model.parameters():
            p.requires_grad_(False)
        params = [p for _, p in run.trainable.params]
        if not params:
            raise SubtuneError("the method selected no trainable parameters")
        for p in params:
            p.requires_grad_(True)
        model.to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        opt = _optimizer(params, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, warmup, cfg.schedule))
        forward = run.forward or _image_forward(model, pre, device)
        states.append({"params": params, "opt": opt, "sched": sched, "forward": forward, "history": [],
                       "loss": 0.0, "time": 0.0, "active": True})

    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    desc = runs[0].desc if len(runs) == 1 else f"{len(runs)} runs"
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        for run, st in zip(runs, states):
            set_modes(run.model, run.trainable.train_modules)
            st["loss"] = 0.0
        live = [(run, st) for run, st in zip(runs, states) if st["active"]]
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb = augment_batch(x_train[idx], cfg.augment, gen).to(device, non_blocking=True)
            yb = y_train[idx].to(device)
            for _, st in live:
                t = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = st["forward"](xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
                st["opt"].zero_grad(set_to_none=True)
                loss.backward()
                st["opt"].step()
                st["sched"].step()
                st["loss"] += loss.detach() * len(idx)  # summed on the device: no sync per step
                st["time"] += time.perf_counter() - t
        for run, st in live:
            t = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(st["loss"]) / n,
                                   "lr": st["opt"].param_groups[0]["lr"]}
            for split, (xe, ye) in evals.items():
                r = evaluate(run.model, pre, xe, ye, cfg.eval_batch_size, device, st["forward"])
                row[f"{split}_acc"], row[f"{split}_loss"] = r["acc"], r["loss"]
            st["history"].append(row)
            st["time"] += time.perf_counter() - t
            if on_epoch:
                on_epoch(row)
        if stop:
            for i in stop(epoch + 1, {i: st["history"][-1] for i, st in enumerate(states) if st["active"]}) or ():
                states[i]["active"] = False
        bar.set_postfix({k: round(v, 4) for k, v in states[0]["history"][-1].items() if k.endswith("acc")})

    out = []
    for run, st in zip(runs, states):
        history = st["history"]
        metrics: dict[str, Any] = {"history": history}
        for split in evals:
            metrics[f"{split}_acc"] = history[-1][f"{split}_acc"]
            metrics[f"{split}_loss"] = history[-1][f"{split}_loss"]
        for split, (xe, ye) in (final_evals or {}).items():
            r = evaluate(run.model, pre, xe, ye, cfg.eval_batch_size, device, st["forward"])
            metrics[f"{split}_acc"], metrics[f"{split}_loss"] = r["acc"], r["loss"]
        metrics.update(
            trainable_params=sum(p.numel() for p in st["params"]),
            total_params=sum(p.numel() for p in run.model.parameters()),
            wall_time_s=time.perf_counter() - t0 if len(runs) == 1 else st["time"],
            device=str(device),
            epochs=len(history),
            train_size=n,
        )
        for p in run.model.parameters():
            p.requires_grad_(False)
        out.append(metrics)
    return out
