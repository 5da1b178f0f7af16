"""Fashion-MNIST (Xiao et al. 2017): the four upstream idx files, their checksums, a parser.

Mirrors: upstream's S3 website first, then Debian's ``dataset-fashion-mnist``
package (``/usr/share/datasets/fashion-mnist``), which re-gzipped the files:
its ``.gz`` digests differ from upstream's but the gunzipped idx payloads are
identical, so each file is pinned by both digests (see :mod:`.download`).
``$SUBTUNE_MIRRORS`` and the caller's mirrors are tried before both.

:func:`load` checks every payload against its pinned digest (``verify=True``),
the idx magic numbers and the array sizes, so a wrong or damaged raw directory
fails with a one-line error naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np

from .. import SubtuneError
from . import corruptions
from .prepared import SPLITS
from .registry import Built, Params, Split, carve, gray_split, register, register_raw, small_test_note

NAME = "fashion-mnist"

MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "file:///usr/share/datasets/fashion-mnist/",
]

# filename -> (sha256 of upstream's .gz, sha256 of the gunzipped idx payload).
# The .gz SHA-256s are the ones the batchup library publishes; upstream's README gives
# MD5s: train-images 8d4fb7e6c68d591d4c3dfef9ec88bf0d, train-labels 25c81989df183df01b3e8a0aad5dffbe,
# t10k-images bef4ecab320f06d8554ea6380940ec79, t10k-labels bb300cfdad3c16e7a12a480ee83cd310.
FILES: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte.gz": (
        "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train-labels-idx1-ubyte.gz": (
        "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

SIZES = {"train": 60000, "t10k": 10000}  # official splits: "train" and "t10k" (the test split)
IMAGE_SHAPE = (28, 28)
_IDX_DTYPES = {0x08: np.uint8}


RAW = register_raw(NAME, files=lambda: FILES, mirrors=lambda: MIRRORS)
#: fetch the four files into ``dest_dir`` (``$SUBTUNE_MIRRORS``, then ``mirrors``, then :data:`MIRRORS`)
download = RAW.download


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise SubtuneError(f"missing Fashion-MNIST file {path} (run `subtune download --dataset {NAME}`)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError) as exc:
        raise SubtuneError(f"{path}: unreadable ({exc})") from None


def parse_idx(data: bytes, name: str = "<idx>") -> np.ndarray:
    """Parse idx bytes (magic ``00 00 dtype ndim``, big-endian int32 dims, then the data)."""
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise SubtuneError(f"{name}: not an unsigned-byte idx file (magic {data[:4].hex() or 'missing'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SubtuneError(f"{name}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise SubtuneError(f"{name}: idx dims {list(dims)} need {expected} bytes of data, found {len(data) - header}")
    return np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=header).reshape(dims).copy()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (gzip or plain)."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def load_split(raw_dir: str | os.PathLike, split: str, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One official split (``"train"`` or ``"t10k"``): images uint8 [N,28,28], labels int64 [N]."""
    if split not in SIZES:
        raise ValueError(f"split must be one of {list(SIZES)}, not {split!r}")
    out = []
    for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
        fname = f"{split}-{kind}-ubyte.gz"
        path = Path(raw_dir) / fname
        data = _read_bytes(path)
        if verify and hashlib.sha256(data).hexdigest() != FILES[fname][1]:
            raise SubtuneError(f"{path}: payload sha256 does not match upstream Fashion-MNIST's")
        arr = parse_idx(data, str(path))
        shape = (SIZES[split], *IMAGE_SHAPE)[:ndim]
        if arr.shape != shape:
            raise SubtuneError(f"{path}: expected shape {list(shape)}, found {list(arr.shape)}")
        out.append(arr)
    images, labels = out
    if labels.max() >= len(CLASSES):
        raise SubtuneError(f"{Path(raw_dir) / f'{split}-labels-idx1-ubyte.gz'}: label {labels.max()} out of range")
    return images, labels.astype(np.int64)


def load(raw_dir: str | os.PathLike, verify: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_x uint8 [60000,28,28], train_y int64, test_x uint8 [10000,28,28], test_y int64)``."""
    return (*load_split(raw_dir, "train", verify), *load_split(raw_dir, "t10k", verify))


def payload_digests(split: str) -> dict[str, str]:
    """``{idx file name: payload sha256}`` of one official split (a prepared dataset's ``inputs``)."""
    return {f.removesuffix(".gz"): d[1] for f, d in FILES.items() if f.startswith(split + "-")}


# ------------------------------------------------------------------- targets (see :mod:`.targets`)
def _classes(raw_dir: Path, p: Params, classes: range, dataset: str) -> Built:
    """Pool = the official train split's ``classes`` (val, then train); test = the official test split's."""
    train_x, train_y = load_split(raw_dir, "train")
    test_x, test_y = load_split(raw_dir, "t10k")
    pool = np.flatnonzero(np.isin(train_y, classes))
    test_pool = np.flatnonzero(np.isin(test_y, classes))
    parts = carve(len(pool), p.seed, 0, [("val", p.val_size), ("train", p.train_size)], dataset)
    test = carve(len(test_pool), p.seed, 1, [("test", p.test_size)], dataset)["test"]
    lo = classes.start
    splits = {
        "train": gray_split(train_x, train_y, pool[parts["train"]], lo, "fashion-mnist:train", p.image_size),
        "val": gray_split(train_x, train_y, pool[parts["val"]], lo, "fashion-mnist:train", p.image_size),
        "test": gray_split(test_x, test_y, test_pool[test], lo, "fashion-mnist:t10k", p.image_size),
    }
    inputs = {**payload_digests("train"), **payload_digests("t10k")}
    return Built(splits, CLASSES[lo : classes.stop], inputs, small_test_note(len(test), dataset))


@register("fmnist-source", raw=NAME, val_size=1000)
def fmnist_source(raw_dir: Path, p: Params) -> Built:
    """Fashion-MNIST classes 0-4 (official train split; test = official test split): the pretraining task."""
    return _classes(raw_dir, p, range(0, 5), "fmnist-source")


@register("fmnist-new", raw=NAME)
def fmnist_new(raw_dir: Path, p: Params) -> Built:
    """Fashion-MNIST classes 5-9 as a new 5-way task (output-level shift)."""
    return _classes(raw_dir, p, range(5, 10), "fmnist-new")


@register("fmnist", raw=NAME)
def fmnist(raw_dir: Path, p: Params) -> Built:
    """Fashion-MNIST's ten classes (train/val from the official train split, test from the official test split):
    the clean task an ImageNet-pretrained backbone is fine-tuned on."""
    return _classes(raw_dir, p, range(0, 10), "fmnist")


def _corrupted(raw_dir: Path, p: Params, classes: int, dataset: str) -> Built:
    """Classes ``0 .. classes-1`` of the official test split, every split corrupted (test carved first)."""
    x, y = load_split(raw_dir, "t10k")
    pool = np.flatnonzero(y < classes)
    plan = [("test", p.test_size), ("val", p.val_size), ("train", p.train_size)]
    parts = carve(len(pool), p.seed, 0, plan, dataset)
    splits = {}
    for s in SPLITS:
        clean = gray_split(x, y, pool[parts[s]], 0, "fashion-mnist:t10k", p.image_size)
        xc = corruptions.corrupt(clean.x, p.corruptions, p.severity, p.seed, keys=clean.idx)
        splits[s] = Split(xc, clean.y, clean.idx, clean.source)
    notes = small_test_note(len(parts["test"]), dataset)
    return Built(splits, CLASSES[:classes], payload_digests("t10k"), notes)


@register("fmnist-c", raw=NAME, test_size=2000, corruptions=list(corruptions.DEFAULT), severity=3)
def fmnist_c(raw_dir: Path, p: Params) -> Built:
    """Fashion-MNIST classes 0-4 of the official test split, corrupted (input-level shift, like CIFAR-10-C)."""
    return _corrupted(raw_dir, p, 5, "fmnist-c")


@register("fmnist10-c", raw=NAME, test_size=2000, corruptions=list(corruptions.DEFAULT), severity=3)
def fmnist10_c(raw_dir: Path, p: Params) -> Built:
    """Fashion-MNIST's ten classes of the official test split, corrupted as fmnist-c is: the same label space as
    ``fmnist``, so the two targets differ by the corruption of the inputs. For an ImageNet-pretrained backbone both
    are new tasks: the pair is a proxy for Surgical fine-tuning's input-level shift (corrupted inputs of the
    source task itself), not its setting. Its images are corrupted copies of official test images, some of which
    are also in ``fmnist``'s test split: never train on one and test on the other."""
    return _corrupted(raw_dir, p, 10, "fmnist10-c")
