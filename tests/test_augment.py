"""The workers' transform: a resize of all four arrays, aligned, ranges kept, compact on request, the same bytes in any
process (training augmentation is on the batch: tests/test_batch_augment.py)."""
from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from _synthetic import BG_COLOURS, FG_COLOURS, RAMP, sample_layout, write_synthetic_dataset
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.data.resize import resize_transform

N_BG, N_FG, SIZE = 4, 4, 48


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_bg=N_BG, n_fg=N_FG, positions=2, size=SIZE)


def _np(s):
    return (s["fg_bg"].permute(1, 2, 0).numpy().astype(int), s["mask"][0].numpy(), s["depth"][0].numpy())


def test_geometry_stays_aligned_after_resizing(syn):
    ds = ShardDataset(syn)
    tf = resize_transform(40)
    checked = 0
    for i in range(len(ds)):
        L = sample_layout(i, N_BG, N_FG, SIZE)
        img, mask, depth = _np(tf(ds[i]))
        assert img.shape == (40, 40, 3) and mask.shape == depth.shape == (40, 40)
        assert set(np.unique(mask)) <= {0.0, 1.0} and 0 <= depth.min() and depth.max() <= 1
        cands = np.array([FG_COLOURS[L["f"]], BG_COLOURS[L["b"]]])  # nearest of object / background colour
        obj = np.argmin(((img[:, :, None, :] - cands[None, None]) ** 2).sum(-1), axis=-1) == 0
        m8 = mask.astype(np.uint8)
        edge = cv2.dilate(m8, np.ones((3, 3))) != cv2.erode(m8, np.ones((3, 3)))  # 1 px either side of edges
        assert mask.sum() > 0 and np.array_equal(obj[~edge], mask[~edge].astype(bool))
        inner = cv2.erode(m8, np.ones((3, 3)), borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        outer = ~cv2.dilate(m8, np.ones((3, 3))).astype(bool)
        assert depth[inner].min() > 0.99  # the object layer is at depth 1
        assert depth[outer].max() < RAMP[1] + 0.01  # the background ramp
        checked += 1
    assert checked == len(ds) >= 32


def test_at_size_nothing_is_resampled_and_compact_mode(syn):
    raw = ShardDataset(syn)[0]
    v = resize_transform(SIZE)(raw, None)
    assert torch.equal(v["fg_bg"], torch.from_numpy(raw["fg_bg"]).permute(2, 0, 1))
    assert torch.equal(v["mask"][0], torch.from_numpy(raw["mask"]).float())
    c, f = resize_transform(32, compact=True)(raw, 1), resize_transform(32)(raw, 1)
    assert c["mask"].dtype == torch.uint8 and c["depth"].dtype == torch.float16
    assert f["mask"].dtype == torch.float32 and f["depth"].dtype == torch.float32 and f["fg_bg"].dtype == torch.uint8
    assert torch.equal(c["mask"].float(), f["mask"]) and torch.allclose(c["depth"].float(), f["depth"], atol=1e-3)
    assert "bg" not in resize_transform(32, with_bg=False)(raw) and torch.equal(c["bg"], f["bg"])
    again = pickle.loads(pickle.dumps(resize_transform(32)))(raw)  # as a spawn-started worker gets it
    assert all(torch.equal(again[k], f[k]) for k in ("bg", "fg_bg", "mask", "depth"))


@pytest.mark.slow
def test_same_bytes_in_a_fresh_process(syn):
    def digest(s):
        return hashlib.sha256(b"".join(s[k].numpy().tobytes() for k in ("bg", "fg_bg", "mask", "depth"))).hexdigest()

    ds = ShardDataset(syn, transform=resize_transform(32))
    here = [digest(ds[(i, 100 + i)]) for i in range(4)]
    code = (
        "import hashlib, sys; from eva_helpers.data.dataset import ShardDataset; "
        "from eva_helpers.data.resize import resize_transform; "
        f"ds = ShardDataset({str(syn)!r}, transform=resize_transform(32)); "
        "print(' '.join(hashlib.sha256(b''.join(ds[(i, 100 + i)][k].numpy().tobytes() "
        "for k in ('bg', 'fg_bg', 'mask', 'depth'))).hexdigest() for i in range(4)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == here
