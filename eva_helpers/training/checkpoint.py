"""Checkpoints that survive a disconnect at any moment: one self-contained file, written atomically, verified on load.

Layout: `<run_dir>/checkpoints/last.pt` (newest), `prev.pt` (the one before) and `best.pt` (plain files: Drive
refuses symlinks and hard links), each with a `<file>.sha256` sidecar (JSON: sha256, bytes, global_step) written *after*
the file. A save serialises to local disk (torch.save into a temp dir), copies the bytes once into the run folder
under a temp name (fsync), renames last.pt onto prev.pt (a rename: no bytes uploaded) and the temp file onto last.pt.
The run folder's names are fixed: nothing is created and deleted per save, so Google Drive's trash (which keeps deleted
files counting against the quota) does not fill, and each save uploads one checkpoint instead of two. Extra history
(`keep_last` > 2) is kept only on local disk (`local_dir`: the local cache when the run folder is on Drive).
At every moment at least one of last.pt/prev.pt matches its sidecar, so on load the newest file whose checksum matches
wins and a truncated or unverified newest file is skipped with a warning. Run folders of older versions
(`ckpt-<step>.pt` files) still load. Files load with `torch.load(weights_only=True)`: a checkpoint that needs arbitrary
pickled objects is refused.
"""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from eva_helpers.atomic import (
    atomic_copy,
    atomic_open,
    atomic_write_text,
    fsync_dir,
    remove_stale_temps,
    sha256_file,
    write_error_line,
)
from eva_helpers.errors import EvaError, IntegrityError, WriteError
from eva_helpers.paths import DRIVE_MOUNT, default_cache

CHECKPOINTS = "checkpoints"  # the folder inside a run folder
LAST = "last.pt"
PREV = "prev.pt"
BEST = "best.pt"
SIDECAR = ".sha256"
_STEP_RE = re.compile(r"^ckpt-(\d{9})\.pt$")


def ckpt_name(global_step: int) -> str:
    return f"ckpt-{global_step:09d}.pt"


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The checksum sidecar of a checkpoint, or None when it is missing or damaged (not JSON, not an object)."""
    try:
        meta = json.loads(Path(str(path) + SIDECAR).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, verify: bool = True) -> dict[str, Any]:
    """Load one checkpoint file with `weights_only=True` after checking its sha256 sidecar (when `verify`).

    Raises IntegrityError for a missing sidecar, a size/checksum mismatch or an unreadable file, and EvaError for a
    file that holds pickled objects other than tensors and plain containers.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IntegrityError(f"{path}: cannot read checkpoint ({e})") from e
    if verify:
        meta = read_sidecar(path)
        if meta is None:
            raise IntegrityError(f"{path}: its checksum file {path.name}{SIDECAR} is missing or damaged (the write "
                                 "was interrupted?)")
        if len(data) != meta.get("bytes") or _sha256(data) != meta.get("sha256"):
            raise IntegrityError(f"{path}: size or sha256 does not match {path.name}{SIDECAR} (truncated or corrupt)")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise EvaError(f"{path}: refusing to load a checkpoint that contains pickled Python objects beyond tensors "
                       f"and plain containers (weights_only=True failed: {str(e).splitlines()[0]})") from e
    except Exception as e:  # zip/format errors of a damaged file
        raise IntegrityError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise EvaError(f"{path}: not an eva checkpoint (a {type(state).__name__}, expected a dict)")
    return state


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _copy_in(src: Path, dst: Path, before_replace: Callable[[], None] | None = None) -> None:
    """Copy `src` onto `dst` through the package's atomic writer (a full disk names the folder and leaves no temp
    file); `before_replace` runs when the copy is whole."""
    with open(src, "rb") as fin, atomic_open(dst, "wb", before_replace=before_replace) as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)


def _serialise(state: dict[str, Any], local: Path) -> None:
    """torch.save on local disk; a full local disk is one line naming that folder (TMPDIR chooses another)."""
    try:
        torch.save(state, local)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as a RuntimeError
        err = e if isinstance(e, OSError) else OSError(errno.ENOSPC if "space" in str(e).lower() else errno.EIO,
                                                       str(e).splitlines()[0])
        raise WriteError(write_error_line(err, local) + " (this is the local temp folder: set TMPDIR to another)"
                         ) from e


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def default_local_dir(run_dir: str | os.PathLike) -> Path | None:
    """Where extra checkpoints go: the local cache for a run folder on Drive, nowhere (None) for a local run folder."""
    run_dir = Path(run_dir).resolve()
    if not str(run_dir).startswith(str(DRIVE_MOUNT)):
        return None
    return default_cache() / "checkpoints" / run_dir.name


class CheckpointManager:
    """Saves on a wall-clock interval and at epoch ends into last/prev (+ best), extras locally; loads the newest valid.

    `keep_last`: checkpoints kept in all; last.pt and prev.pt in the run folder, the other keep_last - 2 (newest first)
    as `ckpt-<step>.pt` in `local_dir` (default `default_local_dir(run_dir)`; None keeps no extras).
    `bytes_written` / `bytes_dropped` count what the run folder received and what it replaced or deleted.
    """

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 3, interval_s: float = 300.0, *,
                 is_main: bool = True, local_dir: str | os.PathLike | None | bool = True) -> None:
        self.dir = Path(run_dir) / CHECKPOINTS
        self.keep_last = max(1, int(keep_last))
        self.interval_s = float(interval_s)
        self.is_main = is_main  # under DDP only rank 0 writes
        self.local_dir = default_local_dir(run_dir) if local_dir is True else (Path(local_dir) if local_dir else None)
        if is_main:
            self.prepare()
        self._last_time = time.monotonic()
        self.bytes_written = 0  # into the run folder (checkpoint files and sidecars)
        self.bytes_dropped = 0  # files of the run folder replaced or deleted (what a Drive trash could receive)
        self.loaded_from: Path | None = None
        self.guard: Callable[[], None] | None = None  # raises when this process may no longer write (lease.confirm)
        self.writer: dict[str, Any] | None = None  # who writes (lease number, host, pid): recorded in each checkpoint

    def prepare(self) -> None:
        """Create checkpoints/ and clear the half-written copies a killed save left: the first write of a run, done
        once its checks have passed (a manager made with is_main=False only reads until then)."""
        self.is_main = True
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir)

    def due(self) -> bool:
        """True when `interval_s` has passed since the last save (or since construction)."""
        return time.monotonic() - self._last_time >= self.interval_s

    def _sidecar(self, target: str, meta: dict[str, Any]) -> None:
        path = self.dir / (target + SIDECAR)
        text = json.dumps({**meta, "file": target})
        self.bytes_dropped += _size(path)
        atomic_write_text(path, text)
        self.bytes_written += len(text)

    def _replace(self, src: Path, target: str) -> None:
        dst = self.dir / target
        self.bytes_dropped += _size(dst)
        os.replace(src, dst)
        fsync_dir(self.dir)

    def save(self, state: dict[str, Any], *, best: bool = False) -> Path | None:
        """Write `state` as last.pt (the previous last.pt becomes prev.pt) and best.pt when `best`; returns last.pt.
        `guard` (the run folder's lease) is confirmed first: a writer that lost the folder writes nothing."""
        if not self.is_main:
            self._last_time = time.monotonic()
            return None
        if self.guard is not None:
            self.guard()
        step = int(state["global_step"])
        if self.writer:
            state = {**state, "writer": dict(self.writer)}
        try:
            tmp_dir = tempfile.TemporaryDirectory(prefix="eva-ckpt-")
        except OSError as e:
            raise WriteError(write_error_line(e, Path(tempfile.gettempdir()) / "eva-ckpt")) from e
        with tmp_dir as tmp:
            local = Path(tmp) / ckpt_name(step)
            _serialise(state, local)  # on local disk: fast, and a Drive mount never sees a partial file
            meta = {"sha256": sha256_file(local), "bytes": local.stat().st_size, "global_step": step,
                    "epoch": int(state.get("epoch", 0)), **({"writer": dict(self.writer)} if self.writer else {})}

            def rotate() -> None:  # last.pt -> prev.pt once the new copy is whole
                last_meta = read_sidecar(self.dir / LAST)
                if (self.dir / LAST).exists() and last_meta is not None:
                    # prev's sidecar first: at every moment last.pt or prev.pt matches its own sidecar
                    self._sidecar(PREV, {k: v for k, v in last_meta.items() if k != "file"})
                    self._replace(self.dir / LAST, PREV)  # a rename: no bytes uploaded
                self.bytes_dropped += _size(self.dir / LAST)

            _copy_in(local, self.dir / LAST, rotate)
            self.bytes_written += meta["bytes"]
            self._sidecar(LAST, meta)  # after the file: a file without its sidecar is not trusted
            if best:
                self.bytes_dropped += _size(self.dir / BEST)
                _copy_in(local, self.dir / BEST)
                self.bytes_written += meta["bytes"]
                self._sidecar(BEST, meta)
            self._keep_local(local, meta)
        self._last_time = time.monotonic()
        return self.dir / LAST

    def _keep_local(self, local: Path, meta: dict[str, Any]) -> None:
        """Extra history beyond last/prev on local disk only (free to delete: no Drive trash)."""
        extra = self.keep_last - 2
        if self.local_dir is None or extra < 1:
            return
        name = ckpt_name(meta["global_step"])
        atomic_copy(local, self.local_dir / name)
        atomic_write_text(self.local_dir / (name + SIDECAR), json.dumps({**meta, "file": name}))
        steps = sorted(p for p in self.local_dir.glob("ckpt-*.pt") if _STEP_RE.match(p.name))
        for p in steps[:-extra]:
            for q in (p, Path(str(p) + SIDECAR)):
                try:
                    q.unlink()
                except FileNotFoundError:
                    pass

    def candidates(self) -> list[Path]:
        """Checkpoint files, newest first by the step in their sidecar (last, prev, then older ckpt files, at a tie)."""
        ranked: list[tuple[int, int, Path]] = []
        for rank, name in ((3, LAST), (2, PREV)):
            p = self.dir / name
            if p.exists():  # no sidecar: probably the newest, killed before its sidecar; tried first, fails, warns
                ranked.append((int((read_sidecar(p) or {}).get("global_step", 2**62)), rank, p))
        folders = [self.dir] + ([self.local_dir] if self.local_dir is not None and self.local_dir.is_dir() else [])
        for folder in folders:  # ckpt-<step>.pt: local extras, and run folders written by older versions
            for p in folder.glob("ckpt-*.pt"):
                m = _STEP_RE.match(p.name)
                if m:
                    ranked.append((int(m.group(1)), 1, p))
        return [p for _, _, p in sorted(ranked, key=lambda t: (t[0], t[1]), reverse=True)]

    def load_latest(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The newest checkpoint that verifies, or None when there is none; damaged ones are skipped with a warning.
        One written under an older lease than another checkpoint of the folder (by a writer that had lost the folder
        when it wrote) is refused in one line."""
        for path in self.candidates():
            try:
                state = load_checkpoint(path, map_location)
            except IntegrityError as e:
                warnings.warn(f"skipping damaged checkpoint, falling back to an older one: {e}", stacklevel=2)
                continue
            self._check_fence(path)
            self.loaded_from = path
            return state
        return None

    def _check_fence(self, chosen: Path) -> None:
        writer = (read_sidecar(chosen) or {}).get("writer")
        if not isinstance(writer, dict) or type(writer.get("fence")) is not int:
            return  # written before checkpoints recorded their lease
        for other in self.candidates() + [self.dir / BEST]:
            later = (read_sidecar(other) or {}).get("writer")
            if isinstance(later, dict) and type(later.get("fence")) is int and later["fence"] > writer["fence"]:
                raise EvaError(
                    f"{chosen}: written under lease #{writer['fence']} (host {writer.get('host')}, pid "
                    f"{writer.get('pid')}) after lease #{later['fence']} (host {later.get('host')}, pid "
                    f"{later.get('pid')}) took this run folder over and wrote {other.name}: a writer that had lost "
                    f"the folder wrote it; delete {chosen.name} and {chosen.name}{SIDECAR} to resume from the newer "
                    "lease's checkpoint")

    def load_best(self, map_location: Any = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.dir / BEST, map_location)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain values (so the file loads with weights_only)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state()` (CUDA states are restored only when the same number of GPUs is visible)."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
