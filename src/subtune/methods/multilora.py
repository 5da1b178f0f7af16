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
block convolutions). Each task has its own linear head, stored as the rows
of one ``Linear`` over all tasks' classes (rows ``[o_t, o_t + C_t)`` are task
``t``'s head).

One training loop: the K training sets are concatenated, labels offset by
``o_t``; each image carries its task id as an extra constant uint8 plane
(:func:`pack`), so ``fit``'s seeded shuffling and augmentation apply
unchanged (flip and crop keep the plane's maximum, which is read back). The
model outputs all tasks' logits with the other tasks' classes set to
``-inf``, so cross-entropy equals the sample's own task loss and the argmax
is its own head's. Evaluation is per task (one validation/test split per
task). Label smoothing is rejected (it would weigh the -inf logits).

Counts, per adapted layer (d inputs, m outputs, rank r): trained ``K m r``,
stored ``d r + K m r``, against ``K (d r + m r)`` trained and stored for K
separate LoRA runs; the K heads are the same in both.

Departure from the paper: it is about language models (RoBERTa, GPT-2) and
gives no code; its A's initialisation is not stated (we use peft's LoRA A
init, with a dedicated seeded generator), nor which weights are adapted.
A task's B changes only through its own samples (other rows get exactly zero
gradient); with weight decay > 0, AdamW still decays every head row at every
step (decoupled decay), B stays zero where it is zero.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import SubtuneError
from ..models.blocks import head_names
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
        self.B = nn.Parameter(torch.zeros(num_tasks, out, rank, dtype=w.dtype, device=w.device))
        self.d, self.m = d, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        task = self.state.task
        if task is None:
            raise RuntimeError("MultiLoRA layer run without task ids")
        bt = self.B[task]  # [batch, m, r]
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
                 target: list[str] | None = None, seed: int = 0):
        super().__init__()
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
        self.heads = nn.Linear(feat, sum(self.num_classes))
        with torch.no_grad():  # timm-like head init, seeded
            bound = 1.0 / math.sqrt(feat)
            self.heads.weight.uniform_(-bound, bound, generator=gen)
            self.heads.bias.uniform_(-bound, bound, generator=gen)
        self.offsets = [sum(self.num_classes[:t]) for t in range(len(self.num_classes))]
        self.register_buffer("class_task", torch.cat(
            [torch.full((c,), t, dtype=torch.long) for t, c in enumerate(self.num_classes)]), persistent=False)

    @property
    def num_tasks(self) -> int:
        return len(self.num_classes)

    def layers(self) -> list[tuple[str, MultiLoRALayer]]:
        return [(n, m) for n, m in self.backbone.named_modules() if isinstance(m, MultiLoRALayer)]

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        self.state.task = task
        try:
            feats = self.backbone(x)
        finally:
            self.state.task = None
        logits = self.heads(feats)
        return logits.masked_fill(self.class_task[None, :] != task[:, None], float("-inf"))

    def trainable(self) -> Trainable:
        params = [(f"backbone.{n}.B", m.B) for n, m in self.layers()]
        params += list(self.heads.named_parameters(prefix="heads"))
        return Trainable(params, ["heads"], {"rank": self.rank, "tasks": self.num_tasks, "layers": len(params) - 2})

    def counts(self) -> dict[str, Any]:
        """Parameters trained and stored: Multi-LoRA against K separate LoRA adapters (heads counted apart)."""
        k, r = self.num_tasks, self.rank
        dims = [(m.d, m.m) for _, m in self.layers()]
        heads = sum(p.numel() for p in self.heads.parameters())
        ml_trained = sum(k * m * r for _, m in dims)
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
                    if rest in ("A", "B"):
                        k = None
                    elif rest.startswith("base."):
                        k = f"{name}.{rest[5:]}"
                        if rest == "base.weight":
                            v = v + layer.delta_weight(t)
                    break
            if k is not None:
                state[k] = v.detach().clone()
        lo, hi = self.offsets[t], self.offsets[t] + self.num_classes[t]
        state[f"{self.head_name}.weight"] = self.heads.weight.detach()[lo:hi].clone()
        state[f"{self.head_name}.bias"] = self.heads.bias.detach()[lo:hi].clone()
        return state


def pack(x: torch.Tensor, task: int) -> torch.Tensor:
    """uint8 images [N,C,H,W] plus a constant plane holding ``task``: [N,C+1,H,W]."""
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
    if cfg.label_smoothing:
        raise SubtuneError("multilora: label_smoothing must be 0 (other tasks' logits are -inf)")


def train_multilora(backbone: nn.Module, tasks: Sequence[Task], pre, cfg, seed: int = 0, rank: int = 8,
                    alpha: float = 8, target: list[str] | None = None, device=None,
                    progress: bool | None = False) -> dict[str, Any]:
    """Train K tasks together (one backbone, shared frozen A, a B and a head per task) with ``fit``.

    ``backbone`` is a timm model (its head is dropped; it is changed in place).
    Returns per-task validation/test accuracy, the parameter counts of
    :meth:`MultiLoRAModel.counts` (``params_trained``, ``params_stored``,
    ``adapter_*``, ``heads``; ``separate_lora_expected``: the K-separate-LoRA
    counts by formula), the history, the wall time and ``model`` (the trained
    :class:`MultiLoRAModel`; drop it before writing JSON).
    """
    from ..train import fit

    _check_tasks(tasks, cfg)
    model = MultiLoRAModel(backbone, [t.num_classes for t in tasks], rank, alpha, target, seed)

    def packed(t: int, split: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return pack(split[0], t), split[1] + model.offsets[t]

    parts = [packed(i, t.train) for i, t in enumerate(tasks)]
    train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    evals = {f"{t.name}_val": packed(i, t.val) for i, t in enumerate(tasks)}
    finals = {f"{t.name}_test": packed(i, t.test) for i, t in enumerate(tasks) if t.test is not None}
    trainable = model.trainable()
    m = fit(model, trainable, pre, train, evals, cfg, seed, device, final_evals=finals, progress=progress,
            desc="multilora", forward=packed_forward(model, pre))
    per_task = {t.name: {k: m[f"{t.name}_{s}_acc"] for s, k in (("val", "val_acc"), ("test", "test_acc"))
                         if f"{t.name}_{s}_acc" in m} for t in tasks}
    return {"method": "multilora", "rank": rank, "alpha": alpha, "per_task": per_task,
            "mean_val_acc": sum(v["val_acc"] for v in per_task.values()) / len(per_task),
            **({"mean_test_acc": sum(v["test_acc"] for v in per_task.values()) / len(per_task)} if finals else {}),
            **_flat_counts(model.counts()), "trainable_params": m["trainable_params"], "history": m["history"],
            "wall_time_s": m["wall_time_s"], "model": model}


def _flat_counts(c: dict[str, Any]) -> dict[str, Any]:
    return {**c["multilora"], "heads": c["heads"], "layers": c["layers"], "separate_lora_expected": c["separate_lora"]}


def train_separate_lora(backbone: nn.Module, tasks: Sequence[Task], pre, cfg, seed: int = 0, rank: int = 8,
                        alpha: float = 8, target: list[str] | None = None, device=None,
                        progress: bool | None = False) -> dict[str, Any]:
    """The baseline: K separate peft-LoRA runs (method ``lora``), one copy of ``backbone`` per task."""
    from ..train import fit
    from .base import get_method

    _check_tasks(tasks, cfg)
    t0 = time.perf_counter()
    per_task: dict[str, dict[str, float]] = {}
    adapter = heads = 0
    for i, task in enumerate(tasks):
        model = copy.deepcopy(backbone)
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed + i)
            model.reset_classifier(task.num_classes)
            method = get_method("lora", rank=rank, alpha=alpha, target=target)
            model = method.wrap(model)
        tr = method.trainable(model)
        finals = {"test": task.test} if task.test is not None else None
        m = fit(model, tr, pre, task.train, {"val": task.val}, cfg, seed, device, final_evals=finals,
                progress=progress, desc=f"lora {task.name}")
        per_task[task.name] = {k: m[k] for k in ("val_acc", "test_acc") if k in m}
        head = sum(p.numel() for n, p in tr.params if ".modules_to_save." in n)
        heads += head
        adapter += m["trainable_params"] - head
    return {"method": "separate_lora", "rank": rank, "alpha": alpha, "per_task": per_task,
            "mean_val_acc": sum(v["val_acc"] for v in per_task.values()) / len(per_task),
            **({"mean_test_acc": sum(v["test_acc"] for v in per_task.values()) / len(per_task)}
               if all("test_acc" in v for v in per_task.values()) else {}),
            "heads": heads, "adapter_trained": adapter, "adapter_stored": adapter,
            "params_trained": adapter + heads, "params_stored": adapter + heads,
            "wall_time_s": time.perf_counter() - t0}


def compare(backbone: nn.Module, tasks: Sequence[Task], pre, cfg, seed: int = 0, rank: int = 8, alpha: float = 8,
            target: list[str] | None = None, device=None, progress: bool | None = False) -> dict[str, Any]:
    """Multi-LoRA against K separate LoRA runs from the same backbone, data, training config and rank."""
    sep = train_separate_lora(backbone, tasks, pre, cfg, seed, rank, alpha, target, device, progress)
    ml = train_multilora(copy.deepcopy(backbone), tasks, pre, cfg, seed, rank, alpha, target, device, progress)
    ml.pop("model")
    return {"multilora": ml, "separate_lora": sep, "tasks": [t.name for t in tasks]}
