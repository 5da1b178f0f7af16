"""Image resizing shared by every dataset: deterministic, antialiased bilinear."""

from __future__ import annotations

import numpy as np

_CHUNK = 4096


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``[N,H,W]`` images to ``[N,size,size]``.

    ``torch.nn.functional.interpolate(mode="bilinear", antialias=True,
    align_corners=False)`` in float32 on the CPU, then rounded and clamped to
    uint8. Returns a copy even when the size already matches.
    """
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N,H,W] images, got {images.dtype} {list(images.shape)}")
    if images.shape[1:] == (size, size):
        return images.copy()
    import torch
    import torch.nn.functional as F

    out = np.empty((len(images), size, size), dtype=np.uint8)
    for start in range(0, len(images), _CHUNK):
        x = torch.from_numpy(images[start : start + _CHUNK]).unsqueeze(1).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + _CHUNK] = y.round_().clamp_(0, 255).to(torch.uint8).squeeze(1).numpy()
    return out
