"""compression.py: a photo's JPEG settings read from its pixels, and align_pair saving bg the way fg_bg was saved."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from eva_helpers.predict.align import align_pair
from eva_helpers.data.compression import encode_decode, estimate_jpeg
from eva_helpers.paths import sample_assets
from eva_helpers.predict.align import describe_alignment
from eva_helpers.training.second_shot import SecondShot, apply_second_shot


def _photo(name: str, side: int = 64, x: int = 0) -> np.ndarray:
    """A square of a sample background (RGB uint8), never saved as a JPEG at this size."""
    im = cv2.cvtColor(cv2.imread(str(sample_assets() / "bg" / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
    s = min(im.shape[:2])
    return cv2.resize(im[:s, x:x + s], (side, side), interpolation=cv2.INTER_AREA)


def _with_square(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    out[20:44, 24:40] = (250, 40, 30)  # an "object" with hard edges: JPEG rings around it
    return out


@pytest.mark.parametrize("name", ["china", "seeding", "rocket"])
@pytest.mark.parametrize("quality,subsampled", [(30, True), (40, True), (60, True), (75, False), (85, True)])
def test_settings_are_read_back(name, quality, subsampled):
    img = encode_decode(_with_square(_photo(name)), quality, subsampled)
    guess = estimate_jpeg(img)
    # neighbouring qualities share most steps: on smooth content one or two apart can be indistinguishable
    assert guess is not None and abs(guess.quality - quality) <= 2 and guess.subsampled == subsampled, guess


@pytest.mark.parametrize("name", ["china", "seeding", "rocket"])
def test_an_image_never_saved_as_jpeg_reads_as_none(name):
    assert estimate_jpeg(_with_square(_photo(name))) is None


def test_large_photo_reads_a_window():
    img = encode_decode(_photo("china", 1200), 50, True)
    guess = estimate_jpeg(img)
    assert guess is not None and abs(guess.quality - 50) <= 2 and guess.subsampled


def test_recompressed_fg_bg_gets_a_bg_saved_alike():
    """A chat app recompressed fg_bg (quality 40, 4:2:0); bg is the pristine photo: bg is saved the same way, so
    away from the object the pair is identical again."""
    bg = _photo("china")
    fg_bg = encode_decode(_with_square(bg), 40, True)
    out, al = align_pair(bg, fg_bg)
    assert al.jpeg_applied and al.jpeg_quality == 40 and al.jpeg_subsampled, al.jpeg_reason
    assert not al.applied and not al.tone_applied
    assert np.array_equal(out, encode_decode(bg, 40, True))
    far = np.ones(bg.shape[:2], bool)
    far[15:49, 15:49] = False  # the 16-px blocks the object touches, and the pixel chroma upsampling blends in
    assert np.array_equal(out[far], fg_bg[far])
    row = al.as_row()
    assert row["align_jpeg_applied"] is True and row["align_jpeg_quality"] == 40
    assert "bg saved as JPEG quality 40 4:2:0 like fg_bg" in describe_alignment(al)  # the line eva predict prints


@pytest.mark.parametrize("bg_q,fg_q", [(None, 95), (90, 90), (70, 60)])
def test_pairs_compressed_alike_are_left_alone(bg_q, fg_q):
    """A clean pair (bg lossless, fg_bg at the dataset's 95), two phone shots (90/90), or a gap under JPEG_GAP."""
    photo = _photo("seeding")
    bg = photo if bg_q is None else encode_decode(photo, bg_q, True)
    fg_bg = encode_decode(_with_square(photo), fg_q, fg_q != 95)
    out, al = align_pair(bg, fg_bg)
    assert not al.jpeg_applied, al.jpeg_reason
    assert np.array_equal(out, bg)


def test_compression_switch():
    bg = _photo("china")
    fg_bg = encode_decode(_with_square(bg), 40, True)
    out, al = align_pair(bg, fg_bg, compression=False)
    assert not al.jpeg_applied and "off" in al.jpeg_reason and np.array_equal(out, bg)


def _pair_batch(n: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    img = torch.tensor(_photo("china")).permute(2, 0, 1).float()
    bg = img.expand(n, -1, -1, -1).clone()
    return bg, bg.clone(), torch.zeros(n, 1, 64, 64)


@pytest.mark.parametrize("same", [0.0, 1.0])
def test_training_can_save_both_photos_alike(same):
    """p_jpeg_same=1: a pair whose two photos are both saved as JPEG uses one quality, so an exact pair stays exact
    (what a bg compressed like its fg_bg at prediction looks like); at 0 the qualities are drawn apart."""
    opts = SecondShot(p=1.0, gain=0, gamma=0, wb=0, p_blur=0, noise=0, p_jpeg=1.0, p_jpeg_same=same)
    bg, fg_bg, mask = _pair_batch()
    gen = torch.Generator().manual_seed(3)
    out_bg, out_fg = apply_second_shot(bg, fg_bg, mask, gen, opts)
    both = ((out_bg != bg).flatten(1).any(1) & (out_fg != fg_bg).flatten(1).any(1))  # JPEG landed on both photos
    assert both.sum() >= 3
    equal = (out_bg == out_fg).flatten(1).all(1)[both]
    assert bool(equal.all()) if same else not bool(equal.any())


def test_p_jpeg_same_zero_keeps_the_random_stream():
    """Runs trained before the option existed draw exactly what they drew (the option, not a draw, gates it)."""
    bg, fg_bg, mask = _pair_batch()
    outs = []
    for opts in (SecondShot(), SecondShot(p_jpeg_same=0.0)):
        gen = torch.Generator().manual_seed(5)
        outs.append(apply_second_shot(bg, fg_bg, mask, gen, opts))
    assert all(torch.equal(a, b) for a, b in zip(*outs))
