"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): the official python-pickle tarballs.

Files: ``cifar-10-python.tar.gz`` (``cifar-10-batches-py/data_batch_1..5``,
``test_batch``, ``batches.meta``) and ``cifar-100-python.tar.gz``
(``cifar-100-python/train``, ``test``, ``meta``), from
https://www.cs.toronto.edu/~kriz/. Each batch is a pickled dict whose
``data`` is uint8 ``[N, 3072]`` (1024 red, then green, then blue values per
image, row-major) and whose ``labels`` (CIFAR-10) or ``fine_labels``
(CIFAR-100) list the classes; class names come from the meta file.

Checksums: SHA-256 pinned, as Keras publishes them (``keras.datasets.cifar10``
/ ``cifar100``: ``get_file(..., file_hash=...)``) and torchvision's prototype
datasets repeat them; the MD5s torchvision checks
(``c58f30108f718f92721af3b95e74349a``, ``eb9058c3a382ffc7106e4002c42a8d85``)
name the same archives and are kept alongside, unused while a SHA-256 is pinned.

The pickles are read with a restricted unpickler (dicts, lists, NumPy
arrays; nothing that could run code), straight from the tarball, after the
tarball is checked against its pinned digest.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import SubtuneError
from ._archive import checked, load_pickle
from .download import Digests
from .registry import Built, Params, carve, register, register_raw, rgb_split, small_test_note, subset

MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]


@dataclass
class Cifar:
    name: str  # raw dataset (download directory) name
    archive: str
    files: dict[str, Digests]  # archive -> (sha256, None, md5)
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    mirrors: list[str] = field(default_factory=lambda: list(MIRRORS))

    def load(
        self, raw_dir: str | os.PathLike
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], dict[str, str]]:
        """``(train_x [N,32,32,3], train_y, test_x [M,32,32,3], test_y, class names, inputs)``."""
        inputs = checked(raw_dir, self.files, self.name)
        path = Path(raw_dir) / self.archive
        wanted = {f"{self.folder}/{m}" for m in (*self.train, self.test, self.meta)}
        blobs: dict[str, bytes] = {}
        try:
            with tarfile.open(path, "r:gz") as tar:
                for member in tar:
                    if member.name in wanted and member.isfile():
                        blobs[member.name] = tar.extractfile(member).read()
        except (tarfile.TarError, zlib.error, OSError, EOFError) as exc:
            raise SubtuneError(f"{path}: unreadable archive ({type(exc).__name__}: {exc})") from None
        missing = sorted(wanted - set(blobs))
        if missing:
            raise SubtuneError(f"{path}: archive lacks {', '.join(missing)}")
        meta = load_pickle(blobs[f"{self.folder}/{self.meta}"], f"{path}:{self.meta}")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(self.names_key, [])]
        if not classes:
            raise SubtuneError(f"{path}:{self.meta}: no {self.names_key}")
        parts = [self._batch(blobs, m, path, len(classes)) for m in self.train]
        train_x = np.concatenate([p[0] for p in parts])
        train_y = np.concatenate([p[1] for p in parts])
        test_x, test_y = self._batch(blobs, self.test, path, len(classes))
        return train_x, train_y, test_x, test_y, classes, inputs

    def _batch(self, blobs: dict[str, bytes], member: str, path: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
        where = f"{path}:{self.folder}/{member}"
        d = load_pickle(blobs[f"{self.folder}/{member}"], where)
        data, labels = d.get("data"), d.get(self.label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = list(data.shape) if isinstance(data, np.ndarray) else type(data).__name__
            raise SubtuneError(f"{where}: 'data' must be uint8 [N, 3072], found {shape}")
        y = np.asarray(labels, dtype=np.int64)
        if y.shape != (len(data),) or (len(y) and (y.min() < 0 or y.max() >= k)):
            raise SubtuneError(f"{where}: {self.label_key!r} must be {len(data)} labels in 0..{k - 1}")
        x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # planes -> HWC
        return np.ascontiguousarray(x), y


CIFAR10 = Cifar(
    name="cifar-10",
    archive="cifar-10-python.tar.gz",
    files={
        "cifar-10-python.tar.gz": (
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            None,
            "c58f30108f718f92721af3b95e74349a",
        )
    },
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test="test_batch",
    meta="batches.meta",
    label_key="labels",
    names_key="label_names",
)

CIFAR100 = Cifar(
    name="cifar-100",
    archive="cifar-100-python.tar.gz",
    files={
        "cifar-100-python.tar.gz": (
            "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
            None,
            "eb9058c3a382ffc7106e4002c42a8d85",
        )
    },
    folder="cifar-100-python",
    train=("train",),
    test="test",
    meta="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
)

# the raw datasets: the tarball (``$SUBTUNE_MIRRORS``, then the caller's mirrors, then the object's ``mirrors``)
register_raw(CIFAR10.name, files=lambda: CIFAR10.files, mirrors=lambda: CIFAR10.mirrors)
register_raw(CIFAR100.name, files=lambda: CIFAR100.files, mirrors=lambda: CIFAR100.mirrors)


# ------------------------------------------------------------------- targets (see :mod:`.targets`)
def _cifar(spec: Cifar, raw_dir: Path, p: Params, dataset: str) -> Built:
    train_x, train_y, test_x, test_y, classes, inputs = spec.load(raw_dir)
    parts = carve(len(train_x), p.seed, 0, [("val", p.val_size), ("train", p.train_size)], dataset)
    test = subset(np.arange(len(test_x)), p.test_size, p.seed, 1, "test", dataset)
    src_train, src_test = f"{spec.name}:train", f"{spec.name}:test"
    splits = {
        "train": rgb_split(train_x, train_y, parts["train"], src_train, p.image_size),
        "val": rgb_split(train_x, train_y, parts["val"], src_train, p.image_size),
        "test": rgb_split(test_x, test_y, test, src_test, p.image_size),
    }
    return Built(splits, classes, inputs, small_test_note(len(test), dataset))


@register("cifar10", raw=CIFAR10.name, val_size=5000)
def cifar10(raw_dir: Path, p: Params) -> Built:
    """CIFAR-10 (official training set: val then train; test = the official test set)."""
    return _cifar(CIFAR10, raw_dir, p, "cifar10")


@register("cifar100", raw=CIFAR100.name, val_size=5000)
def cifar100(raw_dir: Path, p: Params) -> Built:
    """CIFAR-100, fine labels (official training set: val then train; test = the official test set)."""
    return _cifar(CIFAR100, raw_dir, p, "cifar100")
