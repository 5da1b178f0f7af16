"""Atomic writes and hashing shared by every stage.

Every stage writes its outputs through :func:`atomic_path` (a temporary file in
the destination directory, renamed into place on success), so an interrupted
job never leaves a file that looks finished. A write that fails because the
disk, the quota or the file-size limit is full becomes one line naming the file
(:func:`full_disk_error`); the CLI reports it like bad input.

Files that later jobs read back (prepared datasets, checkpoints) record their
SHA-256 beside them; :func:`verify_sha256` checks it when a job loads one, so a
truncated or altered file stops the job before it trains on it.
:func:`sha256_file` hashes a file once per process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator


# errno -> what the one-line error says: the disk, the quota, or the file-size limit (``ulimit -f``) is full,
# and what to do about it
FULL = {
    errno.ENOSPC: ("no space left on device", "free some space and rerun"),
    errno.EDQUOT: ("disk quota exceeded", "free some space and rerun"),
    errno.EFBIG: ("file too large (over the file-size limit)", "raise the limit (ulimit -f) and rerun"),
}
# how libraries written in Rust (safetensors' writer) spell the errno inside their own exception's message
_RUST_OS_ERROR = re.compile(r"os error (\d+)")


def full_disk_errno(exc: BaseException) -> int | None:
    """The errno of :data:`FULL` behind ``exc`` (or a cause or context of it), None when it is another error.

    An OSError carries it; safetensors raises its own SafetensorError whose message ends ``(os error 28)``.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in FULL:
            return cur.errno
        m = _RUST_OS_ERROR.search(str(cur))
        if m and int(m.group(1)) in FULL:
            return int(m.group(1))
        cur = cur.__cause__ or cur.__context__
    return None


def _no_room(directory: Path) -> bool:
    """Whether ``directory``'s file system has no block left (for a writer whose error hides its errno)."""
    try:
        return os.statvfs(directory).f_bavail == 0
    except OSError:
        return False


def full_disk_error(exc: BaseException, path: str | os.PathLike | None = None) -> Exception | None:
    """The one-line SubtuneError for a write that failed on a full disk (:data:`FULL`), None for another error.

    ``path``: the file being written; else the OSError's own ``filename`` when it has one.
    """
    from . import SubtuneError

    code = full_disk_errno(exc)
    if code is None:
        return None
    path = path if path is not None else getattr(exc, "filename", None)
    where = f"writing {path}" if path is not None else "while writing (the system named no file)"
    what, remedy = FULL[code]
    return SubtuneError(f"{what} {where}: {remedy}")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it to ``dest`` on success.

    On any exception the temporary file is removed and ``dest`` is untouched. A full disk (or quota, or
    file-size limit) becomes one SubtuneError naming ``dest`` (:func:`full_disk_error`), whatever library
    wrote the file: a writer that hides the errno counts when the file system has no block left.
    """
    from . import SubtuneError

    dest = Path(dest)
    tmp_path: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".part", dir=dest.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes owner-only files; outputs are ordinary files
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException as exc:
        full = None
        if not isinstance(exc, SubtuneError):  # an inner atomic_path (or a check) has said it already
            full = full_disk_error(exc, dest)
            if full is None and isinstance(exc, Exception) and _no_room(dest.parent):
                full = full_disk_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), dest)
        if tmp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
        if full is not None:
            raise full from None
        raise


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON, atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    from . import SubtuneError

    path = Path(path)
    if not path.is_file():
        raise SubtuneError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SubtuneError(f"{path}: not valid JSON ({exc})") from None


# (path, device, inode, size, mtime) -> SHA-256: one job hashes a file once (verified on load, then keyed)
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """The file's SHA-256 (hex), read in chunks by :func:`hashlib.file_digest`.

    Remembered for the process by path, inode, size and modification time, so that verifying a file on load
    and keying a run by it (:mod:`subtune.reuse`) read it once; rewriting or replacing the file changes the key.
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as fh:
            _DIGESTS[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _DIGESTS[key]


def verify_sha256(path: str | os.PathLike, expected: str, recorded_in: str | os.PathLike, remedy: str) -> None:
    """Refuse ``path`` unless its SHA-256 is ``expected`` (what ``recorded_in`` says it was when written).

    A truncated or altered intermediate file would otherwise load (a flipped byte in a tensor reads fine) or
    fail deep inside a library; this is one line naming the file and ``remedy`` (how to make it again).
    """
    from . import SubtuneError

    actual = sha256_file(path)
    if actual != expected:
        raise SubtuneError(f"{path} is corrupted (truncated or altered): its SHA-256 is {actual[:16]}..., "
                           f"{recorded_in} records {expected[:16]}...; make it again: {remedy}")
