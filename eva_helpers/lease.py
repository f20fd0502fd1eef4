"""One writer per folder: a lease file that a training run (run folder) or a build (dataset folder) holds while it
writes, so that a second writer (a second tab, a runtime Colab has not stopped yet) stops at once instead of writing
over the first one's files.

The lease (`.eva-lease.json`, JSON) names its holder: host, pid, the process's start, when it took the lease, and a
heartbeat that a daemon thread rewrites (atomically) every `HEARTBEAT_S` seconds. Another process may take it over only
when it is stale: its heartbeat is older than `STALE_S` (a machine that vanished: a disconnected runtime), or its
holder is on this host and its pid no longer runs (a killed process; known at once). Removed when the writer ends, also
on an error or an interrupt. Best effort on Drive (no file locks there): a writer that finds its lease taken over
stops before its next checkpoint (`Lease.lost`).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from eva_helpers.atomic import atomic_write_text
from eva_helpers.errors import EvaError

LEASE_NAME = ".eva-lease.json"
HEARTBEAT_S = 15.0  # how often the holder refreshes its heartbeat
STALE_S = 180.0  # a heartbeat older than this: the holder is gone (its machine disconnected), the lease is taken over
_BEING_WRITTEN_S = 5.0  # an unreadable lease younger than this is a new one being written: wait, then read it again


class LeaseHeldError(EvaError):
    """Another live process writes into this folder."""


def _proc_start(pid: int) -> str | None:
    """The process's start time since boot (Linux /proc), so a reused pid is not taken for the lease's holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of stat: starttime


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    except OSError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # a zombie: exited, not yet reaped
            return False
    except (OSError, IndexError):
        pass
    now = _proc_start(pid)
    return not (start and now and now != start)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and "pid" in data and "heartbeat" in data else None


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def describe(holder: dict[str, Any]) -> str:
    """"host H, pid P, since T" of a lease's holder."""
    return f"host {holder.get('host')}, pid {holder.get('pid')}, since {_when(float(holder.get('started', 0)))}"


def stale_reason(holder: dict[str, Any], now: float | None = None, stale_s: float = STALE_S) -> str | None:
    """Why the lease `holder` no longer protects its folder, or None while its holder is alive."""
    now = time.time() if now is None else now
    age = now - float(holder.get("heartbeat", 0))
    if holder.get("host") == socket.gethostname():
        pid = int(holder.get("pid", -1))
        if pid == os.getpid():
            return "left by this process"
        if pid <= 0 or not _pid_alive(pid, holder.get("proc_start")):
            return "its process no longer runs"
    if age > stale_s:
        return f"no heartbeat for {age:.0f} s"
    return None


class Lease:
    """A lease this process holds on `folder`; `release()` (or leaving `hold`) ends it."""

    def __init__(self, folder: Path, what: str, heartbeat_s: float, created_folder: bool) -> None:
        self.folder, self.what, self.path = folder, what, folder / LEASE_NAME
        self.heartbeat_s = heartbeat_s
        self.created_folder = created_folder
        now = time.time()
        self.record = {"what": what, "host": socket.gethostname(), "pid": os.getpid(),
                       "proc_start": _proc_start(os.getpid()), "started": now, "heartbeat": now,
                       "token": uuid.uuid4().hex}
        self.lost: dict[str, Any] | None = None  # the holder that took the lease over from us, if one did
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _text(self) -> str:
        return json.dumps(self.record, indent=1) + "\n"

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"eva-lease-{self.folder.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = _read(self.path)
            if current is not None and current.get("token") != self.record["token"]:
                self.lost = current
                return
            self.record["heartbeat"] = time.time()
            try:
                atomic_write_text(self.path, self._text())
            except OSError:  # a Drive hiccup: the next beat tries again, well before the lease turns stale
                pass

    def check(self) -> None:
        """Raise LeaseHeldError when another process has taken this lease over (we were thought gone)."""
        if self.lost is not None:
            raise LeaseHeldError(f"{self.folder}: another {self.lost.get('what', 'writer')} took this folder over "
                                 f"({describe(self.lost)}) while this one was unresponsive; stopped without writing "
                                 "more")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease (only if it is still ours); a folder the lease created and that
        stayed empty is removed too, so a refused command leaves nothing behind."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        current = _read(self.path)
        if current is None or current.get("token") == self.record["token"]:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        if self.created_folder:
            try:
                self.folder.rmdir()  # only when empty
            except OSError:
                pass


def acquire(folder: str | os.PathLike, what: str, *, heartbeat_s: float = HEARTBEAT_S,
            stale_s: float = STALE_S) -> Lease:
    """Take the lease on `folder` (created if missing) for `what` ("training", "dataset build"), or raise
    LeaseHeldError in one line naming the live holder. A stale lease is taken over with a one-line message."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lease = Lease(folder, what, heartbeat_s, created)
    deadline = time.monotonic() + _BEING_WRITTEN_S
    while True:
        try:
            fd = os.open(lease.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            pass
        except OSError:
            lease.release()
            raise
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(lease._text())
                f.flush()
                os.fsync(f.fileno())
            break
        holder = _read(lease.path)
        if holder is None:
            try:
                age = time.time() - lease.path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: try to create it again
            if age < _BEING_WRITTEN_S and time.monotonic() < deadline:
                time.sleep(0.1)  # its writer is still writing it
                continue
            reason = "the lease file is damaged"
        else:
            reason = stale_reason(holder, stale_s=stale_s)
        if reason is None:
            if created:
                lease.created_folder = False  # the other writer's folder now
            until = _when(float(holder["heartbeat"]) + stale_s)
            raise LeaseHeldError(
                f"{folder}: another {holder.get('what', 'writer')} is writing here ({describe(holder)}, last heartbeat "
                f"{time.time() - float(holder['heartbeat']):.0f} s ago); stop it or wait for it to end (if that "
                f"machine is gone, the folder is free from {until}, {stale_s:.0f} s after its last heartbeat)")
        if reason != "left by this process":
            previous = f"the previous {holder.get('what', 'writer')} ({describe(holder)})" if holder else "a lease"
            print(f"{folder}: taking over from {previous}: {reason}", file=sys.stderr, flush=True)
        atomic_write_text(lease.path, lease._text())
        break
    lease._start_heartbeat()
    return lease


@contextmanager
def hold(folder: str | os.PathLike, what: str, **kw: Any) -> Iterator[Lease]:
    """`acquire` for the duration of a `with` block, released on any exit (error, interrupt)."""
    lease = acquire(folder, what, **kw)
    try:
        yield lease
    finally:
        lease.release()
