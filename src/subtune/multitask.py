"""Multi-task inference from several SubTuning results on one backbone.

The SubTuning paper's deployment claim (Kaplun et al., arXiv 2302.06354,
Sec. "efficient multi-task inference"): tasks SubTuned from the same
pretrained backbone share everything they did not tune, so one network serves
them all. :class:`MultiTaskModel` builds that network:

- the stem and every block before a task's first tuned block are the frozen
  *trunk*, computed once for all tasks;
- at a task's first tuned block its activation leaves the trunk: it goes
  through the task's tuned copy while the trunk goes on through the frozen
  block (as long as another task still needs the trunk);
- afterwards each task has its own *branch*; at every later block, the
  branches that do not tune it (and the trunk) are concatenated along the
  batch dimension and run through the one frozen block once; a tuned block
  runs on its task's branch alone (it has its own weights);
- a block's transition (ConvNeXt's downsample before a stage's first
  block), frozen and shared, runs once on all branches stacked, before the
  block;
- the final shared part (the family record's tail: ViT's final norm,
  WideResNet's final BatchNorm and ReLU; then ``forward_head`` up to the
  classifier: the pooling, ConvNeXt's ``head.norm``) runs once on all
  branches stacked; each task has its own classifier.

The stem, transitions and tail come from the family record
(:mod:`subtune.models.families`, through :class:`~subtune.models.split.Staged`).

Tuned sets need not be contiguous, tasks may tune the same block index with
different weights, and a task with no tuned block (a linear probe, or the
pretrained model's own task) reads the trunk's features. ``forward(x)``
returns ``{task name: logits}``; every task's logits equal what its separate
model computes on ``x`` (``tests/test_multitask.py``: float32 on CPU, to
within 1e-5; batching along the batch dimension may change the kernels'
summation order, nothing else).

Inference only: the model stays in eval mode (``train(True)`` raises), since
a BatchNorm in training mode would mix the stacked branches' statistics.

A task's SubTuning result is its tuned block names, their weights and its head
(:class:`TaskResult`). Results come from in-memory models, from state dicts
(the tuned blocks' and the head's entries, or a whole model's), or from the
files ``python -m subtune train --save-model PATH`` writes (:func:`load_task`,
:meth:`MultiTaskModel.from_checkpoints`). The workflow's ``train`` rule does
not pass ``--save-model``, so its runs keep metrics only; run ``train`` with
``--save-model`` to get deployable weights.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
import torch.nn as nn

from . import SubtuneError
from .models.blocks import block_names, head_names
from .models.split import Staged

#: the branch id of the shared frozen path
TRUNK = -1


@dataclass
class TaskResult:
    """One task's SubTuning result: tuned block names, a state dict holding their and the head's weights.

    ``state`` may hold more (a whole model's state dict): entries outside the
    tuned blocks and the head must then equal the base model's, else the task
    was not tuned from this base and :meth:`MultiTaskModel.from_results`
    says so. ``blocks=None`` means: the blocks whose entries in ``state``
    differ from the base model's (exact: frozen weights stay bit-identical).
    """

    state: Mapping[str, torch.Tensor]
    blocks: Sequence[str] | None = None
    name: str | None = None

    @classmethod
    def from_model(cls, model: nn.Module, blocks: Sequence[str] | None = None, name: str | None = None) -> "TaskResult":
        return cls({k: v.detach() for k, v in model.state_dict().items()}, blocks, name)

    def resolve(self, base: nn.Module) -> "TaskResult":
        """This result with ``blocks`` filled in and checked against ``base``; ``state`` cut to blocks + head."""
        known = block_names(base)
        base_state = base.state_dict()
        heads = head_names(base)
        if len(heads) != 1:
            raise SubtuneError(f"multi-task: expected one classifier module, found {heads}")
        label = self.name or "task"
        unknown = [k for k in self.state if k not in base_state]
        if unknown:
            raise SubtuneError(f"{label}: {unknown[0]!r} is not a parameter or buffer of the base model")

        def owner(key: str) -> str | None:
            return next((b for b in known if key.startswith(b + ".")), None)

        def same(k: str) -> bool:
            a, b = self.state[k], base_state[k]
            return a.shape == b.shape and torch.equal(a.detach().cpu().to(b.dtype), b.detach().cpu())

        if self.blocks is None:
            blocks = [b for b in known if any(owner(k) == b and not same(k) for k in self.state)]
        else:
            blocks = list(dict.fromkeys(self.blocks))
            for b in blocks:
                if b not in known:
                    raise SubtuneError(f"{label}: {b!r} is not a block of this model (blocks: {', '.join(known)})")
        tuned = set(blocks)
        head_prefix = heads[0] + "."
        for k in self.state:
            o = owner(k)
            if o in tuned or k.startswith(head_prefix):
                continue
            if not same(k):
                where = f"block {o}, which is not among its tuned blocks" if o else "a frozen part (stem or norm)"
                raise SubtuneError(f"{label}: {k!r} differs from the base model's ({where}); "
                                   f"was this task tuned from this base?")
        for b in blocks:
            need = [k for k in base_state if owner(k) == b]
            missing = [k for k in need if k not in self.state]
            if missing:
                raise SubtuneError(f"{label}: tuned block {b} lacks {missing[0]!r} in its state")
        if not any(k.startswith(head_prefix) for k in self.state):
            raise SubtuneError(f"{label}: no head weights ({heads[0]}.*) in its state")
        blocks.sort(key=known.index)
        keep = {k: v for k, v in self.state.items() if owner(k) in tuned or k.startswith(head_prefix)}
        return TaskResult(keep, blocks, self.name)

    def model(self, base: nn.Module) -> nn.Module:
        """This task as a separate model: a copy of ``base`` with the tuned blocks and the head loaded."""
        r = self.resolve(base)
        m = copy.deepcopy(base)
        head = head_names(base)[0]
        m.set_submodule(head, _head_from_state(base.get_submodule(head), r.state, head + "."))
        m.load_state_dict({**m.state_dict(), **r.state}, strict=True)
        return m.eval()


TaskLike = Union[TaskResult, nn.Module, Mapping[str, torch.Tensor], tuple]


def _as_result(task: TaskLike, name: str) -> TaskResult:
    if isinstance(task, TaskResult):
        return TaskResult(task.state, task.blocks, task.name or name)
    if isinstance(task, nn.Module):
        return TaskResult.from_model(task, None, name)
    if isinstance(task, tuple) and len(task) == 2:
        blocks, state = task
        if isinstance(state, nn.Module):
            return TaskResult.from_model(state, list(blocks), name)
        return TaskResult(dict(state), list(blocks), name)
    if isinstance(task, Mapping):
        return TaskResult(dict(task), None, name)
    raise SubtuneError(f"{name}: expected a TaskResult, a model, a state dict or (blocks, state); "
                       f"got {type(task).__name__}")


def _head_from_state(template: nn.Module, state: Mapping[str, torch.Tensor], prefix: str) -> nn.Module:
    """The task's classifier: ``template``'s type, sized by the task's weights (tasks differ in classes)."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if isinstance(template, nn.Linear):
        w = sub["weight"]
        head = nn.Linear(w.shape[1], w.shape[0], bias="bias" in sub)
    else:
        head = copy.deepcopy(template)
    p = next(template.parameters(), None)
    if p is not None:
        head = head.to(device=p.device, dtype=p.dtype)
    head.load_state_dict(sub, strict=True)
    return head


@dataclass(frozen=True)
class _Step:
    """What happens at one block: which branches run the frozen block (stacked), which run tuned copies."""

    frozen: tuple[int, ...]  # branch ids (TRUNK or task index) through the shared frozen block, in order
    tuned: tuple[tuple[int, int], ...]  # (task, input branch) through the task's tuned copy


class MultiTaskModel(nn.Module):
    """Several SubTuning results served by one backbone (see the module docstring).

    Build it with :meth:`from_results`. ``forward(x)`` returns ``{name: logits}``
    in task order. ``base`` is shared, not copied: it is put in eval mode with
    gradients off.
    """

    def __init__(self, base: nn.Module, results: Sequence[TaskResult]):
        super().__init__()
        if not results:
            raise SubtuneError("multi-task: no task given")
        names = [r.name or f"task{i}" for i, r in enumerate(results)]
        if len(set(names)) != len(names):
            raise SubtuneError(f"multi-task: task names repeat: {names}")
        base.eval().requires_grad_(False)
        self.base = base
        self._staged = Staged(base)
        self.task_names = names
        known = self._staged.block_names
        head = head_names(base)[0]
        self.tuned = nn.ModuleList()
        self.heads = nn.ModuleList()
        self.task_blocks: list[list[str]] = []
        for r in results:
            r = r.resolve(base)
            copies = nn.ModuleDict()
            for b in r.blocks:
                blk = copy.deepcopy(base.get_submodule(b))
                pre = b + "."
                blk.load_state_dict({k[len(pre):]: v for k, v in r.state.items() if k.startswith(pre)}, strict=True)
                copies[str(known.index(b))] = blk
            self.tuned.append(copies.eval())
            self.heads.append(_head_from_state(base.get_submodule(head), r.state, head + ".").eval())
            self.task_blocks.append(list(r.blocks))
        self.requires_grad_(False)
        self.plan, self.exits = self._make_plan()
        super().train(False)

    @classmethod
    def from_results(cls, base: nn.Module, tasks: Sequence[TaskLike] | Mapping[str, TaskLike]) -> "MultiTaskModel":
        """A multi-task model from ``base`` (the shared pretrained backbone) and one result per task.

        ``tasks`` is a list (names ``task0``, ``task1``, ...) or a ``{name: task}``
        dict. A task is a :class:`TaskResult`; a tuned model (its tuned blocks
        are those that differ from ``base``); a state dict (likewise); or
        ``(block names, model or state dict)``.
        """
        items = tasks.items() if isinstance(tasks, Mapping) else ((None, t) for t in tasks)
        results = []
        for i, (name, t) in enumerate(items):
            r = _as_result(t, name or f"task{i}")
            results.append(TaskResult(r.state, r.blocks, name or r.name))
        return cls(base, results)

    @classmethod
    def from_checkpoints(cls, base_checkpoint: str | os.PathLike,
                         tasks: Sequence[str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike]]
                         ) -> "MultiTaskModel":
        """From saved files: the backbone checkpoint the tasks were trained from, and per task the
        checkpoint ``subtune train --save-model`` wrote, optionally with that run's metrics JSON
        (``(model path, metrics path)``; it names the tuned blocks, see :func:`load_task`)."""
        from .models.checkpoint import create, load_checkpoint

        ck, state = load_checkpoint(base_checkpoint)
        base = create(ck.arch, ck.num_classes, ck.in_chans, **ck.model_kwargs)
        base.load_state_dict(state, strict=True)
        results = [load_task(*t) if isinstance(t, tuple) else load_task(t) for t in tasks]
        return cls(base, results)

    def train(self, mode: bool = True) -> "MultiTaskModel":
        if mode:
            raise SubtuneError("MultiTaskModel is inference-only (a BatchNorm in training mode would mix tasks)")
        return super().train(False)

    def _make_plan(self) -> tuple[list[_Step], list[int]]:
        n = len(self._staged)
        tuned_idx = [sorted(int(i) for i in d.keys()) for d in self.tuned]
        first = [ix[0] if ix else n for ix in tuned_idx]  # where each task leaves the trunk
        plan = []
        for i in range(n):
            frozen, tuned = [], []
            if max(first) > i:  # some task still reads the trunk after block i
                frozen.append(TRUNK)
            for t, ix in enumerate(tuned_idx):
                src = TRUNK if first[t] >= i else t
                if i in ix:
                    tuned.append((t, src))
                elif first[t] < i:
                    frozen.append(t)
            plan.append(_Step(tuple(frozen), tuple(tuned)))
        exits = [t if first[t] < n else TRUNK for t in range(len(first))]
        return plan, exits

    def describe(self) -> str:
        """The schedule, one line per block: the branches stacked through the frozen block, the tuned copies."""
        def lab(b: int) -> str:
            return "trunk" if b == TRUNK else self.task_names[b]

        lines = []
        for name, s in zip(self._staged.block_names, self.plan):
            fz = "+".join(lab(b) for b in s.frozen) or "-"
            tu = ", ".join(f"{self.task_names[t]}" for t, _ in s.tuned)
            lines.append(f"{name}: frozen x{len(s.frozen)} [{fz}]" + (f"; tuned: {tu}" if tu else ""))
        return "\n".join(lines)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        st = self._staged
        acts: dict[int, torch.Tensor] = {TRUNK: st.stem(x)}
        for i, (blk, step) in enumerate(zip(st.blocks, self.plan)):
            if st.transitions[i] is not None:  # frozen and shared: every branch at once
                acts = _stacked(st.transitions[i], acts, list(acts))
            new: dict[int, torch.Tensor] = {}
            key = str(i)
            for t, src in step.tuned:
                new[t] = self.tuned[t][key](acts[src])
            if step.frozen:
                new.update(_stacked(blk, acts, list(step.frozen)))
            acts = new
        feats = _stacked(lambda h: st.head(h, pre_logits=True), acts, list(dict.fromkeys(self.exits)))
        return {name: head(feats[b]) for name, head, b in zip(self.task_names, self.heads, self.exits)}


def _stacked(fn, acts: dict[int, torch.Tensor], branches: list[int]) -> dict[int, torch.Tensor]:
    """``fn`` on the ``branches``' activations concatenated along the batch dimension (one call), split back."""
    if len(branches) == 1:
        return {branches[0]: fn(acts[branches[0]])}
    out = fn(torch.cat([acts[b] for b in branches]))
    return dict(zip(branches, out.split([acts[b].shape[0] for b in branches])))


def load_task(model_path: str | os.PathLike, metrics_path: str | os.PathLike | None = None,
              name: str | None = None) -> TaskResult:
    """A task's result from ``python -m subtune train --save-model MODEL --out METRICS``.

    The checkpoint holds the whole merged model; the tuned blocks are the
    ``subtuning`` run's ``method_params.blocks`` in ``metrics_path`` when given
    (``lp``: none), else the blocks that differ from the base (checked or
    found by :meth:`TaskResult.resolve`). The name defaults to the metrics'
    target, else the file's stem.
    """
    from .io import read_json
    from .models.checkpoint import load_checkpoint

    _, state = load_checkpoint(model_path)
    blocks = None
    if metrics_path is not None:
        p = Path(metrics_path)
        if not p.is_file():
            raise SubtuneError(f"missing metrics file: {p}")
        m: dict[str, Any] = read_json(p)
        if m.get("method") == "subtuning":
            blocks = list((m.get("method_params") or {}).get("blocks") or [])
        elif m.get("method") == "lp":
            blocks = []
        name = name or m.get("target")
    return TaskResult(state, blocks, name or Path(model_path).stem)
