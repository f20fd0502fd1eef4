"""What a build will cost before it starts: composites, shards, bytes on Drive and minutes.

Bytes per composite are measured on the spot: a probe build of a few dozen composites from the user's own photos at the
requested size in a temp folder (JPEG and PNG sizes depend on the photos and on the size, not proportionally). Build
time uses the measured compositing rate (bench/RESULTS.md).
"""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from eva_helpers.compositing.build import build_dataset
from eva_helpers.data.images import list_images
from eva_helpers.errors import EvaError
from eva_helpers.estimate import duration_text, gb_text

BUILD_RATE = 1100  # composites/s, layered mode, Colab's 2 vCPUs (bench/RESULTS.md)
PROBE_FILES = 4  # backgrounds and cut-outs copied into the probe build
PROBE_SAMPLES = 32


@dataclass
class BuildEstimate:
    composites: int
    shards: int
    bytes_per_composite: float
    drive_bytes: float  # what the build still has to write (shards already built are not counted again)
    seconds: float
    free_bytes: int | None

    def __str__(self) -> str:
        free = f"; {gb_text(self.free_bytes)} free on the destination" if self.free_bytes is not None else ""
        return (f"estimate: {self.composites:,} composites in {self.shards:,} shards, about "
                f"{gb_text(self.drive_bytes)} to write ({self.bytes_per_composite / 1e3:.0f} kB per composite, measured "
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
        raise EvaError(f"{out}: this build needs about {gb_text(need)} (an estimate) but only {gb_text(est.free_bytes)} are "
                       "free there; free space on Drive, or lower POSITIONS or SIZE (or use fewer photos), then run "
                       "this cell again")
    return est
