"""Checkpoints that survive a disconnect at any moment: one self-contained file, written atomically, verified on load.

Layout: `<run_dir>/checkpoints/ckpt-<global_step:09d>.pt` (the last `keep_last`), `last.pt` and `best.pt` (plain
copies: Drive refuses symlinks and hard links), each with a `<file>.sha256` sidecar (JSON: sha256, bytes, global_step)
written *after* the file. A file is serialised to local disk first (torch.save into a temp dir), then copied to the run
folder under a temp name, fsynced and renamed, so a reader on Drive sees the old file or the new one, never half.
On load the newest file whose checksum matches wins; a truncated or unverified newest file is skipped with a warning.
Files load with `torch.load(weights_only=True)`: a checkpoint that needs arbitrary pickled objects is refused.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import signal
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .atomic import atomic_open, atomic_write_text, remove_stale_temps, sha256_file
from .errors import EvaError, IntegrityError

CKPT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
SIDECAR = ".sha256"
_STEP_RE = re.compile(r"^ckpt-(\d{9})\.pt$")
FAULT_ENV = "EVA_CKPT_FAULT"  # tests only: "<stage>:<n>" SIGKILLs this process at that stage of its n-th save
_fault_counts: dict[str, int] = {}


def ckpt_name(global_step: int) -> str:
    return f"ckpt-{global_step:09d}.pt"


def _fault(stage: str) -> None:
    """Test hook: die exactly here (e.g. halfway through copying into the run folder) to prove the writes are atomic."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != stage:
        return
    _fault_counts[stage] = _fault_counts.get(stage, 0) + 1
    if _fault_counts[stage] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _copy(src: Path, dst: Path, stage: str) -> None:
    """Atomic copy (temp name beside dst, fsync, rename) with a fault point halfway through the bytes."""
    size = src.stat().st_size
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        fout.write(fin.read(size // 2))
        fout.flush()
        _fault(stage)
        while chunk := fin.read(1 << 22):
            fout.write(chunk)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(str(path) + SIDECAR).read_text())
    except (OSError, ValueError):
        return None


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
            raise IntegrityError(f"{path}: no checksum file {path.name}{SIDECAR} (the write was interrupted?)")
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


class CheckpointManager:
    """Saves on a wall-clock interval and at epoch ends, keeps the last `keep_last` plus best, loads the newest valid."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 3, interval_s: float = 300.0, *,
                 is_main: bool = True) -> None:
        self.dir = Path(run_dir) / CKPT_DIR
        self.keep_last = max(1, int(keep_last))
        self.interval_s = float(interval_s)
        self.is_main = is_main  # under DDP only rank 0 writes
        if is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.dir)  # half-written copies left by a killed save
        self._last_time = time.monotonic()
        self.save_seconds: list[float] = []  # wall time of each save (benchmark, overhead report)
        self.loaded_from: Path | None = None

    def due(self) -> bool:
        """True when `interval_s` has passed since the last save (or since construction)."""
        return time.monotonic() - self._last_time >= self.interval_s

    def maybe_save(self, state_fn: Callable[[], dict[str, Any]]) -> Path | None:
        """Save `state_fn()` if the interval has elapsed; `state_fn` is only called then (building a state is not free)."""
        return self.save(state_fn()) if self.due() else None

    def save(self, state: dict[str, Any], *, best: bool = False) -> Path | None:
        """Write `state` as ckpt-<step>.pt, last.pt (and best.pt when `best`); returns the ckpt path (None off rank 0)."""
        t0 = time.monotonic()
        if not self.is_main:
            self._last_time = time.monotonic()
            return None
        step = int(state["global_step"])
        name = ckpt_name(step)
        with tempfile.TemporaryDirectory(prefix="eva-ckpt-") as tmp:
            local = Path(tmp) / name
            torch.save(state, local)  # serialise on local disk: fast, and a Drive mount never sees a partial file
            meta = {"sha256": sha256_file(local), "bytes": local.stat().st_size, "global_step": step,
                    "epoch": int(state.get("epoch", 0))}
            _fault("local")
            for target, stage in [(name, "copy"), (LAST, "last")] + ([(BEST, "best")] if best else []):
                _copy(local, self.dir / target, stage)
                _fault(stage + "-renamed")  # file in place, sidecar not yet written
                atomic_write_text(self.dir / (target + SIDECAR), json.dumps({**meta, "file": target}))
        self._prune()
        self._last_time = time.monotonic()
        self.save_seconds.append(self._last_time - t0)
        return self.dir / name

    def _prune(self) -> None:
        steps = sorted(p for p in self.dir.glob("ckpt-*.pt") if _STEP_RE.match(p.name))
        for p in steps[: -self.keep_last]:
            for q in (p, Path(str(p) + SIDECAR)):
                try:
                    q.unlink()
                except FileNotFoundError:
                    pass

    def candidates(self) -> list[Path]:
        """Checkpoint files, newest first (last.pt ranks by the step in its sidecar, after a ckpt of the same step)."""
        ranked: list[tuple[int, int, Path]] = []
        for p in self.dir.glob("ckpt-*.pt"):
            m = _STEP_RE.match(p.name)
            if m:
                ranked.append((int(m.group(1)), 1, p))
        last = self.dir / LAST
        if last.exists():
            meta = read_sidecar(last) or {}
            ranked.append((int(meta.get("global_step", -1)), 0, last))
        return [p for _, _, p in sorted(ranked, key=lambda t: (t[0], t[1]), reverse=True)]

    def load_latest(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The newest checkpoint that verifies, or None when there is none; damaged ones are skipped with a warning."""
        for path in self.candidates():
            try:
                state = load_checkpoint(path, map_location)
            except IntegrityError as e:
                warnings.warn(f"skipping damaged checkpoint, falling back to an older one: {e}", stacklevel=2)
                continue
            self.loaded_from = path
            return state
        return None

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
