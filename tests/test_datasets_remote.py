"""The colour datasets end to end: tiny archives in each real format, served over HTTP, downloaded, verified, parsed.

Each test builds a small archive laid out exactly like the published one
(CIFAR python pickles in a .tar.gz, CIFAR-10-C .npy files in a .tar, Oxford
Flowers' .tgz + .mat files, CaltechDATA's zip around a .tar.gz, NOAH's VTAB-1k
zip), serves it from a real ``http.server`` on 127.0.0.1, and runs the
``download`` stage's code (:func:`download_dataset`) and then ``targets.build``.
The tiny archives cannot match the published digests, so each test pins its
own archive's digest in the dataset's ``FILES`` registry (what a user with a
different trusted copy would do); verification is never switched off.
"""

from __future__ import annotations

import contextlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from subtune import SubtuneError
from subtune.data import caltech101, cifar, cifar10c, flowers102, prepared, targets, vtab
from subtune.data.download import DownloadError, download_dataset
from subtune.io import read_json

from helpers.archives import (
    C10C_PER_SEVERITY,
    CALTECH_CLASSES,
    FLOWER_LABELS,
    VTAB_TEST,
    http_mirror,
    make_caltech,
    make_cifar10,
    make_cifar10c,
    make_cifar100,
    make_flowers,
    make_vtab,
    md5,
    sha256,
)


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def serve():
    """serve(directory) -> base URL of a real HTTP server on 127.0.0.1 (stopped after the test)."""
    with contextlib.ExitStack() as stack:
        yield lambda directory: stack.enter_context(http_mirror(directory))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No environment mirrors, and no built-in (internet) mirror is ever tried."""
    monkeypatch.delenv("SUBTUNE_MIRRORS", raising=False)
    for mod in (cifar10c, flowers102, caltech101, vtab):
        monkeypatch.setattr(mod, "MIRRORS", [])
    for spec in (cifar.CIFAR10, cifar.CIFAR100):
        monkeypatch.setattr(spec, "mirrors", [])


# raw dataset -> (maker, module-level FILES registry to pin, digest kind)
RAW = {
    "cifar-10": (make_cifar10, cifar.CIFAR10.files, "sha256"),
    "cifar-100": (make_cifar100, cifar.CIFAR100.files, "sha256"),
    "cifar-10-c": (make_cifar10c, cifar10c.FILES, "sha256"),
    "flowers102": (make_flowers, flowers102.FILES, "sha256"),
    "caltech101": (make_caltech, caltech101.FILES, "md5"),  # CaltechDATA's zip is pinned by torchvision's MD5
    "vtab-1k": (make_vtab, vtab.FILES, None),  # no citable digest: the zip is checked structurally
}


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """Every tiny archive, built once: {raw dataset: [paths]}."""
    out = {}
    for name, (maker, _, _) in RAW.items():
        d = tmp_path_factory.mktemp(name)
        made = maker(d)
        out[name] = made if isinstance(made, list) else [made]
    return out


def pin(monkeypatch, raw: str, paths: list[Path]) -> None:
    """Pin the tiny archives' own digests in the dataset's registry, as published digests are pinned."""
    _, files, kind = RAW[raw]
    for p in paths:
        assert p.name in files, p.name
        if kind == "sha256":
            monkeypatch.setitem(files, p.name, (sha256(p), None))
        elif kind == "md5":
            monkeypatch.setitem(files, p.name, (None, None, md5(p)))


def download(raw: str, archives, serve, monkeypatch, tmp_path) -> Path:
    pin(monkeypatch, raw, archives[raw])
    raw_dir = tmp_path / "raw" / raw
    files = download_dataset(raw, raw_dir, mirrors=[serve(archives[raw][0].parent)])
    manifest = read_json(raw_dir / "MANIFEST.json")
    assert manifest["dataset"] == raw and sorted(manifest["files"]) == sorted(p.name for p in archives[raw])
    for p in archives[raw]:
        assert files[p.name].read_bytes() == p.read_bytes()
        assert manifest["files"][p.name]["sha256"] == sha256(p)
    assert not [p for p in raw_dir.iterdir() if p.name.endswith(".part")]
    return raw_dir


def check_common(tensors, manifest, size, sizes, num_classes):
    assert manifest["channels"] == 3 and manifest["num_classes"] == num_classes == len(manifest["classes"])
    for split in prepared.SPLITS:
        x, y, idx = tensors[f"{split}_x"], tensors[f"{split}_y"], tensors[f"{split}_idx"]
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, size, size)
        assert y.dtype == torch.int64 and len(y) == len(x) == len(idx) == manifest["splits"][split]
        assert int(y.min()) >= 0 and int(y.max()) < num_classes
        if sizes.get(split) is not None:
            assert len(y) == sizes[split], split
    by_source: dict[str, list[np.ndarray]] = {}
    for split in prepared.SPLITS:
        by_source.setdefault(manifest["sources"][split], []).append(tensors[f"{split}_idx"].numpy())
    for parts in by_source.values():
        all_idx = np.concatenate(parts)
        assert len(np.unique(all_idx)) == len(all_idx)  # no image in two splits


# ------------------------------------------------------------------ download -> verify -> parse
def test_cifar10_end_to_end(archives, serve, monkeypatch, tmp_path):
    raw_dir = download("cifar-10", archives, serve, monkeypatch, tmp_path)
    tensors, manifest = targets.build("cifar10", raw_dir, seed=0, val_size=10, image_size=32)
    check_common(tensors, manifest, 32, {"val": 10, "train": 30, "test": 12}, 10)
    assert manifest["classes"][9] == "truck"
    assert manifest["inputs"] == {"cifar-10-python.tar.gz": sha256(archives["cifar-10"][0])}
    # pixels: the pickle's planes (R, G, B) become channels, unchanged at 32x32
    with tarfile.open(archives["cifar-10"][0]) as tar:
        blob = pickle.loads(tar.extractfile("cifar-10-batches-py/test_batch").read(), encoding="bytes")
    i = int(tensors["test_idx"][0])
    np.testing.assert_array_equal(tensors["test_x"][0].numpy(), blob[b"data"][i].reshape(3, 32, 32))
    assert int(tensors["test_y"][0]) == blob[b"labels"][i]
    small, _ = targets.build("cifar10", raw_dir, seed=0, val_size=10, image_size=16, test_size=5)
    assert small["test_x"].shape == (5, 3, 16, 16)


def test_cifar100_end_to_end(archives, serve, monkeypatch, tmp_path):
    raw_dir = download("cifar-100", archives, serve, monkeypatch, tmp_path)
    tensors, manifest = targets.build("cifar100", raw_dir, seed=1, val_size=5, train_size=20, image_size=24)
    check_common(tensors, manifest, 24, {"val": 5, "train": 20, "test": 10}, 100)
    assert manifest["classes"][:2] == ["c0", "c1"] and manifest["sources"]["train"] == "cifar-100:train"
    out = prepared.save_prepared(tmp_path / "c.safetensors", tmp_path / "c.json", tensors, manifest)
    assert prepared.load_manifest(tmp_path / "c.json") == out and out["channels"] == 3
    back = prepared.load_prepared(tmp_path / "c.safetensors", splits=prepared.SPLITS, fields=("x", "y", "idx"))
    assert all(torch.equal(v, tensors[k]) for k, v in back.items())


def test_cifar10c_surgical_split(archives, serve, monkeypatch, tmp_path):
    raw_dir = download("cifar-10-c", archives, serve, monkeypatch, tmp_path)
    sizes = {"test_size": 10, "val_size": 10, "train_size": 20}  # per class 1 / 1 / 2 (the paper: 90 / 10 / 100)
    tensors, manifest = targets.build("cifar10c-gaussian_noise", raw_dir, seed=0, image_size=32, **sizes)
    check_common(tensors, manifest, 32, {"test": 10, "val": 10, "train": 20}, 10)
    for split, per_class in (("test", 1), ("val", 1), ("train", 2)):
        assert np.bincount(tensors[f"{split}_y"].numpy(), minlength=10).tolist() == [per_class] * 10
        x = tensors[f"{split}_x"].numpy()
        assert (x[:, 0, 0, 0] == 5).all()  # severity 5 rows only
        idx = tensors[f"{split}_idx"].numpy()
        np.testing.assert_array_equal(idx, 4 * C10C_PER_SEVERITY + x[:, 1, 0, 0])  # rows of the 50k-style array
    assert manifest["params"]["severity"] == 5 and manifest["sources"]["test"] == "cifar-10-c:gaussian_noise.npy"
    sev1, _ = targets.build("cifar10c-gaussian_noise", raw_dir, seed=0, image_size=32, severity=1, **sizes)
    assert (sev1["train_x"][:, 0, 0, 0] == 1).all()
    bigger, _ = targets.build("cifar10c-gaussian_noise", raw_dir, seed=0, image_size=32, **{**sizes, "train_size": 30})
    assert torch.equal(bigger["test_idx"], tensors["test_idx"]) and torch.equal(bigger["val_idx"], tensors["val_idx"])
    assert torch.equal(bigger["train_idx"][:20], tensors["train_idx"])  # nested training sets
    with pytest.raises(SubtuneError, match="cifar10c-fog.severity must be an integer 1..5"):
        targets.build("cifar10c-fog", raw_dir, seed=0, severity=6)
    with pytest.raises(SubtuneError, match="cifar10c-fog: train_size 1000 is larger than the pool of 30"):
        targets.build("cifar10c-fog", raw_dir, seed=0, test_size=10, val_size=10)


def test_flowers102_official_splits(archives, serve, monkeypatch, tmp_path):
    raw_dir = download("flowers102", archives, serve, monkeypatch, tmp_path)
    tensors, manifest = targets.build("flowers102", raw_dir, seed=0, image_size=16, val_size=3)
    check_common(tensors, manifest, 16, {"train": 4, "val": 3, "test": 5}, 102)
    assert tensors["train_idx"].tolist() == [0, 1, 2, 3] and tensors["test_idx"].tolist() == [7, 8, 9, 10, 11]
    np.testing.assert_array_equal(tensors["test_y"].numpy(), FLOWER_LABELS[7:] - 1)
    red = tensors["test_x"][:, 0].float().mean((1, 2)).numpy()
    np.testing.assert_allclose(red, 2 * FLOWER_LABELS[7:], atol=4)  # the right image under each label
    assert manifest["classes"][0] == "pink primrose" and len(manifest["inputs"]) == 3
    with pytest.raises(SubtuneError, match="flowers102: val_size 4 is larger than the official val split .3 images"):
        targets.build("flowers102", raw_dir, seed=0, val_size=4)


def test_caltech101_tfds_protocol_and_background(archives, serve, monkeypatch, tmp_path):
    raw_dir = download("caltech101", archives, serve, monkeypatch, tmp_path)
    tensors, manifest = targets.build("caltech101", raw_dir, seed=0, image_size=16, val_size=20)
    total = sum(CALTECH_CLASSES.values())
    check_common(tensors, manifest, 16, {"val": 20, "train": 100, "test": total - 120}, 4)
    assert manifest["classes"] == ["accordion", "ant", "background_google", "faces_easy"]
    pool = np.concatenate([tensors["train_y"].numpy(), tensors["val_y"].numpy()])
    assert np.bincount(pool).tolist() == [30] * 4  # 30 per class for training, as TFDS
    red = tensors["test_x"][:, 0].float().mean((1, 2)).numpy()
    np.testing.assert_allclose(red, 50 * tensors["test_y"].numpy() + 10, atol=4)
    no_bg, m2 = targets.build("caltech101", raw_dir, seed=0, image_size=16, val_size=20, background=False)
    assert m2["classes"] == ["accordion", "ant", "faces_easy"] and m2["num_classes"] == 3
    assert len(no_bg["test_y"]) == total - CALTECH_CLASSES["BACKGROUND_Google"] - 90
    with pytest.raises(SubtuneError, match="caltech101.background must be true or false"):
        targets.validate("caltech101", {"background": "no"})


def test_vtab_noah_format(archives, serve, monkeypatch, tmp_path, caplog):
    raw_dir = download("vtab-1k", archives, serve, monkeypatch, tmp_path)
    assert "only checked structurally" in caplog.text  # no citable digest for this copy: said, not hidden
    tensors, manifest = targets.build("vtab-eurosat", raw_dir, seed=0, image_size=16)
    check_common(tensors, manifest, 16, {"train": 800, "val": 200, "test": VTAB_TEST}, 10)
    assert tensors["train_idx"].tolist() == list(range(800))  # train800 exactly, in the list's order
    assert manifest["sources"]["val"] == "vtab-1k:vtab-1k/eurosat/val200.txt"
    assert manifest["inputs"] == {"vtab-1k.zip": sha256(archives["vtab-1k"][0])}
    expected = [(i * 7 + len("train800")) % 10 for i in range(800)]
    assert tensors["train_y"].tolist() == expected
    red = tensors["test_x"][:, 0].float().mean((1, 2)).numpy()
    np.testing.assert_allclose(red, 20 * tensors["test_y"].numpy() + 10, atol=4)
    sub, _ = targets.build("vtab-eurosat", raw_dir, seed=0, image_size=16, train_size=100, test_size=10)
    assert len(sub["train_y"]) == 100 and torch.equal(sub["val_idx"], tensors["val_idx"])
    with pytest.raises(SubtuneError, match="vtab-eurosat: val_size 300 is larger than val200.txt .200 images"):
        targets.build("vtab-eurosat", raw_dir, seed=0, val_size=300)
    with pytest.raises(SubtuneError, match="vtab-1k.zip: archive lacks vtab-1k/dtd/val200.txt"):
        targets.build("vtab-dtd", raw_dir, seed=0)


# ------------------------------------------------------------------ tampered and truncated archives
@pytest.mark.parametrize("damage", ["tampered", "truncated"])
@pytest.mark.parametrize("raw", sorted(RAW))
def test_damaged_archive_rejected_nothing_left(raw, damage, archives, serve, monkeypatch, tmp_path):
    pin(monkeypatch, raw, archives[raw])  # the digests of the good copies
    bad = tmp_path / "bad"
    bad.mkdir()
    target = archives[raw][0]  # the (main) archive
    for p in archives[raw]:
        data = p.read_bytes()
        if p == target:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :] if damage == "tampered" else data[:mid]
        (bad / p.name).write_bytes(data)
    url = serve(bad)
    raw_dir = tmp_path / "raw" / raw
    with pytest.raises(DownloadError) as err:
        download_dataset(raw, raw_dir, mirrors=[url])
    msg = str(err.value)
    assert "\n" not in msg and target.name in msg and f"{url}{target.name}" in msg
    kind = RAW[raw][2]
    assert (f"{kind} mismatch" if kind else "zip") in msg
    left = sorted(p.name for p in raw_dir.rglob("*")) if raw_dir.exists() else []
    assert target.name not in left and "MANIFEST.json" not in left
    assert not [n for n in left if n.endswith(".part")]


def test_damaged_file_in_raw_dir_is_caught_when_parsing(archives, serve, monkeypatch, tmp_path):
    raw_dir = download("cifar-10", archives, serve, monkeypatch, tmp_path)
    path = raw_dir / "cifar-10-python.tar.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SubtuneError, match=r"cifar-10-python.tar.gz: does not match the pinned digest \(sha256 mis"):
        targets.build("cifar10", raw_dir, seed=0, val_size=10)


def test_missing_raw_file_is_named(tmp_path):
    with pytest.raises(SubtuneError, match=r"missing flowers102 file .*102flowers.tgz \(run `subtune download"):
        targets.build("flowers102", tmp_path, seed=0)


def test_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    from subtune.data._archive import load_pickle

    with pytest.raises(SubtuneError, match=r"refusing to unpickle (__builtin__|builtins)\.print"):
        load_pickle(pickle.dumps({b"data": Evil()}, protocol=2), "evil")
    arr = np.arange(6, dtype=np.uint8)
    assert (load_pickle(pickle.dumps({b"data": arr}), "ok")["data"] == arr).all()


def test_registry_names_and_schema(tmp_path):
    names = set(targets.TARGETS)
    assert {"cifar10", "cifar100", "flowers102", "caltech101"} <= names
    assert {f"cifar10c-{c}" for c in cifar10c.CORRUPTIONS} <= names and len(cifar10c.CORRUPTIONS) == 19
    assert {f"vtab-{t}" for t in vtab.TASKS} <= names and len(vtab.TASKS) == 19
    assert set(cifar10c.SURGICAL) <= set(cifar10c.CORRUPTIONS) and len(cifar10c.SURGICAL) == 14
    assert targets.raw_dataset("vtab-dmlab") == "vtab-1k" and targets.raw_dataset("cifar10c-fog") == "cifar-10-c"
    with pytest.raises(SubtuneError, match="vtab-dmlab: unknown parameter severity"):
        targets.validate("vtab-dmlab", {"severity": 5})
    targets.validate("cifar10c-snow", {"severity": 3, "train_size": 500})
    # every new parameter is allowed by the config schema
    import yaml

    schema = yaml.safe_load(Path(__file__).parents[1].joinpath("schemas/config.schema.yaml").read_text())
    allowed = set(schema["$defs"]["dataset_params"]["properties"]) | {"image_size"}
    for t in targets.TARGETS.values():
        assert set(t.defaults) <= allowed, t.name
