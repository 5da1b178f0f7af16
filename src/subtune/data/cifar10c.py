"""CIFAR-10-C (Hendrycks & Dietterich 2019): CIFAR-10's test set under 19 corruptions.

One file, ``CIFAR-10-C.tar`` from Zenodo record 2535967, holding
``CIFAR-10-C/<corruption>.npy`` (uint8 ``[50000,32,32,3]``: the 10,000 test
images at severity 1, then 2, ..., then 5) and ``CIFAR-10-C/labels.npy``
(the test labels, once per severity). SHA-256 pinned as TensorFlow Datasets
records it (``url_checksums/cifar10_corrupted.txt``: 2,918,471,680 bytes).

:func:`load` reads one corruption at one severity straight from the tar
(seeking to the severity's block of the ``.npy``; nothing is extracted to
disk). The Surgical fine-tuning protocol (Lee et al. 2022) that the
``cifar10c-<corruption>`` datasets follow is in :mod:`.targets`.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from .. import SubtuneError
from ._archive import checked
from .download import Digests
from .prepared import SPLITS
from .registry import Builder, Built, Params, Split, cut, register, register_raw, small_test_note, stratified_order
from .rgb import resize_rgb

NAME = "cifar-10-c"
ARCHIVE = "CIFAR-10-C.tar"
FOLDER = "CIFAR-10-C"
MIRRORS = ["https://zenodo.org/records/2535967/files/", "https://zenodo.org/record/2535967/files/"]
FILES: dict[str, Digests] = {ARCHIVE: ("c72763e101c723b7c507b96205f7e938912a5d587376173b825850cf3cb876a7", None)}

CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic_transform", "fog", "frost", "gaussian_blur",
    "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression", "motion_blur", "pixelate",
    "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur",
)  # fmt: skip
# The 14 that Surgical fine-tuning (Lee et al. 2022) reports.
SURGICAL = (
    "frost", "gaussian_blur", "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression", "motion_blur",
    "pixelate", "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur",
)  # fmt: skip
SEVERITIES = 5
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


RAW = register_raw(NAME, files=lambda: FILES, mirrors=lambda: MIRRORS)
#: fetch ``CIFAR-10-C.tar`` (``$SUBTUNE_MIRRORS``, then ``mirrors``, then Zenodo)
download = RAW.download


def _read_npy(tar: tarfile.TarFile, member: str, where: str, block: int | None) -> np.ndarray:
    """Read an ``.npy`` member; with ``block`` (0-based severity), only that fifth of its rows."""
    try:
        fh = tar.extractfile(member)
    except KeyError:
        raise SubtuneError(f"{where}: archive lacks {member}") from None
    try:
        version = npformat.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
    except ValueError as exc:
        raise SubtuneError(f"{where}:{member}: not an .npy file ({exc})") from None
    if fortran or dtype.hasobject or not shape or shape[0] % SEVERITIES:
        raise SubtuneError(f"{where}:{member}: unexpected array {dtype} {list(shape)} (fortran={fortran})")
    n = shape[0] // SEVERITIES
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    start, count = (0, shape[0]) if block is None else (block * n, n)
    fh.seek(fh.tell() + start * row)
    data = fh.read(count * row)
    if len(data) != count * row:
        raise SubtuneError(f"{where}:{member}: truncated ({len(data)} of {count * row} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:]).copy()


def load(raw_dir: str | os.PathLike, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """``(images uint8 [n,32,32,3], labels int64 [n], offset, inputs)`` for one corruption and severity.

    ``n`` is 10,000 for the real file; ``offset`` is the first row's index in
    the 50,000-row array (``(severity - 1) * n``).
    """
    if corruption not in CORRUPTIONS:
        raise SubtuneError(f"unknown CIFAR-10-C corruption {corruption!r} (known: {', '.join(CORRUPTIONS)})")
    if not 1 <= severity <= SEVERITIES:
        raise SubtuneError(f"CIFAR-10-C severity must be 1..{SEVERITIES}, not {severity}")
    inputs = checked(raw_dir, FILES, NAME)
    path = Path(raw_dir) / ARCHIVE
    try:
        with tarfile.open(path, "r:") as tar:
            x = _read_npy(tar, f"{FOLDER}/{corruption}.npy", str(path), severity - 1)
            y = _read_npy(tar, f"{FOLDER}/labels.npy", str(path), severity - 1)
    except (tarfile.TarError, zlib.error, OSError, EOFError) as exc:
        raise SubtuneError(f"{path}: unreadable archive ({type(exc).__name__}: {exc})") from None
    if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3):
        raise SubtuneError(f"{path}:{corruption}.npy: expected uint8 [N,32,32,3], found {x.dtype} {list(x.shape)}")
    if y.shape != (len(x),) or y.min() < 0 or y.max() >= len(CLASSES):
        raise SubtuneError(f"{path}:labels.npy: expected {len(x)} labels per severity in 0..9")
    return x, y.astype(np.int64), (severity - 1) * len(x), inputs


# ------------------------------------------------------------------- targets (see :mod:`.targets`)
def _builder(corruption: str) -> Builder:
    dataset = f"cifar10c-{corruption}"

    def build_c(raw_dir: Path, p: Params) -> Built:
        x, y, offset, inputs = load(raw_dir, corruption, p.severity)
        order = stratified_order(y, p.seed, 0)
        parts = cut(order, [("test", p.test_size), ("val", p.val_size), ("train", p.train_size)], dataset)
        source = f"{NAME}:{corruption}.npy"
        splits = {}
        for s in SPLITS:  # idx: rows of the 50,000-row .npy
            splits[s] = Split(resize_rgb(x[parts[s]], p.image_size), y[parts[s]], parts[s] + offset, source)
        notes = [f"{dataset}: severity {p.severity} (Surgical fine-tuning: severity 5, per class 100 train, "
                 "10 val, 90 test)"] + small_test_note(len(parts["test"]), dataset)  # fmt: skip
        return Built(splits, list(CLASSES), inputs, notes)

    return build_c


for _c in CORRUPTIONS:
    register(
        f"cifar10c-{_c}",
        raw=NAME,
        description=f"CIFAR-10-C {_c}: Surgical fine-tuning's per-class 100/10/90 split of one corruption",
        train_size=1000,
        val_size=100,
        test_size=900,
        severity=5,
    )(_builder(_c))
