"""Atomic, fsynced file writes and checksums: a reader sees the old file or the new one, never half of one.

Drive mounts do not support symlinks or hard links, so everything here uses temp file + fsync + os.replace only.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from eva_helpers.errors import EvaError, WriteError, os_error_line

# Every temp file or folder the package writes starts with this, and only names that start with it are ever removed as
# stale: a user's own ".tmp-notes" in an output or run folder is never touched.
TMP_PREFIX = ".eva-tmp-"
_CHUNK = 1 << 20


def _file_mode() -> int:
    """What open() would give a new file (0o666 minus the umask): mkstemp's 0o600 would hide shards from other users."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(path: str | os.PathLike) -> None:
    """Persist a rename inside `path` (no-op where directories cannot be opened, e.g. some FUSE mounts)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *,
                before_replace: Callable[[], None] | None = None) -> Iterator[BinaryIO]:
    """Open a temp file beside `path`; on clean exit fsync and rename it onto `path`, else delete it.

    `before_replace` runs once the temp file is complete, just before the rename (a checkpoint rotates last.pt to
    prev.pt there, so the new file is whole before the old one moves).

    An OSError while creating, writing or renaming (a full disk, a read-only folder) is an EvaError naming `path`
    (for a full disk also its folder and the space left there); the temp file is removed either way.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    except OSError as e:
        raise WriteError(write_error_line(e, path)) from e
    try:
        try:
            os.fchmod(fd, _file_mode())
        except OSError:  # some FUSE mounts (Drive) do not support chmod; the default mode is fine there
            pass
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(write_error_line(e, path)) from e
        raise


def write_error_line(e: OSError, path: Path) -> str:
    """One line for a failed write of `path`; a full disk names the folder and how much space is left in it."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            st = os.statvfs(path.parent)
            free = f"{st.f_bavail * st.f_frsize / 1e6:.1f} MB free"
        except OSError:
            free = "free space unknown"
        return (f"cannot write {path.name}: the disk holding {path.parent} is full ({free}); free some space or "
                "choose another folder, then run the same command again")
    return f"cannot write {os_error_line(e, path)}"


def check_output_folder(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse, before anything is written, an output folder that is a file or lies under a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EvaError(f"{path}: is a file, not a folder; give a folder for the {what}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise EvaError(f"{parent}: is a file, so {path} cannot be created; choose another folder")
            break


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, Infinity) replaced by None: strict JSON, which every reader accepts."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 1, sort_keys: bool = False) -> str:
    """Strict JSON text of `obj` (non-finite floats as null, `default=str` for paths and the like), newline-ended."""
    return json.dumps(finite_json(obj), indent=indent, sort_keys=sort_keys, allow_nan=False, default=str) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1, sort_keys: bool = False) -> None:
    """Write `obj` as strict JSON (`json_text`), atomically."""
    atomic_write_text(path, json_text(obj, indent, sort_keys))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy `src` to `dst` under a temp name in dst's folder, fsync, rename (safe across devices, e.g. onto Drive)."""
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete temp files left by a killed writer in `folder`; returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.glob(TMP_PREFIX + "*"):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n
