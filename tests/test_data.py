"""The data layer: downloads (mirrors, checksums, atomicity), parsers, corruptions, splits, the prepared format."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from subtune import SubtuneError
from subtune.data import corruptions, fashion_mnist, prepared, targets
from subtune.data.download import DownloadError, download_dataset, fetch, fetch_all, mirror_order, verify
from subtune.data.images import resize
from subtune.io import read_json

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is absent: install dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
    "or run make test",
)

PAYLOAD = b"subtune test payload\n" * 100
SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ------------------------------------------------------------------ fixtures
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(directory) -> base URL of a real HTTP server on 127.0.0.1 (stopped after the test)."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def dead_url():
    """A base URL on a local port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def mirrors(tmp_path):
    """Directories: `good` (the payload), `bad` (a tampered copy), `empty`."""
    dirs = {k: tmp_path / k for k in ("good", "bad", "empty")}
    for d in dirs.values():
        d.mkdir()
    (dirs["good"] / "f.bin").write_bytes(PAYLOAD)
    (dirs["bad"] / "f.bin").write_bytes(PAYLOAD[:-1] + b"X")
    return dirs


@pytest.fixture(autouse=True)
def _no_env_mirrors(monkeypatch):
    monkeypatch.delenv("SUBTUNE_MIRRORS", raising=False)


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ------------------------------------------------------------------ download
def test_tampered_file_rejected_nothing_left(tmp_path, mirrors, serve):
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as err:
        fetch("f.bin", [serve(mirrors["bad"])], dest, sha256=SHA)
    msg = str(err.value)
    assert "\n" not in msg and "f.bin" in msg and "sha256 mismatch" in msg and SHA[:8] in msg
    assert leftovers(dest) == []  # neither the final name nor a temporary file


def test_mirror_fallback(tmp_path, mirrors, serve, dead_url):
    order = [dead_url, serve(mirrors["empty"]), serve(mirrors["bad"]), serve(mirrors["good"])]
    path = fetch("f.bin", order, tmp_path / "dest", sha256=SHA)
    assert path == tmp_path / "dest" / "f.bin" and path.read_bytes() == PAYLOAD
    assert leftovers(tmp_path / "dest") == ["f.bin"]


def test_error_lists_every_mirror(tmp_path, mirrors, serve, dead_url):
    order = [dead_url, serve(mirrors["empty"]), serve(mirrors["bad"]), mirrors["empty"].as_uri(), "ftp://x/"]
    with pytest.raises(DownloadError) as err:
        fetch("f.bin", order, tmp_path / "dest", sha256=SHA)
    msg = str(err.value)
    assert msg.startswith("could not fetch f.bin from any mirror: ") and "\n" not in msg
    for m in order:
        assert m.rstrip("/") + "/f.bin" in msg
    assert "unreachable (connection refused)" in msg and "HTTP 404" in msg and "sha256 mismatch" in msg
    assert "unsupported URL scheme" in msg
    assert leftovers(tmp_path / "dest") == []


def test_file_mirror(tmp_path, mirrors):
    path = fetch("f.bin", [mirrors["good"].as_uri()], tmp_path / "dest", sha256=SHA)
    assert path.read_bytes() == PAYLOAD


def test_existing_verified_file_not_downloaded(tmp_path, mirrors, dead_url):
    path = fetch("f.bin", [mirrors["good"].as_uri()], tmp_path, sha256=SHA)
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert fetch("f.bin", [dead_url], tmp_path, sha256=SHA) == path  # no mirror needed
    assert path.stat().st_mtime_ns == before


def test_existing_bad_file_downloaded_again(tmp_path, mirrors, caplog):
    (tmp_path / "f.bin").write_bytes(b"stale")
    path = fetch("f.bin", [mirrors["good"].as_uri()], tmp_path, sha256=SHA)
    assert path.read_bytes() == PAYLOAD
    assert "does not verify" in caplog.text


def test_payload_digest_accepts_regzipped_file(tmp_path):
    upstream = gzip.compress(PAYLOAD, compresslevel=9, mtime=0)
    regzipped = gzip.compress(PAYLOAD, compresslevel=1, mtime=12345)
    assert upstream != regzipped
    (tmp_path / "f.gz").write_bytes(regzipped)
    gz_sha = hashlib.sha256(upstream).hexdigest()
    assert verify(tmp_path / "f.gz", gz_sha, SHA) is None
    assert "sha256 mismatch" in verify(tmp_path / "f.gz", gz_sha, None)
    assert "gunzipped" in verify(tmp_path / "f.gz", gz_sha, hashlib.sha256(b"other").hexdigest())


def test_env_mirrors_tried_first(tmp_path, mirrors, monkeypatch, dead_url):
    monkeypatch.setenv("SUBTUNE_MIRRORS", f" {mirrors['good'].as_uri()} ,")
    files = fetch_all({"f.bin": (SHA, None)}, [dead_url], tmp_path / "dest")
    assert files["f.bin"].read_bytes() == PAYLOAD
    assert mirror_order(["http://a/"], ["http://a", "http://b"]) == [mirrors["good"].as_uri(), "http://a/", "http://b"]


def test_unreachable_mirror_skipped_for_later_files(tmp_path, mirrors, dead_url):
    (mirrors["good"] / "g.bin").write_bytes(PAYLOAD)
    with pytest.raises(DownloadError) as err:
        fetch_all({"f.bin": (SHA, None), "h.bin": (SHA, None)}, [dead_url, mirrors["good"].as_uri()], tmp_path)
    assert "skipped: mirror unreachable" in str(err.value) and "h.bin" in str(err.value)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "subtune.data.download" and r.levelname == "WARNING"]


def test_each_failed_mirror_gets_one_line_with_its_reason(tmp_path, serve, dead_url, caplog):
    """Closed port, 404, a flipped byte, a cut-off archive: one warning each, saying why; then the good one."""
    gz = gzip.compress(PAYLOAD * 50, mtime=0)
    sha = hashlib.sha256(gz).hexdigest()
    flipped = bytearray(gz)
    flipped[len(gz) // 2] ^= 0x01
    served = {"empty": None, "flipped": bytes(flipped), "truncated": gz[: len(gz) // 2], "good": gz}
    urls = {}
    for name, data in served.items():
        (tmp_path / name).mkdir()
        if data is not None:
            (tmp_path / name / "f.gz").write_bytes(data)
        urls[name] = serve(tmp_path / name)
    caplog.set_level("INFO", logger="subtune.data.download")
    order = [dead_url, urls["empty"], urls["flipped"], urls["truncated"], urls["good"]]
    path = fetch("f.gz", order, tmp_path / "dest", sha256=sha)
    assert path.read_bytes() == gz
    got = _warnings(caplog)
    short = lambda b: hashlib.sha256(b).hexdigest()[:12]  # noqa: E731
    assert len(got) == 4, got
    assert got[0] == f"failed {dead_url}f.gz: unreachable (connection refused); not trying this mirror again " \
                     "in this download"
    assert got[1] == f"failed {urls['empty']}f.gz: HTTP 404 File not found"
    assert got[2].startswith(f"rejected {urls['flipped']}f.gz: sha256 mismatch (expected {sha[:12]}, "
                             f"got {short(bytes(flipped))})")
    assert got[3] == (f"rejected {urls['truncated']}f.gz: sha256 mismatch (expected {sha[:12]}, "
                      f"got {short(gz[: len(gz) // 2])}): truncated gzip archive")
    assert f"{urls['good']}f.gz: verified" in caplog.text


@needs_fmnist
def test_fashion_mnist_flipped_byte_mirror_is_named_with_both_digests(tmp_path, serve, caplog):
    name = "t10k-labels-idx1-ubyte.gz"
    data = bytearray((FMNIST / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / name).write_bytes(bytes(data))
    bad = serve(tmp_path / "bad")
    caplog.set_level("INFO", logger="subtune.data.download")
    files = fetch_all({name: fashion_mnist.FILES[name]}, [bad, FMNIST.as_uri()], tmp_path / "dest")
    assert verify(files[name], *fashion_mnist.FILES[name]) is None
    want = fashion_mnist.FILES[name][0][:12]
    (line,) = _warnings(caplog)
    assert line.startswith(f"rejected {bad}{name}: sha256 mismatch (expected {want}, "
                           f"got {hashlib.sha256(bytes(data)).hexdigest()[:12]})"), line


class _ShortBody(http.server.BaseHTTPRequestHandler):
    """Promises 2000 bytes, sends 1000, closes the connection."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2000")
        self.end_headers()
        self.wfile.write(b"x" * 1000)
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_connection_closed_early_is_named(tmp_path, caplog):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ShortBody)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/"
        with pytest.raises(DownloadError, match="truncated download: 1000 of 2000 bytes"):
            fetch("f.bin", [url], tmp_path, sha256=SHA)
    finally:
        srv.shutdown()
        srv.server_close()
    assert _warnings(caplog) == [f"failed {url}f.bin: truncated download: 1000 of 2000 bytes (connection closed early)"]
    assert leftovers(tmp_path) == []


def test_silent_server_times_out(tmp_path, caplog):
    with socket.socket() as s:  # accepts connections (the backlog), never answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
        with pytest.raises(DownloadError):
            fetch("f.bin", [url], tmp_path, sha256=SHA, timeout=0.3)
    assert _warnings(caplog) == [f"failed {url}f.bin: unreachable (timed out after 0.3 s); not trying this mirror "
                                 "again in this download"]


BIG = bytes(range(256)) * 3907  # 1,000,192 bytes


def test_download_progress_lines_in_a_log(tmp_path, serve, caplog):
    """Not a terminal (a job's log): a line per 10 % with bytes done, total and rate, then a summary."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "big.bin").write_bytes(BIG)
    caplog.set_level("INFO", logger="subtune.data.download")
    fetch("big.bin", [serve(tmp_path / "m")], tmp_path / "dest", sha256=hashlib.sha256(BIG).hexdigest())
    import re

    lines = [r.getMessage() for r in caplog.records]
    pct = [re.fullmatch(r"big\.bin: (\d+)% \([\d.]+ [kM]B of 1\.0 MB, [\d.]+ [kMG]?B/s\)", m) for m in lines]
    pct = [int(m.group(1)) for m in pct if m]
    assert [p // 10 for p in pct] == list(range(1, 10)), lines
    assert any(re.fullmatch(r"big\.bin: 1\.0 MB in [\d.]+ s \([\d.]+ [kMG]?B/s\)", m) for m in lines), lines


def test_download_progress_bar_on_a_terminal(tmp_path, serve):
    """On a terminal: tqdm's bar (size, rate), and no per-10 % lines."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "big.bin").write_bytes(BIG)
    url = serve(tmp_path / "m")
    code = ("import logging, sys\nlogging.basicConfig(level=logging.INFO, format='%(message)s')\n"
            "from subtune.data.download import fetch\n"
            f"fetch('big.bin', [{url!r}], {str(tmp_path / 'dest')!r}, sha256={hashlib.sha256(BIG).hexdigest()!r})\n")
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    p = subprocess.Popen([sys.executable, "-c", code], stdout=sub, stderr=sub, stdin=subprocess.DEVNULL)
    os.close(sub)
    out = b""
    while True:
        try:
            chunk = os.read(main, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert p.wait(timeout=60) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "big.bin:" in text and "/1.00M [" in text and "B/s]" in text, text  # tqdm: done/total [time, rate]
    assert "% (" not in text and "big.bin: 1.0 MB in" in text


@needs_fmnist
def test_fashion_mnist_download_from_debian_mirror(tmp_path):
    raw = tmp_path / "raw"
    files = download_dataset("fashion-mnist", raw, mirrors=[FMNIST.as_uri()])
    assert sorted(files) == sorted(fashion_mnist.FILES)
    for name, path in files.items():
        assert verify(path, *fashion_mnist.FILES[name]) is None
    manifest = read_json(raw / "MANIFEST.json")
    assert manifest["dataset"] == "fashion-mnist" and sorted(manifest["files"]) == sorted(fashion_mnist.FILES)
    assert not [p for p in raw.iterdir() if p.name.endswith(".part")]


def test_unknown_raw_dataset():
    with pytest.raises(SubtuneError, match="unknown raw dataset 'nope'"):
        download_dataset("nope", "/tmp/never")


# ------------------------------------------------------------------ idx files
def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.astype(np.uint8).tobytes()


def test_parse_idx_roundtrip_and_errors(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(fashion_mnist.read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(SubtuneError, match=r"bad: not an unsigned-byte idx file \(magic 00000d01\)"):
        fashion_mnist.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(idx_bytes(arr)[:-1])
    with pytest.raises(SubtuneError, match="short: idx dims .2, 3, 4. need 24 bytes of data, found 23"):
        fashion_mnist.read_idx(tmp_path / "short")


def test_load_missing_file_is_clear(tmp_path):
    with pytest.raises(SubtuneError, match="missing Fashion-MNIST file .*train-images-idx3-ubyte.gz"):
        fashion_mnist.load(tmp_path)


@needs_fmnist
def test_load_fashion_mnist():
    train_x, train_y, test_x, test_y = fashion_mnist.load(FMNIST)
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28) and test_y.dtype == np.int64
    assert np.bincount(train_y).tolist() == [6000] * 10 and np.bincount(test_y).tolist() == [1000] * 10
    assert train_y[:5].tolist() == [9, 0, 0, 3, 0] and test_y[:5].tolist() == [9, 2, 1, 1, 6]
    assert len(fashion_mnist.CLASSES) == 10 and fashion_mnist.CLASSES[9] == "Ankle boot"


# ------------------------------------------------------------------ corruptions
@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = np.zeros((12, 28, 28), np.uint8)
    x[:, 6:22, 8:20] = rng.integers(80, 256, (12, 16, 12))
    return resize(x, 32)


def test_corruptions_deterministic_and_change_images(images):
    a = corruptions.corrupt(images, corruptions.DEFAULT, severity=3, seed=0)
    b = corruptions.corrupt(images, corruptions.DEFAULT, severity=3, seed=0)
    c = corruptions.corrupt(images, corruptions.DEFAULT, severity=3, seed=1)
    assert a.shape == images.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert all(not np.array_equal(a[i], images[i]) for i in range(len(images)))
    state = np.random.get_state()[1].copy()
    corruptions.corrupt(images[:2], ["gaussian_noise"], 3, 0)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG untouched


def test_corruption_depends_on_key_not_batch(images):
    keys = np.arange(100, 112)
    whole = corruptions.corrupt(images, corruptions.DEFAULT, 3, 7, keys=keys)
    part = corruptions.corrupt(images[5:], corruptions.DEFAULT, 3, 7, keys=keys[5:])
    np.testing.assert_array_equal(whole[5:], part)


@pytest.mark.parametrize("name", corruptions.SUPPORTED)
def test_every_supported_corruption(images, name):
    a = corruptions.corrupt(images[:2], [name], severity=3, seed=0)
    np.testing.assert_array_equal(a, corruptions.corrupt(images[:2], [name], severity=3, seed=0))
    assert a.dtype == np.uint8 and not np.array_equal(a, images[:2])


def test_small_images_are_corrupted_at_32(images):
    small = resize(images[:3], 16)
    out = corruptions.corrupt(small, ["contrast"], 3, 0)
    assert out.shape == small.shape and not np.array_equal(out, small)


def test_unknown_corruption(images):
    with pytest.raises(SubtuneError, match="unknown corruption 'nope'.*supported: .*gaussian_noise"):
        corruptions.corrupt(images, ["contrast", "nope"], 3, 0)
    with pytest.raises(SubtuneError, match="saturate: only scales HSV saturation"):
        corruptions.corrupt(images, ["saturate"], 3, 0)
    with pytest.raises(SubtuneError, match="severity"):
        corruptions.corrupt(images, ["contrast"], 6, 0)


@needs_fmnist
def test_default_corruptions_are_fast():  # ~1.5 s on 2 cores
    x = resize(fashion_mnist.load_split(FMNIST, "t10k")[0][:5000], 32)
    start = time.perf_counter()
    corruptions.corrupt(x, corruptions.DEFAULT, 3, 0)
    assert time.perf_counter() - start < 30


# ------------------------------------------------------------------ targets
SMALL = {
    "fmnist-source": {"train_size": 300, "val_size": 100, "test_size": 200},
    "fmnist-new": {"train_size": 300, "val_size": 100, "test_size": 200},
    "fmnist-c": {"train_size": 150, "val_size": 50, "test_size": 100},
    "fmnist": {"train_size": 300, "val_size": 100, "test_size": 200},
    "fmnist10-c": {"train_size": 150, "val_size": 50, "test_size": 100},
    "digits": {"train_size": 300, "val_size": 100},
}
RAW = {"fmnist-source": FMNIST, "fmnist-new": FMNIST, "fmnist-c": FMNIST, "fmnist": FMNIST, "fmnist10-c": FMNIST,
       "digits": None}


def params_for(name):
    marks = [needs_fmnist] if RAW[name] else []
    return pytest.param(name, marks=marks, id=name)


ALL = [params_for(n) for n in SMALL]


def test_registry_lists_every_target():
    assert set(SMALL) <= set(targets.TARGETS)  # the colour datasets: tests/test_datasets_remote.py
    assert targets.raw_dataset("fmnist-new") == "fashion-mnist" and targets.raw_dataset("digits") is None
    with pytest.raises(SubtuneError, match="unknown dataset 'nope' .known: caltech101, cifar10, .*digits, .*fmnist-c"):
        targets.build("nope", None, seed=0)


@pytest.fixture(scope="module")
def fmnist_raw():
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is absent: install dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    return fashion_mnist.load(FMNIST)


@pytest.mark.parametrize("name", ALL)
def test_splits_disjoint_and_well_formed(name):
    tensors, manifest = targets.build(name, RAW[name], seed=0, **SMALL[name])
    size = SMALL[name]
    for split in prepared.SPLITS:
        x, y = tensors[f"{split}_x"], tensors[f"{split}_y"]
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 32, 32) and y.dtype == torch.int64
        assert int(y.min()) >= 0 and int(y.max()) < manifest["num_classes"]
        assert manifest["splits"][split] == len(y) == len(tensors[f"{split}_idx"])
        if f"{split}_size" in size:
            assert len(y) == size[f"{split}_size"]
    # no source image in two splits that share a source array
    by_source: dict[str, list[np.ndarray]] = {}
    for split in prepared.SPLITS:
        by_source.setdefault(manifest["sources"][split], []).append(tensors[f"{split}_idx"].numpy())
    for parts in by_source.values():
        all_idx = np.concatenate(parts)
        assert len(np.unique(all_idx)) == len(all_idx)
    assert manifest["num_classes"] == len(manifest["classes"])


@needs_fmnist
@pytest.mark.parametrize("name,classes", [("fmnist-source", range(0, 5)), ("fmnist-new", range(5, 10))])
def test_fmnist_splits_come_from_the_stated_official_split(name, classes, fmnist_raw):
    train_x, train_y, test_x, test_y = fmnist_raw
    tensors, manifest = targets.build(name, FMNIST, seed=0, **SMALL[name])
    assert manifest["sources"] == {"train": "fashion-mnist:train", "val": "fashion-mnist:train",
                                   "test": "fashion-mnist:t10k"}  # fmt: skip
    assert manifest["classes"] == fashion_mnist.CLASSES[classes.start : classes.stop]
    for split, (x, y) in {"train": (train_x, train_y), "val": (train_x, train_y), "test": (test_x, test_y)}.items():
        idx = tensors[f"{split}_idx"].numpy()
        np.testing.assert_array_equal(tensors[f"{split}_y"].numpy(), y[idx] - classes.start)
        np.testing.assert_array_equal(tensors[f"{split}_x"][:, 0].numpy(), resize(x[idx], 32))


@needs_fmnist
def test_fmnist_c_comes_from_the_official_test_split_and_is_corrupted(fmnist_raw):
    _, _, test_x, test_y = fmnist_raw
    tensors, manifest = targets.build("fmnist-c", FMNIST, seed=0, **SMALL["fmnist-c"])
    assert set(manifest["sources"].values()) == {"fashion-mnist:t10k"}
    for split in prepared.SPLITS:
        idx = tensors[f"{split}_idx"].numpy()
        np.testing.assert_array_equal(tensors[f"{split}_y"].numpy(), test_y[idx])
        clean = resize(test_x[idx], 32)
        changed = (tensors[f"{split}_x"][:, 0].numpy() != clean).reshape(len(idx), -1).any(1)
        assert changed.mean() > 0.95


@pytest.mark.parametrize("name", ALL)
def test_build_is_deterministic(name, tmp_path):
    for run in ("a", "b"):
        tensors, manifest = targets.build(name, RAW[name], seed=3, **SMALL[name])
        prepared.save_prepared(tmp_path / f"{run}.safetensors", tmp_path / f"{run}.json", tensors, manifest)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    other, _ = targets.build(name, RAW[name], seed=4, **SMALL[name])
    assert not torch.equal(other["val_idx"], targets.build(name, RAW[name], seed=3, **SMALL[name])[0]["val_idx"])


@pytest.mark.parametrize("name", ALL)
def test_val_and_test_do_not_depend_on_train_size(name):
    small, _ = targets.build(name, RAW[name], seed=0, **SMALL[name])
    big, _ = targets.build(name, RAW[name], seed=0, **{**SMALL[name], "train_size": 2 * SMALL[name]["train_size"]})
    for key in ("val_x", "val_y", "val_idx", "test_x", "test_y", "test_idx"):
        assert torch.equal(small[key], big[key]), key
    n = SMALL[name]["train_size"]
    assert torch.equal(small["train_idx"], big["train_idx"][:n])  # nested training sets


@pytest.mark.parametrize("name", ALL)
def test_train_size_beyond_pool(name):
    with pytest.raises(SubtuneError, match=rf"^{name}: train_size 99999 is larger than the pool of \d+ images"):
        targets.build(name, RAW[name], seed=0, **{**SMALL[name], "train_size": 99999})


def test_digits_full_pool_and_bad_params():
    tensors, manifest = targets.build("digits", None, seed=0)
    assert manifest["splits"] == {"train": 1000, "val": 200, "test": 597}
    assert any("597" in note for note in manifest["notes"])
    assert set(manifest["inputs"]) >= {"sklearn", "sklearn.datasets.load_digits:images"}
    with pytest.raises(SubtuneError, match="digits: unknown parameter corruptions"):
        targets.build("digits", None, seed=0, corruptions=["contrast"])
    with pytest.raises(SubtuneError, match="digits.val_size must be an integer >= 1"):
        targets.build("digits", None, seed=0, val_size=0)
    with pytest.raises(SubtuneError, match="test block"):
        targets.build("digits", None, seed=0, test_size=1000)


def test_fmnist_needs_raw_dir():
    with pytest.raises(SubtuneError, match="fmnist-new is built from the fashion-mnist download"):
        targets.build("fmnist-new", None, seed=0)


# ------------------------------------------------------------------ prepared format
def test_load_prepared_reads_only_requested_keys(tmp_path, monkeypatch):
    path = tmp_path / "no_test.safetensors"
    t = {f"{s}_{f}": torch.zeros(4, 1, 8, 8, dtype=torch.uint8) if f == "x" else torch.arange(4)
         for s in ("train", "val") for f in ("x", "y")}  # fmt: skip
    save_file(t, str(path))
    data = prepared.load_prepared(path)
    assert sorted(data) == ["train_x", "train_y", "val_x", "val_y"]
    with pytest.raises(SubtuneError, match="no tensor test_x, test_y"):
        prepared.load_prepared(path, splits=("train", "test"))

    import safetensors

    real = safetensors.safe_open
    read: list[str] = []

    class Spy:
        def __init__(self, *a, **k):
            self.fh = real(*a, **k)

        def __enter__(self):
            self.inner = self.fh.__enter__()
            return self

        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_tensor(self, key):
            read.append(key)
            return self.inner.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    prepared.load_prepared(path, splits=("val",))
    assert read == ["val_x", "val_y"]


def test_save_and_load_roundtrip(tmp_path):
    tensors, manifest = targets.build("digits", None, seed=0, train_size=50, val_size=20, test_size=30, image_size=16)
    out = prepared.save_prepared(tmp_path / "d.safetensors", tmp_path / "d.json", tensors, manifest)
    assert leftovers(tmp_path) == ["d.json", "d.safetensors"]
    m = prepared.load_manifest(tmp_path / "d.json")
    assert m == out and m["sha256"] == hashlib.sha256((tmp_path / "d.safetensors").read_bytes()).hexdigest()
    assert m["image_size"] == 16 and m["channels"] == 1 and m["params"]["train_size"] == 50
    data = prepared.load_prepared(tmp_path / "d.safetensors", splits=prepared.SPLITS, fields=("x", "y", "idx"))
    for k, v in data.items():
        assert torch.equal(v, tensors[k])


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    tensors, manifest = targets.build("digits", None, seed=0, train_size=50, val_size=20, test_size=30)
    with pytest.raises(ValueError, match="test_x and test_y"):
        prepared.save_prepared(tmp_path / "d.safetensors", tmp_path / "d.json", {**tensors, "test_y": None}, manifest)

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepared, "sha256_file", interrupted)  # after the tensors are written
    with pytest.raises(KeyboardInterrupt):
        prepared.save_prepared(tmp_path / "d.safetensors", tmp_path / "d.json", tensors, manifest)
    assert leftovers(tmp_path) == []


def test_bad_prepared_files(tmp_path):
    with pytest.raises(SubtuneError, match="missing prepared dataset"):
        prepared.load_prepared(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SubtuneError, match="junk.safetensors: not a readable safetensors file"):
        prepared.load_prepared(tmp_path / "junk.safetensors")
    (tmp_path / "m.json").write_text('{"name": "x"}')
    with pytest.raises(SubtuneError, match="m.json: manifest lacks classes"):
        prepared.load_manifest(tmp_path / "m.json")


# ------------------------------------------------------------------ elpv (solar cells, from the elpv-dataset package)
def _elpv_rows():
    """labels.csv read as the package's own loader reads it: (file names, defect probabilities)."""
    from subtune.data import elpv

    data = np.genfromtxt(elpv.data_dir() / "labels.csv", dtype=["|S19", "<f8", "|S4"], names=["path", "p", "type"])
    return np.char.decode(data["path"]), data["p"]


def test_elpv_builds_the_vtab_1k_regime_from_the_package():
    from PIL import Image

    from subtune.data import elpv

    tensors, manifest = targets.build("elpv", None, seed=0, image_size=32)
    assert manifest["splits"] == {"train": 800, "val": 200, "test": 1624} and manifest["raw"] is None
    assert manifest["classes"] == ["0", "1/3", "2/3", "1"] and manifest["num_classes"] == 4
    assert manifest["inputs"] == {"elpv-dataset": "1.0.0.post1", "elpv_dataset/data/labels.csv": elpv.LABELS_SHA256,
                                  "elpv_dataset/data/images": elpv.IMAGES_SHA256}  # fmt: skip
    assert any("imbalanced" in n and "2/3: 106" in n for n in manifest["notes"])
    paths, prob = _elpv_rows()
    idx = np.concatenate([tensors[f"{s}_idx"].numpy() for s in prepared.SPLITS])
    assert sorted(idx) == list(range(2624))  # disjoint, and together every image
    for split in prepared.SPLITS:
        i, y = tensors[f"{split}_idx"].numpy(), tensors[f"{split}_y"].numpy()
        assert tensors[f"{split}_x"].shape[1:] == (1, 32, 32)
        np.testing.assert_array_equal(y, np.rint(prob[i] * 3))  # labels 0..3 = probability 0, 1/3, 2/3, 1
        assert set(np.unique(y)) == {0, 1, 2, 3}
    k = int(tensors["test_idx"][0])
    with Image.open(elpv.data_dir() / paths[k]) as im:
        cell = np.array(im)
    assert cell.shape == (300, 300)
    np.testing.assert_array_equal(tensors["test_x"][0, 0].numpy(), resize(cell[None], 32)[0])


def test_elpv_is_deterministic_per_seed_and_nested():
    a, _ = targets.build("elpv", None, seed=3, image_size=16)
    b, _ = targets.build("elpv", None, seed=3, image_size=16, train_size=400, test_size=1000)
    c, _ = targets.build("elpv", None, seed=4, image_size=16)
    assert all(torch.equal(a[k], targets.build("elpv", None, seed=3, image_size=16)[0][k]) for k in a)
    assert torch.equal(a["val_idx"], b["val_idx"]) and torch.equal(a["train_idx"][:400], b["train_idx"])
    assert torch.equal(a["test_idx"][:1000], b["test_idx"])  # a smaller test set is a prefix of the block
    assert not torch.equal(a["test_idx"], c["test_idx"])
    with pytest.raises(SubtuneError, match="^elpv: test_size 1625 is larger than its 1624-image test block$"):
        targets.build("elpv", None, seed=0, test_size=1625)
    with pytest.raises(SubtuneError, match=r"^elpv: train_size 801 is larger than the pool of 800 images left"):
        targets.build("elpv", None, seed=0, train_size=801)


@pytest.fixture
def elpv_copy(tmp_path, monkeypatch):
    """A copy of the package's data folder (labels.csv copied, each image linked) that the loader reads."""
    from subtune.data import elpv

    src, dst = elpv.data_dir(), tmp_path / "data"
    (dst / "images").mkdir(parents=True)
    (dst / "labels.csv").write_bytes((src / "labels.csv").read_bytes())
    for png in (src / "images").iterdir():
        (dst / "images" / png.name).symlink_to(png)
    monkeypatch.setattr(elpv, "DATA_DIR", dst)

    def no_decoding(*args):
        raise AssertionError("images decoded before the digests were checked")

    monkeypatch.setattr(elpv, "_decode", no_decoding)
    return dst


def test_elpv_refuses_a_tampered_labels_csv(elpv_copy):
    from subtune.data import elpv

    labels = elpv_copy / "labels.csv"
    labels.write_text(labels.read_text().replace("images/cell0004.png  0.0", "images/cell0004.png  1.0", 1))
    got = hashlib.sha256(labels.read_bytes()).hexdigest()
    with pytest.raises(SubtuneError, match=rf"^elpv: {labels} has SHA-256 {got}, expected {elpv.LABELS_SHA256}"):
        targets.build("elpv", None, seed=0)


def test_elpv_refuses_a_changed_or_missing_image(elpv_copy):
    from subtune.data import elpv

    png = elpv_copy / "images" / "cell0100.png"
    data = png.read_bytes()
    png.unlink()
    png.write_bytes(data + b"\0")
    with pytest.raises(SubtuneError, match=rf"^elpv: images in .* expected {elpv.IMAGES_SHA256} .an image is changed"):
        targets.build("elpv", None, seed=0)
    png.unlink()
    with pytest.raises(SubtuneError, match="^elpv: images in "):
        targets.build("elpv", None, seed=0)


def test_elpv_without_its_package_says_how_to_install_it(monkeypatch):
    from subtune.data import elpv

    monkeypatch.setattr(elpv, "PACKAGE", "elpv_dataset_not_here")
    with pytest.raises(SubtuneError, match=r"^elpv: the package elpv-dataset is not installed "
                                           r"\(run make setup, or pip install elpv-dataset==1\.0\.0\.post1\)$"):
        targets.build("elpv", None, seed=0)
