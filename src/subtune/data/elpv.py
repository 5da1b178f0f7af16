"""ELPV: 2,624 electroluminescence images of solar cells, graded by defect probability.

The images and labels of Buerhop-Lutz et al. 2018 and Deitsch et al. 2019
("A Benchmark for Visual Identification of Defective Solar Cells in
Electroluminescence Imagery"; "Automatic classification of defective
photovoltaic module cells in electroluminescence images"), as the registry
package ``elpv-dataset`` 1.0.0.post1 ships them
(https://github.com/zae-bayern/elpv-dataset). Its code is Apache-2.0; **the
data is licensed CC BY-NC-SA 4.0** (attribution, non-commercial use only,
share-alike): read its terms before sharing anything derived from it.

The data ships inside the installed package, so there is nothing to
download: ``elpv_dataset/data/labels.csv`` (one whitespace-separated line per
image: ``images/cellNNNN.png``, the defect probability, the cell type
``mono``/``poly``) and ``elpv_dataset/data/images/cellNNNN.png`` (8-bit grey,
300x300). Both are pinned: the SHA-256 of ``labels.csv`` and one SHA-256 over
all images (of the per-file SHA-256 hex digests concatenated in sorted
file-name order), checked before any image is decoded; a prepared dataset
records them and the package version instead of input files.

Classes are the four defect probabilities, in order: ``"0"``, ``"1/3"``,
``"2/3"``, ``"1"`` are labels 0, 1, 2, 3. The cell type is not a label. An
image's source index is its row in ``labels.csv``. The cells come from 44
modules, but ``labels.csv`` does not say which: splits are carved over cells,
so cells of one module can fall into both training and test splits.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from .. import SubtuneError
from .prepared import SPLITS
from .registry import Built, Params, carve, gray_split, register, small_test_note

PACKAGE = "elpv_dataset"  # the import name
DISTRIBUTION = "elpv-dataset"
VERSION = "1.0.0.post1"
LABELS_SHA256 = "0abe6fe7700aea571717d7d7dfec005a47c6207b4cde26a4556b6807a115483d"
IMAGES_SHA256 = "4c714023959b5f7e976f8b39170149eb935fb38e6a174caf9239492c94f38c4d"
CLASSES = ["0", "1/3", "2/3", "1"]
NUM_IMAGES = 2624
SOURCE = "elpv_dataset:labels.csv"
#: the folder holding ``labels.csv`` and ``images/``; None: the installed package's ``data`` folder
DATA_DIR: Path | None = None


def data_dir() -> Path:
    """:data:`DATA_DIR`, or the installed package's ``data`` folder (a one-line error if it is not installed)."""
    if DATA_DIR is not None:
        return Path(DATA_DIR)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SubtuneError(
            f"elpv: the package {DISTRIBUTION} is not installed"
            f" (run make setup, or pip install {DISTRIBUTION}=={VERSION})"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def images_digest(images_dir: Path) -> str:
    """SHA-256 of the per-file SHA-256 hex digests of ``images_dir/*.png``, concatenated in sorted name order."""
    files = sorted(images_dir.glob("*.png"), key=lambda p: p.name)
    return hashlib.sha256("".join(_sha256(p) for p in files).encode("ascii")).hexdigest()


def _verify(root: Path) -> None:
    """Refuse a missing or different ``labels.csv`` or image set, naming it with both digests."""
    labels, images = root / "labels.csv", root / "images"
    if not labels.is_file() or not images.is_dir():
        missing = labels if not labels.is_file() else images
        raise SubtuneError(f"elpv: {missing} is missing (reinstall {DISTRIBUTION}=={VERSION}: make setup)")
    got = _sha256(labels)
    if got != LABELS_SHA256:
        raise SubtuneError(f"elpv: {labels} has SHA-256 {got}, expected {LABELS_SHA256} (a different labels.csv)")
    got = images_digest(images)
    if got != IMAGES_SHA256:
        raise SubtuneError(
            f"elpv: images in {images} have SHA-256 {got} (over the per-file digests), expected {IMAGES_SHA256}"
            " (an image is changed, missing or added)"
        )


def _labels(path: Path) -> tuple[list[str], np.ndarray]:
    """``(image paths, labels 0..3)`` from ``labels.csv`` (probability p -> label round(3p))."""
    import pandas as pd

    df = pd.read_csv(path, sep=r"\s+", header=None, names=["path", "probability", "type"],
                     dtype={"path": str, "probability": np.float64, "type": str})  # fmt: skip
    three_p = df["probability"].to_numpy() * 3
    y = np.rint(three_p).astype(np.int64)
    bad = np.flatnonzero((np.abs(three_p - y) > 1e-6) | (y < 0) | (y > 3))
    if len(bad):
        raise SubtuneError(f"elpv: {path} row {bad[0] + 1}: defect probability {df['probability'][bad[0]]!r}"
                           " is not 0, 1/3, 2/3 or 1")  # fmt: skip
    return list(df["path"]), y


@functools.lru_cache(maxsize=1)
def _decode(root: str, names: tuple[str, ...]) -> np.ndarray:
    """Decode the PNGs ``root/name`` to one read-only uint8 ``[N,300,300]`` array (cached: a build decodes once)."""
    from PIL import Image

    images = []
    for name in names:
        with Image.open(Path(root) / name) as im:
            images.append(np.asarray(im.convert("L"), dtype=np.uint8))
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise SubtuneError(f"elpv: images in {root} differ in size ({sorted(shapes)})")
    x = np.stack(images)
    x.flags.writeable = False
    return x


def load() -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """``(images uint8 [2624,300,300], labels int64 [2624] in 0..3, inputs)``, in ``labels.csv`` order.

    Checks both pinned digests first (before decoding anything). ``inputs``
    maps ``elpv-dataset`` to the installed version and the package paths of
    ``labels.csv`` and ``images`` to their SHA-256 (see the module docstring).
    """
    from importlib.metadata import PackageNotFoundError, version

    root = data_dir()
    _verify(root)
    names, y = _labels(root / "labels.csv")
    x = _decode(str(root), tuple(names))
    try:
        installed = version(DISTRIBUTION)
    except PackageNotFoundError:
        installed = "not installed"
    inputs = {
        DISTRIBUTION: installed,
        f"{PACKAGE}/data/labels.csv": LABELS_SHA256,
        f"{PACKAGE}/data/images": IMAGES_SHA256,
    }
    return x, y, inputs


# ------------------------------------------------------------------- targets (see :mod:`.targets`)
ELPV_TEST = NUM_IMAGES - 1000  # 1624: everything but VTAB-1k's 800 train + 200 val


@register("elpv", raw=None, train_size=800, val_size=200, test_size=ELPV_TEST)
def build_elpv(raw_dir: Path | None, p: Params) -> Built:
    """ELPV solar cells: electroluminescence images, four defect-probability classes (CC BY-NC-SA 4.0 data)."""
    if p.test_size is not None and p.test_size > ELPV_TEST:
        raise SubtuneError(f"elpv: test_size {p.test_size} is larger than its {ELPV_TEST}-image test block")
    x, y, inputs = load()
    parts = carve(len(x), p.seed, 0, [("test", ELPV_TEST), ("val", p.val_size), ("train", p.train_size)], "elpv")
    parts["test"] = parts["test"][: p.test_size]  # a prefix of the fixed block: val and train do not move
    splits = {s: gray_split(x, y, parts[s], 0, SOURCE, p.image_size) for s in SPLITS}
    counts = ", ".join(f"{c}: {n}" for c, n in zip(CLASSES, np.bincount(y, minlength=len(CLASSES))))
    notes = [f"elpv: the classes are imbalanced ({counts} of {len(y)} cells) and the splits are not stratified;"
             f" always answering '0' scores {np.mean(y == 0):.1%}"]  # fmt: skip
    return Built(splits, list(CLASSES), inputs, notes + small_test_note(len(parts["test"]), "elpv"))
