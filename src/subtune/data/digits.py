"""scikit-learn's 8x8 handwritten digits (UCI optdigits test set, 1797 images, 10 classes).

The data ships inside scikit-learn, so there is nothing to download; a
prepared dataset records the scikit-learn version and the SHA-256 of the
arrays instead of input files. Pixel values 0..16 are rescaled to uint8
0..255 (``round(v * 255 / 16)``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from .. import SubtuneError
from .prepared import SPLITS
from .registry import MIN_TEST, Built, Params, carve, gray_split, register

CLASSES = [str(i) for i in range(10)]
NUM_IMAGES = 1797


def load() -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """``(images uint8 [1797,8,8], labels int64 [1797], inputs)``.

    ``inputs`` maps ``sklearn.datasets.load_digits:images|target`` to the
    SHA-256 of the arrays as scikit-learn returns them (float64 / int64,
    little-endian) and ``sklearn`` to its version.
    """
    import sklearn
    from sklearn.datasets import load_digits

    d = load_digits()
    raw_x = np.ascontiguousarray(d.images, dtype="<f8")
    raw_y = np.ascontiguousarray(d.target, dtype="<i8")
    inputs = {
        "sklearn": sklearn.__version__,
        "sklearn.datasets.load_digits:images": hashlib.sha256(raw_x.tobytes()).hexdigest(),
        "sklearn.datasets.load_digits:target": hashlib.sha256(raw_y.tobytes()).hexdigest(),
    }
    images = np.clip(np.rint(raw_x * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, raw_y.astype(np.int64), inputs


# ------------------------------------------------------------------- targets (see :mod:`.targets`)
DIGITS_TEST = 597  # a third of 1797


@register("digits", raw=None, test_size=DIGITS_TEST)
def build_digits(raw_dir: Path | None, p: Params) -> Built:
    """scikit-learn's 8x8 digits, upsampled (domain shift)."""
    x, y, inputs = load()
    if p.test_size is not None and p.test_size > DIGITS_TEST:
        raise SubtuneError(f"digits: test_size {p.test_size} is larger than its {DIGITS_TEST}-image test block")
    test_size = DIGITS_TEST if p.test_size is None else p.test_size
    parts = carve(len(x), p.seed, 0, [("test", test_size), ("val", p.val_size), ("train", p.train_size)], "digits")
    splits = {s: gray_split(x, y, parts[s], 0, "sklearn:load_digits", p.image_size) for s in SPLITS}
    notes = [f"digits has {len(x)} images: the test split is capped at {DIGITS_TEST} (fewer than {MIN_TEST} to spare)"]
    return Built(splits, list(CLASSES), inputs, notes)
