"""Auto-RGN (Lee et al., ICLR 2023, "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts",
arXiv 2210.11466, Sec. 5; the authors' code github.com/anniesch/surgical-finetuning ``main.py``,
``get_lr_weights`` and ``args.auto_tune == 'RGN'``): every parameter tensor trains, its learning rate
scaled by its relative gradient norm, normalised by the largest.

Exact form: at every optimizer step, after the backward pass, for every trained tensor ``theta_j`` with
gradient ``g_j``::

    RGN_j = ||g_j||_2 / ||theta_j||_2        (Frobenius norms over the whole tensor, as torch.norm)
    lr_j  = lr(t) * RGN_j / max_k RGN_k      (the max over this step's trained tensors)

with ``lr(t)`` the run's schedule (the schedule itself never sees the factors: the scheduled lr is restored
after the step). Per tensor (one optimizer parameter group per named parameter, as the authors' ``{"params":
params[name], "lr": weight * lr}``), not per layer; no epsilon (the authors' neither). Which tensors: every
parameter but the BatchNorm affine parameters (``train_bn: false``, the default: the authors keep
``"bn" not in name``, which on their WideResNet is exactly the BatchNorms, and leave those out of the
optimizer: frozen), and every module in train mode but the BatchNorms (the authors' default ``train_mode:
eval`` never calls ``model.train()``: no BatchNorm statistic moves; this model has no dropout or drop-path
there). ``train_bn: true``: the BatchNorm affine parameters train with their RGN too, every module in train
mode (as FT). On a ViT or ConvNeXt (LayerNorms, no BatchNorm) both are every tensor. The head trains with
``head: keep`` too (the authors tune "all" with the source classifier kept).

Departures from the authors' code (the issue asks for a per-step recomputation):

- recomputed every step from that step's gradient; the authors recompute once per epoch, before it, from
  the mean of the ratios on the first 5 batches of a separate pass (``itertools.islice(loader, 5)``), and
  rebuild their Adam optimizer each epoch (its moments reset); here the optimizer and its state persist;
- a tensor whose norm is 0 (a zero-initialised bias, e.g. a new ViT head's) trains at the full lr (factor
  1) and is left out of the max; the authors' ratio divides by zero there (inf, then NaN factors). A
  tensor without a gradient gets factor 0 (the optimizer skips it anyway);
- BatchNorms by module type, not by the substring ``bn`` in the name (on a timm ResNet the ``downsample.1``
  BatchNorms have no ``bn`` in their name: the authors' rule would train them);
- the schedule and optimizer are the run's (the authors: Adam, constant lr, L2 weight decay 1e-4:
  configs/cifar10c.yaml's protocol).
"""

from __future__ import annotations

from typing import Any

from ..trainable import StepHooks
from .base import BOOLEAN, Method, Param, Trainable, register
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def modules_without_batchnorm(model: nn.Module) -> list[str]:
    """The fewest module names that cover every module but the BatchNorms (``[""]``: the model, when it has
    none): what runs in train mode with the BatchNorms in eval mode."""
    out: list[str] = []

    def visit(prefix: str, m: nn.Module) -> None:
        if _is_bn(m):
            return
        if not any(_is_bn(x) for x in m.modules()):
            out.append(prefix)
            return
        for name, child in m.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return out


class RelativeGradNorm(StepHooks):
    """The run's step hooks (``Trainable.hooks``): one parameter group per tensor, and at every step one
    factor per group, ``RGN_j / max_k RGN_k`` (see the module docstring); ``last`` keeps the latest step's
    factors by name."""

    per_tensor_groups = True

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def lr_factors(self, groups: list[dict[str, Any]]) -> list[float]:
        tensors = [g["params"][0] for g in groups]
        with_grad = [i for i, p in enumerate(tensors) if p.grad is not None]
        factors = [0.0] * len(tensors)
        if with_grad:
            with torch.no_grad():
                gn = torch.stack(torch._foreach_norm([tensors[i].grad.float() for i in with_grad]))
                pn = torch.stack(torch._foreach_norm([tensors[i].detach().float() for i in with_grad]))
                zero = pn == 0
                rgn = torch.where(zero, torch.zeros_like(gn), gn / torch.where(zero, torch.ones_like(pn), pn))
                top = rgn.max()  # 0 when no tensor has a gradient norm: then every factor 0 (but zero-norm ones)
                f = torch.where(zero, torch.ones_like(rgn), rgn / torch.where(top > 0, top, torch.ones_like(top)))
            for i, v in zip(with_grad, f.tolist()):  # one device sync per step
                factors[i] = v
        self.last = {g["names"][0]: f for g, f in zip(groups, factors)}
        return factors


@register
class AutoRGN(Method):
    name = "autorgn"
    label = "Auto-RGN"
    order = 45
    own_head = True  # every tensor trains, the classifier too (the authors' "all")
    parameters = {"train_bn": Param(False, "true or false", BOOLEAN)}

    def trainable(self, model: nn.Module) -> Trainable:
        if self.params["train_bn"]:
            params, modules = list(model.named_parameters()), [""]
        else:
            bn = {f"{n}.{k}" if n else k for n, m in model.named_modules() if _is_bn(m)
                  for k, _ in m.named_parameters(recurse=False)}
            params = [(n, p) for n, p in model.named_parameters() if n not in bn]
            modules = modules_without_batchnorm(model)
        t = Trainable(params, modules, {"tensors": len(params)})
        t.hooks = RelativeGradNorm()
        return t
