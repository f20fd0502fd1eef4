"""`eva predict --video`: every frame of a fixed camera's clip predicted against the scene without the object.

bg is a photo of the empty scene (`bg=`) or a plate estimated from the clip itself (plate.py: a per-pixel median, or
a running median for light that changes). Each frame then goes the way a photo goes in `eva predict`
(`predict.prepare_pair`: aligned to bg when confident, then the model, the run's calibrated threshold and the outline
from the frame's pixels), so a frame's mask is the one `eva predict --bg bg_plate.png --fg-bg <that frame>` gives. As in
folder mode the model sees one pair at a time (predict.py says why a batch would change masks); `workers` threads each
take a whole frame, with up to `batch_size` frames queued ahead, in order.

Frames stream in (clip.py) and out: masks and depth go to lossless FFV1 videos (8-bit grey; masks are 0/255 and read
back exactly, depth near = bright), one CSV row per frame is written as the frame is done, and only the frames in
flight are held, so memory does not grow with the clip's length. Every file appears whole or not at all: the videos
and the CSV are written under temp names in OUT and renamed at the end, the rest with atomic.py.
"""
from __future__ import annotations

import csv
import math
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from eva_helpers.atomic import atomic_open, atomic_write_bytes, atomic_write_json, check_output_folder
from eva_helpers.data.formats import encode_mask, encode_png
from eva_helpers.errors import BadInputError, EvaError
from eva_helpers.predict.align import could_not_align, to_common_size
from eva_helpers.predict.clip import CODECS, ClipInfo, Selection, VideoOut, open_clip, read_frames
from eva_helpers.predict.frame_align import FrameAligner
from eva_helpers.predict.pair import (
    encode_depth_png,
    load_photo,
    not_aligned,
    predict_prepared,
    prepare_pair,
    single_threaded,
)
from eva_helpers.predict.plate import Plate, RunningPlate, estimate_plate
from eva_helpers.training.trained_run import load_trained_run

CSV_NAME, PLATE_NAME, SUMMARY_NAME, FRAMES_DIR = "frames.csv", "bg_plate.png", "footage.json", "frames"
VIDEO_STEMS = ("masks", "depth")


@dataclass
class FootageReport:
    """What `predict_video` did: frames written, where, how fast, and how bg was found."""
    clip: Path
    frames: int
    width: int
    height: int
    fps: float                 # the clip's frame rate as its container says (0: unknown)
    plate: str                 # where bg came from, one line
    outputs: dict[str, Path]   # "masks", "depth", "csv", "plate", "frames", "summary" -> path (those written)
    seconds: float             # the frames' loop: read, align, model, write
    plate_seconds: float       # estimating the plate (0 with a bg photo)
    alignment_line: str
    notes: list[str] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The one line the CLI prints when done."""
        return (f"{self.frames} frames ({self.width}x{self.height}) -> {self.outputs.get('masks') or self.outputs['csv']}"
                f" in {self.seconds:.1f} s ({self.frames_per_s:.1f} frames/s); bg: {self.plate}")


def _own_outputs(out: Path) -> list[Path]:
    """Every name predict_video may write in OUT (videos with either codec's extension)."""
    names = [f"{s}{ext}" for s in VIDEO_STEMS for _, ext in CODECS] + [CSV_NAME, PLATE_NAME, SUMMARY_NAME, FRAMES_DIR]
    return [out / n for n in names]


def _check_paths(info: ClipInfo, out: Path, bg: Path | None) -> None:
    """OUT is a folder we may write, and no output would replace the clip or the bg photo (they are only read)."""
    check_output_folder(out, "the clip's predictions")
    inputs = [info.path.resolve()] + ([bg.resolve()] if bg is not None else [])
    for p in _own_outputs(out):
        if p.resolve() in inputs:
            raise BadInputError(f"{p}: is an input of this command and would be overwritten; choose another --out")


def _bg_photo(bg: Path, info: ClipInfo) -> Plate:
    """The bg photo at the clip's frame size (same aspect: resized, as `eva predict` does), else a one-line error."""
    img = load_photo(bg)
    frame = np.broadcast_to(np.zeros(1, np.uint8), (info.height, info.width, 3))  # only its shape is read
    try:
        img, _, resized = to_common_size(img, frame)
    except BadInputError:
        raise BadInputError(f"--bg {bg} is {img.shape[1]}x{img.shape[0]} but {info.path} is {info.width}x"
                            f"{info.height}: other aspect ratios, so not the same view; give a photo from the same "
                            "camera at the same zoom") from None
    return Plate(np.ascontiguousarray(img), [], f"photo {bg}" + (f" ({resized})" if resized else ""))


def _ordered(pool: ThreadPoolExecutor, fn: Callable, items: Iterable[tuple[Any, tuple]],
             window: int) -> Iterator[tuple[Any, Any]]:
    """(key, fn(*args)) for each (key, args) of `items` in order, with up to `window` submitted ahead."""
    pending: deque = deque()
    for key, args in items:
        pending.append((key, pool.submit(fn, *args)))
        if len(pending) >= window:
            k, fut = pending.popleft()
            yield k, fut.result()
    while pending:
        k, fut = pending.popleft()
        yield k, fut.result()


def _predict_frame(model, size: int, stats, device, calib, aligner: FrameAligner | None, refine: bool,
                   bg: np.ndarray, frame: np.ndarray) -> dict[str, Any]:
    """One frame as `eva predict` takes a pair, the plate aligned by frame_align.py."""
    al = None
    if aligner is not None:
        bg, al = aligner(bg, frame)
    prep = prepare_pair(bg, frame, size, align=False, refine=refine)
    prep.alignment = al or prep.alignment
    return predict_prepared(model, prep, stats, device, calib)


class _AlignStats:
    """Constant-memory counts over the clip's alignments, for one summary line."""

    def __init__(self) -> None:
        self.n = self.geo = self.tone = self.failed = 0
        self.shift_sum = self.shift_max = 0.0

    def add(self, al) -> None:
        self.n += 1
        self.tone += al.tone_applied
        self.failed += could_not_align(al)
        if al.applied:
            s = math.hypot(al.dx, al.dy)
            self.geo, self.shift_sum, self.shift_max = self.geo + 1, self.shift_sum + s, max(self.shift_max, s)

    def line(self) -> str:
        line = f"alignment: {self.geo} of {self.n} frames registered to bg, {self.tone} tone-matched"
        if self.geo:
            line += f" (shift mean {self.shift_sum / self.geo:.1f} px, max {self.shift_max:.1f} px)"
        return line


def _stream(info: ClipInfo, sel: Selection, out: Path, loaded: tuple, plate: Plate | None,
            running: RunningPlate | None, first_plate: Plate, align: bool, refine: bool, frames_png: bool,
            batch_size: int, workers: int, expected: int | None, progress: bool) -> tuple[int, float, dict, _AlignStats]:
    """The frames' loop: read -> (plate, frame) to the pool -> in order: videos, CSV row, PNGs. Returns the frames
    written, the loop's seconds, the videos and the alignment counts."""
    from tqdm.auto import tqdm

    model, cfg, stats, calib, dev = loaded
    tasks = set(cfg.tasks)
    fps_out = (info.fps or 25.0) / sel.every
    stats_al, n, frames_dir = _AlignStats(), 0, out / FRAMES_DIR
    written: dict[str, Path] = {}
    aligner = None
    if align:  # the clip's JPEG decision, on its first selected frame
        first = next(read_frames(info, sel))[2]
        aligner = FrameAligner(first_plate.image, first)
        del first
    task = partial(_predict_frame, model, cfg.size, stats, dev, calib, aligner, refine)
    bar = tqdm(total=expected, desc="video", unit="frame", disable=not progress)
    t1 = time.perf_counter()
    with ExitStack() as stack:
        videos: dict[str, VideoOut] = {}
        for k, need in (("masks", "mask"), ("depth", "depth")):
            if need in tasks:
                videos[k] = VideoOut(out, k, (info.width, info.height), fps_out)
                stack.callback(videos[k].discard)  # after commit: only releases again
        f = stack.enter_context(atomic_open(out / CSV_NAME, "w"))
        rows = None
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=workers))
        stack.callback(pool.shutdown, wait=False, cancel_futures=True)  # an error or Ctrl-C: drop the queued frames

        def jobs() -> Iterator[tuple[Any, tuple]]:
            for i, t, rgb in read_frames(info, sel):
                p = running.at(i) if running is not None else plate
                yield (i, t, p.note), (p.image, rgb)

        with single_threaded():
            for (i, t, note), pred in _ordered(pool, task, jobs(), max(batch_size, workers)):
                al = pred.get("alignment") or not_aligned()
                stats_al.add(al)
                row = {"frame": i, "time_s": "" if math.isnan(t) else round(t, 4), "plate": note}
                if "mask" in pred:
                    videos["masks"].write(pred["mask"])
                    row["object_share"] = round(float(np.count_nonzero(pred["mask"])) / pred["mask"].size, 6)
                    row["mask_refined"] = (pred.get("refine") or {}).get("refined", False)
                if "depth" in pred:
                    videos["depth"].write(np.rint(pred["depth"] * 255).astype(np.uint8))
                if frames_png:
                    if "mask" in pred:
                        atomic_write_bytes(frames_dir / f"{i:06d}_mask.png", encode_mask(pred["mask"]))
                    if "depth" in pred:
                        atomic_write_bytes(frames_dir / f"{i:06d}_depth.png", encode_depth_png(pred["depth"]))
                row.update(al.as_row())
                if rows is None:
                    rows = csv.DictWriter(f, fieldnames=list(row), lineterminator="\n")
                    rows.writeheader()
                rows.writerow(row)
                n += 1
                bar.update(1)
        bar.close()
        if n == 0:
            raise BadInputError(f"{info.path}: no frame from --start {sel.start} on could be read; give a --start within "
                                "the clip")
        seconds = time.perf_counter() - t1
        written.update({k: v.commit() for k, v in videos.items()})
    return n, seconds, written, stats_al


def predict_video(run_dir: str | Path, clip: str | Path, out_dir: str | Path, *, bg: str | Path | None = None,
                  every: int = 1, start: int = 0, end: int | None = None, batch_size: int = 8, align: bool = True,
                  frames_png: bool = False, plate_window: int | None = None, progress: bool = True,
                  which: str = "best", device: str | None = None, workers: int = 2, refine: bool = True,
                  say: Callable[[str], None] | None = None) -> FootageReport:
    """Predict the frames start, start + every, ... (below end) of `clip` against `bg` (a photo) or a plate estimated
    from the clip (`plate_window` frames: a running median that follows changing light). Writes into out_dir:
    masks.mkv (FFV1, 0/255), depth.mkv (FFV1, near = bright) as the run's tasks allow, frames.csv (one row per frame:
    index, time, plate, the alignment applied, the object's share of the frame), bg_plate.png (the estimated plate; the
    first one of a running plate), footage.json (this report) and, with `frames_png`, frames/<index>_mask.png and
    _depth.png (16-bit, as `eva predict`). A clip that cannot be read, too short for a plate, or a bad setting is a
    one-line EvaError before anything is written.
    """
    from tqdm.auto import tqdm

    sel = Selection(start, end, every).check()
    for flag, v in (("--batch-size", batch_size), ("workers", workers)):
        if not isinstance(v, int) or v < 1:
            raise EvaError(f"{flag} {v!r}: must be a whole number, at least 1")
    say = say or (lambda line: tqdm.write(line, file=sys.stderr))
    out, bg_path = Path(out_dir), (Path(bg) if bg is not None else None)
    info = open_clip(clip)
    _check_paths(info, out, bg_path)
    expected = sel.count(info.frames)
    if expected == 0:
        raise BadInputError(f"{info.path}: has {info.frames} frames, none from --start {start} on; give a --start "
                            f"below {info.frames}")
    plate = _bg_photo(bg_path, info) if bg_path is not None else None
    trained = load_trained_run(run_dir, which, device)
    model, cfg, stats, calib, dev = trained.model, trained.cfg, trained.stats, trained.calibration, trained.device
    t0, running, notes = time.perf_counter(), None, []
    if plate is None and plate_window is not None:
        running = RunningPlate(info, sel, plate_window)
        running.check()
        if running.done:  # the whole range fits one window: one plate is the same thing, from more samples
            running.close()
            running = None
            notes.append(f"--plate-window {plate_window}: the range is shorter than the window, one plate used")
    if plate is None and running is None:
        plate = estimate_plate(info, sel)
    first_plate = plate if plate is not None else running.at(sel.start)
    plate_s = time.perf_counter() - t0 if bg_path is None else 0.0

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    try:
        n, seconds, written, stats_al = _stream(info, sel, out, (model, cfg, stats, calib, dev), plate, running,
                                                first_plate, align, refine, frames_png, batch_size, workers, expected,
                                                progress)
    except BaseException:
        if created and not any(out.iterdir()):  # a failed run leaves no empty folder of ours behind
            out.rmdir()
        raise
    written["csv"] = out / CSV_NAME
    if running is not None:
        running.close()
    if bg_path is None:
        atomic_write_bytes(out / PLATE_NAME, encode_png(first_plate.image))
        written["plate"] = out / PLATE_NAME
    if frames_png:
        written["frames"] = out / FRAMES_DIR
    for p in _own_outputs(out):  # an earlier run's files that this run did not write (another codec, another task)
        if p not in written.values() and p.is_file() and p.name != SUMMARY_NAME:
            p.unlink()
    if stats_al.failed:
        say(f"{info.path}: {stats_al.failed} frame(s) could not be aligned (reasons in {CSV_NAME}): predicted as shot; "
            "pass --no-align to skip alignment on purpose")
    written["summary"] = out / SUMMARY_NAME
    report = FootageReport(clip=info.path, frames=n, width=info.width, height=info.height, fps=info.fps,
                           plate=first_plate.note if running is None else f"running median over {plate_window} frames",
                           outputs=written, seconds=seconds, plate_seconds=plate_s, alignment_line=stats_al.line(),
                           notes=notes)
    atomic_write_json(written["summary"], {
        **{k: getattr(report, k) for k in ("clip", "frames", "width", "height", "fps", "plate", "seconds",
                                           "plate_seconds", "alignment_line", "notes")},
        "clip": str(info.path.resolve()), "frames_per_s": report.frames_per_s,
        "outputs": {k: str(v.resolve()) for k, v in written.items()},
        "run": str(run_dir), "checkpoint": which, "start": start, "end": end, "every": every, "aligned": align,
        "refined": refine, "plate_window": plate_window})
    return report


def footage_strip(out_dir: str | Path, k: int = 6):
    """A figure of what `predict_video` wrote to out_dir: `k` frames spread over it (top) and the same frames with
    their masks laid over in red (bottom), for notebook 05 and the demo report."""
    import json

    import cv2
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    summary = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
    if "masks" not in summary["outputs"]:
        raise EvaError(f"{out}: no mask video (a depth-only run); nothing to show")
    with open(out / CSV_NAME, newline="", encoding="utf-8") as f:
        rows = [(int(r["frame"]), float(r["object_share"])) for r in csv.DictReader(f)]
    picks = sorted({int(j) for j in np.linspace(0, len(rows) - 1, min(k, len(rows))).round()})
    want = {rows[j][0] for j in picks}
    clip = open_clip(summary["clip"])
    frames = {i: f for i, _, f in read_frames(clip, Selection(end=max(want) + 1), decode=want.__contains__)
              if f is not None}
    cap, masks = cv2.VideoCapture(summary["outputs"]["masks"]), {}
    for j in range(picks[-1] + 1):
        ok, m = cap.read()
        if ok and j in picks:
            masks[j] = m[..., 0] > 127
    cap.release()
    fig, axes = plt.subplots(2, len(picks), figsize=(2.6 * len(picks), 4.6), squeeze=False)
    for c, j in enumerate(picks):
        i, share = rows[j]
        over = frames[i].copy()
        over[masks[j]] = (0.45 * over[masks[j]] + 0.55 * np.array([255, 30, 30])).astype(np.uint8)
        axes[0, c].imshow(frames[i])
        axes[1, c].imshow(over)
        axes[0, c].set_title(f"frame {i}", fontsize=9)
        axes[1, c].set_title(f"object {share:.1%}", fontsize=9)
        for a in axes[:, c]:
            a.axis("off")
    fig.suptitle(f"{clip.path.name}: {summary['frames']} frames, bg: {summary['plate']}", fontsize=10)
    fig.tight_layout()
    return fig
