"""The one training / evaluation loop.

``fit`` fine-tunes a model whose trainable parameters were chosen by a method
(:class:`subtune.trainable.Trainable`), evaluating on named splits after every
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
- The device is chosen at run time (CUDA if present); the model and its 4-D
  inputs are channels_last on every device (:data:`CHANNELS_LAST`) and the
  optimizer is PyTorch's fused one (:func:`_optimizer`); on CUDA the forward
  pass runs under bf16 autocast.
- Without a progress bar (not a TTY: a job's log) every epoch prints one line
  to stdout: epoch k/N, train loss, validation accuracy, lr, seconds (for
  runs in lockstep, one line with the range over runs).

Protocol options (:class:`TrainConfig` keys; the defaults are the plain loop):

- ``no_weight_decay_1d``: the optimizer's parameter groups are timm's
  ``param_groups_weight_decay`` (as timm's ``create_optimizer_v2`` with
  ``filter_bias_and_bn``, which SSF's train.py uses): biases, every 1-D
  tensor and the model's ``no_weight_decay()`` names get weight decay 0.
- ``drop_path``: the model is built with timm's ``drop_path_rate`` (by the
  caller, :func:`subtune.models.checkpoint.build_model`), and during training
  every ``DropPath`` is put in train mode whatever its block's mode, so it is
  active in frozen blocks too (SSF's code calls ``model.train()``); BatchNorm
  and Dropout modes are untouched by it. Evaluation runs with all of it off.
- ``bn_mode: frozen``: every BatchNorm stays in eval mode during training,
  also in trained modules (Surgical fine-tuning's code never calls
  ``model.train()``): its running statistics never change.
- ``epoch_select: best_val``: after each epoch the trainable parameters and
  all buffers are copied (in memory) when the first evaluation split's
  accuracy beats every earlier epoch (earliest on ties); after the last epoch
  that copy is restored and only then are ``final_evals`` (the test split)
  evaluated: test accuracy at the best validation epoch, the Surgical
  authors' report. ``{split}_acc`` are that epoch's; ``best_epoch`` says which.
- ``augment``, ``mixup``, ``cutmix``: :mod:`subtune.augment`; with mixing the
  loss is the soft-target cross-entropy (timm's ``SoftTargetCrossEntropy``,
  label smoothing inside the targets) and the incomplete last batch of an
  epoch is dropped (timm's training loader).
- ``drop_last``: the incomplete last batch of every epoch is dropped (SSF's
  and SAN's loaders): ``floor(n / batch_size)`` steps per epoch instead of
  ``ceil``; the shuffled order still covers all ``n`` images over epochs.
- A method's per-step hooks (``Trainable.hooks``, :class:`subtune.trainable.StepHooks`;
  AdaLoRA's, Auto-RGN's): an extra loss term, callbacks before and after each
  optimizer step, and per-group learning-rate factors for one step. Without
  them the loop is unchanged.
- The learning-rate schedule (:func:`lr_scheduler`; ``schedule``,
  ``schedule_unit``, ``warmup_epochs``, ``warmup_lr``, ``min_lr``,
  ``cooldown_epochs``) and the number of epochs a run trains,
  ``epochs + cooldown_epochs`` (metrics' ``epochs``).
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
from .augment import Augmenter, augment_batch  # noqa: F401  (augment_batch: part of this module's API)
from .timing import counted
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
        # uint8 as stored; float32 on the 0-255 scale after augmentation/mixing (never changed in place:
        # runs in lockstep share the batch)
        x = x.float().div_(255.0) if x.dtype != torch.float32 else x / 255.0
        if x.shape[1] != self.in_chans:
            if x.shape[1] != 1:
                raise SubtuneError(f"images have {x.shape[1]} channels, the model takes {self.in_chans}")
            x = x.expand(-1, self.in_chans, -1, -1)
        return (x - self.mean) / self.std


@counted
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


#: Models and 4-D inputs in channels_last memory format on every device: the convolutions' fast layout
#: (oneDNN on the CPU, cuDNN's tensor cores on the GPU; its effect on the whole workflow is in the README's
#: Benchmarks, ``bench/pipeline.py``). The same model; convolutions summed in another order (last float bits).
CHANNELS_LAST = True


def to_layout(x: torch.Tensor) -> torch.Tensor:
    """A batch in the layout the models run in (:data:`CHANNELS_LAST`; only 4-D tensors have one)."""
    return x.contiguous(memory_format=torch.channels_last) if CHANNELS_LAST and x.ndim == 4 else x


def model_to_layout(model: nn.Module) -> None:
    if CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)


def _image_forward(model: nn.Module, pre: Preprocess | None, device: torch.device):
    """The default forward: uint8 images -> preprocessing -> the whole model."""

    def forward(xb: torch.Tensor) -> torch.Tensor:
        return model(to_layout(pre(xb) if pre is not None else xb))

    return forward


def set_modes(model: nn.Module, train_modules: list[str], bn_mode: str = "tuned", drop_path: bool = False) -> None:
    """Eval mode everywhere, train mode in ``train_modules`` ("" = the whole model).

    ``bn_mode="frozen"``: then every BatchNorm back in eval mode. ``drop_path``:
    then every timm ``DropPath`` in train mode (active in frozen blocks too).
    """
    model.eval()
    for name in train_modules:
        model.get_submodule(name).train() if name else model.train()
    if bn_mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    if drop_path:
        from timm.layers import DropPath

        for m in model.modules():
            if isinstance(m, DropPath):
                m.train()


def _param_groups(model: nn.Module, params: list[nn.Parameter], cfg: TrainConfig, trainable=None):
    """The optimizer's parameters: one group, or timm's decay / no-decay groups (``no_weight_decay_1d``),
    split further by the method's learning-rate factors (``trainable``, a :class:`~subtune.trainable.Trainable`).

    timm's groups are built from the model's parameters with ``requires_grad``
    (exactly the method's, set by the caller). The model's
    ``no_weight_decay()`` names are matched also under a wrapper's prefix
    (peft's ``base_model.model.``).

    ``trainable.lr_scale``: each group split by factor (in order of first
    appearance), the factor in the group's ``lr_scale`` (timm's key: the
    schedule multiplies it, see :func:`lr_scheduler`). ``hooks.per_tensor_groups``:
    one group per tensor, its name in ``names``. Without either (every other
    method) the groups are exactly as before.
    """
    if not cfg.no_weight_decay_1d:
        groups = params
    else:
        from timm.optim import param_groups_weight_decay

        skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
        skip |= {f"*.{n}" for n in skip}
        groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)
        if {id(p) for g in groups for p in g["params"]} != {id(p) for p in params} or sum(
                len(g["params"]) for g in groups) != len(params):
            raise SubtuneError("no_weight_decay_1d: the method's parameters are not the model's trainable parameters")
    scale = getattr(trainable, "lr_scale", None) or {}
    per_tensor = bool(getattr(getattr(trainable, "hooks", None), "per_tensor_groups", False))
    if not scale and not per_tensor:
        return groups
    names = {id(p): n for n, p in trainable.params}
    out: list[dict[str, Any]] = []
    for g in ([{"params": groups}] if not cfg.no_weight_decay_1d else groups):
        buckets: dict[Any, dict[str, Any]] = {}
        for p in g["params"]:
            n = names[id(p)]
            key = n if per_tensor else scale.get(n, 1.0)
            if key not in buckets:
                buckets[key] = {**g, "params": [], "names": []}
                if scale:
                    buckets[key]["lr_scale"] = float(scale.get(n, 1.0))
            buckets[key]["params"].append(p)
            buckets[key]["names"].append(n)
        out += buckets.values()
    return out


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer, PyTorch's fused implementation (one kernel for every parameter instead of a
    loop over them; the same update, summed in another order, so the last bits of a float32 can differ)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9, fused=True)


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The plain per-step factor of ``lr``: warm-up ``(step + 1) / warmup``, then cosine to 0 over
    ``total - warmup`` steps (0 after ``total``), or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """``schedule_unit: step``: the learning rate of optimizer step ``step`` (0-based) over ``cfg.lr``.

    With ``W = steps_per_epoch * warmup_epochs``, ``T = steps_per_epoch *
    epochs`` and ``f`` = :func:`_lr_factor` (the plain form)::

        lr(s) = warmup_lr + (lr - warmup_lr) * (s + 1) / W            for s < W
        lr(s) = min_lr + (lr - min_lr) * 1/2 (1 + cos(pi (s - W) / (T - W)))   for W <= s < T (cosine)
        lr(s) = min_lr                                                 for s >= T (cooldown epochs)

    (constant: ``lr`` after the warm-up). With ``warmup_lr`` and ``min_lr`` 0
    this is exactly ``f`` (the same floats). Unlike the epoch unit (timm's
    form) the warm-up's first step already moves off ``warmup_lr`` and the
    cosine is stretched over the steps after the warm-up.
    """
    total, warmup = steps_per_epoch * cfg.epochs, steps_per_epoch * cfg.warmup_epochs
    f = _lr_factor(step, total, warmup, cfg.schedule)
    start = cfg.warmup_lr / cfg.lr if warmup and step < warmup else cfg.min_lr / cfg.lr
    return start + (1.0 - start) * f if start else f


class EpochSchedule:
    """``schedule_unit: epoch``: the learning rate changes once per epoch, stepped like SSF's train.py.

    The scheduler is timm's, built by timm's ``create_scheduler_v2`` (what
    SSF's and SAN's ``create_scheduler`` call) with ``step_on_epochs``, on
    the run's optimizer: ``cosine`` is ``CosineLRScheduler(t_initial=epochs,
    lr_min=min_lr, warmup_t=warmup_epochs, warmup_lr_init=warmup_lr)``,
    ``constant`` timm's constant schedule (``StepLRScheduler`` that never
    decays, same warm-up). ``step()`` is called after every optimizer step
    (the loop's interface); after the last step of epoch ``e`` (0-based) it
    calls timm's ``step(e + 1)`` (SSF's ``lr_scheduler.step(epoch + 1)``), so
    epoch ``e`` trains at::

        lr(e) = warmup_lr + e (lr - warmup_lr) / warmup_epochs          for e < warmup_epochs
        lr(e) = min_lr + 1/2 (lr - min_lr) (1 + cos(pi e / epochs))    for warmup_epochs <= e < epochs
        lr(e) = min_lr                                                  for e >= epochs (cooldown epochs)

    (no ``warmup_prefix``: the cosine is that of a whole ``epochs``-epoch
    run, its first ``warmup_epochs`` replaced by the warm-up; constant:
    ``lr`` after the warm-up). Epoch 0 trains at ``warmup_lr`` (timm sets it
    when built), or at ``lr`` without warm-up. With no warm-up and ``min_lr``
    0 this is torch's ``CosineAnnealingLR(T_max=epochs)`` stepped per epoch
    (SubTuning's Lightning schedule). SAN calls ``lr_scheduler.step(epoch=
    epoch)`` after epoch ``epoch`` instead, so its epoch ``e >= 1`` trains at
    the value above for ``e - 1`` (one epoch behind); we implement SSF's.
    """

    def __init__(self, opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        from timm.scheduler import create_scheduler_v2

        self.steps_per_epoch, self.steps = steps_per_epoch, 0
        self.timm, n = create_scheduler_v2(opt, sched=cfg.schedule, num_epochs=cfg.epochs,
                                           cooldown_epochs=cfg.cooldown_epochs, min_lr=cfg.min_lr,
                                           warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
                                           step_on_epochs=True)
        if cfg.schedule == "cosine" and n != cfg.total_epochs:  # timm's own count of a run's epochs
            raise SubtuneError(f"timm's schedule has {n} epochs, the run {cfg.total_epochs}")

    def step(self) -> None:
        self.steps += 1
        if self.steps % self.steps_per_epoch == 0:
            self.timm.step(self.steps // self.steps_per_epoch)


def lr_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """The run's schedule; its ``step()`` is called once after every optimizer step.

    ``schedule_unit: step``: a ``LambdaLR`` of :func:`lr_factor` (the lr of
    every step is its own); ``epoch``: :class:`EpochSchedule`. A group with
    an ``lr_scale`` (:func:`_param_groups`) trains at that factor times the
    schedule at every step, warm-up and ``min_lr`` included (timm's
    layer-decay convention: its schedulers multiply ``lr_scale``).
    """
    if cfg.schedule_unit == "epoch":
        return EpochSchedule(opt, cfg, steps_per_epoch)  # timm's scheduler multiplies a group's ``lr_scale``
    # the same: each group's factor (1 without one) times the schedule
    return torch.optim.lr_scheduler.LambdaLR(opt, [
        (lambda s, k=g.get("lr_scale", 1.0): k * lr_factor(s, cfg, steps_per_epoch)) for g in opt.param_groups])


def steps_per_epoch(n: int, cfg: TrainConfig, drop_last: bool = False) -> int:
    """Optimizer steps per epoch on ``n`` training images: ``floor(n / batch_size)`` when the incomplete last
    batch is dropped (``cfg.drop_last`` or ``drop_last``, e.g. mixing), else ``ceil``."""
    if cfg.drop_last or drop_last:
        if n < cfg.batch_size:
            why = "train.drop_last drops" if cfg.drop_last else "mixup/cutmix drop"
            raise SubtuneError(f"{why} the incomplete last batch: {n} training images, "
                               f"fewer than one batch of {cfg.batch_size}")
        return n // cfg.batch_size
    return math.ceil(n / cfg.batch_size)


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
    """Train ``trainable`` (a :class:`subtune.trainable.Trainable`) of ``model`` on ``train``.

    ``evals`` are evaluated after every epoch (validation); ``final_evals`` only
    once, after the last epoch (the test split: read once, never for choices;
    with ``epoch_select: best_val`` on the restored best-validation weights).
    Returns metrics: ``history`` (per epoch), ``{split}_acc``/``{split}_loss``
    of the final model (``evals``: of the chosen epoch), ``best_epoch``
    (1-based; ``epochs`` under ``last``), ``trainable_params``,
    ``total_params``, ``wall_time_s``, ``device``.
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


@counted
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
    select = cfg.epoch_select == "best_val"
    if select and not evals:
        raise SubtuneError("train.epoch_select best_val needs a validation split to select on, and there is none")
    sel_split = next(iter(evals), None)
    aug = Augmenter(cfg, pre.mean.flatten().tolist() if pre is not None else None,
                    pre.std.flatten().tolist() if pre is not None else None,
                    getattr(runs[0].model, "num_classes", None) if cfg.mixes else None)
    drop = cfg.drop_last or aug.drop_last
    spe = steps_per_epoch(n, cfg, aug.drop_last)
    n_used = spe * cfg.batch_size if drop else n
    epochs = cfg.total_epochs
    if pre is not None:
        pre = pre.to(device)

    states = []
    for run in runs:
        model = run.model
        _check_drop_path(model, cfg.drop_path)
        for p in model.parameters():
            p.requires_grad_(False)
        params = [p for _, p in run.trainable.params]
        if not params:
            raise SubtuneError("the method selected no trainable parameters")
        for p in params:
            p.requires_grad_(True)
        model.to(device)
        model_to_layout(model)
        opt = _optimizer(_param_groups(model, params, cfg, run.trainable), cfg)
        sched = lr_scheduler(opt, cfg, spe)
        forward = run.forward or _image_forward(model, pre, device)
        hooks = getattr(run.trainable, "hooks", None)
        if hooks is not None:
            hooks.start(opt, spe * epochs)
        states.append({"params": params, "opt": opt, "sched": sched, "forward": forward, "history": [],
                       "loss": 0.0, "time": 0.0, "best": None, "best_epoch": epochs,
                       "active": True, "hooks": hooks, "step": 0})

    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    desc = runs[0].desc if len(runs) == 1 else f"{len(runs)} runs"
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        t_epoch = time.perf_counter()
        for run, st in zip(runs, states):
            stage = run.trainable.stage(epoch) if getattr(run.trainable, "stages", None) else None
            if stage is not None:  # this epoch's parameters get gradients; the others none (left untouched)
                names = set(stage.names)
                for pname, p in run.trainable.params:
                    p.requires_grad_(pname in names)
            modules = stage.train_modules if stage is not None else run.trainable.train_modules
            set_modes(run.model, modules, cfg.bn_mode, cfg.drop_path > 0)
            st["loss"] = 0.0
        live = [(run, st) for run, st in zip(runs, states) if st["active"]]
        if not live:  # ``stop`` stopped every run
            break
        order = torch.randperm(n, generator=gen)
        for i in range(0, n_used, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb, yb = aug(x_train[idx], y_train[idx], gen)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device)
            for _, st in live:
                t = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = st["forward"](xb)
                if yb.ndim == 2:  # soft targets (mixup/cutmix): timm's SoftTargetCrossEntropy, smoothing inside
                    loss = F.cross_entropy(logits.float(), yb)
                else:
                    loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
                hooks = st["hooks"]
                if hooks is not None:
                    extra = hooks.extra_loss()
                    if extra is not None:
                        loss = loss + extra
                st["opt"].zero_grad(set_to_none=True)
                loss.backward()
                factors = None
                if hooks is not None:
                    hooks.before_step(st["step"])
                    factors = hooks.lr_factors(st["opt"].param_groups)
                if factors is None:
                    st["opt"].step()
                else:
                    _scaled_step(st["opt"], factors)
                st["sched"].step()
                if hooks is not None:
                    hooks.after_step(st["step"])
                st["step"] += 1
                st["loss"] += loss.detach() * len(idx)  # summed on the device: no sync per step
                st["time"] += time.perf_counter() - t
        for run, st in live:
            t = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(st["loss"]) / n_used,
                                   "lr": st["opt"].param_groups[0]["lr"]}
            for split, (xe, ye) in evals.items():
                r = evaluate(run.model, pre, xe, ye, cfg.eval_batch_size, device, st["forward"])
                row[f"{split}_acc"], row[f"{split}_loss"] = r["acc"], r["loss"]
            st["history"].append(row)
            if select and (st["best"] is None or row[f"{sel_split}_acc"] > st["history"][st["best_epoch"] - 1][
                    f"{sel_split}_acc"]):
                st["best"], st["best_epoch"] = _weights(run.model, st["params"]), epoch + 1
            st["time"] += time.perf_counter() - t
            if on_epoch:
                on_epoch(row)
        # this epoch's rows: only the runs that trained in it (a run stopped earlier keeps a stale last row)
        rows = [st["history"][-1] for _, st in live]
        if stop:
            for i in stop(epoch + 1, {i: st["history"][-1] for i, st in enumerate(states) if st["active"]}) or ():
                states[i]["active"] = False
        bar.set_postfix({k: round(v, 4) for k, v in rows[0].items() if k.endswith("acc")})
        if not progress:
            line_desc = desc if len(live) == len(runs) else f"{len(live)} of {len(runs)} runs"
            print(_epoch_line(line_desc, epoch + 1, epochs, rows, time.perf_counter() - t_epoch), flush=True)

    out = []
    for run, st in zip(runs, states):
        history = st["history"]
        if not select:  # the last epoch trained (a run stopped early by ``stop`` has fewer)
            st["best_epoch"] = len(history)
        if select:  # back to the best validation epoch's weights before the test split is read
            _restore(run.model, st["params"], st["best"])
        chosen = history[st["best_epoch"] - 1]
        metrics: dict[str, Any] = {"history": history}
        for split in evals:
            metrics[f"{split}_acc"] = chosen[f"{split}_acc"]
            metrics[f"{split}_loss"] = chosen[f"{split}_loss"]
        for split, (xe, ye) in (final_evals or {}).items():
            r = evaluate(run.model, pre, xe, ye, cfg.eval_batch_size, device, st["forward"])
            metrics[f"{split}_acc"], metrics[f"{split}_loss"] = r["acc"], r["loss"]
        metrics.update(
            trainable_params=sum(p.numel() for p in st["params"]),
            total_params=sum(p.numel() for p in run.model.parameters()),
            wall_time_s=time.perf_counter() - t0 if len(runs) == 1 else st["time"],
            device=str(device),
            epochs=len(history),
            best_epoch=st["best_epoch"],
            train_size=n,
        )
        for p in run.model.parameters():
            p.requires_grad_(False)
        out.append(metrics)
    return out


def _scaled_step(opt: torch.optim.Optimizer, factors: list[float]) -> None:
    """One optimizer step with each group's scheduled lr multiplied by the method's factor for this step
    (``StepHooks.lr_factors``), then the scheduled lrs restored (the schedule never sees the factors)."""
    if len(factors) != len(opt.param_groups):
        raise SubtuneError(f"lr_factors returned {len(factors)} factors for {len(opt.param_groups)} parameter groups")
    lrs = [g["lr"] for g in opt.param_groups]
    for g, f in zip(opt.param_groups, factors):
        g["lr"] = g["lr"] * float(f)
    try:
        opt.step()
    finally:
        for g, lr in zip(opt.param_groups, lrs):
            g["lr"] = lr


def _check_drop_path(model: nn.Module, rate: float) -> None:
    """``train.drop_path`` must match the rate the model was built with (timm's deepest DropPath)."""
    built = max((float(getattr(m, "drop_prob", 0.0)) for m in model.modules() if type(m).__name__ == "DropPath"),
                default=0.0)
    if abs(built - rate) > 1e-6:
        raise SubtuneError(f"train.drop_path is {rate} but the model was built with drop_path_rate {built} "
                           f"(pass drop_path_rate to build_model)")


def _weights(model: nn.Module, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """A copy of the trainable parameters and of every buffer (what an epoch changes)."""
    return [t.detach().clone() for t in [*params, *model.buffers()]]


@torch.no_grad()
def _restore(model: nn.Module, params: list[nn.Parameter], saved: list[torch.Tensor]) -> None:
    for t, v in zip([*params, *model.buffers()], saved, strict=True):
        t.copy_(v)


def _epoch_line(desc: str, epoch: int, epochs: int, rows: list[dict[str, Any]], seconds: float) -> str:
    """One log line for epoch ``epoch``: its values, or their range over the runs that trained in it (in lockstep)."""

    def fmt(key: str, spec: str) -> str:
        vals = [r[key] for r in rows]
        lo, hi = min(vals), max(vals)
        return f"{key} {lo:{spec}}" if lo == hi else f"{key} {lo:{spec}}-{hi:{spec}}"

    keys = ["train_loss", *[k for k in rows[0] if k.endswith("_acc")]]
    parts = [fmt(k, ".4f") for k in keys] + [fmt("lr", ".3g")]
    return f"{desc} epoch {epoch}/{epochs}: " + " ".join(parts) + f" {seconds:.1f}s"
