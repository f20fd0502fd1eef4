"""What a lease file says (lease.py holds the protocol): its record read and validated (a damaged field makes the lease
stale, never a traceback), the folder's fence file (the highest lease number that wrote there), whether a holder's
process still runs, and whether a given lease has been superseded.
"""
from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from eva_helpers.atomic import atomic_write_text

LEASE_NAME = ".eva-lease.json"
FENCE_NAME = ".eva-lease-fence"  # the highest fencing number a lease of this folder has written with
_PLAUSIBLE = (946684800.0, 4102444800.0)  # 2000-01-01 .. 2100-01-01: a time outside this is a damaged field


def proc_start(pid: int) -> str | None:
    """The process's start time since boot (Linux /proc), so a reused pid is not taken for the lease's holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of stat: starttime


def pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (PermissionError): it exists
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # a zombie: exited, not yet reaped
            return False
    except (OSError, IndexError):
        pass
    now = proc_start(pid)
    return not (start and now and now != start)


def _bad_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _problem(d: Any) -> str | None:
    """Why a parsed lease record cannot be trusted, or None."""
    if not isinstance(d, dict):
        return "not a JSON object"
    for key in ("token", "host"):
        if not isinstance(d.get(key), str) or not d[key]:
            return f'"{key}" is {json.dumps(d.get(key))}, not a name'
    if type(d.get("pid")) is not int or d["pid"] <= 0:
        return f'"pid" is {json.dumps(d.get("pid"))}, not a process id'
    for key in ("heartbeat", "started"):
        v = d.get(key)
        if type(v) not in (int, float) or not math.isfinite(v) or not _PLAUSIBLE[0] <= v <= _PLAUSIBLE[1]:
            return f'"{key}" is {json.dumps(v)}, not a time'
    for key in ("beats", "fence"):
        if key in d and (type(d[key]) is not int or d[key] < 0):
            return f'"{key}" is {json.dumps(d[key])}, not a count'
    return None


def read_lease(path: Path) -> tuple[dict[str, Any] | None, str | None, bytes | None]:
    """(record, None, raw) for a valid lease; (None, why, raw) for a damaged one; (None, None, None) for none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None, None
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})", b""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_bad_constant)
    except (ValueError, UnicodeDecodeError):
        return None, "not JSON" if raw.strip() else "empty", raw
    problem = _problem(data)
    if problem:
        return None, problem, raw
    return {"what": "writer", "beats": 0, "fence": 0, **data}, None, raw


def read_fence(folder: Path) -> int:
    """The highest fencing number a lease of `folder` has written with (0: none yet, or a damaged file)."""
    try:
        value = json.loads((folder / FENCE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return 0
    return value if type(value) is int and value >= 0 else 0


def raise_fence(folder: Path, fence: int) -> None:
    if read_fence(folder) < fence:
        atomic_write_text(folder / FENCE_NAME, f"{fence}\n")


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def describe(holder: dict[str, Any]) -> str:
    """"host H, pid P, lease #n, since T" of a lease's holder."""
    return f"host {holder['host']}, pid {holder['pid']}, lease #{holder['fence']}, since {_when(holder['started'])}"


def standing(folder: Path, token: str, fence: int) -> tuple[bool, dict[str, Any] | None]:
    """(lost, the newer holder if known) of the lease `token` numbered `fence` on `folder`. Lost: a newer lease wrote
    into the folder (its fence file) or holds its lease file now. An older writer's record there (a paused writer that
    woke and rewrote it) or a missing one is not a loss: the holder writes its own lease again."""
    cur, _, _ = read_lease(folder / LEASE_NAME)
    if cur is not None and cur["token"] == token:
        return read_fence(folder) > fence, None
    if cur is not None and cur["fence"] >= fence:
        return True, cur
    return read_fence(folder) > fence, None
