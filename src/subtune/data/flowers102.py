"""Oxford 102 Flowers (Nilsback & Zisserman 2008): images, labels and the official splits.

Files from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/:
``102flowers.tgz`` (``jpg/image_00001.jpg`` ... ``image_08189.jpg``),
``imagelabels.mat`` (``labels``: 1..102 per image) and ``setid.mat``
(``trnid``, ``valid``, ``tstid``: 1-based image ids, 1020 / 1020 / 6149).
SHA-256 pinned as TensorFlow Datasets records them
(``url_checksums/oxford_flowers102.txt``). The ``.mat`` files are read with
``scipy.io.loadmat``; class names are the ones TensorFlow Datasets lists.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .. import SubtuneError
from ._archive import checked
from .download import Digests
from .prepared import SPLITS
from .registry import Built, Params, Split, register, register_raw, small_test_note, subset
from .rgb import decode

NAME = "flowers102"
MIRRORS = ["https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"]
FILES: dict[str, Digests] = {
    "102flowers.tgz": ("2d01ecc807db462958cfe3d92f57a8c252b4abd240eb955770201e45f783b246", None),
    "imagelabels.mat": ("4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d", None),
    "setid.mat": ("46b8678f91fd95d3c8f4feab80d271a6c834a1dd896fe29fd3e6ad9ce5c8dccd", None),
}
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}

CLASSES = [
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold", "tiger lily",
    "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot", "king protea",
    "spear thistle", "yellow iris", "globe-flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger", "grape hyacinth",
    "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william", "carnation",
    "garden phlox", "love in the mist", "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower",
    "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
    "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion", "petunia",
    "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
    "pink-yellow dahlia?", "cautleya spicata", "japanese anemone", "black-eyed susan", "silverbush",
    "californian poppy", "osteospermum", "spring crocus", "bearded iris", "windflower", "tree poppy", "gazania",
    "azalea", "water lily", "rose", "thorn apple", "morning glory", "passion flower", "lotus", "toad lily",
    "anthurium", "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper", "blackberry lily",
]  # fmt: skip
assert len(CLASSES) == 102


RAW = register_raw(NAME, files=lambda: FILES, mirrors=lambda: MIRRORS)

#: fetch the three files (``$SUBTUNE_MIRRORS``, then ``mirrors``, then Oxford's site).
download = RAW.download


def _mat(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        arr = loadmat(str(path)).get(key)
    except Exception as exc:  # scipy raises ValueError/TypeError/... on damaged files
        raise SubtuneError(f"{path}: unreadable .mat file ({type(exc).__name__}: {exc})") from None
    if arr is None:
        raise SubtuneError(f"{path}: no {key!r} array")
    return np.asarray(arr).reshape(-1).astype(np.int64)


def load_meta(raw_dir: str | os.PathLike) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, str]]:
    """``(labels int64 [N] in 0..101, {split: 0-based image indices}, inputs)`` for the official splits."""
    inputs = checked(raw_dir, FILES, NAME)
    raw_dir = Path(raw_dir)
    labels = _mat(raw_dir / "imagelabels.mat", "labels") - 1
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= len(CLASSES):
        raise SubtuneError(f"{raw_dir / 'imagelabels.mat'}: labels must be 1..{len(CLASSES)}")
    splits = {s: _mat(raw_dir / "setid.mat", key) - 1 for s, key in SPLIT_KEYS.items()}
    for s, ids in splits.items():
        if len(ids) == 0 or ids.min() < 0 or ids.max() >= len(labels):
            raise SubtuneError(f"{raw_dir / 'setid.mat'}: {SPLIT_KEYS[s]} must be image ids 1..{len(labels)}")
    return labels, splits, inputs


def member(index: int) -> str:
    """The archive member of 0-based image ``index``."""
    return f"jpg/image_{index + 1:05d}.jpg"


def load_images(raw_dir: str | os.PathLike, indices: np.ndarray, size: int) -> np.ndarray:
    """Decode the images ``indices`` (0-based) from ``102flowers.tgz``, resized: uint8 ``[n,size,size,3]``."""
    path = Path(raw_dir) / "102flowers.tgz"
    want = {member(int(i)): pos for pos, i in enumerate(indices)}
    out = np.zeros((len(indices), size, size, 3), dtype=np.uint8)
    seen = set()
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                name = m.name.removeprefix("./")
                if name in want and m.isfile():
                    out[want[name]] = decode(tar.extractfile(m).read(), size, f"{path}:{name}")
                    seen.add(name)
    except (tarfile.TarError, zlib.error, OSError, EOFError) as exc:
        raise SubtuneError(f"{path}: unreadable archive ({type(exc).__name__}: {exc})") from None
    missing = sorted(set(want) - seen)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise SubtuneError(f"{path}: archive lacks {missing[0]}{more}")
    return out


# ------------------------------------------------------------------- targets (see :mod:`.targets`)
@register("flowers102", raw=NAME, val_size=1020)
def build_flowers102(raw_dir: Path, p: Params) -> Built:
    """Oxford 102 Flowers with the official train/val/test splits."""
    labels, official, inputs = load_meta(raw_dir)
    sizes = {"train": p.train_size, "val": p.val_size, "test": p.test_size}
    splits = {}
    for i, s in enumerate(SPLITS):
        if sizes[s] is not None and sizes[s] > len(official[s]):
            raise SubtuneError(
                f"flowers102: {s}_size {sizes[s]} is larger than the official {s} split ({len(official[s])} images)"
            )
        idx = subset(official[s], sizes[s], p.seed, i, s, "flowers102")
        x = load_images(raw_dir, idx, p.image_size)
        splits[s] = Split(x, labels[idx], idx, f"{NAME}:images")
    return Built(splits, list(CLASSES), inputs, small_test_note(len(splits["test"].y), "flowers102"))
