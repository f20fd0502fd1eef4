"""Where bg sits in fg_bg's frame: a similarity (shift, rotation, scale) estimated only when it is clearly right.

ORB matches -> RANSAC similarity (the pasted object's points are outliers); if that fails, phase correlation
(translation only, for backgrounds with few corners); if that fails too, every whole-pixel shift within a few px (small
or smooth pairs, e.g. at the model's 64 px). The candidate is polished to sub-pixel by a robust Gauss-Newton (Tukey
weights drop the object) and kept only when (1) it has support (>= `MIN_INLIERS` inliers or a phase peak >=
`MIN_RESPONSE`), (2) some image corner moves >= `NEAR_IDENTITY_PX` analysis px, and (3) it clearly lowers the robust
residual against no warp on the same pixels (textured ones; all of them for the search, since a smooth scene's shake
shows in its flat parts too). After an applied similarity, a homography from the same matches may replace it, under
the same kind of gate against the similarity (`estimate_keystone`). Every candidate must lie within align_guard.py's
bounds. Everything runs on analysis copies at most `ANALYSIS_SIDE` px long; the robust statistics here (trimmed
residuals, a trimmed linear fit) serve the tone match in align.py too.
"""
from __future__ import annotations

import math

import numpy as np

from eva_helpers.predict.align_guard import geometry_problem, keystone_problem

ANALYSIS_SIDE = 768       # longest side (px) of the analysis images
MIN_INLIERS = 12          # RANSAC inliers needed to trust a feature-based similarity
MIN_RESPONSE = 0.08       # phase-correlation peak needed to try a translation
NEAR_IDENTITY_PX = 0.3    # a warp moving every corner less than this (analysis px) is identity
MIN_RATIO, MIN_DROP = 0.8, 0.5  # applied only if residual_after <= 0.8 * before and before - after >= 0.5 levels,
STRONG_RATIO, STRONG_DROP = 0.6, 0.2  # or if it removes 40 % of it (a pixel of shake on a smooth scene: 0.8 -> 0.4)
TRIM = 0.6                # robust residual: mean of the lowest 60 % of per-pixel errors (the object is in the rest)
FIT_KEEP = 0.6            # a robust linear fit refits on its best-fitting 60 % of pixels
MAX_SAMPLES = 6_000       # pixels used by a residual or a fit (deterministic stride)
SEARCH_SIDE, SEARCH_RADIUS = 128, 4  # last resort: every whole-pixel shift within 4 px of a <= 128 px copy


def cv2_module():
    import cv2

    return cv2


def similarity(dx: float, dy: float, angle: float, scale: float, w: int, h: int) -> np.ndarray:
    m = np.asarray(cv2_module().getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale), np.float64)
    m[:, 2] += (dx, dy)
    return m


def similarity_params(m: np.ndarray, w: int, h: int) -> dict:
    """(2, 3) similarity -> dict(dx, dy, angle, scale) in the module's convention."""
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    dx, dy = m[:, :2] @ c + m[:, 2] - c
    return dict(dx=float(dx), dy=float(dy), angle=math.degrees(math.atan2(m[0, 1], m[0, 0])),
                scale=float(math.hypot(m[0, 0], m[1, 0])))


def analysis_copy(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 with max(h, w) <= ANALYSIS_SIDE (area-averaged)."""
    (H, W), cv2 = rgb.shape[:2], cv2_module()
    f = ANALYSIS_SIDE / max(H, W)
    return rgb if f >= 1.0 else cv2.resize(rgb, (round(W * f), round(H * f)), interpolation=cv2.INTER_AREA)


def warp(img: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Warp img by m ((2, 3) affine or (3, 3) homography; bilinear, edges replicated) -> (warped, (h, w) bool: the
    whole source footprint is inside)."""
    cv2 = cv2_module()
    h, w = img.shape[:2]
    fn = cv2.warpPerspective if m.shape == (3, 3) else cv2.warpAffine
    out = fn(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = fn(np.full((h, w), 255, np.uint8), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                borderValue=0)
    return out, inside == 255


def sample_pixels(mask: np.ndarray, most: int = MAX_SAMPLES) -> np.ndarray:
    """Flat indices of about `most` True pixels of mask, evenly strided (deterministic)."""
    idx = np.flatnonzero(mask)
    return idx[:: max(1, -(-idx.size // most))]


def worst_channel(d: np.ndarray) -> np.ndarray:
    """(n, c) -> (n,) largest |d| over channels (a column loop: numpy reduces a short last axis slowly)."""
    out = np.abs(d[:, 0])
    for c in range(1, d.shape[1]):
        np.maximum(out, np.abs(d[:, c]), out=out)
    return out


def trimmed_mean(r: np.ndarray) -> float:
    """Mean of the lowest TRIM fraction of r (n,): the object and other large differences are ignored."""
    k = max(1, int(r.size * TRIM))
    return float(np.partition(r, k - 1)[:k].mean()) if r.size else 0.0


def fit_linear(x: np.ndarray, y: np.ndarray, iters: int = 5) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Trimmed per-channel least squares y ~ a * x + b from identity; x, y (n, c) float32.
    -> (a (c,), b (c,), robust residual at identity, after)."""
    a, b = np.ones(x.shape[1], np.float32), np.zeros(x.shape[1], np.float32)
    if x.shape[0] < 2:  # nothing to fit (a warp that keeps no pixel of the frame): identity, residual as it is
        before = trimmed_mean(worst_channel(y - x))
        return a, b, before, before
    k = int(x.shape[0] * FIT_KEEP)
    for _ in range(iters):
        r = worst_channel(y - (x * a + b))  # (n,) worst channel: the object is the same pixels in every channel
        keep = r <= np.partition(r, k)[k]
        xs, ys = x[keep], y[keep]
        mx, my = xs.mean(axis=0, dtype=np.float64), ys.mean(axis=0, dtype=np.float64)
        d = xs - mx.astype(np.float32)
        var = (d * d).mean(axis=0, dtype=np.float64)
        cov = (d * (ys - my.astype(np.float32))).mean(axis=0, dtype=np.float64)
        a = np.where(var > 1.0, cov / np.maximum(var, 1e-9), 1.0).astype(np.float32)  # flat channel: offset only
        b = (my - a * mx).astype(np.float32)
    return a, b, trimmed_mean(worst_channel(y - x)), trimmed_mean(worst_channel(y - (x * a + b)))


def _residual(g_fg: np.ndarray, g_bg: np.ndarray, sel: np.ndarray) -> float:
    """Robust grey residual (levels) on the pixels `sel`, after a robust grey gain/offset match (an exposure change
    must not hide what a warp gains). g_*: (h, w) float32."""
    idx = sample_pixels(sel)
    return fit_linear(g_bg.reshape(-1, 1)[idx], g_fg.reshape(-1, 1)[idx], iters=3)[3]


def textured(g: np.ndarray) -> np.ndarray:
    """(h, w) bool: gradient above the median, where a misregistration shows (smooth areas hide it)."""
    cv2 = cv2_module()
    mag = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1))
    return mag >= np.median(mag)


def _corner_move(m: np.ndarray, w: int, h: int) -> float:
    """Largest displacement (px) of an image corner under m (2, 3)."""
    c = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], np.float64)
    return float(np.abs(c @ m.T - c[:, :2]).max())


def feature_matches(g_bg: np.ndarray, g_fg: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """ORB matches that pass the ratio test -> (src (n, 2) in bg, dst (n, 2) in fg_bg), None if too few; computed once
    for the similarity and the homography."""
    cv2 = cv2_module()
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
    return np.float32([kb[g.queryIdx].pt for g in good]), np.float32([kf[g.trainIdx].pt for g in good])


def _features(matches: tuple | None) -> tuple[np.ndarray, int] | None:
    """ORB matches (`feature_matches`) -> RANSAC similarity (2, 3, bg -> fg_bg) and its inlier count; None if
    unsupported."""
    if matches is None:
        return None
    cv2 = cv2_module()
    m, inl = cv2.estimateAffinePartial2D(*matches, method=cv2.RANSAC, ransacReprojThreshold=1.5, maxIters=2000,
                                         confidence=0.999, refineIters=20)
    n = 0 if inl is None else int(inl.sum())
    return (m.astype(np.float64), n) if m is not None and n >= MIN_INLIERS else None


def estimate_keystone(g_bg: np.ndarray, g_fg: np.ndarray, m: np.ndarray, matches: tuple | None,
                      texture: np.ndarray) -> tuple[np.ndarray | None, str]:
    """A homography tried after the similarity m (2, 3) was applied: hand-held shots tilt a little, which a similarity
    leaves as a keystone. Kept only within bounds and when it clearly lowers the residual further, on the textured
    pixels both warps cover. -> ((3, 3) bg -> fg_bg in analysis px, or None; why, in a few words)."""
    if matches is None:
        return None, "too few matches"
    cv2, (h, w) = cv2_module(), g_bg.shape
    hom, inl = cv2.findHomography(*matches, cv2.RANSAC, 1.5, maxIters=2000, confidence=0.999)
    if hom is None or int(inl.sum()) < 2 * MIN_INLIERS:
        return None, "no homography"
    problem = keystone_problem(hom, w, h)
    if problem:
        return None, f"outside bounds ({problem})"
    (by_m, in_m), (by_h, in_h) = warp(g_bg, m), warp(g_bg, hom)
    judged = in_m & in_h & texture
    before, after = _residual(g_fg, by_m, judged), _residual(g_fg, by_h, judged)
    words = f"residual {before:.1f} -> {after:.1f}"
    if after <= MIN_RATIO * before and before - after >= MIN_DROP:
        return hom / hom[2, 2], f"keystone {words}"
    return None, f"does not lower residual ({words})"


def _refine(g_bg: np.ndarray, g_fg: np.ndarray, m: np.ndarray, sel: np.ndarray, iters: int = 10) -> np.ndarray:
    """Sub-pixel polish of a similarity m (2, 3, bg -> fg_bg): robust Gauss-Newton on the similarity plus a grey
    gain/offset over the pixels `sel`; Tukey weights drop the object. Returns m if it diverges or wanders > 3 px."""
    cv2 = cv2_module()
    h, w = g_fg.shape
    bs, fs = cv2.GaussianBlur(g_bg, (0, 0), 1.0), cv2.GaussianBlur(g_fg, (0, 0), 1.0)  # (h, w) float32
    grads = [cv2.Sobel(bs, cv2.CV_32F, *d, ksize=3, scale=0.125) for d in ((1, 0), (0, 1))]
    stack = np.dstack([bs, *grads, np.ones_like(bs)])  # (h, w, 4): image, d/dx, d/dy, "has a source"
    idx = sample_pixels(sel)
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
    cv2 = cv2_module()
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
            scores[(dx, dy)] = trimmed_mean(d)
    (dx, dy), best = min(scores.items(), key=lambda kv: (kv[1], abs(kv[0][0]) + abs(kv[0][1])))
    if (dx, dy) == (0, 0):
        return None
    gain = 1.0 - best / max(scores[(0, 0)], 1e-6)
    return np.array([[1.0, 0.0, dx / f], [0.0, 1.0, dy / f]]), float(np.clip(gain, 0.0, 1.0))


def estimate_geometry(g_bg: np.ndarray, g_fg: np.ndarray, texture: np.ndarray,
                      matches: tuple | None) -> tuple[np.ndarray | None, dict]:
    """Features (`matches`: feature_matches'), then phase correlation, then a whole-pixel search: the first candidate
    within bounds that is not identity, refines and clearly lowers the residual is applied. -> (M (2, 3) in analysis
    px, or None; the Alignment's geometry fields)."""
    cv2 = cv2_module()
    h, w = g_bg.shape
    geo = dict(reason="too few features (smooth background)", confidence=0.0, inliers=0)
    bg_texture = cv2.dilate(textured(g_bg).astype(np.uint8), np.ones((3, 3), np.uint8))  # (h, w) 0/1
    for kind in ("features", "phase", "search"):
        if kind == "search":
            got = _search(g_bg, g_fg)
            if got is None:
                continue
            m, n, support = got[0], 0, got[1]
            how = f"shift search {m[0, 2]:+.0f}, {m[1, 2]:+.0f} px"
        elif kind == "features":
            got = _features(matches)
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
        problem = geometry_problem(**similarity_params(m, w, h), w=w, h=h)
        if problem:  # e.g. RANSAC on a blurred or repetitive pair: all matches on one point, scale 0
            geo = dict(reason=f"outside bounds ({how}: {problem})", confidence=0.0, inliers=n)
            continue
        if _corner_move(m, w, h) >= NEAR_IDENTITY_PX:
            # textured in both shots: where the object lies on a smooth background it is the only texture there
            both = texture & (warp(bg_texture, m)[0] > 0)
            sel = both if both.sum() >= 500 else texture
            polished = _refine(g_bg, g_fg, m, sel)
            if geometry_problem(**similarity_params(polished, w, h), w=w, h=h):
                polished = m
            inside = warp(g_bg, m)[1] & warp(g_bg, polished)[1]  # the polish must earn its place
            inside &= True if kind == "search" else sel
            if _residual(g_fg, warp(g_bg, polished)[0], inside) <= _residual(g_fg, warp(g_bg, m)[0], inside):
                m = polished
        if _corner_move(m, w, h) < NEAR_IDENTITY_PX:
            return None, dict(reason=f"near identity ({how})", confidence=support, inliers=n)
        warped, inside = warp(g_bg, m)
        judged = inside if kind == "search" else inside & sel  # a smooth scene's shake shows in its flat parts too
        before, after = _residual(g_fg, g_bg, judged), _residual(g_fg, warped, judged)
        conf = support * float(np.clip((1.0 - after / max(before, 1e-6)) / 0.5, 0.0, 1.0))
        words = f"{how}, residual {before:.1f} -> {after:.1f}"
        if (after <= MIN_RATIO * before and before - after >= MIN_DROP) or (
                after <= STRONG_RATIO * before and before - after >= STRONG_DROP):
            return m, dict(reason=f"confident: {words}", confidence=conf, inliers=n)
        geo = dict(reason=f"warp does not lower residual ({words})", confidence=conf, inliers=n)
    return None, geo
