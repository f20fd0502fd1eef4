"""Per-sample random choices from `(seed, i)` alone, and compositing a cut-out onto a background.

Sample mapping (documented contract): with `n_flip = 2 if flips else 1`, sample i uses combination
`c = i // positions` and position slot `i % positions`, where `c = (bg * n_fg + fg) * n_flip + flip`, i.e.
    bg = c // (n_fg * n_flip),  fg = (c // n_flip) % n_fg,  flip = c % n_flip.
Within a sample, `rng = np.random.default_rng([seed, i])` draws, in this order: scale ~ U(scale_range)
(target height as a fraction of the background's height), then x, then y (uniform so the object lies fully
inside the frame). If the scaled width would exceed the frame, the object is scaled down to fit.
So any sample, hence any shard, can be rebuilt on its own.

Compositing: the cut-out (trimmed to its alpha box, premultiplied, mip-mapped once) is resized to (h, w),
mirrored if flip, and blended "over" the background inside its box only: out = fg_pm + bg * (1 - alpha), float32,
rounded. The mask is that same alpha, rounded to uint8 (soft edges kept).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eva_helpers.errors import BadInputError


def _cv2():
    import cv2

    cv2.setNumThreads(1)  # parallelism is across processes
    return cv2


def resize(arr: np.ndarray, w: int, h: int) -> np.ndarray:
    """cv2 resize with INTER_AREA when shrinking (no aliasing) and INTER_LINEAR when enlarging."""
    cv2 = _cv2()
    shrink = w <= arr.shape[1] and h <= arr.shape[0]
    return cv2.resize(arr, (int(w), int(h)), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def prepare_background(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> centre-cropped square resized to (size, size, 3) uint8."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return np.ascontiguousarray(resize(np.ascontiguousarray(rgb[y0:y0 + s, x0:x0 + s]), size, size))


def alpha_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) exclusive bounding box of alpha > 0."""
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def trim_to_alpha(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) -> the (h, w, 4) crop to the alpha bounding box."""
    x0, y0, x1, y1 = alpha_box(rgba[..., 3])
    return np.ascontiguousarray(rgba[y0:y1, x0:x1])


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) uint8 -> (h, w, 4) float32: RGB premultiplied by alpha (0..255) and alpha (0..1).

    Resizing premultiplied colour keeps transparent pixels' colour from bleeding into the edges.
    """
    a = rgba[..., 3:4].astype(np.float32) * np.float32(1.0 / 255.0)
    return np.ascontiguousarray(np.concatenate([rgba[..., :3].astype(np.float32) * a, a], axis=2))


def mip_chain(pm: np.ndarray, size: int | None = None) -> list[np.ndarray]:
    """[pm, pm/2, pm/4, ...] down to ~8 px, each level a 2x box (INTER_AREA) reduction of the previous.

    With `size`, levels that can never be picked for a placement of at most (size, size) are dropped (their
    half is still >= size both ways), so a 4000 px cut-out costs no more memory than a 2 * size one.
    """
    cv2 = _cv2()
    levels = [pm]
    while min(levels[-1].shape[:2]) >= 16:
        prev = levels[-1]
        levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    while size is not None and len(levels) > 1 and min(levels[1].shape[:2]) >= size:
        levels.pop(0)
    return levels


def cutout_chain(rgba: np.ndarray, size: int) -> list[np.ndarray]:
    """A cut-out as the compositor keeps it: trimmed to its alpha box, premultiplied, mip-mapped for `size`."""
    return mip_chain(premultiply(trim_to_alpha(rgba)), size)


def place_cutout(chain: list[np.ndarray], w: int, h: int, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mip chain -> (premultiplied RGB (h, w, 3) float32, alpha (h, w) in 0..1), mirrored left-right if flip.

    Mipmapping: start from the smallest level still at least (h, w), then bilinear. Shrinking by less than 2x
    with bilinear does not alias, and it is ~10x faster than INTER_AREA at an arbitrary ratio.
    """
    cv2 = _cv2()
    src = chain[0]
    for lvl in chain[1:]:
        if lvl.shape[0] < h or lvl.shape[1] < w:
            break
        src = lvl
    out = cv2.resize(src, (int(w), int(h)), interpolation=cv2.INTER_LINEAR)  # (h, w, 4)
    if flip:
        out = out[:, ::-1]
    return out[..., :3], np.clip(out[..., 3], 0.0, 1.0)


@dataclass(frozen=True)
class Plan:
    """Provenance of one sample: which inputs, and where the cut-out went (x, y top-left; w, h placed size)."""

    index: int
    bg: int
    fg: int
    flip: bool
    scale: float
    x: int
    y: int
    w: int
    h: int


class Compositor:
    """Holds prepared backgrounds and trimmed cut-outs; `plan(i)` and `render(i)` are pure functions of (seed, i)."""

    def __init__(self, backgrounds: list[np.ndarray], cutouts: list[np.ndarray], *, size: int = 224,
                 positions: int = 20, seed: int = 0, scale_range: tuple[float, float] = (0.3, 0.7),
                 flips: bool = True, fg_names: list[str] | None = None):
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0.0 < lo <= hi <= 1.0:
            raise BadInputError(f"scale_range {scale_range}: need 0 < low <= high <= 1 (fractions of the height)")
        if positions < 1:
            raise BadInputError(f"positions={positions}: need at least 1")
        self.size, self.positions, self.seed = int(size), int(positions), int(seed)
        self.scale_range, self.flips = (lo, hi), bool(flips)
        self.n_flip = 2 if flips else 1
        for b in backgrounds:
            assert b.shape == (size, size, 3) and b.dtype == np.uint8, "backgrounds must be prepared first"
        self.backgrounds = backgrounds  # list of (size, size, 3) uint8
        names = fg_names or [str(k) for k in range(len(cutouts))]
        self.shapes: list[tuple[int, int]] = []  # trimmed (h, w) of each cut-out: its aspect ratio
        for c, name in zip(cutouts, names):
            x0, y0, x1, y1 = alpha_box(c[..., 3])
            if min(x1 - x0, y1 - y0) < 2:  # images.decode_cutout already refuses these for files
                raise BadInputError(f"{name}: cut-out's visible part is degenerate ({x1 - x0}x{y1 - y0} px)")
            self.shapes.append((y1 - y0, x1 - x0))
        # built once, before any worker forks (shared copy-on-write): list of mip chains of (h, w, 4) float32
        self.chains = [cutout_chain(c, self.size) for c in cutouts]

    def __len__(self) -> int:
        return len(self.backgrounds) * len(self.chains) * self.n_flip * self.positions

    def plan(self, i: int) -> Plan:
        """All random choices of sample i, from np.random.default_rng([seed, i]) alone."""
        n_fg, n_flip, size = len(self.chains), self.n_flip, self.size
        c = i // self.positions
        bg, fg, flip = c // (n_fg * n_flip), (c // n_flip) % n_fg, c % n_flip
        if not 0 <= bg < len(self.backgrounds):
            raise IndexError(f"sample {i} out of range ({len(self)} samples)")
        rng = np.random.default_rng([self.seed, i])
        scale = float(rng.uniform(*self.scale_range))
        fh, fw = self.shapes[fg]
        h = max(1, round(scale * size))
        w = max(1, round(h * fw / fh))
        if w > size:  # too wide for the frame: fit the width instead (keeps the aspect ratio)
            w = size
            h = max(1, min(size, round(size * fh / fw)))
        x = int(rng.integers(0, size - w + 1))
        y = int(rng.integers(0, size - h + 1))
        return Plan(index=i, bg=bg, fg=fg, flip=bool(flip), scale=round(h / size, 6), x=x, y=y, w=w, h=h)

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray, Plan]:
        """-> fg_bg (size, size, 3) uint8, mask (size, size) uint8 placed alpha 0..255, and the plan."""
        p = self.plan(i)
        rgb_pm, a = place_cutout(self.chains[p.fg], p.w, p.h, p.flip)  # (h, w, 3), (h, w)
        out = self.backgrounds[p.bg].copy()
        region = out[p.y:p.y + p.h, p.x:p.x + p.w]  # only the object's box is blended, (h, w, 3) view
        # premultiplied "over": fg + bg * (1 - alpha), float32, rounded once
        blend = rgb_pm + region.astype(np.float32) * (1.0 - a)[..., None]
        np.clip(blend, 0.0, 255.0, out=blend)
        region[:] = (blend + 0.5).astype(np.uint8)
        mask = np.zeros((self.size, self.size), np.uint8)
        mask[p.y:p.y + p.h, p.x:p.x + p.w] = (a * 255.0 + 0.5).astype(np.uint8)
        return out, mask, p
