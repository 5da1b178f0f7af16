"""VTAB-1k (Zhai et al. 2019) without TensorFlow: the NOAH-format redistribution.

Source: ``vtab-1k.zip`` as V-PETL Bench redistributes it on the Hugging Face
hub (dataset ``XiN0919/VTAB-1k``, 4.66 GB), a copy of the archive RepAdapter
and NOAH distribute through Google Drive. Why this copy: a plain HTTPS file
(no Google Drive confirmation pages, no Baidu), reachable through any hub
mirror (set ``data.mirrors`` or ``$SUBTUNE_MIRRORS`` to
``$HF_ENDPOINT/datasets/XiN0919/VTAB-1k/resolve/main/``), and in the format
most PETL code reads. Its layout: ``vtab-1k/<task>/`` with ``images/...`` and
the lists ``train800.txt``, ``val200.txt``, ``train800val200.txt``,
``test.txt``, one ``images/<split>/<file> <label>`` line per image.

What the builders take: the images ``train800.txt`` lists as the train
split, those ``val200.txt`` lists as the val split and those ``test.txt``
lists as the test split (all of them, or a seeded subset when the config sets
``train_size``/``val_size``/``test_size``). ``train800val200.txt`` is only
checked, when present, to hold the labels of the other two lists; a final run
on ``train+val`` trains on the union of our train and val splits. Which
source images the lists name is NOAH's export of VTAB-1k from TFDS, not
anything this module decides: train800 is the first 800 images of VTAB's
train split, val200 the first 200 of VTAB's validation split (TFDS
``validation[:200]`` where the dataset has a validation split, e.g. DMLab;
otherwise VTAB carves validation out of TFDS's train split, e.g. Oxford-IIIT
Pet's ``train[n:n+200]`` with n 80 % of that split), test the full test
split. The JPEGs are re-encoded, so pixels differ slightly from TFDS's. Each
image is decoded to RGB and resized to ``image_size`` x ``image_size``
whatever its aspect ratio (antialiased bilinear, :func:`.rgb.decode`), once,
when the data is prepared.

Checksum: no SHA-256 of this zip is published that we could cite, so none is
pinned: :data:`SHA256` is ``None``. Pin it by setting :data:`SHA256` to a
trusted copy's digest (``sha256sum vtab-1k.zip``): the download then refuses any
other file (one line naming the file and the expected and received digests,
their first 12 hex digits, :mod:`.download`), and so does preparing from a file
already on disk (both digests in full, :func:`._archive.checked`). Unpinned, the download is checked structurally:
the zip's central directory and every member's CRC-32 (``zipfile.testzip``)
before the file is renamed into place, so a truncated or damaged download is
rejected. Every prepared dataset records the zip's SHA-256 in its manifest's
``inputs`` and the SHA-256 of every member it read (the task's lists and
images) in its ``members`` (``{"vtab-1k.zip": {member: sha256}}``), so that two
copies can be compared image by image even where their zips differ.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .. import SubtuneError
from ._archive import checked
from .download import Digests
from .prepared import SPLITS
from .registry import Builder, Built, Params, Split, register, register_raw, small_test_note, subset
from .rgb import decode

NAME = "vtab-1k"
ARCHIVE = "vtab-1k.zip"
MIRRORS = ["https://huggingface.co/datasets/XiN0919/VTAB-1k/resolve/main/"]
#: the trusted SHA-256 of ``vtab-1k.zip``; None: not pinned (no citable digest published), see the module docstring
SHA256: str | None = None
FILES: dict[str, Digests] = {ARCHIVE: (SHA256, None)}
LISTS = {"train": "train800.txt", "val": "val200.txt", "test": "test.txt"}
UNION = "train800val200.txt"
SIZES = {"train": 800, "val": 200}

# our name -> (folder in the archive, number of classes)
TASKS: dict[str, tuple[str, int]] = {
    "cifar100": ("cifar", 100),
    "caltech101": ("caltech101", 102),
    "dtd": ("dtd", 47),
    "flowers102": ("oxford_flowers102", 102),
    "pets": ("oxford_iiit_pet", 37),
    "svhn": ("svhn", 10),
    "sun397": ("sun397", 397),
    "camelyon": ("patch_camelyon", 2),
    "eurosat": ("eurosat", 10),
    "resisc45": ("resisc45", 45),
    "retinopathy": ("diabetic_retinopathy", 5),
    "clevr-count": ("clevr_count", 8),
    "clevr-dist": ("clevr_dist", 6),
    "dmlab": ("dmlab", 6),
    "kitti": ("kitti", 4),
    "dsprites-loc": ("dsprites_loc", 16),
    "dsprites-ori": ("dsprites_ori", 16),
    "smallnorb-azi": ("smallnorb_azi", 18),
    "smallnorb-ele": ("smallnorb_ele", 9),
}


def check_zip(path: Path) -> str | None:
    """None if ``path`` is a readable zip whose members all pass their CRC-32, else why not."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
        return f"not a readable zip ({type(exc).__name__}: {exc})"
    return None if bad is None else f"zip member {bad} fails its CRC-32"


RAW = register_raw(NAME, files=lambda: FILES, mirrors=lambda: MIRRORS, check=check_zip)

#: fetch ``vtab-1k.zip`` (``$SUBTUNE_MIRRORS``, then ``mirrors``, then the hub), zip-checked.
download = RAW.download


def _task_dir(names: list[str], folder: str, path: Path) -> str:
    """The archive prefix of ``folder`` (``vtab-1k/<folder>/`` or ``<folder>/``)."""
    hits = sorted(n[: -len(LISTS["train"])] for n in names
                  if n.endswith(f"{folder}/{LISTS['train']}") and n.split("/")[-2] == folder)  # fmt: skip
    if not hits:
        raise SubtuneError(f"{path}: no {folder}/{LISTS['train']} (is this NOAH's vtab-1k archive?)")
    return min(hits, key=len)


def _read(zf: zipfile.ZipFile, name: str, where: str, members: dict[str, str] | None) -> bytes:
    """Member ``name``'s bytes; its SHA-256 goes into ``members`` (when given)."""
    try:
        data = zf.read(name)
    except KeyError:
        raise SubtuneError(f"{where}: archive lacks {name}") from None
    if members is not None:
        members[name] = hashlib.sha256(data).hexdigest()
    return data


def _read_list(zf: zipfile.ZipFile, name: str, k: int, where: str,
               members: dict[str, str] | None = None) -> list[tuple[str, int]]:  # fmt: skip
    text = _read(zf, name, where, members).decode()
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or not 0 <= int(parts[1]) < k:
            raise SubtuneError(f"{where}:{name}:{n}: expected 'path label' with a label in 0..{k - 1}, got {line!r}")
        rows.append((parts[0], int(parts[1])))
    return rows


def load_lists(raw_dir: str | os.PathLike, task: str, members: dict[str, str] | None = None
               ) -> tuple[dict[str, list[tuple[str, int]]], str, dict[str, str]]:  # fmt: skip
    """``({split: [(member, label), ...]}, archive prefix, inputs)`` for one task (our name, see TASKS).

    Checks train800 and val200 have 800 and 200 lines and, where the archive
    has train800val200.txt, that it holds exactly their labels (1,000 lines).
    ``members`` (optional) receives each list file's SHA-256.
    """
    folder, k = TASKS[task]
    inputs = checked(raw_dir, FILES, NAME)
    path = Path(raw_dir) / ARCHIVE
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            prefix = _task_dir(names, folder, path)
            lists = {s: _read_list(zf, prefix + f, k, str(path), members) for s, f in LISTS.items()}
            union = _read_list(zf, prefix + UNION, k, str(path), members) if prefix + UNION in names else None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise SubtuneError(f"{path}: unreadable archive ({type(exc).__name__}: {exc})") from None
    for s, n in SIZES.items():
        if len(lists[s]) != n:
            raise SubtuneError(f"{path}:{prefix}{LISTS[s]}: {len(lists[s])} lines, VTAB-1k has {n}")
    if union is not None:
        expected = sorted(y for s in ("train", "val") for _, y in lists[s])
        if sorted(y for _, y in union) != expected:
            raise SubtuneError(f"{path}:{prefix}{UNION}: not the union of {LISTS['train']} and {LISTS['val']}")
    if not lists["test"]:
        raise SubtuneError(f"{path}:{prefix}{LISTS['test']}: empty")
    return {s: [(prefix + m, y) for m, y in rows] for s, rows in lists.items()}, prefix, inputs


def load_images(raw_dir: str | os.PathLike, names: list[str], size: int,
                members: dict[str, str] | None = None) -> np.ndarray:  # fmt: skip
    """Decode and resize the listed archive members: uint8 ``[n,size,size,3]``; ``members`` (optional) receives
    each one's SHA-256."""
    path = Path(raw_dir) / ARCHIVE
    out = np.zeros((len(names), size, size, 3), dtype=np.uint8)
    try:
        with zipfile.ZipFile(path) as zf:
            for pos, name in enumerate(names):
                out[pos] = decode(_read(zf, name, str(path), members), size, f"{path}:{name}")
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise SubtuneError(f"{path}: unreadable archive ({type(exc).__name__}: {exc})") from None
    return out


# ------------------------------------------------------------------- targets (see :mod:`.targets`)
def _builder(task: str) -> Builder:
    dataset = f"vtab-{task}"
    folder, k = TASKS[task]

    def build_v(raw_dir: Path, p: Params) -> Built:
        members: dict[str, str] = {}
        lists, prefix, inputs = load_lists(raw_dir, task, members)
        sizes = {"train": p.train_size, "val": p.val_size, "test": p.test_size}
        splits = {}
        for i, s in enumerate(SPLITS):
            rows = lists[s]
            if sizes[s] is not None and sizes[s] > len(rows):
                raise SubtuneError(
                    f"{dataset}: {s}_size {sizes[s]} is larger than {LISTS[s]} ({len(rows)} images)"
                )
            idx = subset(np.arange(len(rows)), sizes[s], p.seed, i, s, dataset)
            x = load_images(raw_dir, [rows[j][0] for j in idx], p.image_size, members)
            y = np.array([rows[j][1] for j in idx], dtype=np.int64)
            splits[s] = Split(x, y, idx, f"{NAME}:{prefix}{LISTS[s]}")
        notes = [f"{dataset}: VTAB-1k's own splits ({folder} in {ARCHIVE}); train800val200 = train + val"]
        notes += small_test_note(len(splits["test"].y), dataset)
        return Built(splits, [str(c) for c in range(k)], inputs, notes, {ARCHIVE: dict(sorted(members.items()))})

    return build_v


for _t, (_folder, _k) in TASKS.items():
    register(
        f"vtab-{_t}",
        raw=NAME,
        description=f"VTAB-1k {_folder} ({_k} classes): train800 / val200 / the full test split",
    )(_builder(_t))
