"""scikit-learn's 8x8 handwritten digits (UCI optdigits test set, 1797 images, 10 classes).

The data ships inside scikit-learn, so there is nothing to download; a
prepared dataset records the scikit-learn version and the SHA-256 of the
arrays instead of input files. Pixel values 0..16 are rescaled to uint8
0..255 (``round(v * 255 / 16)``).
"""

from __future__ import annotations

import hashlib

import numpy as np

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
