"""Register a user's bg photo to their fg_bg photo, match its tone and compression, only when confident.

Two hand-held shots differ by shake (a few to ~20 px of translation, a little rotation and scale), exposure and white
balance; left alone, each difference reads as "object" in |fg_bg - bg|. A wrong correction is worse than none (a naive
shift search once "found" shifts on clean smooth pairs and dropped clean mask IoU from 0.95 to 0.62), so:

- Geometry (registration.py): a similarity estimated on grey analysis copies, applied only when it has support and
  clearly lowers the robust residual; then a homography (a hand-held tilt's keystone) only if it clearly lowers it
  further.
- Tone: per RGB channel fg_bg ~ gain * bg + offset by trimmed least squares started from identity (the object never
  gets a say), on the registered bg; applied only if not near identity and it clearly lowers the robust residual.
- Compression: when fg_bg's pixels show a JPEG at least `JPEG_GAP` qualities coarser than bg's (a lossless bg counts
  as 100), the registered bg is saved again with fg_bg's quality and chroma layout (`compression.py`), so the
  blocky ringing that JPEG adds around every edge is alike in both photos instead of reading as "object".
- Guards (align_guard.py), whatever the estimates say: nothing outside bounds (scale, rotation, shift, gain); an exact
  pair is returned untouched; a pair that still disagrees almost everywhere is "different scenes" and left alone; a
  failed estimate is "not aligned", never an exception. `to_common_size` brings two sizes of one frame to one.

Convention: bg is warped by M (2x3, bg -> fg_bg pixel coordinates) = `cv2.getRotationMatrix2D(c, angle, scale)` with
(dx, dy) added to its last column, c = ((W - 1) / 2, (H - 1) / 2): angle in degrees, counter-clockwise on screen;
(dx, dy) is where the image centre moves, in input px. `Alignment.matrix(W, H)` rebuilds M, or returns the (3, 3)
homography applied instead (dx, dy, angle and scale then stay the similarity found before it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from eva_helpers.data.compression import encode_decode, estimate_jpeg
from eva_helpers.errors import BadInputError
from eva_helpers.predict.align_guard import exact_pair, scenes_differ, tone_problem
from eva_helpers.predict.registration import (
    MAX_SAMPLES,
    MIN_DROP,
    MIN_RATIO,
    analysis_copy,
    cv2_module,
    estimate_geometry,
    estimate_keystone,
    feature_matches,
    fit_linear,
    sample_pixels,
    similarity,
    similarity_params,
    textured,
    trimmed_mean,
    warp,
    worst_channel,
)

TONE_GAIN_TOL, TONE_OFFSET_TOL = 0.01, 1.0  # a tone fit within these of identity in every channel is not applied
JPEG_GAP = 15             # bg is re-compressed like fg_bg only when fg_bg's JPEG quality is this much lower
MIN_SIDE = 16             # px; a smaller pair has too little to estimate anything from and is left as it is
SAME_ASPECT = 0.01        # two sizes whose aspect ratios differ by less than this (relative) show the same frame
TOO_SMALL, FAILED = "too small to align", "estimate failed"  # the reasons alignment could not run at all


@dataclass(frozen=True)
class Alignment:
    """What `align_pair` applied to bg and how sure it was; `reason` / `tone_reason` say why in a few words."""
    applied: bool = False
    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0
    scale: float = 1.0
    tone_applied: bool = False
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    confidence: float = 0.0
    inliers: int = 0
    reason: str = "identity"
    tone_reason: str = "identity"
    jpeg_applied: bool = False  # bg saved again as a JPEG with fg_bg's settings (below)
    jpeg_quality: int = 0       # fg_bg's JPEG quality as read from its pixels (0: no coarse JPEG seen)
    jpeg_subsampled: bool = False
    jpeg_reason: str = "identity"
    residual_before: float = 0.0  # robust RGB residual (levels, textured pixels) of the pair as given
    residual_after: float = 0.0   # ... after what was applied
    different_scenes: bool = False  # registered and tone-matched, the pair still disagrees almost everywhere
    homography: tuple[float, ...] = ()  # 9 values, row-major (3, 3) bg -> fg_bg in input px, when a keystone was fixed

    def as_row(self) -> dict:
        """Flat dict of plain values for a CSV row or JSON, keys "align_<field>" (gain/offset as _r, _g, _b)."""
        row = {}
        for k, v in asdict(self).items():
            if k == "homography":  # one column: 9 numbers, or empty
                row["align_homography"] = " ".join(f"{x:.9g}" for x in v)
            elif isinstance(v, tuple):
                row.update({f"align_{k}_{c}": float(x) for c, x in zip("rgb", v)})
            else:
                row[f"align_{k}"] = v if isinstance(v, (bool, str, int)) else float(v)
        return row

    def matrix(self, width: int, height: int) -> np.ndarray:
        """(2, 3) float64 bg -> fg_bg map in input px (identity when no geometry was applied); with a keystone fixed,
        the (3, 3) homography that was applied instead."""
        if self.homography:
            return np.array(self.homography, np.float64).reshape(3, 3)
        return similarity(self.dx, self.dy, self.angle, self.scale, width, height) if self.applied else np.eye(2, 3)


IDENTITY = Alignment()


def _tone(bg: np.ndarray, fg_bg: np.ndarray, valid: np.ndarray) -> dict:
    """Robust per-channel gain/offset of the registered bg (h, w, 3) to fg_bg (h, w, 3) on `valid`; the Alignment's
    tone fields (applied only if not near identity and it clearly lowers the residual)."""
    idx = sample_pixels(valid, 2 * MAX_SAMPLES)
    x, y = (a.reshape(-1, 3)[idx].astype(np.float32) for a in (bg, fg_bg))  # (n, 3)
    ok = (worst_channel(x - 127.5) < 125) & (worst_channel(y - 127.5) < 125)  # no channel clipped (<= 2 or >= 253)
    x, y = x[ok], y[ok]
    if x.shape[0] < 100:
        return dict(tone_reason="too few unclipped pixels")
    if trimmed_mean(worst_channel(y - x)) < MIN_DROP:  # already matching: no fit could clear the bar
        return dict(tone_reason="near identity")
    a, b, before, after = fit_linear(x, y)
    lo, hi = np.percentile(x, 1, axis=0), np.percentile(x, 99, axis=0)
    moved = np.maximum(np.abs((a - 1) * lo + b), np.abs((a - 1) * hi + b))  # (3,) levels moved over the data
    if (np.all(np.abs(a - 1) <= TONE_GAIN_TOL) and np.all(np.abs(b) <= TONE_OFFSET_TOL)) or moved.max() < 1.0:
        return dict(tone_reason="near identity")
    if not (after <= MIN_RATIO * before and before - after >= MIN_DROP):
        return dict(tone_reason=f"fit does not lower residual ({before:.1f} -> {after:.1f})")
    problem = tone_problem(a, b)
    if problem:
        return dict(tone_reason=f"fit outside bounds: {problem}")
    return dict(tone_applied=True, gain=tuple(round(float(v), 4) for v in a),
                offset=tuple(round(float(v), 3) for v in b), tone_reason=f"residual {before:.1f} -> {after:.1f}")


def tone_lut(img: np.ndarray, gain: tuple, offset: tuple) -> np.ndarray:
    """bg' = gain * bg + offset per channel, rounded and clipped: (H, W, 3) uint8 -> same."""
    cv2, v = cv2_module(), np.arange(256, dtype=np.float64)
    luts = [np.clip(np.rint(a * v + b), 0, 255).astype(np.uint8) for a, b in zip(gain, offset)]
    return cv2.merge([cv2.LUT(np.ascontiguousarray(img[..., c]), luts[c]) for c in range(3)])


def _check(bg: np.ndarray, fg_bg: np.ndarray) -> None:
    for name, a in (("bg", bg), ("fg_bg", fg_bg)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise BadInputError(f"align_pair: {name} must be an (H, W, 3) uint8 RGB array, got "
                                f"{getattr(a, 'shape', type(a).__name__)} {getattr(a, 'dtype', '')}".rstrip())
    if bg.shape != fg_bg.shape:
        raise BadInputError(f"align_pair: bg is {bg.shape[1]}x{bg.shape[0]} px but fg_bg is {fg_bg.shape[1]}x"
                            f"{fg_bg.shape[0]}: both photos must have the same size")


def _left_alone(reason: str, **fields) -> Alignment:
    """Nothing applied, for one reason that every part (geometry, tone, compression) shares."""
    return replace(IDENTITY, reason=reason, tone_reason=reason, jpeg_reason=reason, **fields)


def _compression(bg: np.ndarray, fg_bg: np.ndarray) -> dict:
    """Whether bg should be saved again with fg_bg's JPEG settings (module docstring), as Alignment fields."""
    fg = estimate_jpeg(fg_bg)
    if fg is None:
        return dict(jpeg_reason="fg_bg shows no coarse JPEG")
    fields = dict(jpeg_quality=fg.quality, jpeg_subsampled=fg.subsampled)
    if 100 - fg.quality < JPEG_GAP:  # not even a lossless bg would be that much finer: no need to read bg's
        return dict(fields, jpeg_reason=f"fg_bg quality {fg.quality}: fine enough")
    ours = estimate_jpeg(bg)
    bg_q = 100 if ours is None else ours.quality
    if bg_q - fg.quality < JPEG_GAP:
        return dict(fields, jpeg_reason=f"compressed alike (fg_bg quality {fg.quality}, bg {bg_q})")
    return dict(fields, jpeg_applied=True, jpeg_reason=f"fg_bg quality {fg.quality}, bg {bg_q}")


def align_pair(bg: np.ndarray, fg_bg: np.ndarray, *, geometry: bool = True, tone: bool = True,
               compression: bool = True) -> tuple[np.ndarray, Alignment]:
    """(H, W, 3) uint8 RGB bg and fg_bg (same shape) -> (bg registered, tone-matched and compressed like fg_bg,
    (H, W, 3) uint8; the Alignment). Pixels the warp leaves without a source take fg_bg's values (no false difference
    at borders). When nothing is confident nothing is applied, and the result is a copy of bg, byte for byte; so it is
    for an exact pair, for photos of different scenes (align_guard.py), and when an estimate fails: no photo pair of
    one size makes it raise."""
    _check(bg, fg_bg)
    if min(bg.shape[:2]) < MIN_SIDE:
        return bg.copy(), _left_alone(f"{TOO_SMALL} ({bg.shape[1]}x{bg.shape[0]} px, need >= {MIN_SIDE})")
    exact = exact_pair(bg, fg_bg)
    if exact:
        return bg.copy(), _left_alone(exact)
    try:
        return _align(bg, fg_bg, geometry, tone, compression)
    except MemoryError:
        raise
    except Exception as e:  # a failed estimate means "not aligned", never a failed prediction (test_align_fuzz.py)
        first = (str(e).strip().splitlines() or [""])[0][:120]
        return bg.copy(), _left_alone(f"{FAILED} ({type(e).__name__}: {first})")


def _align(bg: np.ndarray, fg_bg: np.ndarray, geometry: bool, tone: bool,
           compression: bool) -> tuple[np.ndarray, Alignment]:
    """align_pair's estimates and their application, on a pair that passed its checks."""
    cv2 = cv2_module()
    H, W = bg.shape[:2]
    s_bg0, s_fg = analysis_copy(bg), analysis_copy(fg_bg)  # (h, w, 3) uint8 analysis copies
    s_bg, (h, w) = s_bg0, s_bg0.shape[:2]
    g_bg, g_fg = (cv2.cvtColor(s, cv2.COLOR_RGB2GRAY).astype(np.float32) for s in (s_bg0, s_fg))  # (h, w)
    texture = textured(g_fg)
    fields: dict = dict(reason="geometry off")
    m = matches = None
    if geometry:
        matches = feature_matches(g_bg, g_fg)
        m, geo = estimate_geometry(g_bg, g_fg, texture, matches)
        fields.update(geo)
    valid = np.ones((h, w), bool)
    if m is not None:
        sx, sy = w / W, h / H  # analysis -> input px, pixel centres aligned
        s = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        fields.update(similarity_params((np.linalg.inv(s) @ np.vstack([m, [0, 0, 1]]) @ s)[:2], W, H), applied=True)
        # a homography needs many matches: tried only where features, not phase or search, placed bg
        hom, why = estimate_keystone(g_bg, g_fg, m, matches, texture) if fields["inliers"] else (None, "")
        if hom is not None:
            full = np.linalg.inv(s) @ hom @ s  # (3, 3) in input px
            fields.update(homography=tuple(float(v) for v in (full / full[2, 2]).ravel()),
                          reason=f"{fields['reason']}; {why}")
            m = hom
        s_bg, valid = warp(s_bg, m)
    fields.update(_tone(s_bg, s_fg, valid) if tone else dict(tone_reason="tone off"))
    if fields.get("tone_applied"):
        s_bg = tone_lut(s_bg, fields["gain"], fields["offset"])
    sel = sample_pixels(valid & texture)  # residuals reported on the textured pixels every version shares
    res = [round(trimmed_mean(worst_channel(s_fg.reshape(-1, 3)[sel].astype(np.float32) - b.reshape(-1, 3)[sel])), 3)
           for b in (s_bg0, s_bg)]
    differ = scenes_differ(s_bg, s_fg, valid)  # judged on what would be applied: the pair at its best
    if differ:
        return bg.copy(), _left_alone(differ, different_scenes=True, residual_before=res[0], residual_after=res[0])
    fields.update(_compression(bg, fg_bg) if compression else dict(jpeg_reason="compression off"))
    alignment = Alignment(**fields, residual_before=res[0], residual_after=res[1])
    if not (alignment.applied or alignment.tone_applied or alignment.jpeg_applied):
        return bg.copy(), alignment
    out = bg
    if alignment.applied:
        out, inside = warp(bg, alignment.matrix(W, H))  # (H, W, 3), (H, W) bool
    if alignment.tone_applied:
        out = tone_lut(out, alignment.gain, alignment.offset)
    if alignment.applied:
        out = np.where(inside[..., None], out, fg_bg)  # no source -> fg_bg's pixel: no false difference
    if alignment.jpeg_applied:  # last, as a camera saves: on fg_bg's block grid, since bg now sits in its frame
        out = encode_decode(out, alignment.jpeg_quality, alignment.jpeg_subsampled)
    return out, alignment


def to_common_size(bg: np.ndarray, fg_bg: np.ndarray) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Two photos of one scene at two sizes with one aspect (a chat app's 1600 px copy of a 12 MP photo) -> bg at
    fg_bg's size (the outputs belong to fg_bg: area-averaged when shrunk, cubic when enlarged), and a note saying so
    (None when the sizes agree). Different aspects are not one frame: a one-line BadInputError naming both sizes."""
    (hb, wb), (hf, wf) = bg.shape[:2], fg_bg.shape[:2]
    if (hb, wb) == (hf, wf):
        return bg, fg_bg, None
    if min(hb, wb, hf, wf) < 1 or abs((wb / hb) / (wf / hf) - 1.0) > SAME_ASPECT:
        raise BadInputError(f"bg is {wb}x{hb} but fg_bg is {wf}x{hf}: different aspect ratios, so not two shots of "
                            "one frame; crop one like the other or take both photos again")
    cv2 = cv2_module()
    interp = cv2.INTER_AREA if hb * wb > hf * wf else cv2.INTER_CUBIC
    return cv2.resize(bg, (wf, hf), interpolation=interp), fg_bg, f"bg {wb}x{hb} resized to fg_bg's {wf}x{hf}"


def could_not_align(al: "Alignment") -> bool:
    """True when alignment could not run on the pair (too small, or an estimate failed), as opposed to running and
    finding nothing to correct: the user is told, with the files, and offered --no-align."""
    return not al.applied and al.reason.startswith((TOO_SMALL, FAILED))


def describe_alignment(al: "Alignment") -> str:
    """One line saying what the alignment applied to bg (or why nothing), for the user."""
    parts = []
    if al.applied:
        parts.append(f"shift ({al.dx:+.1f}, {al.dy:+.1f}) px, rotation {al.angle:.1f}°, scale {al.scale:.3f}"
                     + (", keystone" if al.homography else ""))
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
