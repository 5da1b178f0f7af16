"""The prepared-dataset format: one ``.safetensors`` file plus a JSON manifest.

Tensors, for each split ``s`` in train/val/test:

- ``s_x``: uint8 ``[N, C, H, W]`` images (C = 1 for grayscale);
- ``s_y``: int64 ``[N]`` labels ``0..K-1``;
- ``s_idx``: int64 ``[N]`` each image's index in its source array (the
  manifest's ``sources`` names that array), for provenance and disjointness checks.

The manifest holds name, classes, num_classes, channels, image_size, split
sizes, seed, the build parameters, ``inputs`` (input name -> SHA-256) and
``sha256`` of the tensor file; where the dataset was prepared with
``standardize: dataset``, ``normalize`` (the training split's per-channel
``mean`` and ``std``, :func:`normalization`); where an input archive has no
pinned digest, ``members`` (input name -> {archive member -> SHA-256}, each
member read). Both files are written atomically.

:func:`load_prepared` reads only the tensors it is asked for
(``safetensors.safe_open``), so selection code that asks for train/val never
touches the test split. It first checks the tensor file against the
``sha256`` of the manifest beside it (same name, ``.json``), so a truncated or
altered file stops the job with one line naming it and the rule that makes it
again; a tensor file with no manifest beside it is read unchecked.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import SubtuneError
from ..io import atomic_path, read_json, sha256_file, verify_sha256

if TYPE_CHECKING:
    import torch

FORMAT = 1
SPLITS = ("train", "val", "test")
REQUIRED = ("name", "classes", "num_classes", "channels", "image_size", "splits", "seed", "params", "inputs")


def _check(tensors: Mapping[str, torch.Tensor]) -> None:
    import torch

    for split in SPLITS:
        x, y = tensors.get(f"{split}_x"), tensors.get(f"{split}_y")
        if x is None or y is None:
            raise ValueError(f"prepared data needs {split}_x and {split}_y")
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"{split}_x must be uint8 [N,C,H,W], got {x.dtype} {list(x.shape)}")
        if y.dtype != torch.int64 or y.shape != (len(x),):
            raise ValueError(f"{split}_y must be int64 [{len(x)}], got {y.dtype} {list(y.shape)}")
    for key in tensors:
        if key.split("_", 1)[0] not in SPLITS:
            raise ValueError(f"unexpected tensor {key!r} (keys are SPLIT_FIELD)")


def save_prepared(
    path: str | os.PathLike,
    manifest_path: str | os.PathLike,
    splits: Mapping[str, torch.Tensor],
    manifest: Mapping[str, Any],
) -> dict[str, Any]:
    """Write ``splits`` (``{"train_x": ..., "train_y": ..., ...}``) and the manifest; return the manifest written.

    Both files go to temporary names first and are renamed only once both are
    complete (tensor file first, manifest last).
    """
    from safetensors.torch import save_file

    _check(splits)
    tensors = {k: v.contiguous() for k, v in splits.items()}
    with atomic_path(manifest_path) as tmp_manifest, atomic_path(path) as tmp_data:
        save_file(tensors, str(tmp_data), metadata={"format": str(FORMAT)})
        out = {**manifest, "format": FORMAT, "sha256": sha256_file(tmp_data)}
        tmp_manifest.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


def verify_prepared(path: str | os.PathLike) -> None:
    """Check ``path`` against the ``sha256`` its manifest (``path`` with ``.json``) records, when there is one.

    The error names the file and the rule that makes it (``prepare``; ``prepare_seed`` under ``seed<S>/``).
    A manifest that is missing, unreadable or without a digest leaves the check to whoever reads the manifest.
    """
    path = Path(path)
    manifest = path.with_suffix(".json")
    try:
        recorded = json.loads(manifest.read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(recorded, str):
        rule = "prepare_seed" if re.fullmatch(r"seed\d+", path.parent.name) else "prepare"
        verify_sha256(path, recorded, manifest, f"snakemake --forcerun {rule}")


def load_prepared(
    path: str | os.PathLike,
    splits: Sequence[str] = ("train", "val"),
    fields: Sequence[str] = ("x", "y"),
) -> dict[str, torch.Tensor]:
    """Read ``{split}_{field}`` for the requested splits and fields, and nothing else, after checking the
    file's digest (:func:`verify_prepared`)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise SubtuneError(f"missing prepared dataset {path}")
    verify_prepared(path)
    wanted = [f"{s}_{f}" for s in splits for f in fields]
    try:
        with safe_open(str(path), framework="pt") as fh:
            present = set(fh.keys())
            missing = [k for k in wanted if k not in present]
            if missing:
                raise SubtuneError(f"{path}: no tensor {', '.join(missing)} (has {', '.join(sorted(present))})")
            return {k: fh.get_tensor(k) for k in wanted}
    except SafetensorError as exc:
        raise SubtuneError(f"{path}: not a readable safetensors file ({exc})") from None


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read a prepared dataset's manifest and check it has the keys consumers rely on."""
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise SubtuneError(f"{path}: a prepared-dataset manifest must be a JSON object")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise SubtuneError(f"{path}: manifest lacks {', '.join(missing)}")
    return manifest


def normalization(manifest: Mapping[str, Any], mean: Sequence[float], std: Sequence[float]
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel ``(mean, std)`` a model's inputs are standardised with: the dataset's own when it was
    prepared with ``standardize: dataset`` (the manifest's ``normalize``: SubTuning's ``datamodules.py``
    standardises each dataset with its train800 statistics), else ``mean``/``std`` (the backbone's
    pretrained ones, from its checkpoint)."""
    norm = manifest.get("normalize")
    if norm is None:
        return tuple(mean), tuple(std)
    if not isinstance(norm, Mapping) or not norm.get("mean") or len(norm.get("std") or ()) != len(norm["mean"]):
        raise SubtuneError(f"{manifest.get('name', 'manifest')}: normalize must hold mean and std of one length")
    if any(s <= 0 for s in norm["std"]):
        raise SubtuneError(f"{manifest.get('name', 'manifest')}: normalize.std has a channel with no spread "
                           f"({norm['std']}): a constant channel cannot be standardised")
    return tuple(float(m) for m in norm["mean"]), tuple(float(s) for s in norm["std"])
