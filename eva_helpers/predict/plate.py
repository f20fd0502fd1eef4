"""The background plate of a fixed camera's clip: what the scene looks like with nothing in front.

A per-pixel temporal median over frames sampled evenly across the clip: where the object covers a pixel in fewer than
half of the sampled frames, the median there is the background (the condition of every median background model, as
surveyed by Piccardi 2004), then the mean of the samples near it (`median_plate`), so noise drops with the number of
samples. Samples are kept with a stride
that doubles whenever the buffer fills, so the frames kept stay evenly spaced and bounded in number whatever the clip's
length, without trusting the container's frame count.

Light that changes over the clip (a day's timelapse) needs a plate that follows it: `RunningPlate` takes the median
over a window of frames centred on the one predicted (full width at the clip's ends), reading ahead with a second
reader of the same clip, so memory stays at the window's samples.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from eva_helpers.errors import BadInputError, EvaError
from eva_helpers.predict.clip import ClipInfo, Selection, read_frames

MIN_PLATE_FRAMES = 8   # fewer frames in the selected range: no plate (an object there would be half of them)
PLATE_SAMPLES = 20     # frames the median of a whole clip uses: between this and 2x this
WINDOW_SAMPLES = 16    # frames a running plate's window uses
CHUNK = 1 << 16        # pixel values per median chunk: the sorting copy stays small at any resolution
WINDOW_SIGMA = 2.5     # samples this many noise sigmas from the median are averaged into the plate


@dataclass
class Plate:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    frames: list[int]  # indices of the frames the median used
    note: str          # one line for the CSV and the report


def median_plate(frames: list[np.ndarray]) -> np.ndarray:
    """Per-pixel median of (H, W, 3) uint8 frames, then the mean of the samples near it -> (H, W, 3) uint8.

    Where the object covers a pixel in a minority of frames the median is the background's, but taken from the bg
    samples' tail (with 9 of 20 samples darker, the 10th and 11th of 20 are the darkest bg ones): the mean of the
    samples within WINDOW_SIGMA noise sigmas of it (sigma: the median absolute deviation over the whole plate), twice
    re-centred, is the background's own mean, with less noise than a median. Pixels go CHUNK at a time as (P, N)
    rows, so a sort never copies more than one chunk."""
    n, flat = len(frames), [f.reshape(-1) for f in frames]
    total, mid = flat[0].size, sorted({(n - 1) // 2, n // 2})
    med = np.empty(total, np.float32)
    dev, stride = [], max(1, n * total // 1_000_000)  # ~1M deviations: plenty for their median
    for a in range(0, total, CHUNK):
        part = np.partition(np.stack([f[a:a + CHUNK] for f in flat], axis=1), mid, axis=1)  # (P, N) uint8
        med[a:a + CHUNK] = part[:, mid].astype(np.float32).mean(1)
        dev.append(np.abs(part[::stride].astype(np.float32) - med[a:a + CHUNK:stride, None]).ravel())
    reach = float(np.clip(WINDOW_SIGMA * 1.4826 * np.median(np.concatenate(dev)), 3.0, 30.0))
    out = np.empty(total, np.uint8)
    for a in range(0, total, CHUNK):
        x, est = np.stack([f[a:a + CHUNK] for f in flat], axis=1).astype(np.float32), med[a:a + CHUNK]
        for _ in range(2):
            near = np.abs(x - est[:, None]) <= reach  # (P, N)
            k = near.sum(1)
            est = np.where(k > 0, (x * near).sum(1) / np.maximum(k, 1), est)
        out[a:a + CHUNK] = np.clip(np.rint(est), 0, 255)
    return out.reshape(frames[0].shape)


def too_short(info: ClipInfo, sel: Selection, n: int) -> EvaError:
    end = f" and --end {sel.end}" if sel.end is not None else " and the clip's end"
    return BadInputError(f"{info.path}: only {n} frame(s) between --start {sel.start}{end}: too few for a background "
                         f"plate (a median needs >= {MIN_PLATE_FRAMES} frames with the object moving); pass --bg with a "
                         "photo of the empty scene, or a longer range")


def estimate_plate(info: ClipInfo, sel: Selection, samples: int = PLATE_SAMPLES) -> Plate:
    """The median of evenly spaced frames of [start, end) (every frame there, whatever --every: more samples, better
    plate). A range of fewer than MIN_PLATE_FRAMES frames is a one-line error."""
    kept: list[tuple[int, np.ndarray]] = []
    stride, n = 1, 0
    for i, _, rgb in read_frames(info, Selection(sel.start, sel.end), decode=lambda i: (i - sel.start) % stride == 0):
        n += 1
        if rgb is None:
            continue
        kept.append((i, rgb))
        if len(kept) >= 2 * samples:  # offsets 0, s, 2s, ...: every other one is the same grid at 2s
            kept, stride = kept[::2], stride * 2
    if n < MIN_PLATE_FRAMES:
        raise too_short(info, sel, n)
    idx = [i for i, _ in kept]
    return Plate(median_plate([f for _, f in kept]), idx,
                 f"median of {len(idx)} frames ({idx[0]}-{idx[-1]}, every {stride})")


class RunningPlate:
    """The median over a window of `window` frames around each frame asked for, in increasing order (`at`)."""

    def __init__(self, info: ClipInfo, sel: Selection, window: int, samples: int = WINDOW_SAMPLES):
        if not isinstance(window, int) or isinstance(window, bool) or window < 2 * MIN_PLATE_FRAMES:
            raise EvaError(f"--plate-window {window!r}: give a number of frames, at least {2 * MIN_PLATE_FRAMES} "
                           "(a few minutes of footage suits light that changes through a day)")
        self.info, self.sel, self.window = info, sel, window
        self.half, self.step = window // 2, max(1, window // samples)
        self._src = read_frames(info, Selection(sel.start, sel.end),
                                decode=lambda i: (i - sel.start) % self.step == 0)
        self._buf: deque[tuple[int, np.ndarray]] = deque()
        self._last = sel.start - 1  # the last frame index the look-ahead reader has passed
        self.done = False           # the look-ahead reader reached the range's end
        self._plate: Plate | None = None

    def _pull(self, upto: int) -> None:
        while not self.done and self._last < upto:
            try:
                i, _, rgb = next(self._src)
            except StopIteration:
                self.done = True
                break
            self._last = i
            if rgb is not None:
                self._buf.append((i, rgb))

    @property
    def frames_seen(self) -> int:
        return self._last - self.sel.start + 1

    def check(self) -> None:
        """Read the first window: a range too short for any plate is a one-line error before anything is written."""
        self.at(self.sel.start)
        if self.done and self.frames_seen < MIN_PLATE_FRAMES:
            raise too_short(self.info, self.sel, self.frames_seen)

    def at(self, i: int) -> Plate:
        self._pull(max(i + self.half, self.sel.start + self.window - 1))  # a full window at the start too
        low = i - self.half
        if self.done:
            low = min(low, self._last - self.window + 1)  # ... and at the end
        while len(self._buf) > 1 and self._buf[0][0] < low:
            self._buf.popleft()
        idx = [j for j, _ in self._buf]
        if self._plate is None or self._plate.frames != idx:
            self._plate = Plate(median_plate([f for _, f in self._buf]), idx,
                                f"running median of {len(idx)} frames ({idx[0]}-{idx[-1]})")
        return self._plate

    def close(self) -> None:
        self._src.close()
        self._buf.clear()
