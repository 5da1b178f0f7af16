"""The dataset registry: raw datasets (what the ``download`` stage fetches) and targets (what a config names).

A dataset is one module of this package that registers both, so adding one
is adding its module, listed nowhere else:

- :func:`register_raw` ``(name, files=..., mirrors=..., check=...)``: a raw
  dataset, i.e. one download directory (``data/raw/<name>``): its files with
  their pinned digests (``{filename: (sha256, payload_sha256[, md5])}``, see
  :mod:`.download`), its built-in mirrors and an optional structural check of
  a downloaded file. ``files`` and ``mirrors`` are functions returning the
  module's own attributes (``lambda: FILES``), read at download time, so
  pinning or emptying those attributes (the tests do) is honoured.
- :func:`register` ``(name, raw=..., **defaults)``: a target builder, a
  function ``(raw_dir, Params) -> Built`` decorated (or called) with the
  target's name, the raw dataset it is built from (``None``: nothing to
  download) and its parameter defaults (over :data:`COMMON`).

:func:`discover` imports every module of this package whose name does not
start with ``_`` (each registers its entries on import); :mod:`.targets`
(``build``, ``validate``) and :func:`.download.download_dataset` read the
registry through it. The raw datasets' half (:func:`register_raw`,
:data:`RAW`, :class:`RawDataset`) and :func:`discover` are defined in
:mod:`.download`, which reads them and which this module imports; they are
importable from here. Dataset modules import without torch (config
validation reads the registry). The split helpers every builder uses
(:func:`carve`, :func:`cut`, :func:`stratified_order`, :func:`subset`, ...)
are here too; :mod:`.targets` documents the datasets' split protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import SubtuneError
from .download import RAW, RawDataset, discover, register_raw  # noqa: F401  (the raw datasets' records)
from .images import resize
from .rgb import resize_rgb

COMMON = {"image_size": 32, "train_size": None, "val_size": 200, "test_size": None}
MIN_TEST = 1000  # the test-set size below which a manifest carries a note


# ---------------------------------------------------------------------- targets
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
    # {input file: {member: sha256}}: each archive member the builder read (the manifest's ``members``; vtab-1k,
    # whose zip has no citable digest)
    members: dict[str, dict[str, str]] = field(default_factory=dict)


Builder = Callable[[Path | None, Params], Built]


@dataclass(frozen=True)
class Target:
    name: str
    builder: Builder
    raw: str | None  # the raw dataset to download first (a name in RAW), or None
    defaults: Mapping[str, Any]
    description: str


#: target name -> record
TARGETS: dict[str, Target] = {}


def register(
    name: str, *, raw: str | None = None, description: str | None = None, **defaults: Any
) -> Callable[[Builder], Builder]:
    """Register a builder under ``name``; ``defaults`` add to or override :data:`COMMON`."""

    if name in TARGETS:
        raise SubtuneError(f"dataset {name!r} is registered twice")

    def deco(fn: Builder) -> Builder:
        doc = (fn.__doc__ or "").strip().splitlines()
        TARGETS[name] = Target(name, fn, raw, {**COMMON, **defaults}, description or (doc[0] if doc else name))
        return fn

    return deco


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


def subset(idx: np.ndarray, size: int | None, seed: int, stream: int, split: str, dataset: str) -> np.ndarray:
    """All of ``idx`` (size None) or a seeded subset of ``size`` (smaller sizes are prefixes of larger)."""
    if size is None:
        return np.asarray(idx, dtype=np.int64)
    return np.asarray(idx, dtype=np.int64)[carve(len(idx), seed, stream, [(split, size)], dataset)[split]]


def rgb_split(x: np.ndarray, y: np.ndarray, idx: np.ndarray, source: str, size: int) -> Split:
    idx = np.asarray(idx, dtype=np.int64)
    return Split(resize_rgb(x[idx], size), y[idx].astype(np.int64), idx, source)


def gray_split(x: np.ndarray, y: np.ndarray, idx: np.ndarray, first_class: int, source: str, size: int) -> Split:
    idx = np.asarray(idx, dtype=np.int64)
    return Split(resize(x[idx], size), (y[idx] - first_class).astype(np.int64), idx, source)


def small_test_note(n: int, dataset: str) -> list[str]:
    """The manifest's note for a test split under :data:`MIN_TEST` images (none otherwise)."""
    return [f"{dataset}: the test split has {n} images (< {MIN_TEST})"] if n < MIN_TEST else []
