"""`build_dataset()`: inputs -> backgrounds.zip + zip shards + manifest.json (layout: data/formats.py).

Resumable and byte-reproducible: shards are built by shards.py, any number at once, each a pure function of the
inputs and its number; the manifest is rewritten atomically after each shard. Running the same build again skips
shards whose sha256 and size match the manifest (data/verify.py's record spares re-hashing them), and keeps the
background depth maps it recorded in backgrounds.zip (the teacher does not label them again: on another GPU or
precision its maps could differ, and the shards built so far were labelled from the recorded ones).
"""
from __future__ import annotations

import functools
import inspect
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from eva_helpers import __version__
from eva_helpers.atomic import TMP_PREFIX, atomic_write_bytes, check_output_folder, remove_stale_temps, sha256_bytes
from eva_helpers.compositing.compose import Compositor, prepare_background
from eva_helpers.compositing.params import check_build_bounds
from eva_helpers.compositing.shards import ShardJob, run_shards
from eva_helpers.compositing.teachers import TEACHERS, describe_labels, get_teacher, normalise
from eva_helpers.data import formats
from eva_helpers.data.images import load_sources
from eva_helpers.data.verify import VerifyRecord, is_verified, write_index
from eva_helpers.errors import EvaError
from eva_helpers.lease import LEASE_NAME, Lease, hold

MODES = ("layered", "per-composite", "hybrid")
_UNCOMPARED_KW = ("device", "batch_size")  # teacher options that do not change the labels


class BuildConflictError(EvaError):
    """The output folder holds something this build must not overwrite or mix with."""


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_build_options(*, size: int, positions: int, seed: int, mode: str, scale_range, shard_size: int,
                        jpeg_quality: int, workers: int | None, on_bad: str, limit: int | None, teacher: str,
                        teacher_kwargs: dict | None) -> None:
    """Every option range-checked before anything is read or written: a mistyped flag must not claim the output folder
    (the corrected command would then be refused as a build with different parameters)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise EvaError(f"build option {what}")

    need(mode in MODES, f"mode={mode!r}: choose one of {', '.join(MODES)}")
    need(teacher in TEACHERS, f"teacher={teacher!r} is unknown: choose one of {', '.join(TEACHERS)}")
    need(_is_int(size) and 8 <= size <= 4096, f"size={size!r}: give a side in pixels from 8 to 4096, e.g. 224")
    need(_is_int(positions) and positions >= 1, f"positions={positions!r}: give 1 or more placements per pair")
    need(_is_int(seed) and seed >= 0, f"seed={seed!r}: give a whole number >= 0")
    need(_is_int(shard_size) and shard_size >= 1, f"shard_size={shard_size!r}: give 1 or more samples per shard")
    need(_is_int(jpeg_quality) and 1 <= jpeg_quality <= 100, f"jpeg_quality={jpeg_quality!r}: give 1 to 100")
    need(workers is None or (_is_int(workers) and workers >= 1), f"workers={workers!r}: give 1 or more (or none)")
    need(limit is None or (_is_int(limit) and limit >= 1), f"limit={limit!r}: give 1 or more samples (or none)")
    need(on_bad in ("error", "skip"), f"on_bad={on_bad!r}: choose 'error' or 'skip'")
    try:
        lo, hi = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    need(0 < lo <= hi <= 1, f"scale_range={tuple(scale_range) if hasattr(scale_range, '__iter__') else scale_range}: "
                            "give LO,HI with 0 < LO <= HI <= 1 (object height as a fraction of the background)")
    tis = (teacher_kwargs or {}).get("input_size")
    need(tis is None or (_is_int(tis) and 8 <= tis <= 4096),
         f"teacher input size={tis!r}: give a side in pixels from 8 to 4096 (or none: the teacher's own)")
    check_build_bounds(size=size, positions=positions, seed=seed, shard_size=shard_size, jpeg_quality=jpeg_quality,
                       workers=workers, limit=limit, teacher_input_size=tis)


def _check_out_dir(out: Path, params: dict, sources_sha: str) -> dict | None:
    """Existing manifest if it is this very build (resume), None if the folder is free; refuse anything else."""
    if (out / formats.MANIFEST).is_file():
        old = formats.read_manifest(out)
        if "generator" in old and old["generator"] != formats.GENERATOR:
            raise BuildConflictError(f"{out}: built by sample generator {old['generator']} (eva_helpers "
                                     f"{old.get('eva_helpers')}), this is generator {formats.GENERATOR}: samples would "
                                     "differ, so build into a new folder")
        if "generator" not in old and old.get("eva_helpers") != __version__:  # a manifest from before the generator
            raise BuildConflictError(f"{out}: built by eva_helpers {old.get('eva_helpers')}, this is {__version__}; "
                                     "samples could differ, so build into a new folder")
        if old.get("params") != params:
            diff = sorted(k for k in set(params) | set(old.get("params", {}))
                          if params.get(k) != old.get("params", {}).get(k))
            raise BuildConflictError(f"{out}: holds a build with different parameters ({', '.join(diff)}); "
                                     "choose another output folder")
        if old.get("sources_sha256") != sources_sha:
            raise BuildConflictError(f"{out}: holds a build of different input images; choose another output folder")
        return old
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if not p.name.startswith(TMP_PREFIX) and p.name != LEASE_NAME
                   and not (p.name == formats.SHARD_DIR and p.is_dir() and not any(p.iterdir()))]
        if foreign:
            raise BuildConflictError(f"{out}: not empty and not a dataset (found {foreign[0]!r}); "
                                     "use an empty or new folder")
    return None


def _backgrounds_zip(bg_srcs, fg_srcs, prepared, depth16, ranges) -> bytes:
    """backgrounds.zip bytes: bg/<id>.png, bg_depth/<id>.png, index.jsonl (one row per bg, then per fg)."""
    buf = io.BytesIO()
    rows = []
    with zipfile.ZipFile(buf, "w") as zf:
        for s, img, d16, (lo, hi) in zip(bg_srcs, prepared, depth16, ranges):
            formats.zip_write(zf, formats.member("bg", s.id), formats.encode_png(img, formats.PNG_LEVEL))
            formats.zip_write(zf, formats.member("bg_depth", s.id), formats.encode_depth16(d16))
            rows.append({"kind": "bg", "bg_id": s.id, "file": s.file, "sha256": s.sha256, "bytes": s.bytes,
                         "width": s.width, "height": s.height, "depth_min": lo, "depth_max": hi})
        for s in fg_srcs:
            rows.append({"kind": "fg", "fg_id": s.id, "file": s.file, "sha256": s.sha256, "bytes": s.bytes,
                         "width": s.width, "height": s.height})
        formats.zip_write(zf, formats.INDEX, formats.jsonl_bytes(rows))
    return buf.getvalue()


def _one_build_per_folder(build):
    """Run `build` holding the output folder's lease (lease.py): a second build into a folder another live build
    writes stops at once, in one line naming it. The folder's place is checked first, so the lease never creates a
    folder inside an input folder or under a file; a refused build removes the lease (and a folder it created)."""

    @functools.wraps(build)
    def held(bg_dir: str | Path, fg_dir: str | Path, out_dir: str | Path, **kw: Any) -> dict:
        out = Path(out_dir)
        check_output_folder(out, "dataset")
        for src_dir in (Path(bg_dir), Path(fg_dir)):
            if out.resolve() == src_dir.resolve() or src_dir.resolve() in out.resolve().parents:
                raise BuildConflictError(f"{out}: output folder must not be inside the input folder {src_dir}")
        with hold(out, "dataset build") as lease:
            return build(bg_dir, fg_dir, out_dir, **{**kw, "lease": lease})

    return held


@_one_build_per_folder
def build_dataset(bg_dir: str | Path, fg_dir: str | Path, out_dir: str | Path, *, size: int = 224,
                  positions: int = 20, seed: int = 0, teacher: str = "geometric", mode: str = "layered",
                  scale_range: tuple[float, float] = (0.3, 0.7), flips: bool = True, shard_size: int = 1000,
                  jpeg_quality: int = 95, workers: int | None = None, on_bad: str = "error",
                  teacher_kwargs: dict | None = None, limit: int | None = None, progress: bool = True,
                  lease: Lease | None = None) -> dict:
    """Build (or resume) a dataset folder from a folder of backgrounds and a folder of RGBA cut-outs.

    Args:
        size: side of the square samples; positions: placements per (bg, fg, flip); seed: all randomness.
        teacher / teacher_kwargs: depth teacher name and options (`teachers.get_teacher`); mode: "layered"
            (teacher once per background, object pasted as a layer), "per-composite" (teacher on every fg_bg,
            aligned to the background's map) or "hybrid" (background from the teacher on the clean background,
            object pixels from the teacher on the composite, aligned outside the object). Deep teachers see
            images prepared at their own input size from the full-resolution photos; labels are resized to `size`.
        workers: processes building shards (default os.cpu_count()); output is identical for any value.
        on_bad: "error" (default) or "skip" unreadable inputs (skips are counted in the manifest).
        limit: build only the first `limit` samples (a prefix in sample order).
        lease: the output folder's lease (set by the wrapper): confirmed before every write, so a build that lost the
            folder (paused, and another build took over) stops before writing more.
    Returns the manifest dict (also written to out_dir/manifest.json).
    """
    from tqdm.auto import tqdm

    check_build_options(size=size, positions=positions, seed=seed, mode=mode, scale_range=scale_range,
                        shard_size=shard_size, jpeg_quality=jpeg_quality, workers=workers, on_bad=on_bad, limit=limit,
                        teacher=teacher, teacher_kwargs=teacher_kwargs)
    out = Path(out_dir)
    check_output_folder(out, "dataset")
    teacher_kwargs = dict(teacher_kwargs or {})
    bg_srcs, bg_list = load_sources(bg_dir, "bg", on_bad, prepare=lambda a: prepare_background(a, size))
    fg_srcs, fg_list = load_sources(fg_dir, "fg", on_bad)
    params = {"size": size, "positions": positions, "seed": seed, "teacher": teacher, "mode": mode,
              "teacher_kwargs": {k: str(v) if isinstance(v, Path) else v for k, v in sorted(teacher_kwargs.items())
                                 if k not in _UNCOMPARED_KW},
              "scale_range": [float(scale_range[0]), float(scale_range[1])], "flips": bool(flips),
              "shard_size": shard_size, "jpeg_quality": jpeg_quality, "limit": limit}
    params = json.loads(json.dumps(params, default=str))  # exactly what a manifest read back compares equal to
    sources_sha = sha256_bytes(json.dumps([[s.id, s.sha256] for s in bg_srcs] + [["|"]]
                                          + [[s.id, s.sha256] for s in fg_srcs]).encode())
    old = _check_out_dir(out, params, sources_sha)
    tm = get_teacher(teacher, **teacher_kwargs)  # before the claim: a teacher that cannot load claims nothing
    if progress:
        print(describe_labels(tm.info))  # said before any work: geometric labels are synthetic
    (out / formats.SHARD_DIR).mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    remove_stale_temps(out / formats.SHARD_DIR)
    head = {"schema": formats.SCHEMA, "generator": formats.GENERATOR, "eva_helpers": __version__, "params": params,
            "sources_sha256": sources_sha}
    confirm = lease.confirm if lease is not None else (lambda: None)
    confirm()
    if old is None:  # claim the folder first: from here on a killed build is recognised as ours and resumed
        formats.write_manifest(out, {**head, "complete": False, "shards": []})

    prepared = [s.array for s in bg_srcs]  # (S, S, 3) uint8, cropped and resized once per background at load
    comp = Compositor(prepared, [s.array for s in fg_srcs], size=size, positions=positions, seed=seed,
                      scale_range=scale_range, flips=flips, fg_names=[str(Path(fg_dir) / s.file) for s in fg_srcs])
    for s in fg_srcs:
        s.array = None  # the compositor keeps its own compact copy (mip chain); free the full-size pixels
    total = len(comp) if limit is None else max(0, min(int(limit), len(comp)))
    n_shards = -(-total // shard_size)
    record = VerifyRecord(out)  # shards hashed once (here or when written) are re-checked by a stat on resume
    recorded = _recorded_background_maps(out, old, record, bg_srcs, size)
    teacher_bgs = None  # the teacher's own input size, prepared again from the full-resolution photos
    if tm.input_size and tm.input_size != size and (recorded is None or mode != "layered"):
        t_srcs, _ = load_sources(bg_dir, "bg", on_bad, prepare=lambda a: prepare_background(a, tm.input_size))
        teacher_bgs = [s.array for s in t_srcs]  # (T, T, 3) uint8, the same files in the same order
    if recorded is None:
        raws = tm.predict(teacher_bgs or prepared)  # per background (T, T) or (S, S) float32
        norm = [normalise(_to_size(r, size)) for r in raws]
        bg_depth16 = [np.round(d * formats.DEPTH_MAX).astype(np.uint16) for d, _, _ in norm]
        ranges = [(lo, hi) for _, lo, hi in norm]
    else:  # a resume keeps the maps its shards were labelled from: another GPU or precision may map differently
        bg_depth16, ranges = recorded
        if progress:
            print(f"resuming: the background depth maps in {formats.BACKGROUNDS} are kept (not labelled again)")

    manifest: dict[str, Any] = {
        **head, "teacher": tm.info,
        "counts": {"samples": total, "backgrounds": len(bg_srcs), "foregrounds": len(fg_srcs), "shards": n_shards,
                   "skipped_bg": bg_list.skipped, "skipped_fg": fg_list.skipped},
        "skipped": {"bg": bg_list.skipped_names, "fg": fg_list.skipped_names},
        "sample_order": "i -> combination i // positions = (bg * n_fg + fg) * n_flip + flip, slot i % positions",
        "complete": False, "shards": [],
    }
    if recorded is not None:
        bgz_entry = old["backgrounds"]  # verified above: kept byte for byte
    else:
        bgz = _backgrounds_zip(bg_srcs, fg_srcs, prepared, bg_depth16, ranges)
        bgz_entry = {"file": formats.BACKGROUNDS, "sha256": sha256_bytes(bgz), "bytes": len(bgz)}
        if old and old.get("shards") and old.get("backgrounds") not in (None, bgz_entry):
            raise BuildConflictError(
                f"{out / formats.BACKGROUNDS}: missing or damaged, and the teacher's background maps here differ from "
                f"the ones the {len(old['shards'])} shards built so far were labelled from; restore the file from a "
                "copy, or build into a new folder")
        if not (old and old.get("backgrounds") == bgz_entry and is_verified(out, bgz_entry, record)):
            confirm()
            atomic_write_bytes(out / formats.BACKGROUNDS, bgz)
            record.add(formats.BACKGROUNDS, (out / formats.BACKGROUNDS).stat(), bgz_entry["sha256"])
    manifest["backgrounds"] = bgz_entry

    done: dict[int, dict] = {}
    kept = (old or {}).get("shards", [])
    for e in tqdm(kept, desc="check shards", unit="shard", disable=not (progress and kept)):
        k = e["first_index"] // shard_size  # resume: keep shards whose bytes match the manifest
        if k < n_shards and e.get("file") == formats.shard_name(k) and is_verified(out, e, record):
            done[k] = e
    confirm()
    record.save()
    manifest["shards"] = [done[k] for k in sorted(done)]
    formats.write_manifest(out, manifest)

    todo = [k for k in range(n_shards) if k not in done]
    ctx = ShardJob(out_dir=out, comp=comp, bg_ids=[s.id for s in bg_srcs], fg_ids=[s.id for s in fg_srcs],
               bg_depth16=bg_depth16, bg_range=ranges, total=total, shard_size=shard_size, mode=mode,
               jpeg_quality=jpeg_quality, teacher=tm if mode != "layered" else None,
               teacher_bgs=teacher_bgs if mode != "layered" else None,
               lease=(lease.token, lease.fence) if lease is not None else None)
    n_workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
    if mode != "layered" and teacher != "geometric":
        n_workers = 1  # the model lives in this process (GPU); batches within a shard use it
    bar = tqdm(total=total, initial=sum(e["samples"] for e in done.values()), unit="sample", desc="build",
               disable=not progress, smoothing=0.1)

    def finish(entry: dict) -> None:
        confirm()
        record.add(entry["file"], (out / entry["file"]).stat(), entry["sha256"])  # hashed in memory as it was written
        record.save()
        done[entry["first_index"] // shard_size] = entry
        manifest["shards"] = [done[k] for k in sorted(done)]
        formats.write_manifest(out, manifest)  # after every shard: a killed build loses one shard per worker
        bar.update(entry["samples"])

    try:
        run_shards(ctx, todo, n_workers, finish)
    finally:
        bar.close()
    confirm()
    manifest["index"] = write_index(out, manifest)  # columnar index beside the manifest, covered by its sha256
    manifest["complete"] = True
    confirm()
    formats.write_manifest(out, manifest)
    return manifest


# build_dataset's defaults, for the CLI and notebook 01 (one source: the signature above)
BUILD_DEFAULTS = {name: p.default for name, p in inspect.signature(build_dataset).parameters.items()
                  if p.default is not inspect.Parameter.empty and name != "lease"}


def _recorded_background_maps(out: Path, old: dict | None, record: VerifyRecord, bg_srcs,
                              size: int) -> tuple[list[np.ndarray], list[tuple[float, float]]] | None:
    """The background depth maps a started build recorded in backgrounds.zip, ((S, S) uint16 per background, raw
    teacher (min, max)), in `bg_srcs` order; None when there are none to keep (a new build, a build killed before it
    wrote them, or a backgrounds.zip that no longer matches its manifest entry)."""
    entry = (old or {}).get("backgrounds")
    if not entry or not is_verified(out, entry, record):
        return None
    with zipfile.ZipFile(out / formats.BACKGROUNDS) as zf:
        rows = {r["bg_id"]: r for r in formats.read_jsonl(zf.read(formats.INDEX)) if r.get("kind") == "bg"}
        maps, ranges = [], []
        for s in bg_srcs:
            if s.id not in rows:
                return None
            try:
                d16 = formats.decode_image(zf.read(formats.member("bg_depth", s.id)))
            except ValueError:  # undecodable: the maps are labelled again
                return None
            if d16.dtype != np.uint16 or d16.shape != (size, size):
                return None
            maps.append(d16)
            ranges.append((float(rows[s.id]["depth_min"]), float(rows[s.id]["depth_max"])))
    return maps, ranges


def _to_size(raw: np.ndarray, size: int) -> np.ndarray:
    """A teacher's (T, T) map at the build size: area-averaged when shrinking (a 518 px map to 224 px)."""
    if raw.shape == (size, size):
        return raw
    import cv2

    return cv2.resize(raw.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


def build_larger(data: str | Path, scale: int, assets: str | Path, out: str | Path | None = None,
                 progress: bool = False) -> Path:
    """The dataset at `data` built again `scale` x larger from its source folders `assets` (bg/ and fg/), with the same
    parameters: the same composites at the larger size. Resumable like any build."""
    data = Path(data)
    params = formats.read_manifest(data)["params"]
    size = int(params["size"]) * scale
    out = Path(out) if out is not None else data.parent / f"{data.name}-{size}px"
    build_dataset(Path(assets) / "bg", Path(assets) / "fg", out, size=size, positions=params["positions"],
                  seed=params["seed"], teacher=params["teacher"], mode=params["mode"],
                  scale_range=tuple(params["scale_range"]), flips=params["flips"], shard_size=params["shard_size"],
                  jpeg_quality=params["jpeg_quality"], limit=params.get("limit"), progress=progress)
    return out
