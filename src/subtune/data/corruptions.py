"""CIFAR-10-C-style corruptions of grayscale images (Hendrycks & Dietterich 2019).

Built on the ``imagecorruptions`` package (1.1.2, the ImageNet-C code with its
ImageNet-scale severity tables: severity 3 at 32x32 is strong, hence our
default of 3). How grayscale is handled: ``imagecorruptions.corrupt`` itself
turns a 2-D image into three identical channels, corrupts, and returns
``[H,W,3]``; we take channel 0 back. For the deterministic corruptions all
three channels are equal; for the noises each channel gets independent noise,
so channel 0 keeps the specified per-pixel noise level (a channel mean would
cut it by sqrt(3)). The package needs images of at least 32x32: smaller
images are resized up to 32x32, corrupted, and resized back.

Supported (:data:`SUPPORTED`), all at severities 1..5:

- from ``imagecorruptions`` unchanged: gaussian_noise, shot_noise,
  speckle_noise, defocus_blur, motion_blur, zoom_blur, snow, frost,
  brightness, contrast, elastic_transform, pixelate, jpeg_compression,
  spatter;
- reimplemented here with the package's severity tables:
  gaussian_blur and glass_blur (the package passes ``multichannel=`` to
  ``skimage.filters.gaussian``, removed in scikit-image 0.21; we call
  ``scipy.ndimage.gaussian_filter`` with skimage's defaults, mode "nearest",
  truncate 4), fog (the package uses ``np.float_``, removed in NumPy 2), and
  impulse_noise (the package calls ``skimage.util.random_noise`` without an
  ``rng``, which since scikit-image 0.19 draws from a fresh unseeded
  generator: not reproducible; we pass our seeded one). glass_blur's pixel
  shuffle draws its offsets in one call instead of one per pixel (the same
  distribution, not the package's random stream) and really swaps pixels (on
  a 3-channel array the package's tuple swap of row views copies instead).

Excluded: saturate (it only scales HSV saturation, a no-op on gray images).

Default mixture (:data:`DEFAULT`): gaussian_noise, impulse_noise, motion_blur,
contrast, pixelate: one corruption from each family that stays clearly visible
at 32x32 and costs under 1 ms an image (frost ~4 ms, zoom_blur ~1.6 ms and
glass_blur ~1 ms are supported but slower).

Determinism: image ``i`` draws its corruption and its randomness from
``numpy.random.default_rng((TAG, seed, keys[i]))``; the package's own
``np.random`` calls are seeded from that generator per image (and NumPy's
global state is restored afterwards). Passing the images' source indices as
``keys`` makes an image's corruption independent of the batch it is in.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from .. import SubtuneError
from .images import resize

PACKAGE = (
    "gaussian_noise", "shot_noise", "speckle_noise", "defocus_blur", "motion_blur", "zoom_blur", "snow",
    "frost", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression", "spatter",
)  # fmt: skip
EXCLUDED = {"saturate": "only scales HSV saturation: a no-op on grayscale images"}
DEFAULT = ("gaussian_noise", "impulse_noise", "motion_blur", "contrast", "pixelate")
MIN_SIZE = 32
_TAG = 0xC0FFEE  # separates these random streams from the split permutations


# ------------------------------------------------------------ reimplementations
# Each takes a 2-D uint8 image, a severity 1..5 and a Generator; returns floats in [0, 255].
def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=sigma, mode="nearest", truncate=4.0)


def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [1, 2, 3, 4, 6][severity - 1]
    return np.clip(_blur(x / 255.0, c), 0, 1) * 255


def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    h, w = x.shape
    img = np.uint8(_blur(x / 255.0, sigma) * 255)
    flat = img.ravel().tolist()
    rows, cols = range(h - delta, delta, -1), range(w - delta, delta, -1)
    offsets = rng.integers(-delta, delta, size=(iterations, len(rows), len(cols), 2)).tolist()
    for it in offsets:  # locally shuffle pixels, bottom-right to top-left as the package does
        for r, row_offsets in zip(rows, it):
            for c, (dx, dy) in zip(cols, row_offsets):
                a, b = r * w + c, (r + dy) * w + c + dx
                flat[a], flat[b] = flat[b], flat[a]
    img = np.asarray(flat, dtype=np.uint8).reshape(h, w)
    return np.clip(_blur(img / 255.0, sigma), 0, 1) * 255


def _plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square heightmap in [0, 1] (the package's, with float64 for np.float_)."""
    a = np.zeros((mapsize, mapsize), dtype=np.float64)
    step, wibble = mapsize, 100.0

    def wibbled_mean(arr):
        return arr / 4 + wibble * rng.uniform(-wibble, wibble, arr.shape)

    while step >= 2:
        half = step // 2
        corners = a[0:mapsize:step, 0:mapsize:step]
        sq = corners + np.roll(corners, -1, axis=0)
        sq += np.roll(sq, -1, axis=1)
        a[half:mapsize:step, half:mapsize:step] = wibbled_mean(sq)
        dr = a[half:mapsize:step, half:mapsize:step]
        ul = a[0:mapsize:step, 0:mapsize:step]
        lt = dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1)
        a[0:mapsize:step, half:mapsize:step] = wibbled_mean(lt)
        tt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0)
        a[half:mapsize:step, 0:mapsize:step] = wibbled_mean(tt)
        step //= 2
        wibble /= wibbledecay
    a -= a.min()
    return a / a.max()


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    strength, decay = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    h, w = x.shape
    mapsize = 1 << (max(h, w) - 1).bit_length()
    x = x / 255.0
    max_val = x.max()
    x = x + strength * _plasma_fractal(mapsize, decay, rng)[:h, :w]
    return np.clip(x * max_val / (max_val + strength), 0, 1) * 255


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from skimage.util import random_noise

    amount = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    return np.clip(random_noise(x / 255.0, mode="s&p", amount=amount, rng=rng), 0, 1) * 255


OURS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "gaussian_blur": gaussian_blur,
    "glass_blur": glass_blur,
    "fog": fog,
    "impulse_noise": impulse_noise,
}
SUPPORTED = tuple(sorted((*PACKAGE, *OURS)))


# ------------------------------------------------------------------ the mixture
def _package_corrupt() -> Callable:
    with warnings.catch_warnings():  # its `import pkg_resources` warns
        warnings.simplefilter("ignore")
        from imagecorruptions import corrupt as ic_corrupt
    return ic_corrupt


@contextlib.contextmanager
def _global_numpy_state():
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


def check_names(names: Sequence[str]) -> list[str]:
    """Return ``names`` as a list, or raise naming the unknown ones and listing the supported."""
    names = list(names)
    if not names:
        raise SubtuneError("corruptions: the list is empty")
    bad = [n for n in names if n not in SUPPORTED]
    if bad:
        why = "; ".join(f"{n}: {EXCLUDED[n]}" for n in bad if n in EXCLUDED)
        raise SubtuneError(
            f"unknown corruption {', '.join(map(repr, bad))}{f' ({why})' if why else ''}"
            f" (supported: {', '.join(SUPPORTED)})"
        )
    return names


def corrupt(
    images: np.ndarray,
    names: Sequence[str] = DEFAULT,
    severity: int = 3,
    seed: int = 0,
    keys: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Corrupt uint8 ``[N,H,W]`` images: image ``i`` gets one of ``names``, drawn per image (a mixture).

    ``keys`` (default ``0..N-1``) seed each image's draw together with
    ``seed``; see the module docstring. Returns a new uint8 ``[N,H,W]`` array.
    """
    names = check_names(names)
    if not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise SubtuneError(f"corruption severity must be an integer 1..5, not {severity!r}")
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N,H,W] images, got {images.dtype} {list(images.shape)}")
    keys = np.arange(len(images)) if keys is None else np.asarray(keys)
    if keys.shape != (len(images),):
        raise ValueError(f"keys must have one entry per image ({len(images)}), got shape {list(keys.shape)}")
    n, h, w = images.shape
    small = min(h, w) < MIN_SIZE
    if small:
        if h != w:
            raise ValueError(f"images under {MIN_SIZE} pixels must be square, got {h}x{w}")
        images = resize(images, MIN_SIZE)
    ic_corrupt = _package_corrupt() if any(nm in PACKAGE for nm in names) else None
    out = np.empty_like(images)
    with _global_numpy_state():
        for i, (img, key) in enumerate(zip(images, keys.tolist())):
            rng = np.random.default_rng((_TAG, int(seed), int(key)))
            name = names[int(rng.integers(len(names)))]
            if name in OURS:
                res = OURS[name](img, severity, rng)
            else:
                np.random.seed(int(rng.integers(2**32)))
                res = ic_corrupt(img, severity=severity, corruption_name=name)[..., 0]
            out[i] = np.uint8(np.clip(res, 0, 255))  # truncation, as imagecorruptions does
    return resize(out, h) if small else out
