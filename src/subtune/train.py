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
  optimizer is PyTorch's fused one (:func:`subtune.optim._optimizer`); on CUDA
  the forward pass runs under bf16 autocast.
- One training step, the same in every loop (Multi-LoRA's too):
  :func:`subtune.loop.train_step`; a run's state: :class:`subtune.loop.RunState`.
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
- The learning-rate schedule (:func:`subtune.optim.lr_scheduler`; ``schedule``,
  ``schedule_unit``, ``warmup_epochs``, ``warmup_lr``, ``min_lr``,
  ``cooldown_epochs``) and the number of epochs a run trains,
  ``epochs + cooldown_epochs`` (metrics' ``epochs``).
"""

from __future__ import annotations

import sys
import time
from functools import partial
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import SubtuneError
from .augment import Augmenter, augment_batch  # noqa: F401  (augment_batch: part of this module's API)
from .loop import Optimization, Run, RunState, train_step
from .optim import (  # noqa: F401  (the optimizer and schedule: part of this module's API)
    EpochSchedule, _lr_factor, _optimizer, _param_groups, lr_factor, lr_scheduler, steps_per_epoch)
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
#: (oneDNN on the CPU, cuDNN's tensor cores on the GPU; its effect on the whole workflow is in
#: docs/benchmarks.md, ``bench/pipeline.py``). The same model; convolutions summed in another order (last float bits).
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
    if cfg.epoch_select == "best_val" and not evals:
        raise SubtuneError("train.epoch_select best_val needs a validation split to select on, and there is none")
    aug = Augmenter(cfg, pre.mean.flatten().tolist() if pre is not None else None,
                    pre.std.flatten().tolist() if pre is not None else None,
                    getattr(runs[0].model, "num_classes", None) if cfg.mixes else None)
    spe = steps_per_epoch(n, cfg, aug.drop_last)
    n_used = spe * cfg.batch_size if cfg.drop_last or aug.drop_last else n
    epochs = cfg.total_epochs
    if pre is not None:
        pre = pre.to(device)
    states = [_start(run, pre, cfg, spe, device) for run in runs]
    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    desc = runs[0].desc if len(runs) == 1 else f"{len(runs)} runs"
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        t_epoch = time.perf_counter()
        for st in states:
            _epoch_modes(st.run, epoch, cfg)
            st.loss = 0.0
        live = [st for st in states if st.active]
        if not live:  # ``stop`` stopped every run
            break
        order = torch.randperm(n, generator=gen)
        for i in range(0, n_used, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb, yb = aug(x_train[idx], y_train[idx], gen)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device)
            for st in live:
                t = time.perf_counter()
                loss, _ = train_step(partial(st.forward, xb), [yb], [st.optim], cfg.label_smoothing, device.type)
                st.loss += loss * len(idx)  # summed on the device: no sync per step
                st.time += time.perf_counter() - t
        # this epoch's rows: only the runs that trained in it (a run stopped earlier keeps a stale last row)
        rows = [_end_epoch(st, epoch, pre, evals, cfg, device, n_used, on_epoch) for st in live]
        if stop:
            for i in stop(epoch + 1, {i: st.history[-1] for i, st in enumerate(states) if st.active}) or ():
                states[i].active = False
        bar.set_postfix({k: round(v, 4) for k, v in rows[0].items() if k.endswith("acc")})
        if not progress:
            line_desc = desc if len(live) == len(runs) else f"{len(live)} of {len(runs)} runs"
            print(_epoch_line(line_desc, epoch + 1, epochs, rows, time.perf_counter() - t_epoch), flush=True)
    return [_result(st, pre, evals, final_evals, cfg, device, n, t0 if len(runs) == 1 else None) for st in states]


def _start(run: Run, pre: Preprocess | None, cfg: TrainConfig, spe: int, device: torch.device) -> RunState:
    """A run ready to train: only its method's parameters require gradients, the model on ``device`` in the
    layout it runs in, its optimizer and schedule built (``spe`` steps per epoch), its hooks started."""
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
    optim = Optimization.build(_param_groups(model, params, cfg, run.trainable), cfg, spe,
                               getattr(run.trainable, "hooks", None))
    return RunState(run, params, optim, run.forward or _image_forward(model, pre, device), cfg.total_epochs)


def _epoch_modes(run: Run, epoch: int, cfg: TrainConfig) -> None:
    """Train/eval modes (and, with stages, which parameters get gradients) for epoch ``epoch`` (0-based)."""
    stage = run.trainable.stage(epoch) if getattr(run.trainable, "stages", None) else None
    if stage is not None:  # this epoch's parameters get gradients; the others none (left untouched)
        names = set(stage.names)
        for pname, p in run.trainable.params:
            p.requires_grad_(pname in names)
    modules = stage.train_modules if stage is not None else run.trainable.train_modules
    set_modes(run.model, modules, cfg.bn_mode, cfg.drop_path > 0)


def _end_epoch(st: RunState, epoch: int, pre: Preprocess | None, evals: dict[str, tuple[torch.Tensor, torch.Tensor]],
               cfg: TrainConfig, device: torch.device, n_used: int,
               on_epoch: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Epoch ``epoch``'s history row (train loss, lr, every validation split); with ``epoch_select: best_val``
    its weights kept when the first split's accuracy beats every earlier epoch's (earliest on ties)."""
    t = time.perf_counter()
    row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(st.loss) / n_used, "lr": st.optim.lr}
    for split, (xe, ye) in evals.items():
        r = evaluate(st.model, pre, xe, ye, cfg.eval_batch_size, device, st.forward)
        row[f"{split}_acc"], row[f"{split}_loss"] = r["acc"], r["loss"]
    st.history.append(row)
    if cfg.epoch_select == "best_val":
        key = f"{next(iter(evals))}_acc"
        if st.best is None or row[key] > st.history[st.best_epoch - 1][key]:
            st.keep(epoch + 1)
    st.time += time.perf_counter() - t
    if on_epoch:
        on_epoch(row)
    return row


def _result(st: RunState, pre: Preprocess | None, evals: dict[str, tuple[torch.Tensor, torch.Tensor]],
            final_evals: dict[str, tuple[torch.Tensor, torch.Tensor]] | None, cfg: TrainConfig,
            device: torch.device, n: int, t0: float | None) -> dict[str, Any]:
    """A run's metrics (see :func:`fit`), the test split read on the chosen epoch's weights; its parameters
    frozen again. ``wall_time_s``: since ``t0``, or (runs in lockstep, ``t0`` None) the run's own time."""
    history = st.history
    if cfg.epoch_select == "best_val":  # back to the best validation epoch's weights before the test split is read
        st.restore()
    else:  # the last epoch trained (a run stopped early by ``stop`` has fewer)
        st.best_epoch = len(history)
    chosen = history[st.best_epoch - 1]
    metrics: dict[str, Any] = {"history": history}
    for split in evals:
        metrics[f"{split}_acc"] = chosen[f"{split}_acc"]
        metrics[f"{split}_loss"] = chosen[f"{split}_loss"]
    for split, (xe, ye) in (final_evals or {}).items():
        r = evaluate(st.model, pre, xe, ye, cfg.eval_batch_size, device, st.forward)
        metrics[f"{split}_acc"], metrics[f"{split}_loss"] = r["acc"], r["loss"]
    metrics.update(
        trainable_params=sum(p.numel() for p in st.params),
        total_params=sum(p.numel() for p in st.model.parameters()),
        wall_time_s=time.perf_counter() - t0 if t0 is not None else st.time,
        device=str(device),
        epochs=len(history),
        best_epoch=st.best_epoch,
        train_size=n,
    )
    for p in st.model.parameters():
        p.requires_grad_(False)
    return metrics


def _check_drop_path(model: nn.Module, rate: float) -> None:
    """``train.drop_path`` must match the rate the model was built with (timm's deepest DropPath)."""
    built = max((float(getattr(m, "drop_prob", 0.0)) for m in model.modules() if type(m).__name__ == "DropPath"),
                default=0.0)
    if abs(built - rate) > 1e-6:
        raise SubtuneError(f"train.drop_path is {rate} but the model was built with drop_path_rate {built} "
                           f"(pass drop_path_rate to build_model)")


def _epoch_line(desc: str, epoch: int, epochs: int, rows: list[dict[str, Any]], seconds: float) -> str:
    """One log line for epoch ``epoch``: its values, or their range over the runs that trained in it (in lockstep)."""

    def fmt(key: str, spec: str) -> str:
        vals = [r[key] for r in rows]
        lo, hi = min(vals), max(vals)
        return f"{key} {lo:{spec}}" if lo == hi else f"{key} {lo:{spec}}-{hi:{spec}}"

    keys = ["train_loss", *[k for k in rows[0] if k.endswith("_acc")]]
    parts = [fmt(k, ".4f") for k in keys] + [fmt("lr", ".3g")]
    return f"{desc} epoch {epoch}/{epochs}: " + " ".join(parts) + f" {seconds:.1f}s"
