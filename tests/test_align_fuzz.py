"""align_pair fuzzed (hypothesis, deterministic): on any pair of photos of one size it never raises, never changes an
exact pair, and never applies a transform outside align_guard's bounds."""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eva_helpers.data.compression import encode_decode
from eva_helpers.predict.align import align_pair
from eva_helpers.predict.align_guard import geometry_problem, keystone_problem, tone_problem
from eva_helpers.paths import sample_assets

CONTENTS = ("flat", "noise", "blur", "stripes", "checker", "gradient", "photo")
RELATIONS = ("exact", "shifted", "mirrored", "different", "blurred", "toned", "jpeg", "scaled")
PHOTOS = ("china", "rocket", "sunset", "wine_room")


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A 320 px sample background, (320, 320, 3) uint8, read once."""
    im = cv2.cvtColor(cv2.imread(str(sample_assets() / "bg" / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
    s = min(im.shape[:2])
    return cv2.resize(im[:s, :s], (320, 320), interpolation=cv2.INTER_AREA)


def _content(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8 picture of one kind."""
    if kind == "flat":
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (h, w, 3)).copy()
    if kind in ("noise", "blur"):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        return img if kind == "noise" else cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.7, 4.0)))
    if kind in ("stripes", "checker"):
        period = int(rng.integers(2, 12))
        yy, xx = np.indices((h, w)) // period
        pattern = (xx % 2) if kind == "stripes" else ((xx + yy) % 2)
        return np.dstack([(pattern * int(rng.integers(40, 256))).astype(np.uint8)] * 3)
    if kind == "gradient":
        ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(20, 255, 3).astype(np.float32)
        return np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8)
    big = _photo(PHOTOS[int(rng.integers(len(PHOTOS)))])
    y, x = int(rng.integers(0, 320 - h + 1)), int(rng.integers(0, 320 - w + 1))
    return big[y:y + h, x:x + w].copy()


def _pair(content: str, relation: str, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(bg, fg_bg), (h, w, 3) uint8 each; "exact": identical outside an object box of at most 40 % of the frame."""
    rng = np.random.default_rng(seed)
    pad = 8
    big = _content(content, h + 2 * pad, w + 2 * pad, rng)  # (h + 16, w + 16, 3): room to shift
    bg = big[pad:pad + h, pad:pad + w]
    if relation == "exact":
        fg_bg = bg.copy()
        oh, ow = (max(1, int(s * rng.uniform(0.1, 0.63))) for s in (h, w))  # <= 40 % of the area
        y, x = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
        fg_bg[y:y + oh, x:x + ow] = _content(str(rng.choice(CONTENTS[:4])), oh, ow, rng)
    elif relation == "shifted":
        dy, dx = (int(v) for v in rng.integers(-pad, pad + 1, 2))
        fg_bg = big[pad - dy:pad - dy + h, pad - dx:pad - dx + w]
    elif relation == "mirrored":
        fg_bg = bg[:, ::-1]
    elif relation == "different":
        fg_bg = _content(str(rng.choice(CONTENTS)), h, w, rng)
    elif relation == "blurred":
        fg_bg = cv2.GaussianBlur(bg, (0, 0), float(rng.uniform(0.5, 6.0)))
    elif relation == "toned":  # an exposure / white-balance change, or anything up to a negative
        wild = bool(rng.integers(2))
        gain = rng.uniform(-1.2, 2.5, 3) if wild else rng.uniform(0.6, 1.6, 3)
        offset = rng.uniform(-80, 80, 3) if wild else rng.uniform(-10, 10, 3)
        fg_bg = np.clip(bg * gain + offset, 0, 255).astype(np.uint8)
    elif relation == "jpeg":
        fg_bg = encode_decode(np.ascontiguousarray(bg), int(rng.integers(5, 96)), bool(rng.integers(2)))
    else:  # scaled about the centre by up to 40 %, rotated by up to 30 degrees
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), float(rng.uniform(-30, 30)), float(rng.uniform(0.6, 1.4)))
        fg_bg = cv2.warpAffine(bg, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return np.ascontiguousarray(bg), np.ascontiguousarray(fg_bg)


@pytest.mark.slow  # 300 pairs
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.sampled_from(CONTENTS), relations=st.lists(st.sampled_from(RELATIONS), min_size=4, max_size=4),
       h=st.integers(8, 96), aspect=st.floats(0.5, 2.0), seed=st.integers(0, 2**31 - 1))
def test_align_pair_never_raises_never_changes_an_exact_pair_never_leaves_bounds(content, relations, h, aspect,
                                                                                 seed) -> None:
    w = max(8, min(192, round(h * aspect)))
    for i, relation in enumerate(relations):
        bg, fg_bg = _pair(content, relation, h, w, seed + i)
        out, al = align_pair(bg, fg_bg)  # never raises
        assert out.shape == bg.shape and out.dtype == np.uint8 and out is not bg
        assert not al.reason.startswith("estimate failed"), (content, relation, al.reason)
        if relation == "exact" or not (al.applied or al.tone_applied or al.jpeg_applied):
            assert out.tobytes() == bg.tobytes(), (content, relation, al)
        if al.applied:
            assert geometry_problem(al.dx, al.dy, al.angle, al.scale, w, h) is None, (content, relation, al)
        if al.homography:
            assert keystone_problem(al.matrix(w, h), w, h) is None, (content, relation, al)
        if al.tone_applied:
            assert tone_problem(np.array(al.gain), np.array(al.offset)) is None, (content, relation, al)
        assert not (al.different_scenes and (al.applied or al.tone_applied or al.jpeg_applied)), al
