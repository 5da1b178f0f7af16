"""One download helper for every dataset: mirrors, SHA-256 checks, atomic files.

:func:`fetch` tries base URLs (``https://``, ``http://``, ``file:///``) in order;
a file's URL is ``mirror.rstrip('/') + '/' + filename``. It streams into a
temporary file next to the destination (:func:`subtune.io.atomic_path`),
verifies it, and only then renames it into place: a partial or corrupt
download never appears under the final name. A file already present that
verifies is returned without any download; one that does not verify is
downloaded again (and a warning says so).

Verification (:func:`verify`) accepts a file when

- its SHA-256 equals ``sha256``, or
- ``payload_sha256`` is given, the file is gzip, and the SHA-256 of its
  *gunzipped* bytes equals ``payload_sha256``, or
- only ``md5`` is pinned (for files whose publishers give no SHA-256 that can
  be cited, e.g. torchvision's constants) and the file's MD5 equals it.

A file with no digest at all can still be checked structurally: ``check`` (a
callable on the downloaded temporary file returning ``None`` or the reason it
is bad) runs before the rename, exactly like a checksum.

Why two digests: Debian's ``dataset-fashion-mnist`` package re-gzipped the
upstream Fashion-MNIST files, so its ``.gz`` bytes differ from upstream's while
the idx payload is identical. Pinning both the upstream ``.gz`` digest and the
payload digest lets the package serve as a mirror without weakening the check
(the data that is read is exactly upstream's).

Mirrors, in the order tried by :func:`fetch_all` (and so by every dataset's
``download``): ``$SUBTUNE_MIRRORS`` (comma-separated base URLs, e.g. a user's
local mirror), then the caller's mirrors (``data.mirrors`` in the config), then
the dataset's built-in ones. A mirror that is unreachable (a connection-level
error, not an HTTP status or a checksum) is skipped for the remaining files of
the same :func:`fetch_all` call, so an offline machine pays for it once.

On total failure :class:`DownloadError` names the file and every mirror tried
with its reason, on one line.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib
import logging
import os
import shutil
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .. import SubtuneError
from ..io import atomic_path, sha256_file, write_json

log = logging.getLogger(__name__)

ENV_MIRRORS = "SUBTUNE_MIRRORS"
SCHEMES = ("http://", "https://", "file://")

# Raw datasets the ``download`` stage knows: name -> a module (or ``module:object``) with download().
RAW_DATASETS = {
    "fashion-mnist": "subtune.data.fashion_mnist",
    "cifar-10": "subtune.data.cifar:CIFAR10",
    "cifar-100": "subtune.data.cifar:CIFAR100",
    "cifar-10-c": "subtune.data.cifar10c",
    "flowers102": "subtune.data.flowers102",
    "caltech101": "subtune.data.caltech101",
    "vtab-1k": "subtune.data.vtab",
}

# (sha256 of the file, sha256 of its gunzipped payload[, md5 of the file])
Digests = tuple[str | None, ...]
Check = Callable[[Path], "str | None"]  # structural check of a downloaded file: None, or why it is bad


class DownloadError(SubtuneError):
    """No mirror delivered a file that verifies."""


class _Rejected(Exception):
    """A downloaded file failed verification."""


def _short(digest: str) -> str:
    return digest[:8] + "…"


def _gunzip_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with gzip.open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify(
    path: str | os.PathLike, sha256: str | None = None, payload_sha256: str | None = None, md5: str | None = None
) -> str | None:
    """Return ``None`` if ``path`` verifies (see the module docstring), else the reason why not."""
    path = Path(path)
    if sha256 is None and payload_sha256 is None:
        if md5 is None:
            return None
        got = _md5_file(path)
        return None if got == md5 else f"md5 mismatch: got {_short(got)}, expected {_short(md5)}"
    got = sha256_file(path)
    if sha256 is not None and got == sha256:
        return None
    reason = f"sha256 mismatch: got {_short(got)}, expected {_short(sha256 or payload_sha256)}"
    if payload_sha256 is not None and _is_gzip(path):
        try:
            payload = _gunzip_sha256(path)
        except (OSError, EOFError, zlib.error) as exc:
            return f"{reason}; corrupt gzip ({exc})"
        if payload == payload_sha256:
            return None
        reason += f"; gunzipped sha256 {_short(payload)}, expected {_short(payload_sha256)}"
    return reason


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = f"URLError: {exc.reason}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())  # one line


def _unreachable(url: str, exc: BaseException) -> bool:
    """A connection-level failure: the (network) mirror itself is down, not just this file."""
    if url.startswith("file://") or isinstance(exc, urllib.error.HTTPError):
        return False
    return isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError))


def _download(url: str, dest: Path, timeout: float) -> None:
    if not url.startswith(SCHEMES):
        raise ValueError(f"unsupported URL scheme (use {', '.join(SCHEMES)})")
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out, 1 << 20)


def _fetch(
    filename: str,
    mirrors: Iterable[str],
    dest_dir: Path,
    sha256: str | None,
    payload_sha256: str | None,
    timeout: float,
    dead: set[str],
    md5: str | None = None,
    check: Check | None = None,
) -> Path:
    dest = Path(dest_dir) / filename
    failures: list[str] = []

    def bad(path: Path) -> str | None:
        return verify(path, sha256, payload_sha256, md5) or (check(path) if check is not None else None)

    if dest.exists():
        reason = bad(dest)
        if reason is None:
            log.info("%s: present and verified", dest)
            return dest
        log.warning("%s exists but does not verify (%s): downloading it again", dest, reason)
        failures.append(f"existing {dest} ({reason})")
    if sha256 is None and payload_sha256 is None and md5 is None:
        log.warning("%s: no checksum pinned, the download is %s", filename,
                    "only checked structurally" if check else "not verified")
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        if mirror in dead:
            failures.append(f"{url} (skipped: mirror unreachable for an earlier file)")
            continue
        log.info("fetching %s", url)
        try:
            with atomic_path(dest) as tmp:
                _download(url, tmp, timeout)
                reason = bad(tmp)
                if reason is not None:
                    raise _Rejected(reason)
        except _Rejected as exc:
            failures.append(f"{url} ({exc})")
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            failures.append(f"{url} ({_describe(exc)})")
            if _unreachable(url, exc):
                dead.add(mirror)
        else:
            log.info("%s: verified -> %s", url, dest)
            return dest
    if not failures:
        failures.append("no mirrors given")
    raise DownloadError(f"could not fetch {filename} from any mirror: " + "; ".join(failures))


def fetch(
    filename: str,
    mirrors: list[str],
    dest_dir: str | os.PathLike,
    sha256: str | None = None,
    payload_sha256: str | None = None,
    timeout: float = 30.0,
    md5: str | None = None,
    check: Check | None = None,
) -> Path:
    """Download ``filename`` from the first of ``mirrors`` that serves a verified copy.

    Returns ``dest_dir/filename``. Uses exactly ``mirrors`` (no environment
    lookup; see :func:`fetch_all`). Raises :class:`DownloadError`.
    """
    return _fetch(filename, mirrors, Path(dest_dir), sha256, payload_sha256, timeout, set(), md5, check)


def env_mirrors() -> list[str]:
    """Base URLs from ``$SUBTUNE_MIRRORS`` (comma-separated), in order."""
    return [m.strip() for m in os.environ.get(ENV_MIRRORS, "").split(",") if m.strip()]


def mirror_order(*groups: Iterable[str] | None) -> list[str]:
    """``$SUBTUNE_MIRRORS`` then each group in turn, without duplicates."""
    out: dict[str, str] = {}  # without trailing slash -> as given
    for group in (env_mirrors(), *groups):
        for m in group or ():
            out.setdefault(m.rstrip("/"), m)
    return list(out.values())


def fetch_all(
    files: Mapping[str, Digests],
    mirrors: list[str],
    dest_dir: str | os.PathLike,
    timeout: float = 30.0,
    check: Check | None = None,
) -> dict[str, Path]:
    """Fetch every ``{filename: (sha256, payload_sha256[, md5])}``; ``$SUBTUNE_MIRRORS`` are tried first.

    ``check`` (optional) runs on every downloaded file before it is renamed into place.
    """
    order = mirror_order(mirrors)
    dead: set[str] = set()
    return {
        name: _fetch(name, order, Path(dest_dir), sha, payload, timeout, dead, *md5, check=check)
        for name, (sha, payload, *md5) in files.items()
    }


def download_dataset(name: str, dest_dir: str | os.PathLike, mirrors: list[str] | None = None) -> dict[str, Path]:
    """Download raw dataset ``name`` into ``dest_dir`` and write ``dest_dir/MANIFEST.json``.

    The manifest (the ``download`` rule's output, written last and atomically)
    lists each file with its SHA-256 and size.
    """
    if name not in RAW_DATASETS:
        raise SubtuneError(f"unknown raw dataset {name!r} (known: {', '.join(sorted(RAW_DATASETS))})")
    module_name, _, attr = RAW_DATASETS[name].partition(":")  # "module" or "module:object"
    spec = importlib.import_module(module_name)
    files = (getattr(spec, attr) if attr else spec).download(dest_dir, mirrors=mirrors)
    write_json(
        Path(dest_dir) / "MANIFEST.json",
        {
            "dataset": name,
            "files": {f: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for f, p in files.items()},
        },
    )
    return files
