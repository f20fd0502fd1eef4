"""`eva predict`: a trained run applied to a user's photos, any size: one pair, or the folders of a whole shoot.

One code path for one pair and for many, so a folder's masks are byte-identical to the single-pair command's:
read (`images.read_image`, the build's decoder) -> register, tone-match and (after a much coarser fg_bg JPEG)
re-compress bg like fg_bg at full resolution (`align.align_pair`, only when confident; it says what it did) -> resize
both to the model's size -> the model on that pair alone -> the run's calibrated threshold -> back to the photo's size.

The model sees one pair at a time even in folder mode. Batched convolutions choose their kernels and reduction order
by shape: on CPU (oneDNN and the native path alike) unet_small's outputs for a pair moved by up to 2.4e-7 between a
batch of one and a batch of 16, enough to flip a thresholded mask pixel. Folder mode batches what costs time around
the model instead: the model is loaded once, and whole pairs (read, align, model, write) run side by side in a pool
of threads. Per-pair forwards cost ~8 % against batched ones at 64 px on 2 CPU cores.

The thread count changes float sums too (1 vs 2 intra-op threads: 6e-8), so every prediction on CPU runs with one
torch thread and one OpenCV thread (`_single_threaded`), in both commands; folder mode gets its parallelism from the
pool instead, which also avoids oversubscribing a shared 2-core machine (2 intra-op threads beside a busy neighbour
took 130-170 ms per 64 px forward instead of 15 ms).
"""
from __future__ import annotations

import csv
import io
import math
import re
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from eva_helpers.errors import BadInputError, EvaError
from eva_helpers.compositing.images import check_same_kind, read_image

if TYPE_CHECKING:  # align.py is imported where it is used
    from eva_helpers.evaluation.align import Alignment

NO_ALIGN_REASON = "turned off (--no-align)"
CSV_NAME = "alignment.csv"


def load_photo(path: str | Path) -> np.ndarray:
    """Any photo (JPEG/PNG/WebP, any mode or bit depth) -> (H, W, 3) uint8 RGB, read exactly as `eva build` reads a
    background (`images.read_image`: one reader for both); a clear one-line error naming the file."""
    return read_image(path)


def _resize(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    import cv2

    w, h = size
    if img.shape[1] == w and img.shape[0] == h:
        return img
    shrink = w < img.shape[1]
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return cv2.resize(img, (w, h), interpolation=interp)


# ---------------------------------------------------------------- one pair: the stages both commands share

@dataclass
class Prepared:
    """A pair ready for the model: both photos at the model's size (bg aligned first), and what to undo after."""

    bg: np.ndarray  # (size, size, 3) uint8
    fg_bg: np.ndarray  # (size, size, 3) uint8
    alignment: "Alignment"
    shape: tuple[int, int]  # (H, W) of the photos: the outputs' size


def _check_same_size(bg: np.ndarray, fg_bg: np.ndarray, bg_name: object = "bg", fg_name: object = "fg_bg") -> None:
    if bg.shape != fg_bg.shape:
        raise BadInputError(f"{bg_name} is {bg.shape[1]}x{bg.shape[0]} but {fg_name} is {fg_bg.shape[1]}x"
                            f"{fg_bg.shape[0]}: they must be the same photo, same size")


def not_aligned(reason: str = NO_ALIGN_REASON) -> "Alignment":
    """The identity alignment, saying why nothing was applied."""
    from eva_helpers.evaluation.align import IDENTITY

    return replace(IDENTITY, reason=reason, tone_reason=reason)


def prepare_pair(bg: np.ndarray, fg_bg: np.ndarray, size: int, align: bool = True) -> Prepared:
    """Align bg to fg_bg at full resolution (registration + tone, each only when confident), then resize both to the
    model's size. Alignment first: a shift of a few px at full size is a fraction of a pixel at the model's."""
    _check_same_size(bg, fg_bg)
    if align:
        from eva_helpers.evaluation.align import align_pair

        bg, alignment = align_pair(bg, fg_bg)
    else:
        alignment = not_aligned()
    small = [np.array(_resize(a, (size, size))) for a in (bg, fg_bg)]  # copies: inputs may be read-only
    return Prepared(bg=small[0], fg_bg=small[1], alignment=alignment, shape=(fg_bg.shape[0], fg_bg.shape[1]))


@torch.no_grad()
def run_model(model, prep: Prepared, stats: dict | None = None,
              device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The model (in eval mode) on this one pair: a batch of one (see the module docstring for why never more)."""
    from eva_helpers.data.loaders import prepare_batch

    size = prep.bg.shape[0]
    ims = [torch.from_numpy(a).permute(2, 0, 1)[None] for a in (prep.bg, prep.fg_bg)]
    zeros = torch.zeros(1, 1, size, size)
    batch = {"bg": ims[0], "fg_bg": ims[1], "mask": zeros, "depth": zeros, "meta": [{}]}
    x, _ = prepare_batch(batch, torch.device(device), stats)
    return {k: v.float().cpu() for k, v in model(x).items()}


def finish(out: dict[str, torch.Tensor], shape: tuple[int, int], calib: dict | None = None) -> dict[str, np.ndarray]:
    """Model outputs (1, 1, size, size) -> {"mask": (H, W) uint8 0/255, "depth": (H, W) float32 [0, 1]} at the
    photo's size, with the run's mask post-processing chosen on validation (None = a plain 0.5 cut).

    Each output is resized once and then changed in place: a 24-megapixel photo holds one full-size float32 map at a
    time (96 MB), never several."""
    h, w = shape
    result: dict[str, np.ndarray] = {}
    if "mask" in out:
        calib = calib or {"threshold": 0.5, "morph": False}
        if calib["morph"]:  # open/close at the model's size (as chosen), then nearest back to the photo's size
            from eva_helpers.evaluation.calibrate import postprocess

            m = postprocess(out["mask"], calib["threshold"], True)[0, 0].numpy().astype(np.uint8) * 255
            result["mask"] = _resize(m, (w, h), nearest=True)
        else:
            prob = _resize(out["mask"].sigmoid()[0, 0].numpy(), (w, h))  # (H, W) float32
            mask = np.greater(prob, calib["threshold"]).view(np.uint8)  # bool -> 0/1 without a copy
            del prob
            result["mask"] = np.multiply(mask, 255, out=mask)
    if "depth" in out:
        depth = _resize(out["depth"][0, 0].numpy(), (w, h)).astype(np.float32, copy=False)
        result["depth"] = np.clip(depth, 0, 1, out=depth)
    return result


def encode_depth_png(depth01: np.ndarray, rows: int = 512) -> bytes:
    """`formats.encode_depth`'s bytes (16-bit PNG, near = 1), converted `rows` rows at a time: the whole-image float64
    copies it makes would be 2 x 192 MB for a 24-megapixel photo."""
    from eva_helpers.data.formats import DEPTH_MAX, encode_depth16

    out = np.empty(depth01.shape, np.uint16)
    for r in range(0, depth01.shape[0], rows):
        d = np.clip(np.asarray(depth01[r:r + rows], dtype=np.float64), 0.0, 1.0)
        out[r:r + rows] = np.round(d * DEPTH_MAX)
    return encode_depth16(out)


def thumbnail(img: np.ndarray, longest: int = 1024) -> np.ndarray:
    """A copy of `img` whose longest side is at most `longest` px (nearest for a mask): what a figure shows anyway,
    without handing full-size photos to matplotlib (it keeps several float copies of each)."""
    h, w = img.shape[:2]
    scale = longest / max(h, w)
    if scale >= 1:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return _resize(img, size, nearest=img.ndim == 2 and img.dtype == np.uint8)


@contextmanager
def _single_threaded() -> Iterator[None]:
    """One torch and one OpenCV thread inside, restored after: the same float sums whatever the machine's core count
    (module docstring). Process-wide, so entered once per command, never from worker threads."""
    import cv2

    saved = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])


def _predict_prepared(model, prep: Prepared, stats: dict | None, device, calib: dict | None) -> dict[str, Any]:
    result: dict[str, Any] = finish(run_model(model, prep, stats, device), prep.shape, calib)
    result["alignment"] = prep.alignment
    return result


def predict_pair(model, bg: np.ndarray, fg_bg: np.ndarray, size: int, stats: dict | None = None,
                 device: str | torch.device = "cpu", calib: dict | None = None, align: bool = True) -> dict[str, Any]:
    """(H, W, 3) uint8 bg and fg_bg -> {"mask": (H, W) uint8 0/255, "depth": (H, W) float32 [0, 1], "alignment":
    align.Alignment} at the photos' size. `calib`: calibrate.load_calibration's dict, None = a 0.5 cut."""
    model.eval()
    with _single_threaded():
        return _predict_prepared(model, prepare_pair(bg, fg_bg, size, align), stats, device, calib)


def describe_alignment(al: "Alignment") -> str:
    """One line saying what the alignment applied to bg (or why nothing), for the user."""
    parts = []
    if al.applied:
        parts.append(f"shift ({al.dx:+.1f}, {al.dy:+.1f}) px, rotation {al.angle:.1f}°, scale {al.scale:.3f}")
    if al.tone_applied:
        parts.append("tone gain (" + ", ".join(f"{g:.2f}" for g in al.gain) + ")")
    if al.jpeg_applied:
        parts.append(f"bg saved as JPEG quality {al.jpeg_quality} {'4:2:0' if al.jpeg_subsampled else '4:4:4'} "
                     "like fg_bg")
    tone_reason = al.tone_reason
    if not parts:
        line = f"not aligned: {al.reason}"
        return line + (f"; tone: {tone_reason}" if tone_reason and tone_reason != al.reason else "")
    line = f"aligned: {', '.join(parts)}"
    if al.applied:
        return line + f"; confidence {al.confidence:.2f}"
    return line + f"; geometry not applied: {al.reason}"


def alignment_record(al: "Alignment") -> dict[str, Any]:
    """alignment.json's content: every field, plus the line the command printed."""
    return {**asdict(al), "summary": describe_alignment(al)}


def _load(run_dir: str | Path, which: str, device: str | None):
    """The run, its frozen stats and calibration, once; checked before anything is written."""
    from eva_helpers.evaluation.calibrate import load_calibration
    from eva_helpers.evaluation.heldout import load_run_stats
    from eva_helpers.training.run_folder import resolve_data
    from eva_helpers.training.run_folder import load_run

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, _ = load_run(run_dir, which=which, device=str(dev))
    stats = load_run_stats(Path(run_dir), resolve_data(cfg.data, run_dir))
    return model, cfg, stats, load_calibration(run_dir), dev


def predict_one(run_dir: str | Path, bg_path: str | Path, fg_bg_path: str | Path, out_dir: str | Path,
                which: str = "best", device: str | None = None, align: bool = True) -> tuple[list[Path], "Alignment"]:
    """Write mask.png (8-bit), depth.png (16-bit, near = bright), alignment.json and prediction.png (side by side)
    into out_dir; returns the files written and the alignment applied."""
    from eva_helpers.atomic import atomic_write_bytes, atomic_write_json
    from eva_helpers.data.formats import encode_mask
    from eva_helpers.plots import save_figure, side_by_side

    bg, fg_bg = load_photo(bg_path), load_photo(fg_bg_path)
    _check_same_size(bg, fg_bg, bg_path, fg_bg_path)
    check_same_kind(bg_path, fg_bg_path)
    model, cfg, stats, calib, dev = _load(run_dir, which, device)
    thumbs = thumbnail(bg), thumbnail(fg_bg)  # the figure's copies: the full-size photos go as soon as they are used
    model.eval()
    with _single_threaded():
        prep = prepare_pair(bg, fg_bg, cfg.size, align)
        del bg, fg_bg
        pred = _predict_prepared(model, prep, stats, dev, calib)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "mask" in pred:
        atomic_write_bytes(out / "mask.png", encode_mask(pred["mask"]))
        written.append(out / "mask.png")
    if "depth" in pred:
        atomic_write_bytes(out / "depth.png", encode_depth_png(pred["depth"]))
        written.append(out / "depth.png")
    record = {"bg": str(bg_path), "fg_bg": str(fg_bg_path), **alignment_record(pred["alignment"])}
    atomic_write_json(out / "alignment.json", record)
    written.append(out / "alignment.json")
    small = {k: thumbnail(pred.pop(k)) for k in ("mask", "depth") if k in pred}
    fig = side_by_side(*thumbs, small.get("mask"), small.get("depth"), title=f"{Path(run_dir).name} ({cfg.model})")
    written.append(save_figure(fig, out / "prediction.png"))
    return written, pred["alignment"]


def predict_files(run_dir: str | Path, bg_path: str | Path, fg_bg_path: str | Path, out_dir: str | Path,
                  which: str = "best", device: str | None = None, align: bool = True) -> list[Path]:
    """`predict_one`, returning only the files written (mask.png, depth.png, alignment.json, prediction.png)."""
    return predict_one(run_dir, bg_path, fg_bg_path, out_dir, which, device, align)[0]


# ---------------------------------------------------------------- folders: a shoot's pairs, matched by file name

@dataclass
class Matching:
    """Pairs of a bg folder and an fg_bg folder matched by file stem (kitchen.jpg + kitchen.png), and the rest."""

    pairs: list[tuple[str, Path, Path]]  # (name, bg file, fg_bg file), sorted by name
    bg_only: list[str] = field(default_factory=list)  # file names without a partner
    fg_only: list[str] = field(default_factory=list)
    skipped: int = 0  # junk, sub-folders and non-images, in both folders

    def unmatched_line(self, most: int = 20) -> str | None:
        """One line naming the files without a partner (the first `most` of each folder; alignment.csv lists all),
        None when all are paired."""
        def names(v: list[str]) -> str:
            return ", ".join(v[:most]) + (f" and {len(v) - most} more" if len(v) > most else "")

        parts = [f"{len(v)} in {k} ({names(v)})" for k, v in (("--bg", self.bg_only), ("--fg-bg", self.fg_only)) if v]
        return f"no partner (same name, any extension) for {' and '.join(parts)}: skipped" if parts else None

    def unmatched_rows(self) -> list[dict[str, str]]:
        """alignment.csv rows for the files without a partner (status says so; not counted as failed pairs)."""
        return ([{"name": Path(n).stem, "bg_file": n, "fg_bg_file": "", "status": "no partner in --fg-bg"}
                 for n in self.bg_only] +
                [{"name": Path(n).stem, "bg_file": "", "fg_bg_file": n, "status": "no partner in --bg"}
                 for n in self.fg_only])


def match_folders(bg_dir: str | Path, fg_dir: str | Path) -> Matching:
    """List both folders as the build does (junk such as .DS_Store, Thumbs.db, desktop.ini and hidden files skipped)
    and pair files by stem; no pair at all is an error naming both folders."""
    from eva_helpers.compositing.images import list_images

    bg, fg = list_images(bg_dir), list_images(fg_dir)
    fg_by = {p.stem: p for p in fg.files}
    bg_by = {p.stem: p for p in bg.files}
    m = Matching(pairs=[(s, p, fg_by[s]) for s, p in sorted(bg_by.items()) if s in fg_by],
                 bg_only=[p.name for s, p in sorted(bg_by.items()) if s not in fg_by],
                 fg_only=[p.name for s, p in sorted(fg_by.items()) if s not in bg_by],
                 skipped=sum(bg.skipped.values()) + sum(fg.skipped.values()))
    if not m.pairs:
        raise BadInputError(f"{bg_dir} and {fg_dir}: no file name is in both folders; a pair is two photos with the "
                            "same name (kitchen.jpg in --bg, kitchen.png or kitchen.jpg in --fg-bg)")
    return m


@dataclass
class FolderReport:
    """What `predict_folders` did: pairs written, pairs failed (name, one line), where the CSV is, and summaries."""

    pairs: int
    failed: list[tuple[str, str]]
    csv: Path
    matching: Matching
    alignment_line: str


def _check_out(out: Path, *inputs: Path) -> None:
    """The output folder: not a file, and neither one of the input folders nor inside one (inputs are only read)."""
    from eva_helpers.atomic import check_output_folder

    check_output_folder(out, "predictions")
    o = out.resolve()
    for d in inputs:
        r = d.resolve()
        if o == r or r in o.parents:
            raise BadInputError(f"{out}: is inside the input folder {d}; choose an output folder outside the photos")


def _predict_file(model, cfg, stats, calib, device, out: Path, align: bool,
                  pair: tuple[str, Path, Path]) -> tuple[dict[str, Any], "Alignment | None"]:
    """One pair of files, whole: read, align, model, write `<name>_mask.png` / `<name>_depth.png`. Returns its CSV
    row and alignment; a user-fixable problem with the photos becomes the row's status (a write error still raises)."""
    from eva_helpers.errors import user_message

    name, bg_path, fg_path = pair
    row: dict[str, Any] = {"name": name, "bg_file": bg_path.name, "fg_bg_file": fg_path.name, "width": "",
                           "height": ""}
    try:
        bg, fg_bg = load_photo(bg_path), load_photo(fg_path)
        _check_same_size(bg, fg_bg, bg_path, fg_path)
        check_same_kind(bg_path, fg_path)
        row.update(width=fg_bg.shape[1], height=fg_bg.shape[0])
        prep = prepare_pair(bg, fg_bg, cfg.size, align)
    except EvaError as e:
        return {**row, "status": user_message(e) or str(e)}, None
    del bg, fg_bg  # full-resolution photos: only `workers` pairs of them in memory at once
    _write_outputs(out, name, _predict_prepared(model, prep, stats, device, calib))
    return {**row, **prep.alignment.as_row(), "status": "ok"}, prep.alignment


def _write_outputs(out: Path, name: str, pred: dict[str, Any]) -> None:
    from eva_helpers.atomic import atomic_write_bytes
    from eva_helpers.data.formats import encode_mask

    if "mask" in pred:
        atomic_write_bytes(out / f"{name}_mask.png", encode_mask(pred["mask"]))
    if "depth" in pred:
        atomic_write_bytes(out / f"{name}_depth.png", encode_depth_png(pred["depth"]))


def _ahead(pool: ThreadPoolExecutor, fn: Callable, items: list, window: int) -> Iterator[tuple[Any, Any]]:
    """(item, fn(item)) in order, with up to `window` items submitted to the pool ahead of the one returned."""
    pending: list[tuple[Any, Future]] = []
    it = iter(items)
    for item in it:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            break
    while pending:
        item, fut = pending.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(fn, nxt)))
        yield item, fut.result()


def summarize_alignments(rows: list[tuple[str, "Alignment"]]) -> str:
    """One line over a folder's alignments: how many were registered and tone-matched, typical shifts, and the reasons
    the others were left alone."""
    if not rows:
        return "alignment: no pair was read"
    n = len(rows)
    geo = [a for _, a in rows if a.applied]
    tone = sum(a.tone_applied for _, a in rows)
    jpeg = sum(a.jpeg_applied for _, a in rows)
    line = f"alignment: {len(geo)} of {n} pairs registered, {tone} tone-matched, {jpeg} compressed like fg_bg"
    if geo:
        shifts = sorted(math.hypot(a.dx, a.dy) for a in geo)
        line += f" (shift median {shifts[len(shifts) // 2]:.1f} px, max {shifts[-1]:.1f} px)"
    reasons: dict[str, int] = {}
    for _, a in rows:
        if not a.applied and a.reason:
            kind = re.split(r" \(|: ", a.reason)[0]  # "near identity (16 inliers)" -> "near identity"
            reasons[kind] = reasons.get(kind, 0) + 1
    if reasons:
        line += "; not registered: " + ", ".join(f"{r} ({c})" for r, c in sorted(reasons.items(), key=lambda t: -t[1]))
    return line


def predict_folders(run_dir: str | Path, bg_dir: str | Path, fg_dir: str | Path, out_dir: str | Path,
                    which: str = "best", device: str | None = None, batch_size: int = 16, align: bool = True,
                    workers: int = 2, progress: bool = True,
                    say: Callable[[str], None] | None = None) -> FolderReport:
    """Every pair of two folders (matched by file name) -> OUT/<name>_mask.png (8-bit, the photo's size),
    OUT/<name>_depth.png (16-bit, as depth.png) and OUT/alignment.csv (one row per pair, status "ok" or the one-line
    error). A pair that cannot be read is reported through `say` and skipped; the rest are written.

    The model is loaded once; `workers` threads each take a whole pair (read, align, model, write) with up to
    `batch_size` pairs queued ahead, so photos of any mix of sizes flow through. Each pair's bytes equal the
    single-pair command's (module docstring).
    """
    from functools import partial

    from tqdm.auto import tqdm

    from eva_helpers.atomic import atomic_write_text

    if batch_size < 1:
        raise EvaError(f"--batch-size {batch_size}: must be at least 1")
    if workers < 1:
        raise EvaError(f"workers={workers}: must be at least 1")
    say = say or (lambda line: tqdm.write(line, file=sys.stderr))
    bg_dir, fg_dir, out = Path(bg_dir), Path(fg_dir), Path(out_dir)
    matching = match_folders(bg_dir, fg_dir)
    _check_out(out, bg_dir, fg_dir)
    model, cfg, stats, calib, dev = _load(run_dir, which, device)
    model.eval()
    line = matching.unmatched_line()
    if line:
        say(line)
    out.mkdir(parents=True, exist_ok=True)
    blank = {k: "" for k in not_aligned().as_row()}
    rows: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    aligned: list[tuple[str, Alignment]] = []
    task = partial(_predict_file, model, cfg, stats, calib, dev, out, align)
    pool = ThreadPoolExecutor(max_workers=workers)
    bar = tqdm(total=len(matching.pairs), desc="predict", unit="pair", disable=not progress)
    try:
        with _single_threaded():
            for (name, _, _), (row, alignment) in _ahead(pool, task, matching.pairs, max(batch_size, workers)):
                if alignment is None:
                    failed.append((name, row["status"]))
                    say(f"skipped {name}: {row['status']}")
                    row = {**{k: row[k] for k in ("name", "bg_file", "fg_bg_file", "width", "height")}, **blank,
                           "status": row["status"]}
                else:
                    aligned.append((name, alignment))
                rows.append(row)
                bar.update(1)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # an error or Ctrl-C: leave the queued pairs alone
        raise
    finally:
        bar.close()
    pool.shutdown()
    csv_path = out / CSV_NAME
    lone = [{**dict.fromkeys(rows[0] if rows else ()), **r} for r in matching.unmatched_rows()]
    atomic_write_text(csv_path, _csv_text(rows + sorted(lone, key=lambda r: r["name"])))
    return FolderReport(pairs=len(matching.pairs), failed=failed, csv=csv_path, matching=matching,
                        alignment_line=summarize_alignments(aligned))


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    keys = list(rows[0]) if rows else ["name", "bg_file", "fg_bg_file", "width", "height", "status"]
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
