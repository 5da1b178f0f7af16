"""CIFAR-style WideResNet (Zagoruyko and Komodakis 2016) as a timm model: ``wrn28_10_cifar``.

The architecture of RobustBench's CIFAR-10 "Standard" model
(``robustbench/model_zoo/architectures/wide_resnet.py``, ``WideResNet(depth=28,
widen_factor=10)``), the source model of surgical fine-tuning (Lee et al. 2022,
github.com/anniesch/surgical-finetuning, ``main.py``). timm has no CIFAR
WideResNet, so it is written here and registered in timm's model registry
(``timm.create_model("wrn28_10_cifar", num_classes=..)``) on import of this
module; :mod:`subtune.models.checkpoint` imports it, so every stage that
creates a model (``pretrain``, ``fetch``, ``train``, ...) knows the name.

Exact form, with ``n = (depth - 4) / 6`` blocks per stage and widths
``16, 16k, 32k, 64k`` (``k = widen_factor``)::

    conv1   3x3 conv, in_chans -> 16, stride 1, padding 1, no bias (no BN, no max-pool)
    block1  n pre-activation BasicBlocks 16  -> 16k, stride 1 (first block)
    block2  n pre-activation BasicBlocks 16k -> 32k, stride 2
    block3  n pre-activation BasicBlocks 32k -> 64k, stride 2
    bn1, relu, global average pool, fc (64k -> num_classes, with bias)

A BasicBlock (``blockS.layer.i``: ``bn1, relu1, conv1, bn2, relu2, conv2``
and, when its input and output widths differ, a 1x1 ``convShortcut``)::

    a   = relu1(bn1(x))
    out = conv2(drop(relu2(bn2(conv1(a)))))          conv1 carries the stride
    y   = out + (x if in == out else convShortcut(a))

Module and parameter names are RobustBench's (``conv1``,
``block1.layer.0.bn1``, ``...convShortcut``, ``bn1``, ``fc``), so its
checkpoint loads strictly (``subtune fetch wrn28_10_cifar --file
Standard.pt``; timm's file loader takes the ``state_dict`` entry and strips
the ``module.`` prefix). Initialisation as RobustBench: convolutions
``N(0, 2 / (k*k*out_channels))``, BatchNorm weight 1 and bias 0, the fc bias 0
(its weight PyTorch's default).

timm conventions: ``num_classes``, ``in_chans``, ``drop_rate`` (dropout
between the two convolutions of every block, RobustBench's ``dropRate``),
``global_pool`` (``avg``; ``""`` for no pooling), ``reset_classifier``,
``get_classifier``, ``forward_features`` (``conv1`` to the final ``relu``),
``forward_head`` (pool and ``fc``); ``pretrained_cfg``: classifier ``fc``,
first conv ``conv1``, input 3x32x32, mean 0 and std 1 (RobustBench models take
images in [0, 1] and normalise nothing; the surgical-finetuning code feeds
them ``ToTensor`` images).

Departures (numerically none at 32x32 input): RobustBench pools with
``F.avg_pool2d(out, 8)``, a global average pool only for 32x32 inputs; here
the pool is global for any input size (timm's ``SelectAdaptivePool2d``). Its
ReLUs are in-place; here they are not (same values, and safe with the
forward hooks of SSF/SAN). ``drop_path_rate`` (stochastic depth on the
residual branch, linearly increasing over blocks, as in timm's ResNets) is
ours, for timm's keyword; RobustBench has none and the default 0 is the
identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import DropPath, SelectAdaptivePool2d
from timm.models import build_model_with_cfg, register_model

__all__ = ["WideResNet", "BasicBlock", "NetworkBlock"]


class BasicBlock(nn.Module):
    """RobustBench's pre-activation BasicBlock (see the module docstring)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (None if self.equal_in_out
                             else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(x))
        out = self.conv2(self.drop(self.relu2(self.bn2(self.conv1(a)))))
        shortcut = x if self.convShortcut is None else self.convShortcut(a)
        return shortcut + self.drop_path(out)


class NetworkBlock(nn.Module):
    """One stage: ``layer`` is an ``nn.Sequential`` of BasicBlocks (RobustBench's name)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float,
                 drop_paths: list[float]):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate,
                       drop_paths[i])
            for i in range(n)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, not {depth}")
        if widen_factor < 1:
            raise ValueError(f"WideResNet widen_factor must be >= 1, not {widen_factor}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        dpr = [drop_path_rate * i / max(3 * n - 1, 1) for i in range(3 * n)]
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate, dpr[:n])
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate, dpr[n:2 * n])
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate, dpr[2 * n:])
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.num_features = self.head_hidden_size = widths[3]
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(widths[3], num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="conv1")] + [
            dict(num_chs=w, reduction=r, module=f"block{i + 1}") for i, (w, r) in enumerate(zip(widths[1:], (1, 2, 4)))]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.fc, nn.Linear):
            nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        return self.relu(self.bn1(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": (8, 8), "crop_pct": 1.0,
        "interpolation": "bilinear", "fixed_input_size": False, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
        "first_conv": "conv1", "classifier": "fc", **kwargs,
    }


#: read by timm's ``register_model`` (the default pretrained_cfg: no downloadable weights; use ``--file``)
default_cfgs = {"wrn28_10_cifar": _cfg()}


@register_model
def wrn28_10_cifar(pretrained: bool = False, **kwargs) -> WideResNet:
    """WideResNet-28-10 for 32x32 inputs (RobustBench "Standard"); ``depth``/``widen_factor`` override."""
    kwargs.setdefault("depth", 28)
    kwargs.setdefault("widen_factor", 10)
    return build_model_with_cfg(WideResNet, "wrn28_10_cifar", pretrained, **kwargs)
