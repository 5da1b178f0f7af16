"""Multi-LoRA with a shared frozen A (seed: "Parameter-Efficient Fine-Tuning via Partially Decomposable Loss
Analysis and Sharing"): K tasks fine-tuned together on one backbone.

Ours, not peft: a peft LoRA adapter owns its A, while here every adapted
layer has **one** A shared by all tasks and frozen (never trained), and one
trainable B **per task**; peft has no such tuner. Exact form, for a sample of
task ``t`` at an adapted layer with frozen weight ``W`` (``scaling = alpha / r``)::

    y = W x + b + scaling * B_t (A x)
    A: r x d (shared, frozen, Kaiming-uniform like peft's LoRA A);  B_t: m x r (one per task, zeros)

(``A x`` is computed once per batch; each sample's ``B_t`` is gathered by its
task id and applied batched, ``einsum``). For a ``k x k`` convolution ``A`` is
a convolution to ``r`` channels with the layer's stride/padding and ``d =
in_channels * k * k``. The adapted layers are LoRA's
(:func:`subtune.methods.lora.lora_targets`: ViT qkv/proj/fc1/fc2, ResNet 3x3
block convolutions). Each task has its own linear head (``heads[t]``);
``forward(x, task)`` returns all tasks' logits side by side (task ``t``'s
classes at ``[o_t, o_t + C_t)``) with the other tasks' classes set to
``-inf``.

Training (:func:`train_multilora`), built to be compared one to one with K
separate LoRA runs (:func:`subtune.methods.multilora_compare.train_separate_lora`, ``fit`` per task):

- **Same updates per task.** Each step draws one batch of ``batch_size``
  from every task (K x batch images in one forward through the shared
  backbone); the loss is the sum over tasks of each task's mean
  cross-entropy on its own head, so a task's gradient is exactly the one
  its own batch gives. Every task has its own optimizer and learning-rate
  schedule over its own parameters (its B in every layer and its head),
  built like ``fit``'s (:func:`subtune.train.lr_scheduler`, every schedule
  key honoured), so a task gets ``ceil(n_t / batch_size)`` updates per
  epoch (``floor`` with ``drop_last``), as in a separate run, and the same
  warm-up, decay and cooldown epochs. With tasks of unequal size an epoch
  has the largest task's number of steps and task ``t`` takes part in its
  first ones.
  Training options ``fit_together`` does not implement are refused with a
  one-line error naming the key (:func:`check_train`): ``augment`` rrc_flip
  or timm, ``mixup``/``cutmix``, ``epoch_select: best_val``, ``drop_path``,
  ``no_weight_decay_1d`` (``none``/``flip``/``crop``/``crop_flip`` use the
  same seeded ``augment_batch`` as ``fit``).
  Task ``t``'s batch order and augmentation come from a generator seeded
  like ``fit``'s, so they are the ones its separate run sees. The counted
  steps are in the result (``optimizer_steps`` per task).
- **Same grid, chosen on validation.** ``grid`` (training keys, ``rank``,
  ``alpha``; see :func:`subtune.tune.multilora_grid_points`) is tried on
  both sides: Multi-LoRA takes the point with the best mean final-epoch
  validation accuracy over tasks, each separate LoRA run the point with the
  best final-epoch validation accuracy on its own task (ties: the earliest
  point). Test splits are read once, by the chosen models only. The
  workflow tries the grid on the first seed only; the other seeds train each
  side at the point it chose there (``tuned``:
  :func:`subtune.methods.multilora_compare.compare`).
- Wall time: ``wall_time_s`` is the whole grid's training (with the
  per-epoch validation), ``wall_time_chosen_s`` the chosen point's (for the
  separate side the sum over tasks of each task's chosen run).

Counts, per adapted layer (d inputs, m outputs, rank r): trained ``K m r``,
stored ``d r + K m r``, against ``K (d r + m r)`` trained and stored for K
separate LoRA runs; the K heads are the same in both.

Departures: the paper is about language models (RoBERTa, GPT-2) and gives
no code; its A's initialisation is not stated (we use peft's LoRA A init,
with a dedicated seeded generator), nor which weights are adapted, nor how
the tasks' batches are mixed (we take one batch per task per step, above).
The backbone runs in eval mode on both sides (a separate run puts only
peft's LoRA layers and its head in train mode, Multi-LoRA only its heads),
so BatchNorm never mixes tasks' statistics and no drop-path is drawn; our
layers have no LoRA dropout (peft's ``dropout`` parameter, 0 by default).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import SubtuneError
from ..models.blocks import head_names
from ..timing import counted
from ..train import model_to_layout, to_layout
from .base import Trainable
from .lora import lora_targets


class _TaskState:
    """Per-sample task ids of the batch being run (shared by the adapted layers of one model)."""

    def __init__(self) -> None:
        self.task: torch.Tensor | None = None


class MultiLoRALayer(nn.Module):
    """A frozen Linear/Conv2d plus a shared frozen A and one B per task."""

    def __init__(self, base: nn.Module, rank: int, num_tasks: int, scaling: float, state: _TaskState,
                 generator: torch.Generator):
        super().__init__()
        self.base, self.rank, self.scaling, self.state = base, rank, scaling, state
        w = base.weight
        if isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise SubtuneError("multilora: grouped convolutions are not supported")
            a_shape: tuple[int, ...] = (rank, base.in_channels, *base.kernel_size)
            out = base.out_channels
        else:
            a_shape, out = (rank, base.in_features), base.out_features
        d = math.prod(a_shape[1:])
        bound = 1.0 / math.sqrt(d)  # kaiming_uniform_(a=sqrt(5)), peft's LoRA A
        a = torch.empty(a_shape, dtype=w.dtype).uniform_(-bound, bound, generator=generator)
        self.A = nn.Parameter(a.to(w.device), requires_grad=False)
        # one Parameter per task, so that each task has its own optimizer (see the module docstring)
        self.B = nn.ParameterList(
            [nn.Parameter(torch.zeros(out, rank, dtype=w.dtype, device=w.device)) for _ in range(num_tasks)])
        self.d, self.m = d, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        task = self.state.task
        if task is None:
            raise RuntimeError("MultiLoRA layer run without task ids")
        bt = torch.stack(tuple(self.B))[task]  # [batch, m, r]
        if isinstance(self.base, nn.Conv2d):
            u = F.conv2d(x, self.A, None, self.base.stride, self.base.padding, self.base.dilation)
            delta = torch.einsum("brhw,bmr->bmhw", u, bt.to(u.dtype))
        else:
            u = F.linear(x, self.A)
            delta = torch.einsum("b...r,bmr->b...m", u, bt.to(u.dtype))
        return y + self.scaling * delta.to(y.dtype)

    def delta_weight(self, t: int) -> torch.Tensor:
        """scaling * B_t A, shaped like the base weight."""
        dw = self.B[t].detach() @ self.A.detach().reshape(self.rank, -1)
        return self.scaling * dw.reshape(self.base.weight.shape)


class MultiLoRAModel(nn.Module):
    """A timm backbone with Multi-LoRA layers and K heads; ``forward(x, task)`` -> masked logits."""

    def __init__(self, backbone: nn.Module, num_classes: Sequence[int], rank: int = 8, alpha: float = 8,
                 target: list[str] | None = None, seed: int = 0, train_a: bool = False):
        super().__init__()
        self.train_a = bool(train_a)  # the ablation: the shared A trained (by every task's loss) instead of frozen
        if not num_classes or any(int(c) < 1 for c in num_classes):
            raise SubtuneError(f"multilora: num_classes must be positive per task, not {list(num_classes)}")
        self.num_classes = [int(c) for c in num_classes]
        self.rank, self.scaling = int(rank), float(alpha) / int(rank)
        self.head_name = head_names(backbone)[0]
        self.targets = lora_targets(backbone, target, who="multilora")
        if not self.targets:
            raise SubtuneError("multilora: no layer to adapt")
        self.state = _TaskState()
        gen = torch.Generator().manual_seed(seed)
        for name in self.targets:
            parent, _, leaf = name.rpartition(".")
            base = backbone.get_submodule(name)
            setattr(backbone.get_submodule(parent), leaf,
                    MultiLoRALayer(base, self.rank, len(self.num_classes), self.scaling, self.state, gen))
        backbone.reset_classifier(0)
        self.backbone = backbone
        feat = backbone.num_features
        self.heads = nn.ModuleList([nn.Linear(feat, c) for c in self.num_classes])
        with torch.no_grad():  # timm-like head init, seeded
            bound = 1.0 / math.sqrt(feat)
            for h in self.heads:
                h.weight.uniform_(-bound, bound, generator=gen)
                h.bias.uniform_(-bound, bound, generator=gen)
        self.offsets = [sum(self.num_classes[:t]) for t in range(len(self.num_classes))]
        self.register_buffer("class_task", torch.cat(
            [torch.full((c,), t, dtype=torch.long) for t, c in enumerate(self.num_classes)]), persistent=False)

    @property
    def num_tasks(self) -> int:
        return len(self.num_classes)

    def layers(self) -> list[tuple[str, MultiLoRALayer]]:
        return [(n, m) for n, m in self.backbone.named_modules() if isinstance(m, MultiLoRALayer)]

    def features(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, each sample through its own task's B."""
        self.state.task = task
        try:
            return self.backbone(x)
        finally:
            self.state.task = None

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        feats = self.features(x, task)
        logits = torch.cat([h(feats) for h in self.heads], 1)
        return logits.masked_fill(self.class_task[None, :] != task[:, None], float("-inf"))

    def task_logits(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Task ``t``'s own head's logits for a batch of task ``t``."""
        return self.heads[t](self.features(x, torch.full((len(x),), t, dtype=torch.long, device=x.device)))

    def task_params(self, t: int) -> list[nn.Parameter]:
        """What task ``t`` trains: its B in every adapted layer and its head."""
        return [m.B[t] for _, m in self.layers()] + list(self.heads[t].parameters())

    def shared_params(self) -> list[nn.Parameter]:
        """The shared A of every adapted layer (trained only with ``train_a``)."""
        return [m.A for _, m in self.layers()]

    def trainable(self) -> Trainable:
        params = [(f"backbone.{n}.A", m.A) for n, m in self.layers()] if self.train_a else []
        params += [(f"backbone.{n}.B.{t}", m.B[t]) for n, m in self.layers() for t in range(self.num_tasks)]
        params += list(self.heads.named_parameters(prefix="heads"))
        return Trainable(params, ["heads"], {"rank": self.rank, "tasks": self.num_tasks, "layers": len(self.layers())})

    def counts(self) -> dict[str, Any]:
        """Parameters trained and stored: Multi-LoRA against K separate LoRA adapters (heads counted apart)."""
        k, r = self.num_tasks, self.rank
        dims = [(m.d, m.m) for _, m in self.layers()]
        heads = sum(p.numel() for p in self.heads.parameters())
        ml_trained = sum(k * m * r + (d * r if self.train_a else 0) for d, m in dims)
        ml_stored = sum(d * r + k * m * r for d, m in dims)
        sep = sum(k * (d * r + m * r) for d, m in dims)
        return {
            "layers": len(dims), "heads": heads,
            "multilora": {"adapter_trained": ml_trained, "adapter_stored": ml_stored,
                          "params_trained": ml_trained + heads, "params_stored": ml_stored + heads},
            "separate_lora": {"adapter_trained": sep, "adapter_stored": sep,
                              "params_trained": sep + heads, "params_stored": sep + heads},
        }

    def merge_task(self, t: int) -> dict[str, torch.Tensor]:
        """Task ``t`` as the state dict of a plain timm model with ``num_classes[t]`` classes (W + scaling B_t A)."""
        state: dict[str, torch.Tensor] = {}
        layers = dict(self.layers())
        for k, v in self.backbone.state_dict().items():
            for name, layer in layers.items():
                if k.startswith(name + "."):
                    rest = k[len(name) + 1:]
                    if rest == "A" or rest.startswith("B."):
                        k = None
                    elif rest.startswith("base."):
                        k = f"{name}.{rest[5:]}"
                        if rest == "base.weight":
                            v = v + layer.delta_weight(t)
                    break
            if k is not None:
                state[k] = v.detach().clone()
        state[f"{self.head_name}.weight"] = self.heads[t].weight.detach().clone()
        state[f"{self.head_name}.bias"] = self.heads[t].bias.detach().clone()
        return state


def pack(x: torch.Tensor, task: int) -> torch.Tensor:
    """uint8 images [N,C,H,W] plus a constant plane holding ``task``: [N,C+1,H,W].

    With :func:`packed_forward`, a :class:`MultiLoRAModel` trains under plain
    ``fit`` (one optimizer over every task; the comparison uses
    :func:`fit_together` instead).
    """
    if not 0 <= task < 256:
        raise SubtuneError("multilora: at most 256 tasks")
    return torch.cat([x, torch.full((x.shape[0], 1, *x.shape[2:]), task, dtype=torch.uint8)], 1)


def packed_forward(model: MultiLoRAModel, pre):
    """fit's forward for packed batches: split off the task plane, preprocess, run the model."""

    def forward(xb: torch.Tensor) -> torch.Tensor:
        task = xb[:, -1].flatten(1).amax(1).long()
        return model(pre(xb[:, :-1]), task)

    return forward


@dataclass
class Task:
    """One task's data: uint8 images and int64 labels per split (test optional)."""

    name: str
    num_classes: int
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor] | None = None


def _check_tasks(tasks: Sequence[Task], cfg) -> None:
    if not tasks:
        raise SubtuneError("multilora: no task")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise SubtuneError(f"multilora: task names repeat: {names}")
    shapes = {tuple(t.train[0].shape[1:]) for t in tasks}
    if len(shapes) != 1:
        raise SubtuneError(f"multilora: tasks need images of one shape, got {sorted(shapes)}")


# augmentations fit_together applies exactly as fit does (the same seeded augment_batch)
_AUGMENTS = ("none", "flip", "crop", "crop_flip")


def check_train(cfg, where: str = "multilora.train") -> None:
    """Refuse training options :func:`fit_together` cannot honour (one line naming the key)."""
    if cfg.augment not in _AUGMENTS:
        raise SubtuneError(f"{where}.augment {cfg.augment!r} is not supported by multilora "
                           f"(use one of {', '.join(_AUGMENTS)})")
    for key, off in (("mixup", 0), ("cutmix", 0), ("drop_path", 0), ("no_weight_decay_1d", False),
                     ("epoch_select", "last")):
        if getattr(cfg, key) != off:
            raise SubtuneError(f"{where}.{key} {getattr(cfg, key)!r} is not supported by multilora (only {off!r})")


def _check_cfgs(cfgs, grid) -> None:
    for pcfg in cfgs:
        check_train(pcfg, "multilora.grid" if grid else "multilora.train")


@contextmanager
def _counting_steps():
    """Count every optimizer step taken inside the block (``fit`` builds its optimizer itself)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    n = [0]

    def hook(opt, args, kwargs):
        n[0] += 1

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield n
    finally:
        handle.remove()


def _task_forward(model: MultiLoRAModel, pre, t: int, device: torch.device):
    """``evaluate``'s forward for task ``t``: uint8 images -> preprocessing -> task ``t``'s own logits."""

    def forward(xb: torch.Tensor) -> torch.Tensor:
        return model.task_logits(to_layout(pre(xb) if pre is not None else xb), t)

    return forward


@counted
def fit_together(model: MultiLoRAModel, tasks: Sequence[Task], pre, cfg, seed: int = 0, device=None,
                 progress: bool | None = False, desc: str = "multilora", sequential: bool = False) -> dict[str, Any]:
    """Train the K tasks together: each step one batch per task, one optimizer and schedule per task.

    Built from ``fit``'s parts (its optimizer, schedule, augmentation, training
    step and ``evaluate``); validation after every epoch, no test split. Returns
    ``history``, ``per_task`` (final ``val_acc``/``val_loss``),
    ``mean_val_acc``, ``optimizer_steps`` (per task, counted),
    ``trainable_params``, ``wall_time_s``, ``device``.

    Ablations: ``model.train_a`` trains the shared A too (its own optimizer
    over every A, built like the tasks', its schedule over the stage's
    steps; its gradient is the sum of the active tasks' losses').
    ``sequential``: the tasks are trained one after another, K stages of
    the whole schedule; stage ``t`` steps only task ``t``'s optimizer (its
    B and head; A too with ``train_a``, from a fresh optimizer each stage)
    on task ``t``'s batches, which are the ones it sees together (its own
    seeded generator). History rows then carry ``stage`` and the stage's
    task only; ``per_task`` is evaluated after the last stage (a task
    trained early sees the A the later stages left).
    """
    from functools import partial

    from tqdm.auto import tqdm

    from ..loop import Optimization, train_step
    from ..train import evaluate, pick_device, set_modes, steps_per_epoch

    check_train(cfg)
    device = pick_device(device if isinstance(device, str) or device is None else str(device))
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    k = len(tasks)
    sizes = [len(t.train[0]) for t in tasks]
    for t, n in zip(tasks, sizes):
        if n == 0:
            raise SubtuneError(f"multilora: task {t.name} has an empty training set")
    steps = [steps_per_epoch(n, cfg) for n in sizes]
    used = [s * cfg.batch_size if cfg.drop_last else n for s, n in zip(steps, sizes)]  # images trained on per epoch
    gens = [torch.Generator().manual_seed(seed) for _ in tasks]  # each task's order and augmentation: fit's
    if pre is not None:
        pre = pre.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device)
    model_to_layout(model)
    optims = []  # one per task: its B in every layer and its head
    for t in range(k):
        params = model.task_params(t)
        for p in params:
            p.requires_grad_(True)
        optims.append(Optimization.build(params, cfg, steps[t]))
    shared = model.shared_params() if model.train_a else []
    for p in shared:
        p.requires_grad_(True)
    history: list[dict[str, Any]] = []
    if progress is None:
        progress = sys.stderr.isatty()

    def validate(row: dict[str, Any], which: list[int]) -> None:
        for t in which:
            r = evaluate(model, pre, *tasks[t].val, cfg.eval_batch_size, device, _task_forward(model, pre, t, device))
            row.update({f"{tasks[t].name}_val_acc": r["acc"], f"{tasks[t].name}_val_loss": r["loss"]})
        row["mean_val_acc"] = sum(row[f"{tasks[t].name}_val_acc"] for t in which) / len(which)

    stages = [[t] for t in range(k)] if sequential else [list(range(k))]
    for si, stage in enumerate(stages):
        per_epoch = max(steps[t] for t in stage)
        a_optim = [Optimization.build(shared, cfg, per_epoch)] if shared else []  # the shared A's, fresh per stage
        for epoch in tqdm(range(cfg.total_epochs), desc=desc + (f" stage {si + 1}" if sequential else ""),
                          disable=not progress, leave=False):
            set_modes(model, ["heads"])
            orders = {t: torch.randperm(sizes[t], generator=gens[t]) for t in stage}
            losses = {t: torch.zeros((), device=device) for t in stage}
            for i in range(per_epoch):
                active = [t for t in stage if i < steps[t]]
                xb, yb, task, ns = _together_batch(tasks, active, orders, i, cfg, gens, device)
                # the loss is the sum of the tasks' own mean losses: each task's gradient is its own
                _, parts = train_step(partial(_heads_logits, model, pre, xb, task, active, ns), yb.split(ns),
                                      [optims[t] for t in active] + a_optim, cfg.label_smoothing, device.type,
                                      zero=optims + a_optim)
                for t, part, n in zip(active, parts, ns):
                    losses[t] += part * n
            row: dict[str, Any] = {"epoch": epoch + 1, **({"stage": si + 1} if sequential else {})}
            for t in stage:
                row.update({f"{tasks[t].name}_train_loss": float(losses[t]) / used[t],
                            f"{tasks[t].name}_lr": optims[t].lr})
            validate(row, stage)
            history.append(row)
    for p in model.parameters():
        p.requires_grad_(False)
    last = history[-1]
    if sequential:  # every task after the last stage
        last = {}
        validate(last, list(range(k)))
    per_task = {t.name: {"val_acc": last[f"{t.name}_val_acc"], "val_loss": last[f"{t.name}_val_loss"]} for t in tasks}
    return {"history": history, "per_task": per_task, "mean_val_acc": last["mean_val_acc"],
            "optimizer_steps": {t.name: o.steps for t, o in zip(tasks, optims)},
            "trainable_params": model.trainable().num_params, "wall_time_s": time.perf_counter() - t0,
            "device": str(device)}


def _together_batch(tasks: Sequence[Task], active: list[int], orders: dict[int, torch.Tensor], i: int, cfg,
                    gens: list[torch.Generator], device: torch.device):
    """Step ``i``'s batch: each active task's ``i``-th batch of its own order, augmented with its own generator,
    concatenated in task order. Returns images, labels, each image's task id and each task's batch size."""
    from ..train import augment_batch

    bs = cfg.batch_size
    xs, ys, ns = [], [], []
    for t in active:
        idx = orders[t][i * bs:(i + 1) * bs]
        xs.append(augment_batch(tasks[t].train[0][idx], cfg.augment, gens[t]))
        ys.append(tasks[t].train[1][idx])
        ns.append(len(idx))
    xb = torch.cat(xs).to(device, non_blocking=True)
    yb = torch.cat(ys).to(device)
    task = torch.cat([torch.full((n,), t, dtype=torch.long) for t, n in zip(active, ns)]).to(device)
    return xb, yb, task, ns


def _heads_logits(model: MultiLoRAModel, pre, xb: torch.Tensor, task: torch.Tensor, active: list[int],
                  ns: list[int]) -> list[torch.Tensor]:
    """One forward of the shared backbone over every active task's images, then each task's slice through its
    own head (its own classes only): one logits tensor per active task."""
    feats = model.features(to_layout(pre(xb) if pre is not None else xb), task)
    return [model.heads[t](f) for t, f in zip(active, feats.split(ns))]


def _point_cfg(cfg, point: dict[str, Any]):
    from ..train_config import TrainConfig

    return TrainConfig.from_dict({**cfg.to_dict(), **point["train"]}, "multilora.grid")


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def train_multilora(backbone: nn.Module, tasks: Sequence[Task], pre, cfg, seed: int = 0, rank: int = 8,
                    alpha: float = 8, target: list[str] | None = None, device=None,
                    progress: bool | None = False, grid: dict[str, list] | None = None, train_a: bool = False,
                    sequential: bool = False) -> dict[str, Any]:
    """Train K tasks together (one backbone, shared frozen A, a B and a head per task) at every grid point.

    ``backbone`` is a timm model (copied per point, its head dropped). The
    point with the best mean validation accuracy over tasks is chosen (ties:
    the earliest); only its model reads the test splits. Returns per-task
    validation/test accuracy and ``optimizer_steps`` of the chosen point,
    ``grid_results`` (every point's validation numbers), ``chosen_index``,
    ``chosen``, the parameter counts of :meth:`MultiLoRAModel.counts`
    (``params_trained``, ``params_stored``, ``adapter_*``, ``heads``;
    ``separate_lora_expected``: the K-separate-LoRA counts by formula),
    ``wall_time_s`` (the whole grid), ``wall_time_chosen_s`` and ``model``
    (the chosen :class:`MultiLoRAModel`; drop it before writing JSON).
    ``train_a``, ``sequential``: the ablations (:func:`fit_together`).
    """
    from ..train import evaluate, pick_device
    from ..tune import choose, multilora_grid_points, point_label

    _check_tasks(tasks, cfg)
    points = multilora_grid_points(grid)
    cfgs = [_point_cfg(cfg, p) for p in points]  # every point checked before any training
    _check_cfgs(cfgs, grid)
    results: list[dict[str, Any]] = []
    best_model, best_m = None, None
    for point, pcfg in zip(points, cfgs):
        r, a = int(point["params"].get("rank", rank)), point["params"].get("alpha", alpha)
        model = MultiLoRAModel(copy.deepcopy(backbone), [t.num_classes for t in tasks], r, a, target, seed,
                               train_a=train_a)
        label = point_label(point)
        m = fit_together(model, tasks, pre, pcfg, seed, device, progress, desc=f"multilora [{label}]",
                         sequential=sequential)
        results.append({**point, "label": label, "val_acc": m["mean_val_acc"],
                        "per_task_val_acc": {n: v["val_acc"] for n, v in m["per_task"].items()},
                        "optimizer_steps": m["optimizer_steps"], "wall_time_s": m["wall_time_s"],
                        "history": m["history"]})
        if best_m is None or m["mean_val_acc"] > best_m["mean_val_acc"]:
            best_model, best_m = model, m
        del model
    best = choose(results)
    point, pcfg, model, m = points[best], cfgs[best], best_model, best_m
    dev = pick_device(device if isinstance(device, str) or device is None else str(device))
    per_task: dict[str, dict[str, Any]] = {}
    for t, task in enumerate(tasks):
        per_task[task.name] = {**m["per_task"][task.name], "optimizer_steps": m["optimizer_steps"][task.name]}
        if task.test is not None:  # read once, by the chosen model only
            r = evaluate(model, pre, *task.test, pcfg.eval_batch_size, dev, _task_forward(model, pre, t, dev))
            per_task[task.name].update(test_acc=r["acc"], test_loss=r["loss"])
    has_test = all("test_acc" in v for v in per_task.values())
    return {"method": "multilora", "rank": model.rank, "alpha": point["params"].get("alpha", alpha),
            "train_a": bool(train_a), "sequential": bool(sequential),
            "per_task": per_task, "mean_val_acc": m["mean_val_acc"],
            **({"mean_test_acc": _mean(v["test_acc"] for v in per_task.values())} if has_test else {}),
            "optimizer_steps": m["optimizer_steps"], "grid_results": results, "chosen_index": best,
            "chosen": {"train": point["train"], "params": point["params"], "label": results[best]["label"]},
            "train": pcfg.to_dict(), **_flat_counts(model.counts()), "trainable_params": m["trainable_params"],
            "history": m["history"], "wall_time_s": sum(x["wall_time_s"] for x in results),
            "wall_time_chosen_s": m["wall_time_s"], "model": model}


def _flat_counts(c: dict[str, Any]) -> dict[str, Any]:
    return {**c["multilora"], "heads": c["heads"], "layers": c["layers"], "separate_lora_expected": c["separate_lora"]}
