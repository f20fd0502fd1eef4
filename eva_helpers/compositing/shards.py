"""Building one shard: render its composites, label their depth, encode and write it atomically (in a worker).

Sample i depends on `(seed, i)` only (compose.py), so shard k is a pure function of the build's inputs and `k`: any
worker may build it, in any order, and the bytes are the same. A shard is built whole in memory (bounded: one shard per
worker), written under a temp name, fsynced and renamed.
"""
from __future__ import annotations

import io
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eva_helpers.atomic import atomic_write_bytes, sha256_bytes
from eva_helpers.compositing.compose import Compositor, place_cutout
from eva_helpers.compositing.labels import composite_label, layer_object, ring_px
from eva_helpers.data import formats
from eva_helpers.data.loaders import _die_with_parent
from eva_helpers.lease import check_standing


@dataclass
class ShardJob:
    """Everything a worker needs to build shard k on its own (inherited by fork, or pickled for spawn)."""
    out_dir: Path
    comp: Compositor
    bg_ids: list[str]
    fg_ids: list[str]
    bg_depth16: list[np.ndarray]  # per bg (S, S) uint16, normalised per background, near = 65535
    bg_range: list[tuple[float, float]]  # raw teacher (min, max) per background
    total: int
    shard_size: int
    mode: str
    jpeg_quality: int
    teacher: Any = None  # only for the modes that run the teacher on composites ("per-composite", "hybrid")
    teacher_bgs: list | None = None  # per bg (T, T, 3) uint8 at the teacher's input size, when it differs from S
    lease: tuple[str, int] | None = None  # (token, fence) of the build's lease: confirmed before each shard is written


_CTX: ShardJob | None = None


def _init_worker(ctx: ShardJob, parent_pid: int | None = None) -> None:
    """A build worker dies with the main process (a SIGKILLed or SIGTERMed build leaves no orphan behind) and
    leaves the signals to it: Ctrl-C (sent to the whole process group) stops the main process, which lets the
    shards under way finish, and SIGTERM ends a worker at once, as it would any process."""
    import signal

    global _CTX
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the CLI's handler, inherited by fork
    _CTX = ctx


def _worker_build(k: int) -> dict[str, Any]:
    assert _CTX is not None
    return build_shard(_CTX, k)


def _layer_depth(ctx: ShardJob, mask: np.ndarray, p) -> np.ndarray:
    """Layered label: bg depth with the object (alpha >= 128) standing on it as a rounded layer (teachers.layer_object:
    contact depth + bulge, never the background's value around it). (S, S) uint16; differs from the bg only in the
    object's rows."""
    base = ctx.bg_depth16[p.bg]
    size, pad = base.shape[0], ring_px(base.shape[0]) + 1  # work in the object's box plus the ring around it
    ys = slice(max(0, p.y - pad), min(size, p.y + p.h + pad))
    xs = slice(max(0, p.x - pad), min(size, p.x + p.w + pad))
    obj = mask[ys, xs] >= formats.MASK_THRESHOLD
    label = layer_object(base[ys, xs] / formats.DEPTH_MAX, obj, side=size)
    depth = base.copy()
    depth[ys, xs][obj] = np.round(label[obj] * formats.DEPTH_MAX).astype(np.uint16)
    return depth


def _teacher_view(ctx: ShardJob, fg_bg: np.ndarray, p) -> np.ndarray:
    """The composite as the teacher should see it: fg_bg itself, or re-composited at the teacher's input size from the
    full-resolution background (the cut-out from its mip chain), so a 518 px model never sees an upsampled thumbnail."""
    if ctx.teacher_bgs is None:
        return fg_bg
    out = ctx.teacher_bgs[p.bg].copy()  # (T, T, 3)
    k = out.shape[0] / fg_bg.shape[0]
    x0, y0, x1, y1 = (int(round(v * k)) for v in (p.x, p.y, p.x + p.w, p.y + p.h))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)  # a teacher smaller than the build size (tests) keeps >= 1 px
    rgb_pm, a = place_cutout(ctx.comp.chains[p.fg], x1 - x0, y1 - y0, p.flip)
    region = out[y0:y1, x0:x1]
    region[:] = (np.clip(rgb_pm + region.astype(np.float32) * (1.0 - a)[..., None], 0, 255) + 0.5).astype(np.uint8)
    return out


def _composite_depth(ctx: ShardJob, raw: np.ndarray, mask: np.ndarray, p) -> tuple[np.ndarray, bool]:
    """Label from the teacher's map of the composite (labels.composite_label) -> ((S, S) uint16, banded): hybrid
    labels differ from the background's only in the object's rows, so they take the banded PNG encoder."""
    hybrid = ctx.mode == "hybrid"
    return composite_label(ctx.bg_depth16[p.bg], raw, mask, hybrid), hybrid


def build_shard(ctx: ShardJob, k: int) -> dict[str, Any]:
    """Render, label, encode and atomically write shard k; returns its manifest entry."""
    start, stop = k * ctx.shard_size, min(ctx.total, (k + 1) * ctx.shard_size)
    chunk = ctx.teacher.batch_size if ctx.mode != "layered" else 1  # images held at once: a teacher batch
    bg_png: dict[int, formats.BandPNG] = {}  # layered: depth == bg depth outside the object's rows
    buf = io.BytesIO()  # the encoded shard (~50 MB at 1000 x 224 px) is the only thing kept whole
    rows = []
    with zipfile.ZipFile(buf, "w") as zf:
        for c0 in range(start, stop, chunk):
            rendered = [ctx.comp.render(i) for i in range(c0, min(stop, c0 + chunk))]  # [(fg_bg, mask, plan)]
            raws = None
            if ctx.mode != "layered":  # one teacher batch: (T, T, 3) views in, raw maps out
                raws = ctx.teacher.predict_composites([_teacher_view(ctx, f, p) for f, _, p in rendered],
                                                      [m for _, m, _ in rendered])
            for j, (fg_bg, mask, p) in enumerate(rendered):
                depth, banded = (_layer_depth(ctx, mask, p), True) if raws is None else \
                    _composite_depth(ctx, raws[j], mask, p)
                if banded:
                    if p.bg not in bg_png:
                        bg_png[p.bg] = formats.BandPNG(ctx.bg_depth16[p.bg])
                    depth_png = bg_png[p.bg].encode(depth, p.y, p.y + p.h)
                else:
                    depth_png = formats.encode_depth16(depth)
                lo, hi = ctx.bg_range[p.bg]  # every mode's labels are in the background's normalisation
                sid = formats.sample_id(p.index)
                formats.zip_write(zf, formats.member("fg_bg", sid), formats.encode_jpeg(fg_bg, ctx.jpeg_quality))
                formats.zip_write(zf, formats.member("mask", sid), formats.encode_mask(mask))
                formats.zip_write(zf, formats.member("depth", sid), depth_png)
                rows.append({"id": sid, "index": p.index, "bg_id": ctx.bg_ids[p.bg], "fg_id": ctx.fg_ids[p.fg],
                             "flip": p.flip, "scale": p.scale, "x": p.x, "y": p.y, "w": p.w, "h": p.h,
                             "depth_min": lo, "depth_max": hi})
        formats.zip_write(zf, formats.INDEX, formats.jsonl_bytes(rows))
    data = buf.getvalue()
    if ctx.lease is not None:  # a build that lost its folder while this shard was made writes nothing more
        check_standing(ctx.out_dir, *ctx.lease, what="dataset build")
    atomic_write_bytes(ctx.out_dir / formats.shard_name(k), data)
    return {"file": formats.shard_name(k), "sha256": sha256_bytes(data), "bytes": len(data),
            "samples": stop - start, "first_index": start}


def run_shards(ctx: ShardJob, todo: list[int], n_workers: int, finish) -> None:
    """Build shards `todo`, in this process or a pool; `finish(entry)` runs here, as each one lands."""
    if n_workers <= 1:
        for k in todo:
            finish(build_shard(ctx, k))
        return
    import multiprocessing as mp

    # fork shares the prepared inputs copy-on-write (Linux, Colab); spawn pickles ctx once per worker elsewhere
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(n_workers, mp_context=mp.get_context(method), initializer=_init_worker,
                               initargs=(ctx, os.getpid()))
    try:
        for fut in as_completed([pool.submit(_worker_build, k) for k in todo]):
            finish(fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on error or Ctrl-C: drop queued shards, finish running ones
