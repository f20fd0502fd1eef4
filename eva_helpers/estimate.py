"""What a long step will cost before it starts: composites, shards, bytes on Drive and minutes for a build; steps and
minutes for training and evaluation; bytes and minutes for the copy of a Drive dataset to the local cache.

Every number is an estimate and says so. Bytes per composite are measured on the spot: a probe build of a few dozen
composites from the user's own photos at the requested size in a temp folder (JPEG and PNG sizes depend on the photos
and on the size, not proportionally). Build time uses the measured compositing rate (bench/RESULTS.md); training and
evaluation time come from timing two steps of the actual model on this runtime. The Drive read rate is not measured
here: the copy's time is given as a range.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eva_helpers.compositing.build import build_dataset
from eva_helpers.compositing.images import list_images
from eva_helpers.errors import EvaError

BUILD_RATE = 1100  # composites/s, layered mode, Colab's 2 vCPUs (bench/RESULTS.md, five rounds 1,089-1,171)
DRIVE_READ_MB_S = (30, 100)  # assumed range for large files read through the Drive mount (not measured here)
PROBE_FILES = 4  # backgrounds and cut-outs copied into the probe build
PROBE_SAMPLES = 32


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def duration_text(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 90 else f"{max(s, 1):.0f} s"


@dataclass
class BuildEstimate:
    composites: int
    shards: int
    bytes_per_composite: float
    drive_bytes: float  # what the build still has to write (shards already built are not counted again)
    seconds: float
    free_bytes: int | None

    def __str__(self) -> str:
        free = f"; {_gb(self.free_bytes)} free on the destination" if self.free_bytes is not None else ""
        return (f"estimate: {self.composites:,} composites in {self.shards:,} shards, about "
                f"{_gb(self.drive_bytes)} to write ({self.bytes_per_composite / 1e3:.0f} kB per composite, measured "
                f"on a probe of your photos){free}; about {duration_text(self.seconds)} of compositing at "
                f"{BUILD_RATE:,} composites/s (2 vCPUs), plus the upload to Drive")


def count_composites(bg_dir: str | Path, fg_dir: str | Path, positions: int, flips: bool) -> tuple[int, int, int]:
    """(composites, backgrounds, cut-outs) a build of these folders makes (junk files are not counted)."""
    n_bg, n_fg = len(list_images(bg_dir).files), len(list_images(fg_dir).files)
    return n_bg * n_fg * (2 if flips else 1) * positions, n_bg, n_fg


def measure_bytes_per_composite(bg_dir: str | Path, fg_dir: str | Path, size: int, seed: int = 0,
                                flips: bool = True) -> tuple[float, float]:
    """(bytes per composite, bytes per background) of a probe build: a few of the photos at `size` px, geometric
    labels, in a temp folder on local disk (deleted after)."""
    with tempfile.TemporaryDirectory(prefix="eva-probe-") as tmp:
        dirs = {}
        for kind, folder in (("bg", bg_dir), ("fg", fg_dir)):
            dirs[kind] = Path(tmp) / kind
            dirs[kind].mkdir()
            for f in list_images(folder).files[:PROBE_FILES]:
                shutil.copyfile(f, dirs[kind] / f.name)
        # an unreadable photo among the first few is the build's to report (it names the file): skipped here
        m = build_dataset(dirs["bg"], dirs["fg"], Path(tmp) / "out", size=size, positions=2, seed=seed,
                          teacher="geometric", flips=flips, shard_size=PROBE_SAMPLES, limit=PROBE_SAMPLES, workers=1,
                          on_bad="skip", progress=False)
        per = sum(s["bytes"] for s in m["shards"]) / max(1, m["counts"]["samples"])
        per_bg = (m.get("backgrounds") or {}).get("bytes", 0) / max(1, m["counts"]["backgrounds"])
    return per, per_bg


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes where `folder` is (its nearest existing parent), as the file system (the Drive mount) reports it."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _already_built(out_dir: Path) -> float:
    try:
        import json

        return float(sum(s.get("bytes", 0) for s in json.loads((out_dir / "manifest.json").read_text())["shards"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def estimate_build(bg_dir: str | Path, fg_dir: str | Path, out_dir: str | Path, *, size: int, positions: int,
                   flips: bool, shard_size: int, seed: int = 0, mode: str = "layered") -> BuildEstimate:
    """The cost of building `out_dir`, printed; an EvaError in one line when its destination lacks the space."""
    n, n_bg, _ = count_composites(bg_dir, fg_dir, positions, flips)
    try:
        per, per_bg = measure_bytes_per_composite(bg_dir, fg_dir, size, seed, flips)
    except EvaError as e:  # the first photos are unreadable: the build itself names them
        print(f"no size estimate: the probe build of the first photos failed ({e})")
        per, per_bg = 0.0, 0.0
    out = Path(out_dir)
    need = max(0.0, n * per + n_bg * per_bg - _already_built(out))
    seconds = n / BUILD_RATE
    est = BuildEstimate(n, math.ceil(n / shard_size), per, need, seconds, free_bytes(out))
    print(est)
    if mode != "layered":
        print(f"mode {mode!r}: the teacher also runs on every composite, which the time above does not include")
    if est.free_bytes is not None and need > est.free_bytes:
        raise EvaError(f"{out}: this build needs about {_gb(need)} (an estimate) but only {_gb(est.free_bytes)} are "
                       "free there; free space on Drive, or lower POSITIONS or SIZE (or use fewer photos), then run "
                       "this cell again")
    return est


# ---- training, evaluation, the copy to the cache ---------------------------------------------------------------------
def time_steps(cfg: Any, batch: int, steps: int = 2) -> tuple[float, float]:
    """(seconds per training step, seconds per forward pass) of `cfg`'s model at `batch` x `cfg.size` px on this
    runtime (one warm-up step, then `steps` timed ones), with random inputs."""
    import torch

    from eva_helpers.models import build_model
    from eva_helpers.models.inputs import X_CHANNELS

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fmt = torch.channels_last if getattr(cfg, "channels_last", False) else torch.contiguous_format  # as fit trains
    model = build_model(cfg.model, tasks=cfg.tasks, **cfg.model_kwargs).to(dev, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x = torch.randn(batch, X_CHANNELS, cfg.size, cfg.size, device=dev).contiguous(memory_format=fmt)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        out = model(x)
        loss = sum(v.float().mean() for v in out.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    train_step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    train_s = (time.perf_counter() - t) / steps
    model.eval()
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(steps):
            model(x)
        sync()
    return train_s, (time.perf_counter() - t) / steps


def estimate_training(cfg: Any, train_samples: int, epochs_left: float, timer=time_steps) -> float:
    """Seconds for `epochs_left` epochs over `train_samples`, printed (two steps timed now, full precision: AMP on a
    GPU is faster)."""
    import torch

    batch = cfg.batch_size if torch.cuda.is_available() else min(cfg.batch_size, 4)  # a CPU probe stays short
    step_s, _ = timer(cfg, batch)
    steps = math.ceil(train_samples / cfg.batch_size) * epochs_left
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    seconds = steps * step_s * cfg.batch_size / batch
    print(f"estimate: {steps:,.0f} training steps of {cfg.batch_size} at {cfg.size} px, about {duration_text(seconds)} "
          f"on this runtime (two steps timed now; data loading and checkpoints add to it)")
    return seconds


def estimate_evaluation(cfg: Any, test_samples: int, timer=time_steps) -> float:
    """Seconds to evaluate `test_samples` (the model's forward pass timed now), printed."""
    import torch

    batch = cfg.batch_size if torch.cuda.is_available() else min(cfg.batch_size, 4)
    _, fwd_s = timer(cfg, batch)
    seconds = test_samples / batch * fwd_s * 2  # the no-learning baseline and the metrics run beside the model
    print(f"estimate: evaluating {test_samples:,} test samples takes about {duration_text(seconds)} on this runtime")
    return seconds


def estimate_copy(n_bytes: float, n_files: int) -> tuple[float, float]:
    """(fastest, slowest) seconds to copy `n_bytes` from Drive to local disk, printed (the rate is assumed)."""
    lo, hi = (n_bytes / (r * 1e6) for r in reversed(DRIVE_READ_MB_S))
    print(f"estimate: copying {_gb(n_bytes)} in {n_files} files from Drive to the local disk takes about "
          f"{duration_text(lo)}-{duration_text(hi)} (Drive's read rate varies; files already copied and verified are skipped)")
    return lo, hi
