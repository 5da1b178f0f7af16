"""Per-channel scale (and shift) parameters attached to existing timm modules with forward hooks.

Shared by SSF and SAN (ours: neither is in peft, which has no SSF/SAN tuner
for plain timm modules). The parameters are registered on the module whose
output they act on (``<module>.ssf_scale``, ``<module>.san_scale``), so the
timm model keeps its class and module names (block enumeration, the staged
view and the training loop see the same model). Hooks are module-level
functions or small callable objects holding module references, so
``copy.deepcopy`` of the model copies them consistently.
"""

from __future__ import annotations

from .. import SubtuneError
from .._lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")


def channel_view(v: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """``v`` [C] shaped to broadcast over ``x`` along ``dim`` (1 for NCHW maps, -1 for tokens), in x's dtype."""
    v = v.to(x.dtype)
    if dim in (-1, x.ndim - 1):
        return v
    shape = [1] * x.ndim
    shape[dim] = -1
    return v.view(shape)


def out_channels(module: nn.Module) -> int:
    """Channels of a module's output (Linear, Conv, norms, timm's PatchEmbed)."""
    for attr in ("out_features", "out_channels", "num_features", "normalized_shape"):
        v = getattr(module, attr, None)
        if v is not None:
            return int(v[0] if isinstance(v, (tuple, list, torch.Size)) else v)
    proj = getattr(module, "proj", None)  # timm PatchEmbed
    if proj is not None:
        return out_channels(proj)
    raise TypeError(f"cannot tell the output channels of {type(module).__name__}")


def scale_rows(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """diag(s) W for a weight whose dim 0 is the output channel (Linear, Conv, norm affine)."""
    return w * s.view(-1, *([1] * (w.ndim - 1)))


def scale_cols(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """W diag(s) for a Linear/Conv weight whose dim 1 is the input channel."""
    return w * s.view(1, -1, *([1] * (w.ndim - 2)))


def channel_dim(module: nn.Module) -> int:
    """Where a module's output keeps its channels: 1 for NCHW (convolutions, timm's LayerNorm2d, BatchNorm),
    -1 for channels-last (Linear, LayerNorm)."""
    from timm.layers import LayerNorm2d

    if isinstance(module, (LayerNorm2d, nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
        return 1
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        return -1
    raise SubtuneError(f"no channel dimension known for {type(module).__name__}")


def patch_embed_target(model: nn.Module) -> str:
    """Where a scale on a ViT's timm PatchEmbed output merges: its norm if it has one, else its projection."""
    norm = model.patch_embed.norm
    return "patch_embed.norm" if any(True for _ in norm.parameters()) else "patch_embed.proj"
