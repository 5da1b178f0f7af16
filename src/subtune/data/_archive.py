"""Small helpers shared by the archive-backed dataset modules."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .. import SubtuneError
from ..io import sha256_file
from .download import Digests, verify


def raw_file(raw_dir: str | os.PathLike, filename: str, dataset: str) -> Path:
    """``raw_dir/filename``, or a one-line error saying how to download it."""
    path = Path(raw_dir) / filename
    if not path.is_file():
        raise SubtuneError(f"missing {dataset} file {path} (run `subtune download --dataset {dataset}`)")
    return path


def checked(raw_dir: str | os.PathLike, files: Mapping[str, Digests], dataset: str) -> dict[str, str]:
    """Check every downloaded file against its pinned digest; return ``{filename: sha256}`` (a manifest's inputs).

    A file with no pinned digest is hashed and recorded all the same. A file that differs from its pinned SHA-256
    is refused in one line naming both digests in full (what someone comparing with a trusted copy needs).
    """
    inputs = {}
    for filename, digests in files.items():
        path = raw_file(raw_dir, filename, dataset)
        reason = verify(path, *digests)
        if reason is not None:
            if digests[0] is not None and (len(digests) < 2 or digests[1] is None):
                reason = f"sha256 mismatch (expected {digests[0]}, got {sha256_file(path)})"
            raise SubtuneError(f"{path}: does not match the pinned digest ({reason}); download it again")
        sha = digests[0]
        if sha is None:
            sha = sha256_file(path)
        inputs[filename] = sha
    return inputs


# NumPy's array pickling, plus _codecs.encode (how Python 3 writes bytes at pickle protocol 2): nothing else.
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("multiarray", "_reconstruct"), ("multiarray", "scalar"),
    ("_codecs", "encode"),
}  # fmt: skip


class SafeUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and NumPy arrays, and nothing that could run code."""

    def find_class(self, module: str, name: str):
        short = module.rsplit(".", 1)[-1] if module.startswith("numpy") else module
        if (short, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if short == "multiarray":  # numpy.core (NumPy 1, the CIFAR files) or numpy._core (NumPy 2)
            module = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
        return super().find_class(module, name)


def load_pickle(data: bytes, name: str) -> dict[str, object]:
    """A pickled dict (Python 2 or 3) with its keys as ``str``."""
    import io

    try:
        obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # truncated data, forbidden globals, ...
        raise SubtuneError(f"{name}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise SubtuneError(f"{name}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
