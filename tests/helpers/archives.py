"""Tiny archives in the published formats, and a loopback HTTP server to serve them (shared by the tests).

Each ``make_*`` writes a small archive laid out exactly like the published one
(CIFAR python pickles in a .tar.gz, CIFAR-10-C ``.npy`` files in a .tar, Oxford
Flowers' .tgz + .mat files, CaltechDATA's zip around a .tar.gz, NOAH's VTAB-1k
zip) and returns its path(s). Sizes are arguments so that both the parser tests
(tests/test_datasets_remote.py) and the tiny end-to-end runs of the paper
configs (tests/test_paper_configs.py) use the same builders.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_mirror(directory: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving ``directory``: yields its base URL, stops on exit."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def jpeg(value: int, size: tuple[int, int] = (20, 14), mode: str = "RGB") -> bytes:
    """A flat image whose red channel is ``value`` (so a label can be read back from the pixels)."""
    colour = (value, 40, 200) if mode == "RGB" else value
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ------------------------------------------------------------------ tiny archives in the real formats
def make_cifar10(d: Path, per_batch: int = 8, test: int = 12) -> Path:
    """CIFAR-10's python tarball: five training batches of ``per_batch`` images, a test batch of ``test``."""
    rng = np.random.default_rng(0)

    def batch(n, start):
        return pickle.dumps({b"batch_label": b"x", b"labels": [(start + i) % 10 for i in range(n)],
                             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, protocol=2)  # fmt: skip

    path = d / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for i in range(1, 6):
            add_bytes(tar, f"cifar-10-batches-py/data_batch_{i}", batch(per_batch, i))
        add_bytes(tar, "cifar-10-batches-py/test_batch", batch(test, 0))
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
        add_bytes(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": names}, protocol=2))
    return path


def make_cifar100(d: Path) -> Path:
    rng = np.random.default_rng(1)
    path = d / "cifar-100-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, n in (("train", 40), ("test", 10)):
            blob = {b"fine_labels": [int(v) for v in rng.integers(0, 100, n)], b"coarse_labels": [0] * n,
                    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}  # fmt: skip
            add_bytes(tar, f"cifar-100-python/{name}", pickle.dumps(blob, protocol=2))
        meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []}
        add_bytes(tar, "cifar-100-python/meta", pickle.dumps(meta, protocol=2))
    return path


C10C_PER_SEVERITY = 50  # 5 per class (the real file: 10,000)


def make_cifar10c(d: Path, per_severity: int = C10C_PER_SEVERITY,
                  corruptions: Sequence[str] = ("gaussian_noise", "fog")) -> Path:  # fmt: skip
    """CIFAR-10-C's tar: ``<corruption>.npy`` (severities 1..5 stacked) and ``labels.npy``.

    Pixel (0,0) encodes the row: red = severity, green = index within the
    severity; the first corruption holds the rows in order, the others reversed.
    """
    n = per_severity
    labels = np.tile(np.arange(n) % 10, 5).astype(np.uint8)
    x = np.zeros((5 * n, 32, 32, 3), np.uint8)
    x[:, 0, 0, 0] = np.repeat(np.arange(1, 6), n)  # pixel (0,0) red = severity
    x[:, 0, 0, 1] = np.tile(np.arange(n), 5)  # pixel (0,0) green = index within the severity
    path = d / "CIFAR-10-C.tar"
    with tarfile.open(path, "w") as tar:
        arrays = [(c, x if i == 0 else x[::-1].copy()) for i, c in enumerate(corruptions)]
        for name, arr in [*arrays, ("labels", labels)]:
            buf = io.BytesIO()
            np.save(buf, arr)
            add_bytes(tar, f"CIFAR-10-C/{name}.npy", buf.getvalue())
    return path


FLOWER_LABELS = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3, 102, 102, 5])  # 1-based, 12 images


def make_flowers(d: Path) -> list[Path]:
    from scipy.io import savemat

    with tarfile.open(d / "102flowers.tgz", "w:gz") as tar:
        for i, label in enumerate(FLOWER_LABELS, 1):
            add_bytes(tar, f"jpg/image_{i:05d}.jpg", jpeg(2 * int(label)))
    savemat(d / "imagelabels.mat", {"labels": FLOWER_LABELS[None].astype(np.uint8)})
    savemat(d / "setid.mat", {"trnid": np.array([[1, 2, 3, 4]]), "valid": np.array([[5, 6, 7]]),
                              "tstid": np.array([[8, 9, 10, 11, 12]])})  # fmt: skip
    return [d / "102flowers.tgz", d / "imagelabels.mat", d / "setid.mat"]


CALTECH_CLASSES = {"accordion": 40, "BACKGROUND_Google": 33, "Faces_easy": 31, "ant": 35}


def make_caltech(d: Path) -> Path:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for k, (cls, n) in enumerate(sorted(CALTECH_CLASSES.items(), key=lambda kv: kv[0].lower())):
            for i in range(1, n + 1):
                mode = "L" if i == 1 else "RGB"  # Caltech101 has a few grayscale JPEGs
                add_bytes(tar, f"101_ObjectCategories/{cls}/image_{i:04d}.jpg", jpeg(50 * k + 10, mode=mode))
        add_bytes(tar, "101_ObjectCategories/BACKGROUND_Google/tmp", b"not an image")
    path = d / "caltech-101.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("caltech-101/101_ObjectCategories.tar.gz", inner.getvalue())
        zf.writestr("caltech-101/Annotations.tar", b"")
    return path


VTAB_TEST = 30


def make_vtab(d: Path, tasks: Mapping[str, int] | None = None, test: int = VTAB_TEST,
              size: tuple[int, int] = (20, 14)) -> Path:  # fmt: skip
    """NOAH's layout: per task folder (archive name -> number of classes) train800 / val200 lists of 800 and
    200 images (VTAB-1k's sizes, which the parser checks), a ``test``-image test list and train800val200.

    Default: one task, eurosat (10 classes), and another task's folder that is never read.
    """
    stub = tasks is None
    tasks = {"eurosat": 10} if tasks is None else dict(tasks)
    path = d / "vtab-1k.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for folder, k in tasks.items():
            lines = {}
            for split, n in (("train800", 800), ("val200", 200), ("test", test)):
                rows = []
                for i in range(n):
                    label = (i * 7 + len(split)) % k
                    name = f"images/{split}/{i:06d}.jpg"
                    zf.writestr(f"vtab-1k/{folder}/{name}", jpeg((20 * label + 10) % 256, size))
                    rows.append(f"{name} {label}")
                lines[split] = rows
            for split in ("train800", "val200", "test"):
                zf.writestr(f"vtab-1k/{folder}/{split}.txt", "\n".join(lines[split]) + "\n")
            union = [r.replace("/train800/", "/train800val200/").replace("/val200/", "/train800val200/")
                     for r in lines["train800"] + lines["val200"]]  # fmt: skip
            zf.writestr(f"vtab-1k/{folder}/train800val200.txt", "\n".join(union) + "\n")
        if stub:
            zf.writestr("vtab-1k/dtd/train800.txt", "")  # another task's folder: not read
    return path
