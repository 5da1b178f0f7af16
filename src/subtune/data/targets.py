"""The datasets a config can name: a registry of builders producing train/val/test splits.

``build(name, raw_dir, seed=..., **params)`` returns ``(tensors, manifest)``
for :func:`subtune.data.prepared.save_prepared`. Every image is resized to
``image_size`` (antialiased bilinear, :func:`subtune.data.images.resize`);
labels are relabelled ``0..K-1``.

Splits are carved from a seeded permutation of each pool in a fixed order,
test first, then val, then train, so the same parameters give the same splits
on every run, and val and test do not change when only ``train_size`` does
(a data-size sweep shares them; smaller training sets are prefixes of larger
ones). ``train_size=None`` takes the whole remaining pool. Each split keeps
its images' indices into their source array (``{split}_idx``; the manifest's
``sources`` names the array).

Datasets:

- ``fmnist-source``: Fashion-MNIST classes 0-4 for pretraining. val (default
  1000) and train from the official train split; test = the official test
  split's classes 0-4 (5000 images, or a seeded subset of ``test_size``).
- ``fmnist-new``: classes 5-9 (new labels: an output-level shift). val
  (default 200) and train from the official train split's classes 5-9 (the
  full training pool is 29800 images with val 200); test from the official
  test split's classes 5-9 (default all 5000).
- ``fmnist-c``: classes 0-4 of the official *test* split (which pretraining
  never sees) under a seeded mixture of corruptions (an input-level shift,
  like CIFAR-10-C, which corrupts CIFAR-10's test images). One pool of 5000:
  test (default 2000), val (default 200), train = the rest (2800). Images are
  corrupted after resizing; an image's corruption depends only on the seed
  and its source index (see :mod:`.corruptions`).
- ``digits``: scikit-learn's 1797 8x8 digits. Test = the first 597 of the
  permutation (``test_size`` None = all 597, a smaller one takes a prefix;
  digits has fewer than 1000 images to spare for a test set, the manifest
  notes it), then val (default 200), then train (the remaining 1000).

Colour datasets (images ``[N,H,W,3]``, stored ``[N,3,H,W]``; the manifest's
``channels`` is 3). Where a dataset has an official test split, test is that
split (``test_size`` None = all of it, a number = a seeded subset):

- ``cifar10``, ``cifar100``: val (default 5000) then train from the official
  training set (50,000); test = the official test set (10,000).
- ``cifar10c-<corruption>`` (each of the 19 CIFAR-10-C corruptions, e.g.
  ``cifar10c-gaussian_noise``): the Surgical fine-tuning protocol (Lee et al.
  2022): one corruption at ``severity`` (default 5) of CIFAR-10's 10,000 test
  images, split per class, 90 test, 10 val, 100 train (defaults test_size
  900, val_size 100, train_size 1000). Splits are stratified: each class's
  images are permuted (seeded) and the classes interleaved, so any size is
  as balanced as it can be and smaller sets are prefixes of larger ones.
- ``flowers102``: the official splits: train (1020), val (1020), test (6149);
  ``train_size``/``val_size`` take seeded subsets of theirs.
- ``caltech101``: TFDS's (and so VTAB's) protocol: 30 images per class
  (seeded) form the training pool, the rest (6084 with the background class)
  are test; val (default 200) and train are carved from the pool.
  ``background`` (default true, as TFDS/VTAB: 102 classes) keeps
  ``background_google``; false drops it (101 classes).
- ``vtab-<task>`` (the 19 VTAB-1k tasks, see :data:`.vtab.TASKS`): train =
  train800, val = val200, test = the full test split, exactly as the archive
  lists them (``train_size`` <= 800 and ``val_size`` <= 200 take seeded
  subsets). Class names are the label numbers (the archive has no names).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import SubtuneError
from . import caltech101, cifar10c, corruptions, digits, fashion_mnist, flowers102, vtab
from .cifar import CIFAR10, CIFAR100, Cifar
from .images import resize
from .rgb import resize_rgb
from .prepared import SPLITS

if TYPE_CHECKING:
    import torch

COMMON = {"image_size": 32, "train_size": None, "val_size": 200, "test_size": None}
MIN_TEST = 1000  # the test-set size below which a manifest carries a note


@dataclass(frozen=True)
class Params:
    seed: int
    image_size: int
    train_size: int | None
    val_size: int
    test_size: int | None
    corruptions: tuple[str, ...] | None = None
    severity: int | None = None
    background: bool | None = None


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # uint8 [N,H,W] (grayscale) or [N,H,W,3] (RGB) at image_size
    y: np.ndarray  # int64 [N], 0..K-1
    idx: np.ndarray  # int64 [N], indices into `source`
    source: str


@dataclass(frozen=True)
class Built:
    splits: dict[str, Split]
    classes: list[str]
    inputs: dict[str, str]
    notes: list[str] = field(default_factory=list)


Builder = Callable[[Path | None, Params], Built]


@dataclass(frozen=True)
class Target:
    name: str
    builder: Builder
    raw: str | None  # the raw dataset to download first (see .download.RAW_DATASETS), or None
    defaults: Mapping[str, Any]
    description: str


TARGETS: dict[str, Target] = {}


def register(
    name: str, *, raw: str | None = None, description: str | None = None, **defaults: Any
) -> Callable[[Builder], Builder]:
    """Register a builder under ``name``; ``defaults`` add to or override :data:`COMMON`."""

    def deco(fn: Builder) -> Builder:
        doc = (fn.__doc__ or "").strip().splitlines()
        TARGETS[name] = Target(name, fn, raw, {**COMMON, **defaults}, description or (doc[0] if doc else name))
        return fn

    return deco


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise SubtuneError(f"unknown dataset {name!r} (known: {', '.join(sorted(TARGETS))})")
    return TARGETS[name]


def raw_dataset(name: str) -> str | None:
    """The raw dataset (download directory name) that dataset ``name`` is built from, or None."""
    return get_target(name).raw


# -------------------------------------------------------------------- helpers
def carve(n: int, seed: int, stream: int, plan: list[tuple[str, int | None]], dataset: str) -> dict[str, np.ndarray]:
    """Cut a seeded permutation of ``range(n)`` into consecutive parts, in ``plan`` order.

    A size of None takes everything left. Raises naming the dataset and the pool size.
    """
    return cut(np.random.default_rng((seed, stream)).permutation(n), plan, dataset)


def cut(perm: np.ndarray, plan: list[tuple[str, int | None]], dataset: str) -> dict[str, np.ndarray]:
    """Cut a given order (e.g. :func:`stratified_order`) into consecutive parts, as :func:`carve` does."""
    n = len(perm)
    out, pos = {}, 0
    for split, size in plan:
        left = n - pos
        size = left if size is None else size
        if size > left:
            before = ", ".join(f"{s} {len(v)}" for s, v in out.items())
            raise SubtuneError(
                f"{dataset}: {split}_size {size} is larger than the pool of {left} images left for {split}"
                f" ({n} in all{', minus ' + before if before else ''})"
            )
        if size < 1:
            raise SubtuneError(f"{dataset}: no images left for {split} ({n} in all)")
        out[split] = perm[pos : pos + size]
        pos += size
    return out


def stratified_order(y: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """A seeded order of ``range(len(y))`` that interleaves the classes.

    Each class's indices are permuted, then taken round-robin (every class's
    first, then every class's second, ...), so any prefix is as balanced over
    the classes as it can be.
    """
    rng = np.random.default_rng((seed, stream))
    rank = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rank[rng.permutation(members)] = np.arange(len(members))
    return np.lexsort((y, rank))


def _subset(idx: np.ndarray, size: int | None, seed: int, stream: int, split: str, dataset: str) -> np.ndarray:
    """All of ``idx`` (size None) or a seeded subset of ``size`` (smaller sizes are prefixes of larger)."""
    if size is None:
        return np.asarray(idx, dtype=np.int64)
    return np.asarray(idx, dtype=np.int64)[carve(len(idx), seed, stream, [(split, size)], dataset)[split]]


def _rgb_split(x: np.ndarray, y: np.ndarray, idx: np.ndarray, source: str, size: int) -> Split:
    idx = np.asarray(idx, dtype=np.int64)
    return Split(resize_rgb(x[idx], size), y[idx].astype(np.int64), idx, source)


def _split(x: np.ndarray, y: np.ndarray, idx: np.ndarray, first_class: int, source: str, size: int) -> Split:
    idx = np.asarray(idx, dtype=np.int64)
    return Split(resize(x[idx], size), (y[idx] - first_class).astype(np.int64), idx, source)


def _test_note(n: int, dataset: str) -> list[str]:
    return [f"{dataset}: the test split has {n} images (< {MIN_TEST})"] if n < MIN_TEST else []


def _check_int(name: str, value: Any, lo: int, hi: int | None = None, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (hi and value > hi):
        rng = f"{lo}..{hi}" if hi else f">= {lo}"
        raise SubtuneError(f"{name} must be an integer {rng}{' or null' if none_ok else ''}, not {value!r}")


# ------------------------------------------------------------------- datasets
def _fmnist_classes(raw_dir: Path, p: Params, classes: range, dataset: str) -> Built:
    """Pool = the official train split's ``classes`` (val, then train); test = the official test split's."""
    train_x, train_y = fashion_mnist.load_split(raw_dir, "train")
    test_x, test_y = fashion_mnist.load_split(raw_dir, "t10k")
    pool = np.flatnonzero(np.isin(train_y, classes))
    test_pool = np.flatnonzero(np.isin(test_y, classes))
    parts = carve(len(pool), p.seed, 0, [("val", p.val_size), ("train", p.train_size)], dataset)
    test = carve(len(test_pool), p.seed, 1, [("test", p.test_size)], dataset)["test"]
    lo = classes.start
    splits = {
        "train": _split(train_x, train_y, pool[parts["train"]], lo, "fashion-mnist:train", p.image_size),
        "val": _split(train_x, train_y, pool[parts["val"]], lo, "fashion-mnist:train", p.image_size),
        "test": _split(test_x, test_y, test_pool[test], lo, "fashion-mnist:t10k", p.image_size),
    }
    inputs = {**fashion_mnist.payload_digests("train"), **fashion_mnist.payload_digests("t10k")}
    return Built(splits, fashion_mnist.CLASSES[lo : classes.stop], inputs, _test_note(len(test), dataset))


@register("fmnist-source", raw=fashion_mnist.NAME, val_size=1000)
def fmnist_source(raw_dir: Path, p: Params) -> Built:
    """Fashion-MNIST classes 0-4 (official train split; test = official test split): the pretraining task."""
    return _fmnist_classes(raw_dir, p, range(0, 5), "fmnist-source")


@register("fmnist-new", raw=fashion_mnist.NAME)
def fmnist_new(raw_dir: Path, p: Params) -> Built:
    """Fashion-MNIST classes 5-9 as a new 5-way task (output-level shift)."""
    return _fmnist_classes(raw_dir, p, range(5, 10), "fmnist-new")


@register("fmnist-c", raw=fashion_mnist.NAME, test_size=2000, corruptions=list(corruptions.DEFAULT), severity=3)
def fmnist_c(raw_dir: Path, p: Params) -> Built:
    """Fashion-MNIST classes 0-4 of the official test split, corrupted (input-level shift, like CIFAR-10-C)."""
    x, y = fashion_mnist.load_split(raw_dir, "t10k")
    pool = np.flatnonzero(y < 5)
    plan = [("test", p.test_size), ("val", p.val_size), ("train", p.train_size)]
    parts = carve(len(pool), p.seed, 0, plan, "fmnist-c")
    splits = {}
    for s in SPLITS:
        clean = _split(x, y, pool[parts[s]], 0, "fashion-mnist:t10k", p.image_size)
        xc = corruptions.corrupt(clean.x, p.corruptions, p.severity, p.seed, keys=clean.idx)
        splits[s] = Split(xc, clean.y, clean.idx, clean.source)
    notes = _test_note(len(parts["test"]), "fmnist-c")
    return Built(splits, fashion_mnist.CLASSES[:5], fashion_mnist.payload_digests("t10k"), notes)


DIGITS_TEST = 597  # a third of 1797


@register("digits", raw=None, test_size=DIGITS_TEST)
def digits_target(raw_dir: Path | None, p: Params) -> Built:
    """scikit-learn's 8x8 digits, upsampled (domain shift)."""
    x, y, inputs = digits.load()
    if p.test_size is not None and p.test_size > DIGITS_TEST:
        raise SubtuneError(f"digits: test_size {p.test_size} is larger than its {DIGITS_TEST}-image test block")
    test_size = DIGITS_TEST if p.test_size is None else p.test_size
    parts = carve(len(x), p.seed, 0, [("test", test_size), ("val", p.val_size), ("train", p.train_size)], "digits")
    splits = {s: _split(x, y, parts[s], 0, "sklearn:load_digits", p.image_size) for s in SPLITS}
    notes = [f"digits has {len(x)} images: the test split is capped at {DIGITS_TEST} (fewer than {MIN_TEST} to spare)"]
    return Built(splits, list(digits.CLASSES), inputs, notes)


# ------------------------------------------------------------ colour datasets
def _cifar(spec: Cifar, raw_dir: Path, p: Params, dataset: str) -> Built:
    train_x, train_y, test_x, test_y, classes, inputs = spec.load(raw_dir)
    parts = carve(len(train_x), p.seed, 0, [("val", p.val_size), ("train", p.train_size)], dataset)
    test = _subset(np.arange(len(test_x)), p.test_size, p.seed, 1, "test", dataset)
    src_train, src_test = f"{spec.name}:train", f"{spec.name}:test"
    splits = {
        "train": _rgb_split(train_x, train_y, parts["train"], src_train, p.image_size),
        "val": _rgb_split(train_x, train_y, parts["val"], src_train, p.image_size),
        "test": _rgb_split(test_x, test_y, test, src_test, p.image_size),
    }
    return Built(splits, classes, inputs, _test_note(len(test), dataset))


@register("cifar10", raw=CIFAR10.name, val_size=5000)
def cifar10(raw_dir: Path, p: Params) -> Built:
    """CIFAR-10 (official training set: val then train; test = the official test set)."""
    return _cifar(CIFAR10, raw_dir, p, "cifar10")


@register("cifar100", raw=CIFAR100.name, val_size=5000)
def cifar100(raw_dir: Path, p: Params) -> Built:
    """CIFAR-100, fine labels (official training set: val then train; test = the official test set)."""
    return _cifar(CIFAR100, raw_dir, p, "cifar100")


def _cifar10c(corruption: str) -> Builder:
    dataset = f"cifar10c-{corruption}"

    def build_c(raw_dir: Path, p: Params) -> Built:
        x, y, offset, inputs = cifar10c.load(raw_dir, corruption, p.severity)
        order = stratified_order(y, p.seed, 0)
        parts = cut(order, [("test", p.test_size), ("val", p.val_size), ("train", p.train_size)], dataset)
        source = f"{cifar10c.NAME}:{corruption}.npy"
        splits = {}
        for s in SPLITS:  # idx: rows of the 50,000-row .npy
            splits[s] = Split(resize_rgb(x[parts[s]], p.image_size), y[parts[s]], parts[s] + offset, source)
        notes = [f"{dataset}: severity {p.severity} (Surgical fine-tuning: severity 5, per class 100 train, "
                 "10 val, 90 test)"] + _test_note(len(parts["test"]), dataset)  # fmt: skip
        return Built(splits, list(cifar10c.CLASSES), inputs, notes)

    return build_c


for _c in cifar10c.CORRUPTIONS:
    register(
        f"cifar10c-{_c}",
        raw=cifar10c.NAME,
        description=f"CIFAR-10-C {_c}: Surgical fine-tuning's per-class 100/10/90 split of one corruption",
        train_size=1000,
        val_size=100,
        test_size=900,
        severity=5,
    )(_cifar10c(_c))


@register("flowers102", raw=flowers102.NAME, val_size=1020)
def flowers102_target(raw_dir: Path, p: Params) -> Built:
    """Oxford 102 Flowers with the official train/val/test splits."""
    labels, official, inputs = flowers102.load_meta(raw_dir)
    sizes = {"train": p.train_size, "val": p.val_size, "test": p.test_size}
    splits = {}
    for i, s in enumerate(SPLITS):
        if sizes[s] is not None and sizes[s] > len(official[s]):
            raise SubtuneError(
                f"flowers102: {s}_size {sizes[s]} is larger than the official {s} split ({len(official[s])} images)"
            )
        idx = _subset(official[s], sizes[s], p.seed, i, s, "flowers102")
        x = flowers102.load_images(raw_dir, idx, p.image_size)
        splits[s] = Split(x, labels[idx], idx, f"{flowers102.NAME}:images")
    return Built(splits, list(flowers102.CLASSES), inputs, _test_note(len(splits["test"].y), "flowers102"))


CALTECH_TRAIN_PER_CLASS = 30  # TFDS: 30 images per class for training, the rest for test


@register("caltech101", raw=caltech101.NAME, background=True)
def caltech101_target(raw_dir: Path, p: Params) -> Built:
    """Caltech-101: 30 images per class form the training pool (val, then train); the rest are test."""
    classes, names, y_all, blobs, inputs = caltech101.load(raw_dir)
    keep = np.arange(len(y_all))
    if not p.background and caltech101.BACKGROUND in classes:
        keep = np.flatnonzero(y_all != classes.index(caltech101.BACKGROUND))
    kept = sorted({int(c) for c in y_all[keep]})
    for c in kept:
        if (y_all[keep] == c).sum() <= CALTECH_TRAIN_PER_CLASS:
            raise SubtuneError(f"caltech101: class {classes[c]} has no more than {CALTECH_TRAIN_PER_CLASS} images")
    relabel = np.full(len(classes), -1, dtype=np.int64)
    relabel[kept] = np.arange(len(kept))
    y = relabel[y_all]
    order = stratified_order(y[keep], p.seed, 0)  # the first 30 of every class come first
    n_pool = CALTECH_TRAIN_PER_CLASS * len(kept)
    pool, test_pool = keep[order[:n_pool]], np.sort(keep[order[n_pool:]])
    parts = carve(len(pool), p.seed, 1, [("val", p.val_size), ("train", p.train_size)], "caltech101")
    picks = {
        "train": pool[parts["train"]],
        "val": pool[parts["val"]],
        "test": _subset(test_pool, p.test_size, p.seed, 2, "test", "caltech101"),
    }
    where = str(Path(raw_dir) / caltech101.ARCHIVE)
    splits = {
        s: Split(caltech101.decode_all(blobs, names, idx, p.image_size, where), y[idx], idx, "caltech101:all-sorted")
        for s, idx in picks.items()
    }
    notes = _test_note(len(picks["test"]), "caltech101")
    return Built(splits, [classes[c] for c in kept], inputs, notes)


def _vtab(task: str) -> Builder:
    dataset = f"vtab-{task}"
    folder, k = vtab.TASKS[task]

    def build_v(raw_dir: Path, p: Params) -> Built:
        lists, prefix, inputs = vtab.load_lists(raw_dir, task)
        sizes = {"train": p.train_size, "val": p.val_size, "test": p.test_size}
        splits = {}
        for i, s in enumerate(SPLITS):
            rows = lists[s]
            if sizes[s] is not None and sizes[s] > len(rows):
                raise SubtuneError(
                    f"{dataset}: {s}_size {sizes[s]} is larger than {vtab.LISTS[s]} ({len(rows)} images)"
                )
            idx = _subset(np.arange(len(rows)), sizes[s], p.seed, i, s, dataset)
            x = vtab.load_images(raw_dir, [rows[j][0] for j in idx], p.image_size)
            y = np.array([rows[j][1] for j in idx], dtype=np.int64)
            splits[s] = Split(x, y, idx, f"{vtab.NAME}:{prefix}{vtab.LISTS[s]}")
        notes = [f"{dataset}: VTAB-1k's own splits ({folder} in {vtab.ARCHIVE}); train800val200 = train + val"]
        return Built(splits, [str(c) for c in range(k)], inputs, notes + _test_note(len(splits["test"].y), dataset))

    return build_v


for _t, (_folder, _k) in vtab.TASKS.items():
    register(
        f"vtab-{_t}",
        raw=vtab.NAME,
        description=f"VTAB-1k {_folder} ({_k} classes): train800 / val200 / the full test split",
    )(_vtab(_t))


# ---------------------------------------------------------------------- build
def _params(target: Target, seed: int, params: Mapping[str, Any]) -> Params:
    unknown = sorted(set(params) - set(target.defaults))
    if unknown:
        raise SubtuneError(
            f"{target.name}: unknown parameter {', '.join(unknown)} (takes: {', '.join(sorted(target.defaults))})"
        )
    p = {**target.defaults, **params}
    _check_int("seed", seed, 0)
    _check_int(f"{target.name}.image_size", p["image_size"], 8)
    _check_int(f"{target.name}.val_size", p["val_size"], 1)
    for key in ("train_size", "test_size"):
        _check_int(f"{target.name}.{key}", p[key], 1, none_ok=True)
    if "corruptions" in target.defaults:
        p["corruptions"] = tuple(corruptions.check_names(p["corruptions"]))
    if "severity" in target.defaults:
        _check_int(f"{target.name}.severity", p["severity"], 1, 5)
    if "background" in target.defaults and not isinstance(p["background"], bool):
        raise SubtuneError(f"{target.name}.background must be true or false, not {p['background']!r}")
    return Params(seed=int(seed), **p)


def validate(name: str, params: Mapping[str, Any]) -> None:
    """Check a dataset name and its parameters without building anything (for config validation)."""
    _params(get_target(name), 0, params)


def build(
    name: str, raw_dir: str | os.PathLike | None = None, *, seed: int, **params: Any
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Build dataset ``name``: ``({split}_x/_y/_idx tensors, manifest)``.

    ``params``: image_size, train_size, val_size, test_size, and for fmnist-c
    corruptions and severity, for cifar10c-* severity, for caltech101
    background (defaults per dataset, see the module docstring).
    """
    import torch

    target = get_target(name)
    p = _params(target, seed, params)
    if target.raw is not None:
        if raw_dir is None:
            raise SubtuneError(f"{name} is built from the {target.raw} download: pass its directory (--raw)")
        raw_dir = Path(raw_dir)
    built = target.builder(raw_dir, p)
    tensors: dict[str, torch.Tensor] = {}
    channels = {1 if built.splits[s].x.ndim == 3 else built.splits[s].x.shape[-1] for s in SPLITS}
    if len(channels) != 1:
        raise SubtuneError(f"{name}: splits disagree on the number of channels ({sorted(channels)})")
    for s in SPLITS:
        sp = built.splits[s]
        x = sp.x[:, None] if sp.x.ndim == 3 else sp.x.transpose(0, 3, 1, 2)  # [N,C,H,W]
        tensors[f"{s}_x"] = torch.from_numpy(np.ascontiguousarray(x))
        tensors[f"{s}_y"] = torch.from_numpy(np.ascontiguousarray(sp.y, dtype=np.int64))
        tensors[f"{s}_idx"] = torch.from_numpy(np.ascontiguousarray(sp.idx, dtype=np.int64))
    build_params = {k: v for k, v in vars(p).items() if k != "seed" and k in target.defaults}
    if "corruptions" in build_params:
        build_params["corruptions"] = list(build_params["corruptions"])
    manifest = {
        "name": name,
        "description": target.description,
        "classes": list(built.classes),
        "num_classes": len(built.classes),
        "channels": channels.pop(),
        "image_size": p.image_size,
        "splits": {s: len(built.splits[s].y) for s in SPLITS},
        "sources": {s: built.splits[s].source for s in SPLITS},
        "seed": p.seed,
        "params": build_params,
        "raw": target.raw,
        "inputs": built.inputs,
        "notes": built.notes,
    }
    return tensors, manifest
