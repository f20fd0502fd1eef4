"""How hard a photo was JPEG-compressed, read from its pixels, and a bg photo saved the way its fg_bg photo was.

A chat app or a "save smaller" setting re-compresses one photo of a pair and not the other. The blocky ringing that
JPEG leaves around every edge then differs between bg and fg_bg and reads as "object". Matching the compression (bg
saved again with fg_bg's quality and chroma subsampling, on the same 8x8 grid) makes the two photos alike again away
from the object; `align.align_pair` does it after registering bg, and only when fg_bg is clearly the more compressed.

The quality is read from the decoded pixels, so it works on arrays as well as files: JPEG rounds each 8x8 block's DCT
coefficients to multiples of a quantisation step, so the coarsest standard (libjpeg) table whose steps the luma
coefficients sit on is the one used. Neighbouring qualities share most steps, so those next to it that fit as well are
candidates too: the image is saved again with each of them and both chroma layouts, and the setting that changes it
least is kept (a JPEG saved again with its own settings barely moves).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from eva_helpers.data.formats import decode_image, encode_jpeg

MAX_SIDE = 256         # the estimate reads at most a 256 x 256 window (a photo's worth of content) ...
MAX_BLOCKS = 256       # ... and tests at most 256 of its unclipped 8x8 blocks, spread over it (plenty to tell)
CHECK_SIDE = 128       # the re-encoding check saves the central <= 128 px of that window again
MIN_STEP = 4           # only steps >= 4 tell a quantised coefficient from rounding noise (std ~0.3 level)
TOLERANCE = 1.0        # a coefficient within this of a multiple of the step is on the grid
MIN_ON_GRID = 0.85     # share of the tested coefficients that must be on the grid
MIN_TESTED = 32        # coefficients needed to judge a quality at all
MIN_BLOCK_STD = 2.0    # levels: a block whose luma varies less (its AC energy / 8) is flat and is not tested ...
MIN_BLOCKS = 8         # ... and fewer textured blocks than this say nothing (flat grey once read as quality 1)
NEIGHBOURS = 3         # finer qualities after the coarsest fit that may be the one (they share most steps)

# ITU T.81 Annex K base tables, row-major (libjpeg scales them by quality)
_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66] + [99] * 38


@dataclass(frozen=True)
class JpegGuess:
    """A photo's JPEG settings as read from its pixels; `on_grid`: the share of tested coefficients that fit them."""
    quality: int
    subsampled: bool  # 4:2:0 chroma (phones, chat apps) rather than 4:4:4
    on_grid: float


@lru_cache(maxsize=1)
def quant_tables() -> np.ndarray:
    """(2, 100, 64) libjpeg's luma (0) and chroma (1) quantisation steps for qualities 1..100 (row q - 1), read-only;
    the training's JPEG simulation (second_shot.py) uses the same ones."""
    q = np.arange(1, 101, dtype=np.float64)[None, :, None]
    scale = np.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    tables = np.clip(np.floor((np.array([_LUMA, _CHROMA], np.float64)[:, None] * scale + 50.0) / 100.0), 1, 255)
    tables.setflags(write=False)
    return tables


@lru_cache(maxsize=1)
def dct_matrix() -> np.ndarray:
    """(64, 64) D kron D, D the orthonormal 8x8 DCT-II (JPEG's FDCT): a block's 64 coefficients are
    (D kron D) @ block.ravel(); read-only."""
    n = np.arange(8)
    d = np.cos(math.pi * (2 * n[None] + 1) * n[:, None] / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    k = np.kron(d, d)
    k.setflags(write=False)
    return k


def _window(rgb: np.ndarray, side: int = MAX_SIDE) -> np.ndarray:
    """The central <= `side` px of the image, cut on the 16-px grid JPEG's blocks start from (top left)."""
    h, w = rgb.shape[:2]
    ch, cw = min(h, side) // 16 * 16, min(w, side) // 16 * 16
    y0, x0 = (h - ch) // 2 // 16 * 16, (w - cw) // 2 // 16 * 16
    return rgb[y0:y0 + ch, x0:x0 + cw]


def _luma_qualities(win: np.ndarray) -> list[tuple[int, float]]:
    """[(quality, share on grid)] for the coarsest quality whose luma steps the textured blocks' coefficients sit on
    and the next NEIGHBOURS finer ones that fit too; [] when none does or too few blocks have texture."""
    rgb = win.astype(np.float64)
    y = rgb @ np.array([0.299, 0.587, 0.114]) - 128.0
    h, w = y.shape
    blocks = y.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 64)
    clipped = ((win == 0) | (win == 255)).any(2).reshape(h // 8, 8, w // 8, 8).any((1, 3)).ravel()
    coef = blocks[~clipped] @ dct_matrix().T  # (blocks, 64); a clipped block's luma no longer is JPEG's
    # a flat block's one coefficient (its mean) sits on some coarse grid by chance: only texture tells
    coef = coef[np.sqrt((coef[:, 1:] ** 2).sum(1)) >= 8 * MIN_BLOCK_STD]
    if len(coef) < MIN_BLOCKS:
        return []
    coef = coef[np.linspace(0, len(coef) - 1, min(len(coef), MAX_BLOCKS)).round().astype(int)]
    tables = quant_tables()[0].astype(np.float32)[:, None, :]  # (100, 1, 64) luma, coarsest first
    c = coef.astype(np.float32)[None]  # (1, blocks, 64)
    # per quality: coefficients that survived quantisation (zeros fit every grid) at steps that tell (>= MIN_STEP)
    tested = (np.abs(c) >= tables / 2) & (tables >= MIN_STEP)
    on = (np.abs(c - tables * np.round(c / tables)) <= TOLERANCE) & tested
    n = tested.sum((1, 2))
    share = on.sum((1, 2)) / np.maximum(n, 1)
    ok = np.flatnonzero((n >= MIN_TESTED) & (share >= MIN_ON_GRID))
    if not len(ok):
        return []
    # a finer grid holds a coarser one's points: the coarsest fit is the one, or one of the next few that fit too
    return [(int(i) + 1, float(share[i])) for i in ok if i <= ok[0] + NEIGHBOURS]


def encode_decode(rgb: np.ndarray, quality: int, subsampled: bool) -> np.ndarray:
    """(H, W, 3) uint8 RGB saved as a JPEG with these settings and read back, with the dataset's own codec."""
    return decode_image(encode_jpeg(rgb, quality, subsampled=subsampled))


def estimate_jpeg(rgb: np.ndarray) -> JpegGuess | None:
    """(H, W, 3) uint8 RGB -> the JPEG settings it was last saved with, or None when its pixels show no compression
    coarse enough to read (lossless, resized since, finer than about quality 90 on smooth content, or too flat to
    tell: fewer than MIN_BLOCKS textured 8x8 blocks)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 16:
        return None
    win = _window(rgb)
    fits = _luma_qualities(win)
    if not fits:
        return None
    check = _window(win, CHECK_SIDE)  # central, on the same 16-px grid
    ref = check.astype(np.int16)
    best = min((float(np.abs(encode_decode(check, q, sub).astype(np.int16) - ref).mean()), i, sub)
               for i, (q, _) in enumerate(fits) for sub in (True, False))  # ties: the coarser quality, then 4:4:4
    q, on_grid = fits[best[1]]
    return JpegGuess(quality=q, subsampled=best[2], on_grid=round(on_grid, 3))
