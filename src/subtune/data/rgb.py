"""Colour images: decoding image files and resizing ``[N,H,W,3]`` arrays.

Resizing goes through :func:`subtune.data.images.resize` one channel at a
time (bilinear interpolation is separable over channels, so this is the same
antialiased bilinear resize the grayscale datasets get).
"""

from __future__ import annotations

import io

import numpy as np

from .. import SubtuneError
from .images import resize


def resize_rgb(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``[N,H,W,3]`` images to ``[N,size,size,3]``."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N,H,W,3] images, got {images.dtype} {list(images.shape)}")
    return np.stack([resize(np.ascontiguousarray(images[..., c]), size) for c in range(3)], axis=-1)


def decode(data: bytes, size: int, name: str) -> np.ndarray:
    """Decode one image file (JPEG, PNG, ...) to RGB and resize it: uint8 ``[size,size,3]``.

    Grayscale and palette images are converted to RGB (Caltech101 has a few
    grayscale JPEGs). Raises :class:`SubtuneError` naming ``name`` if the
    bytes are not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SubtuneError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None
    return resize_rgb(arr[None], size)[0]
