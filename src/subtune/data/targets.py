"""The datasets a config can name: a registry of builders producing train/val/test splits.

Each dataset module registers its own builders and raw files (:mod:`.registry`:
adding a dataset is adding its module, which documents its split protocol);
this module reads the registry.

``build(name, raw_dir, seed=..., **params)`` returns ``(tensors, manifest)``
for :func:`subtune.data.prepared.save_prepared`. Every image is resized to
``image_size`` (antialiased bilinear, :func:`subtune.data.images.resize`);
labels are relabelled ``0..K-1``.

``standardize`` (``data.standardize`` in the config, passed with the build
parameters): ``backbone`` (the default) leaves the inputs' normalisation to the
backbone's pretrained mean/std; ``dataset`` records the training split's own
per-channel mean and std (of the pixels on the [0, 1] scale, unbiased std, as
SubTuning's ``get_pytorch_versions_of_vtab.py`` computes them over train800) in
the manifest's ``normalize``, and the model's inputs are standardised with
those (:func:`subtune.data.prepared.normalization`); a channel with less than
one grey level of spread (std < 1/255) gets std 1/255, and a note says so.

Splits are carved from a seeded permutation of each pool in a fixed order,
test first, then val, then train, so the same parameters give the same splits
on every run, and val and test do not change when only ``train_size`` does
(a data-size sweep shares them; smaller training sets are prefixes of larger
ones). The seed is ``data.seed``, one split for every training seed, or with
``data.split_per_seed`` each training seed's own (a prepared file per seed,
:meth:`subtune.plan.Plan.prepared`; Surgical fine-tuning's code reshuffles
CIFAR-10-C per seed). ``train_size=None`` takes the whole remaining pool. Each split keeps
its images' indices into their source array (``{split}_idx``; the manifest's
``sources`` names the array).

The datasets registered today:

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
- ``fmnist``: all ten classes, split as ``fmnist-new`` is (val and train from
  the official train split, test from the official test split): the clean
  task of the ImageNet-pretrained default.
- ``fmnist10-c``: all ten classes of the official test split, corrupted and
  split as ``fmnist-c`` is: ``fmnist``'s label space under an input-level
  shift.
- ``digits``: scikit-learn's 1797 8x8 digits. Test = the first 597 of the
  permutation (``test_size`` None = all 597, a smaller one takes a prefix;
  digits has fewer than 1000 images to spare for a test set, the manifest
  notes it), then val (default 200), then train (the remaining 1000).
- ``elpv``: the 2,624 solar-cell images of the ``elpv-dataset`` package, four
  defect-probability classes. Test = the first 1624 of the permutation
  (``test_size`` smaller takes a prefix), then val (default 200), then train
  (default 800, the rest). Not stratified; the manifest notes the imbalance.

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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import SubtuneError
from . import corruptions
from .prepared import SPLITS
from .registry import (  # noqa: F401  (the registry's records and helpers, re-exported)
    COMMON,
    MIN_TEST,
    RAW,
    TARGETS,
    Builder,
    Built,
    Params,
    Split,
    Target,
    carve,
    cut,
    discover,
    register,
    stratified_order,
)

if TYPE_CHECKING:
    import torch

discover()  # every dataset module registers its targets and raw files


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise SubtuneError(f"unknown dataset {name!r} (known: {', '.join(sorted(TARGETS))})")
    return TARGETS[name]


def raw_dataset(name: str) -> str | None:
    """The raw dataset (download directory name) that dataset ``name`` is built from, or None."""
    return get_target(name).raw


def _check_int(name: str, value: Any, lo: int, hi: int | None = None, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (hi and value > hi):
        rng = f"{lo}..{hi}" if hi else f">= {lo}"
        raise SubtuneError(f"{name} must be an integer {rng}{' or null' if none_ok else ''}, not {value!r}")


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


STANDARDIZE = ("backbone", "dataset")


def _standardize(name: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(standardize, the builder's own parameters)``: ``standardize`` is not a builder parameter."""
    rest = dict(params)
    how = rest.pop("standardize", "backbone")
    if how not in STANDARDIZE:
        raise SubtuneError(f"{name}.standardize must be one of {', '.join(STANDARDIZE)}, not {how!r}")
    return how, rest


def channel_stats(x: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and (unbiased) std of uint8 images ``[N,H,W]`` or ``[N,H,W,C]`` on the [0, 1] scale.

    Exact, from each channel's histogram of the 256 values (no float copy of the images: a VTAB-1k train
    split at 224 px is 120 M values).
    """
    chans = x[..., None] if x.ndim == 3 else x
    mean, std = [], []
    values = np.arange(256, dtype=np.float64) / 255.0
    for c in range(chans.shape[-1]):
        counts = np.bincount(np.ascontiguousarray(chans[..., c]).ravel(), minlength=256).astype(np.float64)
        n = counts.sum()
        m = float(counts @ values / n)
        var = float(counts @ (values - m) ** 2 / max(n - 1, 1))
        mean.append(round(m, 6))
        std.append(round(var**0.5, 6))
    return {"mean": mean, "std": std}


def validate(name: str, params: Mapping[str, Any]) -> None:
    """Check a dataset name and its parameters without building anything (for config validation)."""
    _, rest = _standardize(name, params)
    _params(get_target(name), 0, rest)


def build(
    name: str, raw_dir: str | os.PathLike | None = None, *, seed: int, **params: Any
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Build dataset ``name``: ``({split}_x/_y/_idx tensors, manifest)``.

    ``params``: image_size, train_size, val_size, test_size, and for fmnist-c
    corruptions and severity, for cifar10c-* severity, for caltech101
    background (defaults per dataset, see the module docstring); and
    ``standardize`` (``dataset``: the manifest's ``normalize`` holds the
    training split's per-channel mean and std, see the module docstring).
    """
    import torch

    target = get_target(name)
    standardize, params = _standardize(name, params)
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
    if built.members:  # each archive member read, with its SHA-256 (vtab-1k: its zip has no citable digest)
        manifest["members"] = built.members
    if standardize == "dataset":
        manifest["params"]["standardize"] = standardize
        manifest["normalize"] = {**_floored(channel_stats(built.splits["train"].x), name, manifest["notes"]),
                                 "from": "train"}
    return tensors, manifest


MIN_STD = 1 / 255  # one grey level: the smallest spread a channel is standardised by


def _floored(stats: dict[str, list[float]], name: str, notes: list[str]) -> dict[str, list[float]]:
    """``stats`` with every std below :data:`MIN_STD` raised to it, each raise noted: a channel (nearly) constant
    over the training split (a colour channel of synthetic or grey images) would otherwise divide by zero."""
    std = list(stats["std"])
    for c, s in enumerate(std):
        if s < MIN_STD:
            notes.append(f"{name}: channel {c} of the training split has std {s:g} (< one grey level): "
                         f"standardised with std {MIN_STD:.6f}")
            std[c] = round(MIN_STD, 6)
    return {"mean": stats["mean"], "std": std}
