"""User-facing errors: the CLI prints these as one line and exits non-zero, with no traceback."""
from __future__ import annotations

import errno


class EvaError(Exception):
    """A problem with the user's input or environment that they can fix; the message says how."""


class BadInputError(EvaError):
    """An input file or folder is unusable (names the file)."""


class IntegrityError(EvaError):
    """A file does not match its recorded checksum or size, or is truncated."""


class WriteError(EvaError, OSError):
    """A file could not be written (a full disk, a read-only folder): one line naming it, and still an OSError, so a
    caller that can do without the file (a cache) catches it as before."""


class UsageError(EvaError):
    """A command line argparse could not read (unknown flag, a value of the wrong type)."""


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another folder, then run the same command again",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another folder, then run the command again",
    errno.EACCES: "permission denied: check the folder's permissions or choose another folder",
    errno.EPERM: "operation not permitted: check the folder's permissions or choose another folder",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.EISDIR: "this is a folder, a file was expected: give a file's path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EEXIST: "already exists: choose another name",
    errno.EIO: "input/output error (a failing disk or a dropped Drive mount): remount and run the same command again",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}


def os_error_line(e: OSError, path: object = None) -> str:
    """One line for an OSError: the file it concerns, what went wrong and what to do."""
    name = path if path is not None else (e.filename if e.filename is not None else "")
    what = _OS_HINTS.get(e.errno, e.strerror or _first_line(str(e)))
    return f"{name}: {what}" if name != "" else what


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else text


def _unwrap_worker(text: str) -> str:
    """torch re-raises a DataLoader worker's exception with the worker's traceback as its message: keep the original
    message (the traceback's last line, without its `module.Class: ` prefix)."""
    if "Original Traceback" not in text:
        return text
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1].strip()
    head, sep, rest = last.partition(": ")
    return rest if sep and " " not in head else last


def user_message(e: BaseException) -> str | None:
    """The one line a user sees for an error they can fix; None for a bug (which keeps its traceback)."""
    if isinstance(e, EvaError):
        return _first_line(_unwrap_worker(str(e)))
    if isinstance(e, OSError):
        if e.errno is None:  # PIL's decoding errors, or an OSError re-raised from a DataLoader worker
            return _first_line(_unwrap_worker(str(e)))
        return os_error_line(e)
    return None
