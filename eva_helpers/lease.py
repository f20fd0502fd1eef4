"""One writer per folder: a lease file that a training run (run folder) or a build (dataset folder) holds while it
writes, so that a second writer (a second tab, a runtime Colab has not stopped yet) stops instead of writing over the
first one's files, and a writer that lost its lease (it was paused, its VM froze) stops before its next write.

The lease (`.eva-lease.json`) names its holder (host, pid, the process's start), a token, a heartbeat time and a
heartbeat counter that a daemon thread rewrites every `HEARTBEAT_S` seconds, and a fencing number that only grows:
each lease of a folder gets one more than the last (`.eva-lease-fence` keeps the highest one written). Every write
into the folder first calls `Lease.confirm()`, which stops a writer whose lease another process holds now.

When may a lease be taken over? On this host: when its pid no longer runs (at once), or when its heartbeat is older
than `STALE_S` by this host's clock (a paused or frozen process). From another host, whose clock may differ: when its
heartbeat counter does not change for `STALE_S` seconds as this process watches it (a countdown is shown), or at once
with `force` (FORCE_TAKEOVER in the notebooks). A damaged lease file is a stale lease. Taking over is exclusive: a
claim on the stale lease is created with O_EXCL, so of many simultaneous takers exactly one replaces it.

On a local disk these steps are atomic and a lost writer always stops before its next write. On Google Drive two live
runtimes see each other's files only after Drive syncs them (seconds, sometimes minutes), so there the lease is best
effort: it stops the common cases (a second tab, a reconnect) but cannot exclude two writers within one sync delay.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from eva_helpers.atomic import atomic_write_text
from eva_helpers.errors import EvaError
from eva_helpers.lease_record import (
    FENCE_NAME,
    LEASE_NAME,
    describe,
    pid_alive,
    proc_start,
    raise_fence,
    read_fence,
    read_lease,
    standing,
)

__all__ = ["FENCE_NAME", "LEASE_NAME", "Lease", "LeaseHeldError", "acquire", "check_standing", "hold", "read_fence",
           "standing"]

HEARTBEAT_S = 15.0  # how often the holder refreshes its heartbeat
STALE_S = 180.0  # a holder silent this long is gone (a disconnected runtime, a killed VM): its lease is taken over
_BEING_WRITTEN_S = 5.0  # an unreadable lease younger than this is a new one being written: wait, then read it again


class LeaseHeldError(EvaError):
    """Another live process writes into this folder, or took it over from this one."""


def check_standing(folder: Path, token: str, fence: int, what: str = "writer") -> None:
    """Raise LeaseHeldError when the lease `token` has been lost (for a writer without the Lease object: a worker)."""
    lost, newer = standing(folder, token, fence)
    if lost:
        raise LeaseHeldError(_lost_line(folder, what, newer))


def _lost_line(folder: Path, what: str, newer: dict[str, Any] | None) -> str:
    by = f"another {newer['what']} ({describe(newer)})" if newer else "a newer lease"
    return (f"{folder}: {by} took this folder over while this {what} was unresponsive (paused, or its machine "
            "froze); this one stopped without writing more")


class Lease:
    """A lease this process holds on `folder`; `confirm()` before every write, `release()` (or leaving `hold`) at the
    end."""

    def __init__(self, folder: Path, what: str, heartbeat_s: float, created_folder: bool) -> None:
        self.folder, self.what, self.path = folder, what, folder / LEASE_NAME
        self.heartbeat_s = heartbeat_s
        self.created_folder = created_folder
        now = time.time()
        self.record: dict[str, Any] = {
            "what": what, "host": socket.gethostname(), "pid": os.getpid(), "proc_start": proc_start(os.getpid()),
            "started": now, "heartbeat": now, "beats": 0, "fence": 0, "token": uuid.uuid4().hex}
        self.lost: dict[str, Any] | None = None  # the holder that took the lease over from us ({} when unknown)
        self._fenced = False  # the fence file holds our number (written at the first confirm, or at a takeover)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.claims: list[Path] = []  # claim files of stale leases this one replaced (_take_over)

    @property
    def token(self) -> str:
        return self.record["token"]

    @property
    def fence(self) -> int:
        return int(self.record["fence"])

    def writer(self) -> dict[str, Any]:
        """Who writes under this lease: recorded in every checkpoint."""
        return {"fence": self.fence, "host": self.record["host"], "pid": self.record["pid"]}

    def _text(self) -> str:
        return json.dumps(self.record, indent=1) + "\n"

    def _create(self) -> bool:
        """Create the lease file with O_EXCL: False when one exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self._text())
            f.flush()
            os.fsync(f.fileno())
        return True

    def _write_fence(self) -> None:
        raise_fence(self.folder, self.fence)
        self._fenced = True

    def _refresh(self) -> bool:
        """True while the lease is ours; writes our record again over an older writer's one or a missing file."""
        with self._lock:
            if self.lost is not None:
                return False
            lost, newer = standing(self.folder, self.token, self.fence)
            if lost:
                self.lost = newer or {}
                return False
            self.record["heartbeat"] = time.time()
            self.record["beats"] += 1
            atomic_write_text(self.path, self._text())
            return True

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"eva-lease-{self.folder.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._refresh():
                    return
            except OSError:  # a Drive hiccup: the next beat tries again, well before the lease turns stale
                pass

    def check(self) -> None:
        """Raise LeaseHeldError when another process has taken this lease over (we were thought gone)."""
        if self.lost is not None:
            raise LeaseHeldError(_lost_line(self.folder, self.what, self.lost or None))

    def confirm(self) -> None:
        """Raise LeaseHeldError unless this process still holds the folder: called before every write into it."""
        with self._lock:
            if self.lost is None:
                lost, newer = standing(self.folder, self.token, self.fence)
                if lost:
                    self.lost = newer or {}
                elif not self._fenced:
                    self._write_fence()
        self.check()

    def release(self) -> None:
        """Stop the heartbeat and remove the lease (only if it is still ours); a folder the lease created and that
        holds nothing else is removed too, so a refused command leaves nothing behind."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        current, _, _ = read_lease(self.path)
        if current is not None and current["token"] == self.token:
            _unlink(self.path)
        for claim in self.claims:
            _unlink(claim)
        if self.created_folder:
            try:
                if [p.name for p in self.folder.iterdir()] == [FENCE_NAME]:
                    _unlink(self.folder / FENCE_NAME)
                self.folder.rmdir()  # only when empty
            except OSError:
                pass


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _judge(holder: dict[str, Any], stale_s: float) -> str | None:
    """Why a lease of this host no longer protects its folder, or None while its holder lives and beats."""
    if holder["pid"] == os.getpid():
        return "left by this process"
    if not pid_alive(holder["pid"], holder.get("proc_start")):
        return "its process no longer runs"
    age = time.time() - holder["heartbeat"]  # one host, one clock
    if age > stale_s:
        return f"its process is paused or frozen (no heartbeat for {age:.0f} s)"
    return None


def _watch(lease: Lease, holder: dict[str, Any], stale_s: float, progress: bool) -> str | None:
    """Watch another host's lease for `stale_s` seconds of this process's own clock: raise LeaseHeldError when its
    heartbeat changes (alive), return None when the lease went away (released), else the reason to take it over."""
    from tqdm.auto import tqdm

    seen = (holder["token"], holder["beats"], holder["heartbeat"])
    poll = min(1.0, max(0.02, stale_s / 200))
    t0 = time.monotonic()
    bar = tqdm(total=round(stale_s), unit="s", file=sys.stderr, disable=not progress, leave=False,
               desc=f"{lease.folder.name}: waiting for a heartbeat of {holder['host']} pid {holder['pid']}",
               bar_format="{desc}: {remaining} s left before taking over |{bar}|")
    try:
        while (waited := time.monotonic() - t0) < stale_s:
            time.sleep(poll)
            bar.update(min(round(stale_s), round(time.monotonic() - t0)) - bar.n)
            cur, _, raw = read_lease(lease.path)
            if raw is None:
                return None
            if cur is not None and (cur["token"], cur["beats"], cur["heartbeat"]) != seen:
                raise LeaseHeldError(
                    f"{lease.folder}: another {cur['what']} is writing here ({describe(cur)}): its heartbeat "
                    f"changed while this one watched, so it is alive; stop it or wait for it to end")
    finally:
        bar.close()
    return f"no heartbeat for {waited:.0f} s, as watched from this machine"


def acquire(folder: str | os.PathLike, what: str, *, heartbeat_s: float | None = None, stale_s: float | None = None,
            force: bool = False, progress: bool = True) -> Lease:
    """Take the lease on `folder` (created if missing) for `what` ("training", "dataset build"), or raise
    LeaseHeldError in one line naming the live holder. A stale lease is taken over with a one-line message; another
    host's lease is watched first (a countdown) unless `force`."""
    heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s  # read now: tests shorten the module's values
    stale_s = STALE_S if stale_s is None else stale_s
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lease = Lease(folder, what, heartbeat_s, created)
    try:
        _take(lease, stale_s, force, progress)
    except BaseException:
        lease.release()
        raise
    for old in folder.glob(f"{LEASE_NAME}.claim-*"):  # claims of takers killed after replacing a lease: no longer
        if old not in lease.claims:  # needed, since the leases they claimed are gone
            _unlink(old)
    lease._start_heartbeat()
    return lease


def _take(lease: Lease, stale_s: float, force: bool, progress: bool) -> None:
    folder = lease.folder
    deadline = time.monotonic() + _BEING_WRITTEN_S
    while True:
        lease.record["fence"] = read_fence(folder) + 1
        if lease._create():
            return
        holder, damage, raw = read_lease(lease.path)
        if raw is None:
            continue  # released meanwhile: create it again
        if holder is None:
            try:
                age = time.time() - lease.path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < _BEING_WRITTEN_S and time.monotonic() < deadline:
                time.sleep(0.1)  # its writer is still writing it
                continue
            reason = f"the lease file {lease.path} is damaged ({damage})"
        elif holder["host"] == socket.gethostname():
            reason = _judge(holder, stale_s)
        elif force:
            reason = "taken over as asked (FORCE_TAKEOVER, --force-takeover): its holder is gone"
        else:
            reason = _watch(lease, holder, stale_s, progress)
            if reason is None:
                continue
        if reason is None:
            lease.created_folder = False  # the other writer's folder now
            age = time.time() - holder["heartbeat"]
            raise LeaseHeldError(
                f"{folder}: another {holder['what']} is writing here ({describe(holder)}, last heartbeat {age:.0f} s "
                f"ago); stop it or wait for it to end (if it is frozen, the folder is free {stale_s - age:.0f} s "
                "from now)")
        if _take_over(lease, raw, holder):
            if holder is None or holder["pid"] != os.getpid() or holder["host"] != socket.gethostname():
                previous = f"the previous {holder['what']} ({describe(holder)})" if holder else "a damaged lease"
                print(f"{folder}: taking over from {previous}: {reason}; this is lease #{lease.fence}",
                      file=sys.stderr, flush=True)
            return


def _take_over(lease: Lease, raw: bytes, holder: dict[str, Any] | None) -> bool:
    """Replace the stale lease whose bytes are `raw`, exclusively. A claim file named after those bytes is created
    with O_EXCL, so one taker per stale lease goes on; it checks that the lease is still the one judged and replaces
    it in one rename (the lease file never goes missing, so nobody can create a fresh one meanwhile). False: another
    taker was quicker, or the lease changed: judge again."""
    claim = lease.folder / f"{LEASE_NAME}.claim-{hashlib.sha256(raw).hexdigest()[:16]}"
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        _clear_dead_claim(lease, claim, raw)
        return False
    os.close(fd)
    lease.claims.append(claim)  # kept until release: no later taker can claim the same stale lease again
    _, _, now = read_lease(lease.path)
    if now != raw:
        return False
    lease.record["fence"] = max(read_fence(lease.folder), (holder or {}).get("fence", 0)) + 1
    lease._write_fence()  # first: the writer replaced learns from it that it lost, even before our first write
    atomic_write_text(lease.path, lease._text())
    return True


def _clear_dead_claim(lease: Lease, claim: Path, raw: bytes) -> None:
    """A claim on a lease that stays unchanged for `_BEING_WRITTEN_S` (this process's clock) belongs to a taker that
    died before replacing it: removed, so the folder does not stay locked."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < _BEING_WRITTEN_S:
        if read_lease(lease.path)[2] != raw or not claim.exists():
            return
        time.sleep(0.05)
    _unlink(claim)


@contextmanager
def hold(folder: str | os.PathLike, what: str, **kw: Any) -> Iterator[Lease]:
    """`acquire` for the duration of a `with` block, released on any exit (error, interrupt)."""
    lease = acquire(folder, what, **kw)
    try:
        yield lease
    finally:
        lease.release()
