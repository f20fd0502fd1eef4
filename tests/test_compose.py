"""Compositing: sample plans are pure functions of (seed, i), objects stay in frame, mask == placed alpha."""
from __future__ import annotations

import numpy as np
import pytest

from _build_helpers import rgba_disc
from _build_helpers import placed_alpha
from eva_helpers.compositing.compose import Compositor, prepare_background, trim_to_alpha

pytestmark = pytest.mark.timeout(60)
SIZE = 48


def _bgs(n=3):
    rng = np.random.default_rng(1)
    return [prepare_background(rng.integers(0, 256, (60 + 10 * k, 90, 3), dtype=np.uint8), SIZE) for k in range(n)]


def _fgs():
    big = np.zeros((300, 260, 4), np.uint8)  # larger than the 48 px background
    big[20:290, 10:250] = rgba_disc(270, 240, (20, 200, 20))
    wide = np.zeros((12, 200, 4), np.uint8)  # far wider than tall: must be fitted by width
    wide[2:10, 5:195, :3], wide[2:10, 5:195, 3] = (10, 10, 200), 255
    return [rgba_disc(40, 30), big, wide]


def test_prepare_background_centre_crop():
    img = np.zeros((40, 100, 3), np.uint8)
    img[:, 30:70] = 200  # the centred 40x40 square
    out = prepare_background(img, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert out.min() == 200  # nothing of the cropped-away sides
    assert prepare_background(np.zeros((10, 8, 3), np.uint8), 16).shape == (16, 16, 3)  # upscale works


def test_trim_to_alpha():
    a = np.zeros((20, 30, 4), np.uint8)
    a[5:9, 10:21, 3] = 7
    assert trim_to_alpha(a).shape == (4, 11, 4)


def test_plan_depends_only_on_seed_and_index():
    c1 = Compositor(_bgs(), _fgs(), size=SIZE, positions=4, seed=5)
    c2 = Compositor(_bgs(), _fgs(), size=SIZE, positions=4, seed=5)
    idx = list(range(len(c1)))
    fwd = [c1.plan(i) for i in idx]
    rev = [c2.plan(i) for i in reversed(idx)][::-1]  # a different order, a different instance
    assert fwd == rev
    other = Compositor(_bgs(), _fgs(), size=SIZE, positions=4, seed=6)
    assert sum(other.plan(i) != fwd[i] for i in idx) > len(idx) // 2


def test_documented_mapping_and_frame():
    c = Compositor(_bgs(), _fgs(), size=SIZE, positions=3, seed=0, scale_range=(0.3, 0.7))
    n_fg, n_flip = 3, 2
    assert len(c) == 3 * 3 * 2 * 3
    seen = set()
    for i in range(len(c)):
        p = c.plan(i)
        comb = i // 3
        assert (p.bg, p.fg, int(p.flip)) == (comb // (n_fg * n_flip), (comb // n_flip) % n_fg, comb % n_flip)
        seen.add((p.bg, p.fg, p.flip))
        assert 0 <= p.x and p.x + p.w <= SIZE and 0 <= p.y and p.y + p.h <= SIZE  # fully inside
        assert p.h == round(p.scale * SIZE)
        if p.w < SIZE:  # not width-limited: the height follows the scale range
            assert 0.3 * SIZE - 1 <= p.h <= 0.7 * SIZE + 1
    assert len(seen) == 18
    assert Compositor(_bgs(), _fgs(), size=SIZE, positions=3, flips=False).plan(3).flip is False


def test_render_mask_is_placed_alpha_and_bg_untouched_outside():
    bgs, fgs = _bgs(), _fgs()
    c = Compositor(bgs, fgs, size=SIZE, positions=2, seed=3)
    for i in range(len(c)):
        fg_bg, mask, p = c.render(i)
        assert fg_bg.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
        expect = np.zeros((SIZE, SIZE), np.uint8)
        expect[p.y:p.y + p.h, p.x:p.x + p.w] = placed_alpha(fgs[p.fg], p.flip, p.w, p.h, SIZE)
        assert np.array_equal(mask, expect)  # re-derived from the source cut-out + provenance
        assert mask.max() == 255  # the object is opaque somewhere
        out = mask == 0
        assert np.array_equal(fg_bg[out], bgs[p.bg][out])
        solid = mask == 255
        colour = fgs[p.fg][fgs[p.fg][..., 3] == 255][0, :3]  # each test cut-out is one solid colour
        assert np.abs(fg_bg[solid].astype(int) - colour).max() <= 1
        assert c.shapes[p.fg] == trim_to_alpha(fgs[p.fg]).shape[:2]
        r2 = c.render(i)
        assert np.array_equal(r2[0], fg_bg) and np.array_equal(r2[1], mask)


def test_flip_mirrors_the_object():
    half = np.zeros((20, 20, 4), np.uint8)
    half[:, :10] = (255, 0, 0, 255)  # left half opaque, so the trimmed cut-out is 20x10
    half[:, :5, 1] = 255  # a yellow stripe on the left edge
    c = Compositor(_bgs(1), [half], size=SIZE, positions=1, seed=0, scale_range=(0.5, 0.5))
    a, _, p0 = c.render(0)
    b, _, p1 = c.render(1)
    assert p1.flip and not p0.flip
    box0 = a[p0.y:p0.y + p0.h, p0.x:p0.x + p0.w]
    box1 = b[p1.y:p1.y + p1.h, p1.x:p1.x + p1.w]
    assert box0[:, 0, 1].mean() > 200 and box0[:, -1, 1].mean() < 50
    assert box1[:, -1, 1].mean() > 200 and box1[:, 0, 1].mean() < 50


def test_huge_cutout_keeps_a_small_mip_chain():
    from eva_helpers.compositing.compose import cutout_chain

    huge = rgba_disc(2000, 1500)
    chain = cutout_chain(huge, SIZE)
    assert max(chain[0].shape[:2]) < 4 * SIZE  # levels too big to ever be picked are dropped
    assert min(chain[1].shape[:2]) < SIZE <= min(chain[0].shape[:2])
    c = Compositor(_bgs(1), [huge], size=SIZE, positions=2, seed=0)
    for i in range(len(c)):
        fg_bg, mask, p = c.render(i)
        assert mask.max() == 255 and np.array_equal(mask[p.y:p.y + p.h, p.x:p.x + p.w],
                                                    placed_alpha(huge, p.flip, p.w, p.h, SIZE))


def test_bad_options():
    from eva_helpers.errors import BadInputError

    with pytest.raises(BadInputError, match="scale_range"):
        Compositor(_bgs(), _fgs(), size=SIZE, scale_range=(0.0, 0.5))
    with pytest.raises(BadInputError, match="positions"):
        Compositor(_bgs(), _fgs(), size=SIZE, positions=0)
