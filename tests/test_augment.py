"""Joint augmentation: one geometric draw for all four arrays, colour on images only, ranges kept, seeds honoured."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from _synthetic import BG_COLOURS, FG_COLOURS, RAMP, sample_layout, write_synthetic_dataset
from eva_helpers.data.augment import build_transforms
from eva_helpers.data.dataset import ShardDataset

N_BG, N_FG, SIZE = 4, 4, 48


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_bg=N_BG, n_fg=N_FG, positions=2, size=SIZE)


def _np(s):
    return (s["fg_bg"].permute(1, 2, 0).numpy().astype(int), s["mask"][0].numpy(), s["depth"][0].numpy())


def test_geometry_stays_aligned_after_augmentation(syn):
    ds = ShardDataset(syn)
    tf = build_transforms("train", 40, jitter_p=0.0, affine_p=1.0, rotate=15)  # every geometric op, no colour
    checked = 0
    for i in range(len(ds)):
        L = sample_layout(i, N_BG, N_FG, SIZE)
        if L["f"] == 1:
            continue  # the near-black object would be confused with the black border fill
        raw = ds[i]
        for seed in (1, 2, 3):
            img, mask, depth = _np(tf(raw, seed))
            assert img.shape == (40, 40, 3) and mask.shape == depth.shape == (40, 40)
            assert set(np.unique(mask)) <= {0.0, 1.0} and 0 <= depth.min() and depth.max() <= 1
            # which pixels show the object colour (nearest of object / background / black fill)
            cands = np.array([FG_COLOURS[L["f"]], BG_COLOURS[L["b"]], (0, 0, 0)])
            obj = np.argmin(((img[:, :, None, :] - cands[None, None]) ** 2).sum(-1), axis=-1) == 0
            m8 = mask.astype(np.uint8)
            edge = cv2.dilate(m8, np.ones((3, 3))) != cv2.erode(m8, np.ones((3, 3)))  # 1 px either side of edges
            assert mask.sum() > 0 and np.array_equal(obj[~edge], mask[~edge].astype(bool))
            # depth is bilinear (smooth field) over two resamplings (affine, crop-resize): a 2 px band may blend
            inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5)), borderType=cv2.BORDER_CONSTANT,
                              borderValue=0).astype(bool)  # pixels on the frame edge blend with the 0 fill
            outer = ~cv2.dilate(mask.astype(np.uint8), np.ones((5, 5))).astype(bool)
            assert depth[inner].min() > 0.99  # the object layer is at depth 1
            assert depth[outer].max() < RAMP[1] + 0.01  # the background ramp (or the 0 fill)
            checked += 1
    assert checked >= 50


def test_same_seed_same_output_and_colour_only_on_images(syn):
    raw = ShardDataset(syn)[3]
    tf = build_transforms("train", 32)
    a, b, c = tf(raw, 7), tf(raw, 7), tf(raw, 8)
    assert all(torch.equal(a[k], b[k]) for k in ("bg", "fg_bg", "mask", "depth"))
    assert not all(torch.equal(a[k], c[k]) for k in ("bg", "fg_bg", "mask", "depth"))
    plain = build_transforms("train", 32, jitter_p=0.0)(raw, 7)  # same geometric draw, no colour jitter
    assert torch.equal(plain["mask"], a["mask"]) and torch.equal(plain["depth"], a["depth"])
    jittered = [build_transforms("train", 32, jitter_p=1.0)(raw, s) for s in range(4)]
    assert any(not torch.equal(j["fg_bg"], build_transforms("train", 32, jitter_p=0.0)(raw, s)["fg_bg"])
               for s, j in enumerate(jittered))
    assert a["mask"].dtype == torch.float32 and a["depth"].dtype == torch.float32 and a["fg_bg"].dtype == torch.uint8


def test_independent_jitter_breaks_the_difference_shortcut(syn):
    raw = ShardDataset(syn)[5]
    outside = raw["mask"] == 0
    shared, indep = [], []
    for s in range(6):
        for lst, flag in ((shared, False), (indep, True)):
            tf = build_transforms("train", SIZE, independent_jitter=flag, jitter_p=1.0, affine_p=0.0, hflip=0.0,
                                  crop_scale=(1.0, 1.0))
            out = tf(raw, s)
            d = (out["fg_bg"].int() - out["bg"].int()).abs().sum(0).numpy()
            lst.append(d[outside].mean())
    # shared draw: only JPEG noise and contrast's image-mean term differ; independent: whole-image shifts
    assert np.mean(indep) > 3 * np.mean(shared)


def test_val_is_resize_only_and_compact_mode(syn):
    raw = ShardDataset(syn)[0]
    v = build_transforms("val", SIZE)(raw, None)
    assert torch.equal(v["fg_bg"], torch.from_numpy(raw["fg_bg"]).permute(2, 0, 1))
    assert torch.equal(v["mask"][0], torch.from_numpy(raw["mask"]).float())
    c = build_transforms("train", 32, compact=True)(raw, 1)
    f = build_transforms("train", 32)(raw, 1)
    assert c["mask"].dtype == torch.uint8 and c["depth"].dtype == torch.float16
    assert torch.equal(c["mask"].float(), f["mask"]) and torch.allclose(c["depth"].float(), f["depth"], atol=1e-3)


@pytest.mark.slow
def test_seeded_output_identical_in_a_fresh_process(syn):
    def digest(s):
        return hashlib.sha256(b"".join(s[k].numpy().tobytes() for k in ("bg", "fg_bg", "mask", "depth"))).hexdigest()

    ds = ShardDataset(syn, transform=build_transforms("train", 32, independent_jitter=True))
    here = [digest(ds[(i, 100 + i)]) for i in range(4)]
    code = (
        "import hashlib, sys; from eva_helpers.data.dataset import ShardDataset; "
        "from eva_helpers.data.augment import build_transforms; "
        f"ds = ShardDataset({str(syn)!r}, transform=build_transforms('train', 32, independent_jitter=True)); "
        "print(' '.join(hashlib.sha256(b''.join(ds[(i, 100 + i)][k].numpy().tobytes() "
        "for k in ('bg', 'fg_bg', 'mask', 'depth'))).hexdigest() for i in range(4)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == here
