"""Video files in and out with OpenCV's bundled FFmpeg (no binary of our own): a clip's frames read one at a time, so
a clip of any length costs the memory of a few frames, and lossless grey videos written under a temp name.

`--start` / `--end` / `--every` select frames by index in decode order. Skipped frames are only grabbed, never
converted; seeking (CAP_PROP_POS_FRAMES) is not used because on inter-coded clips it lands on a nearby keyframe on
some backends, and a mask must belong to the frame its row names. A frame's time is the container's timestamp
(variable frame rates stay right), or index / fps where the backend gives none.
"""
from __future__ import annotations

import math
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from eva_helpers.atomic import TMP_PREFIX, fsync_dir
from eva_helpers.errors import BadInputError, EvaError

FORMATS = ".mp4, .mov, .avi, .mkv or .webm"
# lossless codecs of opencv-python(-headless)'s FFmpeg, first that opens wins; MJPG (even at quality 100) blurs masks
CODECS = (("FFV1", ".mkv"), ("png ", ".avi"))


@dataclass(frozen=True)
class ClipInfo:
    """What a clip's container says about it, checked by decoding its first frame."""
    path: Path
    width: int
    height: int
    fps: float  # 0.0 when the container does not say
    frames: int | None  # the container's frame count (an estimate for some formats), None when unknown


@dataclass(frozen=True)
class Selection:
    """Which frames to read: indices start, start + every, ... below end (None: to the clip's last frame)."""
    start: int = 0
    end: int | None = None
    every: int = 1

    def check(self) -> "Selection":
        """One line naming the flag at fault, before anything is read or written."""
        for flag, v in (("--start", self.start), ("--every", self.every)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise EvaError(f"{flag} {v!r}: give a whole number")
        if self.every < 1:
            raise EvaError(f"--every {self.every}: must be 1 or more (1 = every frame, 5 = every fifth)")
        if self.start < 0:
            raise EvaError(f"--start {self.start}: must be 0 or more (a frame index; 0 = the first frame)")
        if self.end is not None and (not isinstance(self.end, int) or self.end <= self.start):
            raise EvaError(f"--end {self.end!r}: must be a frame index after --start {self.start}")
        return self

    def wanted(self, i: int) -> bool:
        return i >= self.start and (i - self.start) % self.every == 0

    def count(self, frames: int | None) -> int | None:
        """How many frames the selection takes from a clip of `frames` frames (None when unknown)."""
        stop = self.end if frames is None else min(frames, self.end if self.end is not None else frames)
        return None if stop is None else len(range(self.start, stop, self.every))


@contextmanager
def quiet_video_logs():
    """FFmpeg's and OpenCV's own log lines off while a clip is opened: the user gets our one line, not theirs.
    FFmpeg's level is read once per process, when OpenCV first loads it; OPENCV_FFMPEG_LOGLEVEL set by the user wins."""
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    log = getattr(cv2, "utils", None) and getattr(cv2.utils, "logging", None)
    saved = log.getLogLevel() if log else None
    if log:
        log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        if log:
            log.setLogLevel(saved)


def _capture(path: Path):
    import cv2

    if not path.is_file():
        what = "is a folder, not a video file" if path.is_dir() else "no such file"
        raise BadInputError(f"{path}: {what}; give the path of a video clip ({FORMATS})")
    with quiet_video_logs():
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            raise BadInputError(f"{path}: cannot be read as a video (OpenCV's FFmpeg could not open it: damaged, or "
                                f"not a video); give a clip in a common format ({FORMATS})")
    return cap


def open_clip(path: str | Path) -> ClipInfo:
    """Check that `path` opens and its first frame decodes: a one-line BadInputError naming it otherwise."""
    import cv2

    path = Path(path)
    cap = _capture(path)
    try:
        with quiet_video_logs():
            ok, frame = cap.read()
        if not ok or frame is None or frame.ndim not in (2, 3) or min(frame.shape[:2]) < 1:
            raise BadInputError(f"{path}: opens as a video but no frame could be decoded (damaged, or a codec this "
                                f"OpenCV lacks); re-encode it, e.g. as H.264 .mp4, or give another clip")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        frames = int(count) if math.isfinite(count) and count > 0 else None
        return ClipInfo(path=path, width=int(frame.shape[1]), height=int(frame.shape[0]),
                        fps=fps if math.isfinite(fps) and 0 < fps < 10_000 else 0.0, frames=frames)
    finally:
        cap.release()


def _rgb(frame: np.ndarray) -> np.ndarray:
    """A decoded frame (BGR, BGRA or gray) -> (H, W, 3) uint8 RGB."""
    import cv2

    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    code = cv2.COLOR_BGRA2RGB if frame.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(frame, code)


def read_frames(info: ClipInfo, sel: Selection = Selection(), decode: Callable[[int], bool] | None = None
                ) -> Iterator[tuple[int, float, np.ndarray | None]]:
    """(index, time in s, (H, W, 3) uint8 RGB) for each selected frame, streaming. `decode(i)`, when given, replaces
    the selection's rule: every frame in [start, end) is yielded, decoded only where it is True (else None), so a
    caller can count frames while converting few. A frame of another size than the first is a one-line error."""
    import cv2

    cap = _capture(info.path)
    try:
        i = 0
        while sel.end is None or i < sel.end:
            take = i >= sel.start and (decode(i) if decode is not None else sel.wanted(i))
            with quiet_video_logs():
                ok = cap.grab()
                frame = cap.retrieve()[1] if ok and take else None
            if not ok:
                return
            if take and frame is None:
                raise BadInputError(f"{info.path}: frame {i} could not be decoded (a damaged clip); pass --end {i} to "
                                    "stop before it")
            if i >= sel.start and (take or decode is not None):
                ms = cap.get(cv2.CAP_PROP_POS_MSEC)
                t = ms / 1000.0 if ms > 0 or i == 0 else (i / info.fps if info.fps else float("nan"))
                rgb = None
                if frame is not None:
                    rgb = _rgb(frame)
                    if rgb.shape[:2] != (info.height, info.width):
                        raise BadInputError(f"{info.path}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]} but the clip "
                                            f"started at {info.width}x{info.height}; cut the clip where it changes")
                yield i, t, rgb
            i += 1
    finally:
        cap.release()


class VideoOut:
    """A lossless grey video written under a temp name in OUT; `commit` renames it onto OUT/<stem><ext>."""

    def __init__(self, out: Path, stem: str, size: tuple[int, int], fps: float):
        import cv2

        for fourcc, ext in CODECS:
            tmp = out / f"{TMP_PREFIX}{stem}.{uuid.uuid4().hex[:8]}{ext}"
            with quiet_video_logs():
                w = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size, isColor=False)
            if w.isOpened():
                self.writer, self.tmp, self.path = w, tmp, out / f"{stem}{ext}"
                return
            w.release()
            tmp.unlink(missing_ok=True)
        raise EvaError(f"{out}: this OpenCV cannot write a lossless video (FFV1 or PNG codec); reinstall "
                       "opencv-python-headless, or check that the folder is writable")

    def write(self, gray: np.ndarray) -> None:
        self.writer.write(np.ascontiguousarray(gray))

    def commit(self) -> Path:
        self.writer.release()
        if not self.tmp.is_file() or self.tmp.stat().st_size == 0:
            raise EvaError(f"cannot write {self.path}: the video came out empty (a full disk?); free some space and "
                           "run the same command again")
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def discard(self) -> None:
        self.writer.release()
        self.tmp.unlink(missing_ok=True)
