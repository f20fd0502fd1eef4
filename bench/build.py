"""Benchmark: our shard builder vs a naive one-file-per-image writer (as the peers did), same compositing.

    python bench/build.py [--samples N] [--size 224] [--workers W]

Builds from the embedded sample (12 bg x 16 fg x 2 flips x K positions), layered mode, geometric teacher, into a
temp folder, and prints composites/s for both writers and the ratio. Targets: >= 1,000 composites/s, >= 1.5x naive.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_helpers.compositing.build import build_dataset  # noqa: E402
from eva_helpers.compositing.compose import Compositor, prepare_background  # noqa: E402
from eva_helpers.data.images import load_sources  # noqa: E402
from eva_helpers.paths import sample_assets  # noqa: E402
from eva_helpers.compositing.teachers import get_teacher, normalise  # noqa: E402


def naive(bg_dir: Path, fg_dir: Path, out: Path, size: int, positions: int, n: int) -> float:
    """Same compositing and labels, then PIL Image.save per file into folders, one process. Returns seconds."""
    from PIL import Image

    t0 = time.perf_counter()
    bgs, _ = load_sources(bg_dir, "bg")
    fgs, _ = load_sources(fg_dir, "fg")
    prepared = [prepare_background(s.array, size) for s in bgs]
    comp = Compositor(prepared, [s.array for s in fgs], size=size, positions=positions, seed=0)
    bg_depth = [normalise(r)[0] for r in get_teacher("geometric").predict(prepared)]
    for d in ("fg_bg", "mask", "depth"):
        (out / d).mkdir(parents=True)
    for i in range(n):
        fg_bg, mask, p = comp.render(i)
        depth = bg_depth[p.bg].copy()
        obj = mask >= 128
        depth[obj] = bg_depth[p.bg][p.y + p.h - 1, p.x:p.x + p.w].mean()
        Image.fromarray(fg_bg).save(out / "fg_bg" / f"{i:08d}.jpg", quality=95)
        Image.fromarray(mask).save(out / "mask" / f"{i:08d}.png")
        Image.fromarray(np.round(depth * 65535).astype(np.uint16)).save(out / "depth" / f"{i:08d}.png")
    return time.perf_counter() - t0


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pool's workers)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=None, help="composites to build (default: 12*16*2*8 = 3072)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=None, help="processes for our builder (default: all cores)")
    args = ap.parse_args()
    bg_dir, fg_dir = sample_assets() / "bg", sample_assets() / "fg"
    positions = 8 if args.samples is None else max(1, -(-args.samples // (12 * 16 * 2)))
    n = args.samples or 12 * 16 * 2 * positions
    print(f"{n} composites at {args.size} px, layered, geometric teacher, {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), cpu_seconds()
        build_dataset(bg_dir, fg_dir, Path(tmp) / "ours", size=args.size, positions=positions, limit=n,
                      shard_size=256, workers=args.workers, progress=False)
        ours, ours_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        total = sum(p.stat().st_size for p in (Path(tmp) / "ours").rglob("*") if p.is_file())
        c0 = cpu_seconds()
        slow = naive(bg_dir, fg_dir, Path(tmp) / "naive", args.size, positions, n)
        slow_cpu = cpu_seconds() - c0
        nfiles = sum(1 for _ in (Path(tmp) / "naive").rglob("*.*"))
    # wall-clock rate, and the rate per CPU-second (what an otherwise idle core would give: robust on a busy box)
    print(f"ours : {n / ours:8.0f} composites/s  ({ours:.2f} s wall, {n / ours_cpu:.0f} per CPU-second, "
          f"{total / 1e6:.1f} MB in zip shards)")
    print(f"naive: {n / slow:8.0f} composites/s  ({slow:.2f} s wall, {n / slow_cpu:.0f} per CPU-second, "
          f"{nfiles} files)")
    print(f"ratio: {slow / ours:.2f}x wall, {slow_cpu / ours_cpu:.2f}x CPU; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
