"""A fixed camera's frames aligned to the plate at video rates: `align.align_pair`'s estimate (the same registration,
gates and tone match as for photos) made on copies at most ALIGN_SIDE px long, then applied to the full-size plate.

At 640x480 align_pair costs 90-150 ms per frame on one core (ORB on both images and a brute-force match of 2,000
features each, then a JPEG estimate): more than decoding, the model, the outline and the writes together. On copies
320 px long it costs a third, and on bench/footage.py's clips (shake up to 1.5 px) its shift agrees with the full-size
estimate within 0.05 px. The frames of a clip share one encoder, so whether the plate is saved again like the frames
(align_pair's JPEG rule) is decided once, on the first frame at full size, and applied to every frame.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from eva_helpers.data.compression import encode_decode
from eva_helpers.predict.align import Alignment, align_pair, tone_lut
from eva_helpers.predict.registration import similarity_params, warp

ALIGN_SIDE = 320  # px: the longest side alignment is estimated at; frames up to 4/3 of it are aligned as they are


def _to_pixels(w: int, h: int, W: int, H: int) -> np.ndarray:
    """(3, 3) map from (W, H) px to (w, h) px, pixel centres aligned."""
    sx, sy = w / W, h / H
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


class FrameAligner:
    """Aligns the plate to each frame of one clip; `jpeg`: the clip's JPEG decision (quality, subsampled) or None."""

    def __init__(self, plate: np.ndarray, first_frame: np.ndarray):
        _, first = align_pair(plate, first_frame)  # full size, once: the clip's compression, as a photo's
        self.jpeg = (first.jpeg_quality, first.jpeg_subsampled) if first.jpeg_applied else None
        self.jpeg_fields = {k: getattr(first, k) for k in ("jpeg_applied", "jpeg_quality", "jpeg_subsampled",
                                                          "jpeg_reason")}

    def __call__(self, plate: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, Alignment]:
        """(H, W, 3) uint8 plate and frame -> (the plate aligned to the frame, (H, W, 3) uint8; the Alignment in the
        frame's px). Nothing confident: the plate itself (not a copy; callers only read it)."""
        import cv2

        H, W = frame.shape[:2]
        f = ALIGN_SIDE / max(H, W)
        if f * 4 / 3 >= 1:
            out, al = align_pair(plate, frame, compression=False)
            w = h = None
        else:
            w, h = max(16, round(W * f)), max(16, round(H * f))
            small = [cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA) for a in (plate, frame)]
            _, al = align_pair(*small, compression=False)
            out = plate
            if al.applied:
                s = _to_pixels(w, h, W, H)
                m = al.matrix(w, h)
                m3 = m if m.shape == (3, 3) else np.vstack([m, [0, 0, 1]])
                full = np.linalg.inv(s) @ m3 @ s
                sim = np.linalg.inv(s) @ np.vstack([replace(al, homography=()).matrix(w, h), [0, 0, 1]]) @ s
                al = replace(al, **similarity_params(sim[:2], W, H),
                             homography=tuple(float(v) for v in (full / full[2, 2]).ravel()) if al.homography else ())
                out, inside = warp(plate, full if al.homography else full[:2])
            if al.tone_applied:
                out = tone_lut(out, al.gain, al.offset)
            if al.applied:
                out = np.where(inside[..., None], out, frame)  # no source -> the frame's pixel: no false difference
        if al.different_scenes:  # left alone, as align_pair leaves such a pair
            return out, al
        if self.jpeg is not None:
            out = encode_decode(out, *self.jpeg)
        return out, replace(al, **self.jpeg_fields)
