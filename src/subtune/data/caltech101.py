"""Caltech-101 (Fei-Fei, Fergus & Perona 2004), from CaltechDATA.

One file, ``caltech-101.zip`` (https://data.caltech.edu/records/mzrjq-6wc02),
which holds ``caltech-101/101_ObjectCategories.tar.gz``: one folder per class
(101 object classes plus ``BACKGROUND_Google``, clutter) of JPEGs. Pinned by
the MD5 torchvision checks (``3138e1922a9193bfa496528edbbc45d0``): no SHA-256
of the CaltechDATA zip is published that we could cite.

Classes as TensorFlow Datasets (and so VTAB) has them: folder names in
lower case, sorted, ``background_google`` included, 102 in all. VTAB's
Caltech101 task keeps the background class (102 outputs); the
``background`` parameter of the ``caltech101`` dataset drops it (101).
Only ``.jpg`` files count (as in TFDS). An image's source index is its
position in the sorted list of every image (background included), so indices
do not depend on that parameter.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .. import SubtuneError
from ._archive import checked
from .download import Digests
from .registry import Built, Params, Split, carve, register, register_raw, small_test_note, stratified_order, subset
from .rgb import decode

NAME = "caltech101"
ARCHIVE = "caltech-101.zip"
INNER = "101_ObjectCategories.tar.gz"
MIRRORS = ["https://data.caltech.edu/records/mzrjq-6wc02/files/"]
FILES: dict[str, Digests] = {ARCHIVE: (None, None, "3138e1922a9193bfa496528edbbc45d0")}
BACKGROUND = "background_google"


RAW = register_raw(NAME, files=lambda: FILES, mirrors=lambda: MIRRORS)

#: fetch ``caltech-101.zip`` (``$SUBTUNE_MIRRORS``, then ``mirrors``, then CaltechDATA).
download = RAW.download


def load(raw_dir: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray, list[bytes], dict[str, str]]:
    """``(class names, file names, labels int64 [N], encoded images, inputs)`` for every image, sorted."""
    inputs = checked(raw_dir, FILES, NAME)
    path = Path(raw_dir) / ARCHIVE
    found: dict[tuple[str, str], bytes] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            inner = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == INNER]
            if not inner:
                raise SubtuneError(f"{path}: archive lacks {INNER}")
            with zf.open(inner[0]) as fh, tarfile.open(fileobj=fh, mode="r|gz") as tar:
                for m in tar:
                    parts = m.name.removeprefix("./").split("/")
                    if m.isfile() and len(parts) == 3 and parts[2].lower().endswith(".jpg"):
                        found[(parts[1].lower(), parts[2])] = tar.extractfile(m).read()
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, OSError, EOFError) as exc:
        raise SubtuneError(f"{path}: unreadable archive ({type(exc).__name__}: {exc})") from None
    if not found:
        raise SubtuneError(f"{path}: no images under {INNER}/101_ObjectCategories/<class>/")
    keys = sorted(found)
    classes = sorted({c for c, _ in keys})
    label = {c: i for i, c in enumerate(classes)}
    y = np.array([label[c] for c, _ in keys], dtype=np.int64)
    return classes, [f"{c}/{f}" for c, f in keys], y, [found[k] for k in keys], inputs


def decode_all(blobs: list[bytes], names: list[str], indices: np.ndarray, size: int, where: str) -> np.ndarray:
    """Decode and resize the images ``indices``: uint8 ``[n,size,size,3]``."""
    out = np.zeros((len(indices), size, size, 3), dtype=np.uint8)
    for pos, i in enumerate(indices):
        out[pos] = decode(blobs[i], size, f"{where}:{names[i]}")
    return out


# ------------------------------------------------------------------- targets (see :mod:`.targets`)
TRAIN_PER_CLASS = 30  # TFDS: 30 images per class for training, the rest for test


@register("caltech101", raw=NAME, background=True)
def build_caltech101(raw_dir: Path, p: Params) -> Built:
    """Caltech-101: 30 images per class form the training pool (val, then train); the rest are test."""
    classes, names, y_all, blobs, inputs = load(raw_dir)
    keep = np.arange(len(y_all))
    if not p.background and BACKGROUND in classes:
        keep = np.flatnonzero(y_all != classes.index(BACKGROUND))
    kept = sorted({int(c) for c in y_all[keep]})
    for c in kept:
        if (y_all[keep] == c).sum() <= TRAIN_PER_CLASS:
            raise SubtuneError(f"caltech101: class {classes[c]} has no more than {TRAIN_PER_CLASS} images")
    relabel = np.full(len(classes), -1, dtype=np.int64)
    relabel[kept] = np.arange(len(kept))
    y = relabel[y_all]
    order = stratified_order(y[keep], p.seed, 0)  # the first 30 of every class come first
    n_pool = TRAIN_PER_CLASS * len(kept)
    pool, test_pool = keep[order[:n_pool]], np.sort(keep[order[n_pool:]])
    parts = carve(len(pool), p.seed, 1, [("val", p.val_size), ("train", p.train_size)], "caltech101")
    picks = {
        "train": pool[parts["train"]],
        "val": pool[parts["val"]],
        "test": subset(test_pool, p.test_size, p.seed, 2, "test", "caltech101"),
    }
    where = str(Path(raw_dir) / ARCHIVE)
    splits = {
        s: Split(decode_all(blobs, names, idx, p.image_size, where), y[idx], idx, "caltech101:all-sorted")
        for s, idx in picks.items()
    }
    notes = small_test_note(len(picks["test"]), "caltech101")
    return Built(splits, [classes[c] for c in kept], inputs, notes)
