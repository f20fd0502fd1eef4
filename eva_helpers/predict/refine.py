"""Masks at the photo's resolution: the model says where the object is, the photo's own pixels say where its edge is.

The network runs at its training size (64 px for the demo, 224 on Colab); a photo is 4-50x larger. Scaled up, the
model's mask is right away from the object's outline and a blob along it: on photos 4x the model, thresholding
|fg_bg - bg| at full resolution beat it there. Background Matting V2 (Lin et al., 2021) refines only where the coarse
answer is uncertain, at full resolution, from the full-size bg, fg_bg and their difference. This is that split with
a refiner that learns nothing (bench/RESULTS.md, "Masks at the photo's resolution", has the rows that chose it):

1. The coarse decision (the run's calibrated threshold and open/close, at the model's size) is kept everywhere except
   a band of `BAND_PX` model pixels on either side of its outline: (h, w) -> (H, W), nearest.
2. In the band, a full-resolution pixel is object where its difference D = max over channels of |fg_bg - bg|
   - exceeds a threshold chosen on the pair itself: the one that best separates the band's pixels as the model labels
     them, each weighted by the model's probability (integer levels, so the choice is exact and O(256)); never below
     `FLOOR` (sensor noise is not object), and the model's answer stays when it puts too few pixels on either side;
   - and is at least `EDGE_FRACTION` of the largest D within `EDGE_RADIUS` px: a pasted object's rim is a blend of
     object and background (the label is alpha >= 0.5), so a pixel with under half its neighbour's contrast is mostly
     background, whatever the contrast.
3. A 3x3 close then open over the band fills pinholes where the object has the background's colour.
4. The pair must vouch for itself: when more than `MAX_OUTSIDE` of the background just outside the band also exceeds
   the threshold (a blurred or moving shot, parallax the alignment could not remove), the photo's pixels cannot place
   the outline and the model's answer, resized, is kept (None is returned, the record says why).

Only the band's bounding box is read as differences at full resolution: a 12-megapixel pair costs a few uint8 maps of
that box, never full-size float copies.
"""
from __future__ import annotations

import numpy as np

REFINE_MIN_SCALE = 1.5  # photos less than this much larger than the model keep the plain resized answer
BAND_PX = 2             # model pixels either side of the coarse outline that the photo's pixels decide
FLOOR = 10              # the lowest difference threshold (of 255): noise sigma 4 stays below it on most pixels
EDGE_RADIUS = 1         # px: the neighbourhood whose largest difference a rim pixel is compared with
EDGE_FRACTION = 0.4     # a band pixel with less than this share of its neighbourhood's difference is background
SMOOTH_PX = 3           # the close/open kernel over the band
MIN_SIDE = 16           # band pixels the model must put on each side before the pair picks the threshold
MAX_OUTSIDE = 0.05      # more of the background just outside the band above the threshold: the pair is not sharp
                        # or not registered there (blur, parallax), so its pixels cannot place the outline


def _grid(n_out: int, n_in: int) -> np.ndarray:
    """Nearest-neighbour source index of each output pixel along one axis (n_out >= n_in): pixel centres map."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def outline_band(coarse: np.ndarray, band: int = BAND_PX) -> np.ndarray:
    """(h, w) bool: pixels within `band` of the boundary between coarse object and background (either side)."""
    import cv2

    k = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    c = coarse.astype(np.uint8)
    grown = cv2.dilate(c, k, borderType=cv2.BORDER_REPLICATE)
    shrunk = cv2.erode(c, k, borderType=cv2.BORDER_REPLICATE)
    return grown != shrunk


def pick_threshold(diff: np.ndarray, p_object: np.ndarray, is_object: np.ndarray, floor: int = FLOOR) -> int | None:
    """The integer t >= floor that minimises the model-weighted disagreement of (diff > t) with the model over the band:
    sum of p over pixels called background plus sum of (1 - p) over pixels called object. None when the model's
    decision (`is_object`) puts fewer than MIN_SIDE pixels on either side (no evidence to separate)."""
    n_obj = int(is_object.sum())
    if n_obj < MIN_SIDE or len(is_object) - n_obj < MIN_SIDE:
        return None
    w_obj = np.bincount(diff, weights=p_object, minlength=256)  # (256,) model's object mass per difference level
    w_bg = np.bincount(diff, weights=1.0 - p_object, minlength=256)
    # t: pixels with diff <= t are background. Cost(t) = object mass at or below t + background mass above t.
    cost = np.cumsum(w_obj) + (w_bg.sum() - np.cumsum(w_bg))
    cost[:floor] = np.inf
    return int(np.argmin(cost))


def _smooth_band(out: np.ndarray, ys: np.ndarray, xs: np.ndarray, k: int) -> np.ndarray:
    """Close then open (k x k) the mask over the band's bounding box, keeping the result on band pixels only: a
    pixel the same colour as the background behind it is a pinhole in the difference, not a hole in the object."""
    import cv2

    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    kern = np.ones((k, k), np.uint8)
    box = out[y0:y1, x0:x1]
    sm = cv2.morphologyEx(cv2.morphologyEx(box, cv2.MORPH_CLOSE, kern), cv2.MORPH_OPEN, kern)
    out[ys, xs] = sm[ys - y0, xs - x0]
    return out


def refine_mask(prob: np.ndarray, coarse: np.ndarray, bg: np.ndarray, fg_bg: np.ndarray, *, band: int = BAND_PX,
                floor: int = FLOOR, edge_fraction: float = EDGE_FRACTION,
                smooth: int = SMOOTH_PX) -> tuple[np.ndarray, dict]:
    """The model's answer at the photo's resolution, its outline decided by the photo's own pixels (module docstring).

    Args:
        prob: (h, w) float32, the model's object probability at its size.
        coarse: (h, w) bool, the run's decision there (threshold and open/close as calibrated).
        bg, fg_bg: (H, W, 3) uint8 photos, bg already aligned to fg_bg; H >= h, W >= w.
    Returns (H, W) uint8 0/255, or None where the model's resized answer should stay (no band, no evidence, or a
    pair that does not agree outside the band), and a record {"refined", "threshold", "band_fraction", "reason"}.
    """
    import cv2

    (h, w), (H, W) = coarse.shape, fg_bg.shape[:2]
    gy, gx = _grid(H, h), _grid(W, w)
    out = coarse[gy[:, None], gx[None, :]].astype(np.uint8)  # (H, W) nearest upsample, 0/1
    band_small = outline_band(coarse, band)
    info = {"refined": False, "threshold": None, "band_fraction": 0.0, "reason": "no outline"}
    if not band_small.any():
        return None, info
    ys, xs = np.nonzero(band_small[gy[:, None], gx[None, :]])
    info["band_fraction"] = len(ys) / float(H * W)
    r = EDGE_RADIUS
    pad = r + 2 * -(-H // h)  # the box reaches 2 model pixels beyond the band: the background the pair must agree on
    y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, H)
    x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, W)
    d_box = cv2.absdiff(fg_bg[y0:y1, x0:x1], bg[y0:y1, x0:x1]).max(2)  # (h_box, w_box) uint8
    by, bx = ys - y0, xs - x0
    diff = d_box[by, bx]
    sy, sx = gy[ys], gx[xs]  # each band pixel's model pixel
    t = pick_threshold(diff, prob[sy, sx].astype(np.float64), coarse[sy, sx], floor)
    if t is None:
        return None, {**info, "reason": "too few pixels on either side of the outline"}
    ring_small = outline_band(coarse, band + 2) & ~band_small & ~coarse  # background just outside the band
    ring = ring_small[gy[y0:y1, None], gx[None, x0:x1]]
    outside = float((d_box[ring] > t).mean()) if ring.any() else 0.0
    info.update(threshold=t, outside_fraction=outside)
    if outside > MAX_OUTSIDE:
        return None, {**info, "reason": f"{outside:.0%} of the background beside the object differs too"}
    nearby = cv2.dilate(d_box, np.ones((2 * r + 1, 2 * r + 1), np.uint8))[by, bx]  # largest D within r px
    out[ys, xs] = (diff > t) & (diff >= edge_fraction * nearby)
    if smooth:
        out = _smooth_band(out, ys, xs, smooth)
    info.update(refined=True, reason="")
    return np.multiply(out, 255, out=out), info
