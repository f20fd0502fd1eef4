"""What alignment may apply, and the checks that keep it from ever making a pair worse.

The residual gates (registration.py, align.py) judge an estimate by how much it lowers the difference; these guards
hold whatever the estimates say:

- Bounds: a similarity, a homography or a tone map beyond what a second hand-held shot of one scene can need is
  refused (RANSAC on a blurred pair once returned a "confident" scale of 0.000; tone fits between two different
  photos inverted bg).
- An exact pair (bg equals fg_bg bit for bit on most of the frame and of its edges) is returned untouched:
  nothing in it is wrong but the object, so any change would only add false differences.
- Different scenes: when the registered, tone-matched pair still differs strongly on more of the frame than an object
  plausibly covers, nothing is applied and the reason says "these look like different scenes".
"""
from __future__ import annotations

import math

import numpy as np

MIN_SCALE, MAX_SCALE = 0.8, 1.25  # a second shot from one spot zooms by a few %; 20 % is another framing
MAX_ANGLE = 10.0          # degrees of roll; a hand-held second shot rolls by a degree or two
MAX_SHIFT = 0.2           # of the frame's width / height; shake moves a few %, and beyond this little overlap is left
MIN_GAIN, MAX_GAIN = 0.5, 2.0  # per channel, one stop either way; <= 0 inverts or flattens bg
MAX_OFFSET = 64.0         # levels; exposure and white balance scale levels, a quarter of the range is another picture
MAX_KEYSTONE = 0.05       # homography: depth scale across the frame varies by <= 5 % (a tilt of ~3° at 60° FOV)
EXACT_SHARE = 0.5         # an exact pair: at least this share of the frame, and of bg's edges, is bit-identical
                          # (a shot moved >= 0.5 px keeps <= 16 % of its edges; 0.3 px, an identity, up to 50 %)
FLAT_SHARE = 0.01         # bg with edges at fewer than this share of its pixels is flat: moving it changes nothing
DIFF_LEVEL = 32           # levels (worst channel): registered same-scene pairs differ so on <= 42 % (object included)
DIFFERENT_SHARE = 0.5     # more than this share of the overlap differing by > DIFF_LEVEL: more than an object covers
AGREE_LEVEL, MIN_AGREE = 8, 0.1  # ... unless 10 % agrees within 8 levels (one scene, blurred or not: >= 15 %;
                                 # two scenes: <= 4 %, 132 pairs of the embedded sample at 224 px)


def geometry_problem(dx: float, dy: float, angle: float, scale: float, w: int, h: int) -> str | None:
    """Why a similarity (the align module's convention, px of a w x h frame) may not be applied; None when it may."""
    if not all(map(math.isfinite, (dx, dy, angle, scale))):
        return "not a finite transform"
    if not MIN_SCALE <= scale <= MAX_SCALE:
        return f"scale {scale:.3f} outside {MIN_SCALE}-{MAX_SCALE}"
    if abs(angle) > MAX_ANGLE:
        return f"rotation {angle:.1f}° beyond ±{MAX_ANGLE:g}°"
    if abs(dx) > MAX_SHIFT * w or abs(dy) > MAX_SHIFT * h:
        return f"shift ({dx:+.0f}, {dy:+.0f}) px beyond {MAX_SHIFT:.0%} of the frame"
    return None


def keystone_problem(hom: np.ndarray, w: int, h: int) -> str | None:
    """Why a homography (3, 3, bg -> fg_bg px of a w x h frame) may not be applied: its perspective must be slight
    (MAX_KEYSTONE), and the similarity nearest to it within the bounds above."""
    if not np.all(np.isfinite(hom)) or abs(hom[2, 2]) < 1e-9:
        return "not a finite transform"
    m = hom / hom[2, 2]
    if abs(m[2, 0]) * w > MAX_KEYSTONE or abs(m[2, 1]) * h > MAX_KEYSTONE:
        return f"perspective beyond {MAX_KEYSTONE:.0%} of the frame"
    a, b = (m[0, 0] + m[1, 1]) / 2, (m[0, 1] - m[1, 0]) / 2  # the nearest rotation + scale
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    p = m @ np.array([cx, cy, 1.0])
    return geometry_problem(p[0] / p[2] - cx, p[1] / p[2] - cy, math.degrees(math.atan2(b, a)), math.hypot(a, b), w, h)


def tone_problem(gain: np.ndarray, offset: np.ndarray) -> str | None:
    """Why a per-channel tone map fg_bg ~ gain * bg + offset (each (3,)) may not be applied; None when it may."""
    if not (np.all(np.isfinite(gain)) and np.all(np.isfinite(offset))):
        return "not a finite fit"
    if np.any(gain < MIN_GAIN) or np.any(gain > MAX_GAIN):
        return "gain (" + ", ".join(f"{g:.2f}" for g in gain) + f") outside {MIN_GAIN}-{MAX_GAIN}"
    if np.any(np.abs(offset) > MAX_OFFSET):
        return "offset (" + ", ".join(f"{o:+.0f}" for o in offset) + f") beyond ±{MAX_OFFSET:g} levels"
    return None


def exact_pair(bg: np.ndarray, fg_bg: np.ndarray) -> str | None:
    """(H, W, 3) uint8 each -> why this is an exact pair (bg already equals fg_bg outside the object), or None.
    Bit-identical on EXACT_SHARE of the frame and on both sides of EXACT_SHARE of bg's edges (neighbours that
    differ): a shifted or re-exposed shot keeps only flat or clipped pixels, never its edges, identical."""
    if np.count_nonzero(bg != fg_bg) > 3 * (1 - EXACT_SHARE) * bg.shape[0] * bg.shape[1]:
        return None  # too many differing bytes for half the pixels to be identical (7 ms at 12 MP, not 160)
    same = (bg == fg_bg).all(axis=2)  # (H, W)
    share = float(same.mean())
    if share < EXACT_SHARE:
        return None
    edges = kept = 0
    for a, b, s0, s1 in ((bg[:, 1:], bg[:, :-1], same[:, 1:], same[:, :-1]), (bg[1:], bg[:-1], same[1:], same[:-1])):
        e = (a != b).any(axis=2)  # (H, W - 1) or (H - 1, W): an edge between two neighbours
        edges, kept = edges + int(e.sum()), kept + int((e & s0 & s1).sum())
    if edges >= FLAT_SHARE * same.size and kept < EXACT_SHARE * edges:
        return None
    return f"exact pair: bg already equals fg_bg on {share:.0%} of the frame"


def scenes_differ(bg: np.ndarray, fg_bg: np.ndarray, valid: np.ndarray) -> str | None:
    """bg registered and tone-matched, fg_bg (h, w, 3) uint8, valid (h, w) bool -> why they look like photos of
    different scenes, or None. An object changes part of the frame; registered shots of one scene agree closely on
    much of the rest, whatever noise, blur and JPEG do, while two scenes hardly agree anywhere."""
    import cv2

    if valid.sum() < 64:
        return None
    d = cv2.absdiff(bg, fg_bg).max(axis=2)[valid]  # (n,) uint8, worst channel
    share, agree = float((d > DIFF_LEVEL).mean()), float((d <= AGREE_LEVEL).mean())
    if share <= DIFFERENT_SHARE or agree >= MIN_AGREE:
        return None
    return (f"these look like different scenes: {share:.0%} of the frame differs by > {DIFF_LEVEL} levels, "
            f"{agree:.0%} agrees within {AGREE_LEVEL}")
