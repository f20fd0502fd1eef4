"""Register a user's bg photo to their fg_bg photo and match its tone, only when confident (DESIGN section 3).

Two hand-held shots differ by shake (a few to ~20 px of translation, a little rotation and scale), exposure and white
balance; left alone, each difference reads as "object" in |fg_bg - bg|. A wrong correction is worse than none (a naive
shift search once "found" shifts on clean smooth pairs and dropped clean mask IoU from 0.95 to 0.62), so:

- Estimation runs on grey copies whose longest side is at most `ANALYSIS_SIDE` px (the analysis images).
- Geometry: ORB matches -> RANSAC similarity (the pasted object's points are outliers); if that fails, phase
  correlation (translation only, for backgrounds with few corners); if that fails too, every whole-pixel shift within
  a few px (small or smooth pairs, e.g. at the model's 64 px). The candidate is polished to sub-pixel by a robust
  Gauss-Newton (Tukey weights drop the object) and applied only when (1) it has support (>= `MIN_INLIERS` inliers or a
  phase peak >= `MIN_RESPONSE`), (2) some image corner moves >= `NEAR_IDENTITY_PX` analysis px, and (3) it clearly
  lowers the robust residual (`_residual`) against no warp on the same pixels (textured ones; all of them for the
  search, since a smooth scene's shake shows in its flat parts too).
- Tone: per RGB channel fg_bg ~ gain * bg + offset by trimmed least squares started from identity (the object never
  gets a say), on the registered bg; applied only if not near identity and it clearly lowers the robust residual.
- Compression: when fg_bg's pixels show a JPEG at least `JPEG_GAP` qualities coarser than bg's (a lossless bg counts
  as 100), the registered bg is saved again with fg_bg's quality and chroma layout (`compression.py`), so the
  blocky ringing that JPEG adds around every edge is alike in both photos instead of reading as "object".

Convention: bg is warped by M (2x3, bg -> fg_bg pixel coordinates) = `cv2.getRotationMatrix2D(c, angle, scale)` with
(dx, dy) added to its last column, c = ((W - 1) / 2, (H - 1) / 2): angle in degrees, counter-clockwise on screen;
(dx, dy) is where the image centre moves, in input px. `Alignment.matrix(W, H)` rebuilds M.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from eva_helpers.errors import BadInputError

ANALYSIS_SIDE = 768       # longest side (px) of the analysis images
MIN_INLIERS = 12          # RANSAC inliers needed to trust a feature-based similarity
MIN_RESPONSE = 0.08       # phase-correlation peak needed to try a translation
NEAR_IDENTITY_PX = 0.3    # a warp moving every corner less than this (analysis px) is identity
MIN_RATIO, MIN_DROP = 0.8, 0.5  # applied only if residual_after <= 0.8 * before and before - after >= 0.5 levels,
STRONG_RATIO, STRONG_DROP = 0.6, 0.2  # or if it removes 40 % of it (a pixel of shake on a smooth scene: 0.8 -> 0.4)
TRIM = 0.6                # robust residual: mean of the lowest 60 % of per-pixel errors (the object is in the rest)
TONE_KEEP = 0.6           # tone fit: refit on the best-fitting 60 % of pixels
TONE_GAIN_TOL, TONE_OFFSET_TOL = 0.01, 1.0  # a tone fit within these of identity in every channel is not applied
MAX_SAMPLES = 6_000       # pixels used by a residual or a fit (deterministic stride)
SEARCH_SIDE, SEARCH_RADIUS = 128, 4  # last resort: every whole-pixel shift within 4 px of a <= 128 px copy
JPEG_GAP = 15             # bg is re-compressed like fg_bg only when fg_bg's JPEG quality is this much lower


def _cv2():
    import cv2

    return cv2


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

    def as_row(self) -> dict:
        """Flat dict of plain values for a CSV row or JSON, keys "align_<field>" (gain/offset as _r, _g, _b)."""
        row = {}
        for k, v in asdict(self).items():
            if isinstance(v, tuple):
                row.update({f"align_{k}_{c}": float(x) for c, x in zip("rgb", v)})
            else:
                row[f"align_{k}"] = v if isinstance(v, (bool, str, int)) else float(v)
        return row

    def matrix(self, width: int, height: int) -> np.ndarray:
        """(2, 3) float64 bg -> fg_bg map in input px (identity when no geometry was applied)."""
        return _similarity(self.dx, self.dy, self.angle, self.scale, width, height) if self.applied else np.eye(2, 3)


IDENTITY = Alignment()


def _similarity(dx: float, dy: float, angle: float, scale: float, w: int, h: int) -> np.ndarray:
    m = np.asarray(_cv2().getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale), np.float64)
    m[:, 2] += (dx, dy)
    return m


def _params(m: np.ndarray, w: int, h: int) -> dict:
    """(2, 3) similarity -> dict(dx, dy, angle, scale) in the module's convention."""
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    dx, dy = m[:, :2] @ c + m[:, 2] - c
    return dict(dx=float(dx), dy=float(dy), angle=math.degrees(math.atan2(m[0, 1], m[0, 0])),
                scale=float(math.hypot(m[0, 0], m[1, 0])))


def _small(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 with max(h, w) <= ANALYSIS_SIDE (area-averaged)."""
    (H, W), cv2 = rgb.shape[:2], _cv2()
    f = ANALYSIS_SIDE / max(H, W)
    return rgb if f >= 1.0 else cv2.resize(rgb, (round(W * f), round(H * f)), interpolation=cv2.INTER_AREA)


def _warp(img: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Warp img by m (bilinear, edges replicated) -> (warped, (h, w) bool: the whole source footprint is inside)."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.full((h, w), 255, np.uint8), m, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out, inside == 255


def _samples(mask: np.ndarray, most: int = MAX_SAMPLES) -> np.ndarray:
    """Flat indices of about `most` True pixels of mask, evenly strided (deterministic)."""
    idx = np.flatnonzero(mask)
    return idx[:: max(1, -(-idx.size // most))]


def _worst(d: np.ndarray) -> np.ndarray:
    """(n, c) -> (n,) largest |d| over channels (a column loop: numpy reduces a short last axis slowly)."""
    out = np.abs(d[:, 0])
    for c in range(1, d.shape[1]):
        np.maximum(out, np.abs(d[:, c]), out=out)
    return out


def _trimmed(r: np.ndarray) -> float:
    """Mean of the lowest TRIM fraction of r (n,): the object and other large differences are ignored."""
    k = max(1, int(r.size * TRIM))
    return float(np.partition(r, k - 1)[:k].mean()) if r.size else 0.0


def _fit_linear(x: np.ndarray, y: np.ndarray, iters: int = 5) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Trimmed per-channel least squares y ~ a * x + b from identity; x, y (n, c) float32.
    -> (a (c,), b (c,), robust residual at identity, after)."""
    a, b = np.ones(x.shape[1], np.float32), np.zeros(x.shape[1], np.float32)
    k = int(x.shape[0] * TONE_KEEP)
    for _ in range(iters):
        r = _worst(y - (x * a + b))  # (n,) worst channel: the object is the same pixels in every channel
        keep = r <= np.partition(r, k)[k]
        xs, ys = x[keep], y[keep]
        mx, my = xs.mean(axis=0, dtype=np.float64), ys.mean(axis=0, dtype=np.float64)
        d = xs - mx.astype(np.float32)
        var = (d * d).mean(axis=0, dtype=np.float64)
        cov = (d * (ys - my.astype(np.float32))).mean(axis=0, dtype=np.float64)
        a = np.where(var > 1.0, cov / np.maximum(var, 1e-9), 1.0).astype(np.float32)  # flat channel: offset only
        b = (my - a * mx).astype(np.float32)
    return a, b, _trimmed(_worst(y - x)), _trimmed(_worst(y - (x * a + b)))


def _residual(g_fg: np.ndarray, g_bg: np.ndarray, sel: np.ndarray) -> float:
    """Robust grey residual (levels) on the pixels `sel`, after a robust grey gain/offset match (an exposure change
    must not hide what a warp gains). g_*: (h, w) float32."""
    idx = _samples(sel)
    return _fit_linear(g_bg.reshape(-1, 1)[idx], g_fg.reshape(-1, 1)[idx], iters=3)[3]


def _texture(g: np.ndarray) -> np.ndarray:
    """(h, w) bool: gradient above the median, where a misregistration shows (smooth areas hide it)."""
    cv2 = _cv2()
    mag = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1))
    return mag >= np.median(mag)


def _corner_move(m: np.ndarray, w: int, h: int) -> float:
    """Largest displacement (px) of an image corner under m (2, 3)."""
    c = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], np.float64)
    return float(np.abs(c @ m.T - c[:, :2]).max())


def _features(g_bg: np.ndarray, g_fg: np.ndarray) -> tuple[np.ndarray, int] | None:
    """ORB matches -> RANSAC similarity (2, 3, bg -> fg_bg) and its inlier count; None if unsupported."""
    cv2 = _cv2()
    # one pyramid level: shake barely scales, and level-0 corners are the most precise
    orb = cv2.ORB_create(nfeatures=int(np.clip(g_bg.size / 75, 650, 2000)), nlevels=1, edgeThreshold=15,
                         patchSize=15, fastThreshold=10)
    (kb, db), (kf, df) = (orb.detectAndCompute(g.astype(np.uint8), None) for g in (g_bg, g_fg))
    if db is None or df is None or min(len(kb), len(kf)) < MIN_INLIERS:
        return None
    good = [p[0] for p in cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(db, df, k=2)
            if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
    if len(good) < MIN_INLIERS:
        return None
    src = np.float32([kb[g.queryIdx].pt for g in good])  # (n, 2) in bg
    dst = np.float32([kf[g.trainIdx].pt for g in good])  # (n, 2) in fg_bg
    m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.5, maxIters=2000,
                                         confidence=0.999, refineIters=20)
    n = 0 if inl is None else int(inl.sum())
    return (m.astype(np.float64), n) if m is not None and n >= MIN_INLIERS else None


def _refine(g_bg: np.ndarray, g_fg: np.ndarray, m: np.ndarray, sel: np.ndarray, iters: int = 10) -> np.ndarray:
    """Sub-pixel polish of a similarity m (2, 3, bg -> fg_bg): robust Gauss-Newton on the similarity plus a grey
    gain/offset over the pixels `sel`; Tukey weights drop the object. Returns m if it diverges or wanders > 3 px."""
    cv2 = _cv2()
    h, w = g_fg.shape
    bs, fs = cv2.GaussianBlur(g_bg, (0, 0), 1.0), cv2.GaussianBlur(g_fg, (0, 0), 1.0)  # (h, w) float32
    grads = [cv2.Sobel(bs, cv2.CV_32F, *d, ksize=3, scale=0.125) for d in ((1, 0), (0, 1))]
    stack = np.dstack([bs, *grads, np.ones_like(bs)])  # (h, w, 4): image, d/dx, d/dy, "has a source"
    idx = _samples(sel)
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    u, v = (idx % w - c[0]).astype(np.float32), (idx // w - c[1]).astype(np.float32)  # (n,) centred fg_bg coords
    f = fs.reshape(-1)[idx]
    t = cv2.invertAffineTransform(m)  # fg_bg -> bg
    p = np.array([t[0, 0], t[1, 0], *(t[:, :2] @ c + t[:, 2] - c), 1.0, 0.0])  # a, b, tx, ty, gain, offset

    def as_matrix(p: np.ndarray) -> np.ndarray:  # (2, 3) fg_bg -> bg: [[a, -b], [b, a]] about c, then (tx, ty)
        a, b, tx, ty = p[:4]
        return np.array([[a, -b, tx + c[0] - a * c[0] + b * c[1]], [b, a, ty + c[1] - b * c[0] - a * c[1]]])

    for _ in range(iters):
        a, b, tx, ty, g, o = p
        mx = (a * u - b * v + c[0] + tx).astype(np.float32)[:, None]  # (n, 1) where each point reads bg
        my = (b * u + a * v + c[1] + ty).astype(np.float32)[:, None]
        s = cv2.remap(stack, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[:, 0]  # (n, 4)
        ok = s[:, 3] > 0.999
        if ok.sum() < 50:
            return m
        s, uu, vv = s[ok], u[ok], v[ok]
        r = g * s[:, 0] + o - f[ok]  # (n,)
        k = 4.685 * max(1.0, 1.4826 * float(np.median(np.abs(r))))
        wt = np.clip(1.0 - (r / k) ** 2, 0.0, None) ** 2  # Tukey: large residuals (the object) weigh 0
        ix, iy = g * s[:, 1], g * s[:, 2]
        jac = np.stack([ix * uu + iy * vv, iy * uu - ix * vv, ix, iy, s[:, 0], np.ones_like(r)])  # (6, n)
        try:
            dp = np.linalg.solve((jac * wt) @ jac.T + 1e-6 * np.eye(6), -((jac * wt) @ r))
        except np.linalg.LinAlgError:
            return m
        p = p + dp
        if abs(dp[2]) + abs(dp[3]) < 1e-3 and abs(dp[0]) + abs(dp[1]) < 1e-6:
            break
    if not np.all(np.isfinite(p)) or abs(math.hypot(p[0], p[1]) - 1.0) > 0.5:
        return m
    out = cv2.invertAffineTransform(as_matrix(p))
    return out if _corner_move(as_matrix(p) @ np.vstack([m, [0, 0, 1]]), w, h) < 3.0 else m


def _search(g_bg: np.ndarray, g_fg: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Exhaustive robust translation search: every whole-pixel shift within SEARCH_RADIUS px of a copy whose longest
    side is at most SEARCH_SIDE, scored by the trimmed grey residual on the shared interior (the object is in the
    trimmed part). For small or smooth pairs, where features are few and phase correlation locks onto the object.
    -> (M (2, 3) translation in analysis px, how much the best shift lowers the residual against identity 0..1)."""
    cv2 = _cv2()
    h, w = g_bg.shape
    f = min(1.0, SEARCH_SIDE / max(h, w))
    b, g = ((x if f >= 1.0 else cv2.resize(x, (max(16, round(w * f)), max(16, round(h * f))),
                                            interpolation=cv2.INTER_AREA)) for x in (g_bg, g_fg))
    r, (sh, sw) = SEARCH_RADIUS, b.shape
    if min(sh, sw) <= 4 * r:
        return None
    core = g[r:sh - r, r:sw - r]
    scores = {}
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):  # fg_bg(y, x) ~ bg(y - dy, x - dx): content moved by (dx, dy)
            d = np.abs(core - b[r - dy:sh - r - dy, r - dx:sw - r - dx]).reshape(-1)
            scores[(dx, dy)] = _trimmed(d)
    (dx, dy), best = min(scores.items(), key=lambda kv: (kv[1], abs(kv[0][0]) + abs(kv[0][1])))
    if (dx, dy) == (0, 0):
        return None
    gain = 1.0 - best / max(scores[(0, 0)], 1e-6)
    return np.array([[1.0, 0.0, dx / f], [0.0, 1.0, dy / f]]), float(np.clip(gain, 0.0, 1.0))


def _geometry(g_bg: np.ndarray, g_fg: np.ndarray, texture: np.ndarray) -> tuple[np.ndarray | None, dict]:
    """Features, then phase correlation, then a whole-pixel search: the first candidate that is not identity, refines
    and clearly lowers the residual is applied. -> (M (2, 3) in analysis px, or None; the Alignment's geometry fields)."""
    cv2 = _cv2()
    h, w = g_bg.shape
    geo = dict(reason="too few features (smooth background)", confidence=0.0, inliers=0)
    bg_texture = cv2.dilate(_texture(g_bg).astype(np.uint8), np.ones((3, 3), np.uint8))  # (h, w) 0/1
    for kind in ("features", "phase", "search"):
        if kind == "search":
            got = _search(g_bg, g_fg)
            if got is None:
                continue
            m, n, support = got[0], 0, got[1]
            how = f"shift search {m[0, 2]:+.0f}, {m[1, 2]:+.0f} px"
        elif kind == "features":
            got = _features(g_bg, g_fg)
            if got is None:
                continue
            (m, n), support = got, min(1.0, got[1] / (4 * MIN_INLIERS))
            how = f"{n} inliers"
        else:
            # copies: cv2.phaseCorrelate windows its inputs in place (every later residual would read them)
            (sx, sy), resp = cv2.phaseCorrelate(g_bg.copy(), g_fg.copy(), cv2.createHanningWindow((w, h), cv2.CV_32F))
            if resp < MIN_RESPONSE:
                continue
            m, n, support = np.array([[1.0, 0.0, sx], [0.0, 1.0, sy]]), 0, min(1.0, resp / (3 * MIN_RESPONSE))
            how = f"phase correlation {resp:.2f}"
        if _corner_move(m, w, h) >= NEAR_IDENTITY_PX:
            # textured in both shots: where the object lies on a smooth background it is the only texture there
            both = texture & (_warp(bg_texture, m)[0] > 0)
            sel = both if both.sum() >= 500 else texture
            polished = _refine(g_bg, g_fg, m, sel)
            inside = _warp(g_bg, m)[1] & _warp(g_bg, polished)[1]  # the polish must earn its place
            inside &= True if kind == "search" else sel
            if _residual(g_fg, _warp(g_bg, polished)[0], inside) <= _residual(g_fg, _warp(g_bg, m)[0], inside):
                m = polished
        if _corner_move(m, w, h) < NEAR_IDENTITY_PX:
            return None, dict(reason=f"near identity ({how})", confidence=support, inliers=n)
        warped, inside = _warp(g_bg, m)
        judged = inside if kind == "search" else inside & sel  # a smooth scene's shake shows in its flat parts too
        before, after = _residual(g_fg, g_bg, judged), _residual(g_fg, warped, judged)
        conf = support * float(np.clip((1.0 - after / max(before, 1e-6)) / 0.5, 0.0, 1.0))
        words = f"{how}, residual {before:.1f} -> {after:.1f}"
        if (after <= MIN_RATIO * before and before - after >= MIN_DROP) or (
                after <= STRONG_RATIO * before and before - after >= STRONG_DROP):
            return m, dict(reason=f"confident: {words}", confidence=conf, inliers=n)
        geo = dict(reason=f"warp does not lower residual ({words})", confidence=conf, inliers=n)
    return None, geo


def _tone(bg: np.ndarray, fg_bg: np.ndarray, valid: np.ndarray) -> dict:
    """Robust per-channel gain/offset of the registered bg (h, w, 3) to fg_bg (h, w, 3) on `valid`; the Alignment's
    tone fields (applied only if not near identity and it clearly lowers the residual)."""
    idx = _samples(valid, 2 * MAX_SAMPLES)
    x, y = (a.reshape(-1, 3)[idx].astype(np.float32) for a in (bg, fg_bg))  # (n, 3)
    ok = (_worst(x - 127.5) < 125) & (_worst(y - 127.5) < 125)  # no channel clipped (<= 2 or >= 253)
    x, y = x[ok], y[ok]
    if x.shape[0] < 100:
        return dict(tone_reason="too few unclipped pixels")
    if _trimmed(_worst(y - x)) < MIN_DROP:  # already matching: no fit could clear the bar
        return dict(tone_reason="near identity")
    a, b, before, after = _fit_linear(x, y)
    lo, hi = np.percentile(x, 1, axis=0), np.percentile(x, 99, axis=0)
    moved = np.maximum(np.abs((a - 1) * lo + b), np.abs((a - 1) * hi + b))  # (3,) levels moved over the data
    if (np.all(np.abs(a - 1) <= TONE_GAIN_TOL) and np.all(np.abs(b) <= TONE_OFFSET_TOL)) or moved.max() < 1.0:
        return dict(tone_reason="near identity")
    if not (after <= MIN_RATIO * before and before - after >= MIN_DROP):
        return dict(tone_reason=f"fit does not lower residual ({before:.1f} -> {after:.1f})")
    return dict(tone_applied=True, gain=tuple(round(float(v), 4) for v in a),
                offset=tuple(round(float(v), 3) for v in b), tone_reason=f"residual {before:.1f} -> {after:.1f}")


def _lut(img: np.ndarray, gain: tuple, offset: tuple) -> np.ndarray:
    """bg' = gain * bg + offset per channel, rounded and clipped: (H, W, 3) uint8 -> same."""
    cv2, v = _cv2(), np.arange(256, dtype=np.float64)
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
    if min(bg.shape[:2]) < 16:
        raise BadInputError(f"align_pair: {bg.shape[1]}x{bg.shape[0]} px is too small to align (need >= 16 px)")


def _compression(bg: np.ndarray, fg_bg: np.ndarray) -> dict:
    """Whether bg should be saved again with fg_bg's JPEG settings (module docstring), as Alignment fields."""
    from eva_helpers.data.compression import estimate_jpeg

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
    at borders). When nothing is confident nothing is applied, and the result is a copy of bg, byte for byte."""
    _check(bg, fg_bg)
    cv2 = _cv2()
    H, W = bg.shape[:2]
    s_bg0, s_fg = _small(bg), _small(fg_bg)  # (h, w, 3) uint8 analysis copies
    s_bg, (h, w) = s_bg0, s_bg0.shape[:2]
    g_bg, g_fg = (cv2.cvtColor(s, cv2.COLOR_RGB2GRAY).astype(np.float32) for s in (s_bg0, s_fg))  # (h, w)
    texture = _texture(g_fg)
    fields: dict = dict(reason="geometry off")
    m = None
    if geometry:
        m, geo = _geometry(g_bg, g_fg, texture)
        fields.update(geo)
    valid = np.ones((h, w), bool)
    if m is not None:
        sx, sy = w / W, h / H  # analysis -> input px, pixel centres aligned
        s = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        fields.update(_params((np.linalg.inv(s) @ np.vstack([m, [0, 0, 1]]) @ s)[:2], W, H), applied=True)
        s_bg, valid = _warp(s_bg, m)
    fields.update(_tone(s_bg, s_fg, valid) if tone else dict(tone_reason="tone off"))
    if fields.get("tone_applied"):
        s_bg = _lut(s_bg, fields["gain"], fields["offset"])
    fields.update(_compression(bg, fg_bg) if compression else dict(jpeg_reason="compression off"))
    sel = _samples(valid & texture)  # residuals reported on the textured pixels every version shares
    res = [_trimmed(_worst(s_fg.reshape(-1, 3)[sel].astype(np.float32) - b.reshape(-1, 3)[sel]))
           for b in (s_bg0, s_bg)]
    alignment = Alignment(**fields, residual_before=round(res[0], 3), residual_after=round(res[1], 3))
    if not (alignment.applied or alignment.tone_applied or alignment.jpeg_applied):
        return bg.copy(), alignment
    out = bg
    if alignment.applied:
        out, inside = _warp(bg, alignment.matrix(W, H))  # (H, W, 3), (H, W) bool
    if alignment.tone_applied:
        out = _lut(out, alignment.gain, alignment.offset)
    if alignment.applied:
        out = np.where(inside[..., None], out, fg_bg)  # no source -> fg_bg's pixel: no false difference
    if alignment.jpeg_applied:  # last, as a camera saves: on fg_bg's block grid, since bg now sits in its frame
        from eva_helpers.data.compression import encode_decode

        out = encode_decode(out, alignment.jpeg_quality, alignment.jpeg_subsampled)
    return out, alignment
