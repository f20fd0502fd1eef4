"""How a pasted object enters a depth label, in every labelling mode (build.py), so that no label loses its object.

- `layer_object`: the geometric object (teachers.GeometricTeacher's docstring says what it models): an upright layer
  at the background's value along the mask's lowest row (its ground contact) plus a rounded bulge over the alpha's
  distance transform.
- `ensure_contrast`: an object whose mean differs from the ring of background around it by less than MIN_CONTRAST is
  moved in front of it (a pasted object occludes what is behind it). Used by every mode, real teachers included.
- `fit_scale_shift` / `composite_label`: a teacher's map of a composite aligned to its map of the clean background by
  least squares fitted outside the object (hybrid and per-composite modes).
All maps are (H, W) float in [0, 1] (the background's normalisation, near = 1) unless a docstring says otherwise.
"""
from __future__ import annotations

import numpy as np

from eva_helpers.data.formats import DEPTH_MAX, MASK_THRESHOLD

MIN_CONTRAST = 0.05  # |mean(object) - mean(ring around it)| in a label normalised to [0, 1]
RELIEF = 1.0  # bulge height = RELIEF * (half-width / focal length) * contact disparity: as thick as it is wide


def ring_px(side: int) -> int:
    """Width of the background ring an object is compared with: about 3 % of the image side, at least 1 px."""
    return max(1, round(side / 32))


def _crop_box(obj: np.ndarray, pad: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(obj.any(1))[0], np.nonzero(obj.any(0))[0]
    h, w = obj.shape
    return slice(max(0, ys[0] - pad), min(h, ys[-1] + 1 + pad)), slice(max(0, xs[0] - pad), min(w, xs[-1] + 1 + pad))


def ring_around(obj: np.ndarray, px: int) -> np.ndarray:
    """(H, W) bool: pixels within `px` (a (2 px + 1)^2 square) of the object, not in it."""
    import cv2

    k = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.dilate(obj.astype(np.uint8), k).astype(bool) & ~obj


def ensure_contrast(depth: np.ndarray, obj: np.ndarray, min_contrast: float = MIN_CONTRAST,
                    px: int | None = None) -> np.ndarray:
    """(H, W) float label in [0, 1] whose object (bool (H, W)) differs from its ring by at least min_contrast.

    A weaker object is moved nearer (up) by the shortfall, clipped at 1; where the clip would stop it short (an
    object by the nearest pixels), it is moved farther instead. Returns a new array; pixels off the object are kept.
    px: the ring's width (default from the image side; pass it when `depth` is a crop).
    """
    ring = ring_around(obj, ring_px(max(obj.shape)) if px is None else px)
    if not obj.any() or not ring.any():
        return depth
    ring_mean = float(depth[ring].mean())
    c = float(depth[obj].mean()) - ring_mean
    if abs(c) >= min_contrast:
        return depth
    vals = depth[obj].astype(np.float64)
    for sign in (1.0, -1.0):
        shift = sign * min_contrast - c
        for _ in range(8):  # clipping eats part of a shift: top it up by what is missing
            moved = np.clip(vals + shift, 0.0, 1.0)
            gap = sign * (moved.mean() - ring_mean) - min_contrast
            if gap >= -1e-9:
                out = depth.astype(np.float64, copy=True)
                out[obj] = moved
                return out
            shift -= sign * gap
    out = depth.astype(np.float64, copy=True)  # unreachable while min_contrast < 0.5: a flat far/near layer
    out[obj] = 1.0 if ring_mean < 0.5 else 0.0
    return out


def layer_object(base: np.ndarray, obj: np.ndarray, relief: float = RELIEF, min_contrast: float = MIN_CONTRAST,
                 side: int | None = None) -> np.ndarray:
    """(H, W) float64 label in [0, 1]: `base` (the background's map, [0, 1], near = 1) with the object (bool (H, W))
    standing on it as an upright rounded layer (see GeometricTeacher): contact value + bulge, then ensure_contrast.

    side: the full image's side S when `base` is a crop (it must then hold the object and `ring_px(S) + 1` around it,
    or the image border); default max(H, W).
    """
    import cv2

    out = base.astype(np.float64, copy=True)
    if not obj.any():
        return out
    side = side or max(obj.shape)
    px = ring_px(side)
    cy, cx = _crop_box(obj, px + 1)  # everything below happens in the object's box plus its ring
    sub, sub_obj = out[cy, cx], obj[cy, cx]  # views: writes land in `out`
    ys, xs = _crop_box(sub_obj, 0)
    low = ys.stop - 1  # the object's lowest row: where it touches the ground
    contact = float(sub[low, xs][sub_obj[low, xs]].mean())
    crop = sub_obj[ys, xs]
    dt = cv2.distanceTransform(np.pad(crop, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]  # (h, w) px to edge
    r = float(dt.max())  # the inscribed radius; dt - 0.5 is the distance from a pixel centre to the silhouette
    u = np.clip((dt - 0.5) / max(r - 0.5, 0.5), 0.0, 1.0)
    profile = np.sqrt(1.0 - (1.0 - u) ** 2)  # circular cross-section: 0 on the silhouette, 1 on the medial axis
    height = relief * (r / side) * max(contact, 0.25)
    box = sub[ys, xs]
    box[crop] = np.clip(contact + height * profile[crop], 0.0, 1.0)
    sub[:] = ensure_contrast(sub, sub_obj, min_contrast, px)
    return out


def fit_scale_shift(pred: np.ndarray, ref: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Least-squares (s, t) with s * pred + t ~ ref over valid pixels (all (H, W)); s > 0 always: a fit that comes out
    flat or negative (no usable correlation) falls back to matching mean and spread."""
    p, r = pred[valid].astype(np.float64), ref[valid].astype(np.float64)
    if p.size < 2:
        return 1.0, 0.0
    dp = p - p.mean()
    var = float((dp * dp).mean())
    s = float((dp * (r - r.mean())).mean()) / var if var > 1e-12 else 0.0
    if s <= 0:
        s = float(r.std() / np.sqrt(var)) if var > 1e-12 and r.std() > 0 else 1.0
    return s, float(r.mean() - s * p.mean())


def composite_label(bg16: np.ndarray, raw: np.ndarray, mask: np.ndarray, hybrid: bool) -> np.ndarray:
    """(S, S) uint16 label from a teacher's map `raw` of a composite, in the background's normalisation.

    bg16: the background's (S, S) uint16 label; raw: (S', S') float map of the composite (area-resized to S); mask:
    (S, S) uint8 placed alpha. The map is aligned to the background's by least-squares scale and shift fitted outside
    the object and a ring around it (where the teacher blurs the edge). hybrid: the background's label with the
    aligned object pixels pasted in (exactly bg16 off the object); otherwise (per-composite) the aligned map
    everywhere. Both clip to [0, 1] and pass ensure_contrast.
    """
    import cv2

    size = mask.shape[0]
    if raw.shape != mask.shape:
        raw = cv2.resize(raw.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    base = bg16 / DEPTH_MAX  # (S, S) float64 in [0, 1]
    obj = mask >= MASK_THRESHOLD
    outside = ~(ring_around(mask > 0, ring_px(size)) | (mask > 0))
    s, t = fit_scale_shift(raw, base, outside)
    aligned = np.clip(s * raw.astype(np.float64) + t, 0.0, 1.0)
    if hybrid:
        label = base.copy()
        label[obj] = aligned[obj]
    else:
        label = aligned
    depth = np.round(ensure_contrast(label, obj) * DEPTH_MAX).astype(np.uint16)
    if hybrid:
        depth[~obj] = bg16[~obj]  # exact background values off the object
    return depth
