"""What a real hand-held second shot adds beyond tone, noise and a small shake: perspective, parallax, zoom, rotation,
a phone's local tone mapping, motion and focus blur, light and shadow far from the object, a background that moved.

Each is a pure function of numpy arrays and a `np.random.Generator` (perturb.py draws it from the sample's seed), sized
as a fraction of the frame so that one name means the same change on a 64 px composite and on a 4000 px photo.
Geometric changes move the whole second shot, so `warp_labels=True` ones return the mask and depth moved with it;
light changes touch fg_bg outside the object only (the object is lit as it was).
"""
from __future__ import annotations

import numpy as np


def _cv2():
    import cv2

    return cv2


def _warp(sample_arrays: tuple[np.ndarray, np.ndarray, np.ndarray], m: np.ndarray) -> tuple[np.ndarray, ...]:
    """fg_bg, mask, depth through the 3x3 homography m (fg_bg -> new shot coordinates); edges replicated, the mask
    nearest, so labels stay {0, 1} and depth in its range."""
    cv2 = _cv2()
    fg, mask, depth = sample_arrays
    h, w = mask.shape
    out = []
    for a, interp in ((fg, cv2.INTER_LINEAR), (mask, cv2.INTER_NEAREST), (depth, cv2.INTER_LINEAR)):
        out.append(cv2.warpPerspective(a, m, (w, h), flags=interp, borderMode=cv2.BORDER_REPLICATE))
    return tuple(out)


def keystone(arrays, amount: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Perspective: one edge (top or bottom, drawn) narrowed by `amount` of the width, as a shot from a little lower or
    higher sees a facade."""
    cv2 = _cv2()
    h, w = arrays[1].shape
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    d = amount * (w - 1) / 2
    dst = src.copy()
    rows = (0, 1) if rng.random() < 0.5 else (2, 3)  # which edge narrows
    dst[rows[0], 0] += d if rows[0] == 0 else -d
    dst[rows[1], 0] -= d if rows[1] == 1 else -d
    return _warp(arrays, cv2.getPerspectiveTransform(src, dst))


def rotate_zoom(arrays, angle: float, zoom: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Rotation by `angle` degrees (direction drawn) and zoom about the centre."""
    cv2 = _cv2()
    h, w = arrays[1].shape
    sign = 1.0 if rng.random() < 0.5 else -1.0
    m = np.vstack([cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), sign * angle, zoom), [0, 0, 1]])
    return _warp(arrays, m)


def parallax(arrays, amount: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The camera moved sideways: each pixel shifts by `amount` of the width times its nearness (the depth label, near
    = 1, spread to 0..1), so near things move against far ones and the background behind the object is revealed."""
    cv2 = _cv2()
    fg, mask, depth = arrays
    h, w = mask.shape
    near = (depth - depth.min()) / max(float(depth.max() - depth.min()), 1e-6)
    dx = (amount * w * (1.0 if rng.random() < 0.5 else -1.0)) * near
    map_x = (np.arange(w, dtype=np.float32)[None, :] - dx).astype(np.float32)
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, 1)
    return tuple(cv2.remap(a, map_x, map_y, interp, borderMode=cv2.BORDER_REPLICATE)
                 for a, interp in ((fg, cv2.INTER_LINEAR), (mask, cv2.INTER_NEAREST), (depth, cv2.INTER_LINEAR)))


def local_tone(img: np.ndarray, strength: float) -> np.ndarray:
    """A phone's HDR: each region's brightness pulled towards mid-grey by its own gain (dark regions lifted, bright ones
    lowered), from a blur of the luma over 8 % of the frame; the whole frame, object included, as the phone does."""
    cv2 = _cv2()
    luma = img.astype(np.float32).mean(2)
    base = cv2.GaussianBlur(luma, (0, 0), max(1.0, 0.08 * max(img.shape[:2])), borderType=cv2.BORDER_REPLICATE)
    gain = np.clip((128.0 / (base + 8.0)) ** strength, 0.6, 1.8)
    return np.clip(np.rint(img * gain[..., None]), 0, 255).astype(np.uint8)


def motion_blur(img: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    """A line blur `length` of the frame long, at a drawn angle."""
    cv2 = _cv2()
    k = max(3, int(round(length * max(img.shape[:2]))) | 1)
    kern = np.zeros((k, k), np.float32)
    kern[k // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((k - 1) / 2, (k - 1) / 2), float(rng.uniform(0, 180)), 1.0)
    kern = cv2.warpAffine(kern, rot, (k, k))
    return cv2.filter2D(img, -1, kern / kern.sum(), borderType=cv2.BORDER_REPLICATE)


def defocus(img: np.ndarray, radius: float) -> np.ndarray:
    """A lens out of focus: a disc blur of `radius` of the frame."""
    cv2 = _cv2()
    r = max(1, int(round(radius * max(img.shape[:2]))))
    kern = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)).astype(np.float32)
    return cv2.filter2D(img, -1, kern / kern.sum(), borderType=cv2.BORDER_REPLICATE)


def _far_centre(mask: np.ndarray, radius: float, rng: np.random.Generator) -> tuple[float, float]:
    """A point at least 2 radii from every object pixel when the frame has one (the farthest of 32 draws otherwise)."""
    cv2 = _cv2()
    h, w = mask.shape
    dist = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, 3) if mask.any() else np.full(
        (h, w), np.inf, np.float32)
    pts = rng.uniform(0, 1, (32, 2)) * [h - 1, w - 1]
    d = dist[pts[:, 0].astype(int), pts[:, 1].astype(int)]
    ok = np.flatnonzero(d >= 2 * radius)
    y, x = pts[ok[0]] if len(ok) else pts[int(np.argmax(d))]
    return float(y), float(x)


def light_blob(img: np.ndarray, mask: np.ndarray, change: float, size: float, rng: np.random.Generator) -> np.ndarray:
    """A soft patch of light (change > 0: a reflection, a sunlit spot) or shadow (change < 0) of `size` of the frame,
    away from the object, on fg_bg outside the object only."""
    h, w = mask.shape
    r = size * max(h, w) / 2
    cy, cx = _far_centre(mask, r, rng)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    blob = np.exp(-0.5 * (((yy - cy) ** 2 + (xx - cx) ** 2) / (0.6 * r) ** 2))
    factor = 1.0 + change * blob * (mask == 0)
    return np.clip(np.rint(img * factor[..., None]), 0, 255).astype(np.uint8)


def moved_patch(img: np.ndarray, mask: np.ndarray, size: float, shift: float, rng: np.random.Generator) -> np.ndarray:
    """Something in the background moved (a chair, a parked car): a square of `size` of the frame, away from the
    object, shows the scene `shift` of the frame to one side; the object's pixels are kept."""
    h, w = mask.shape
    s = max(2, int(round(size * max(h, w))))
    cy, cx = _far_centre(mask, s / 2, rng)
    y0, x0 = int(np.clip(cy - s / 2, 0, h - s)), int(np.clip(cx - s / 2, 0, w - s))
    d = max(1, int(round(shift * max(h, w))))
    sx = x0 + d if x0 + d + s <= w else x0 - d
    out = img.copy()
    patch = img[y0:y0 + s, sx:sx + s]
    keep = mask[y0:y0 + s, x0:x0 + s] > 0
    out[y0:y0 + s, x0:x0 + s] = np.where(keep[..., None], out[y0:y0 + s, x0:x0 + s], patch)
    return out
