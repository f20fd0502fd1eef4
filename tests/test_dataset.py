"""ShardDataset reads the format exactly, per-process zip handles, leak-free splits, loader determinism."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from _synthetic import BG_COLOURS, FG_COLOURS, sample_layout, write_synthetic_dataset
from eva_helpers.data.resize import resize_transform
from eva_helpers.data.dataset import RECORD_KEYS, ShardDataset, make_splits
from eva_helpers.errors import BadInputError
from eva_helpers.data.loaders import make_loader
from eva_helpers.training.trainer import model_batch


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_bg=6, n_fg=4, positions=2, size=32)


def test_raw_sample_matches_known_geometry(syn):
    ds = ShardDataset(syn)
    assert len(ds) == 48 and len(ds.records) == 48
    assert set(RECORD_KEYS) <= set(ds.records[0])
    for i in (0, 13, 47):
        s = ds[i]
        L = sample_layout(i, 6, 4, 32)
        assert s["bg"].shape == (32, 32, 3) and s["bg"].dtype == np.uint8
        assert s["mask"].dtype == np.uint8 and set(np.unique(s["mask"])) == {0, 1}
        assert s["depth"].dtype == np.float32 and 0 <= s["depth"].min() and s["depth"].max() <= 1
        box = np.zeros((32, 32), bool)
        box[L["y"]:L["y"] + L["h"], L["x"]:L["x"] + L["w"]] = True
        assert np.array_equal(s["mask"].astype(bool), box)
        assert np.allclose(s["depth"][box], 1.0) and s["depth"][~box].max() < 0.61
        assert np.array_equal(s["bg"][0, 0], BG_COLOURS[L["b"]])
        inner = np.zeros_like(box)
        inner[L["y"] + 2:L["y"] + L["h"] - 2, L["x"] + 2:L["x"] + L["w"] - 2] = True  # away from JPEG edge ringing
        assert np.abs(s["fg_bg"][inner].astype(int) - FG_COLOURS[L["f"]]).max() < 12
        assert s["meta"]["index"] == i


def test_handles_reopen_after_fork_and_pickle(syn):
    ds = ShardDataset(syn)
    ds[0]
    assert ds._handles  # opened lazily by the read
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handles == {} and np.array_equal(clone[5]["fg_bg"], ds[5]["fg_bg"])
    ds._pid = -1  # as if this object had been inherited by a forked worker: it drops (closes) its copies
    old = dict(ds._handles)
    ref = ds[1]["fg_bg"]
    assert ds._pid == os.getpid() and ds._handles and np.array_equal(ref, clone[1]["fg_bg"])
    for fd in set(old.values()) - set(ds._handles.values()):
        with pytest.raises(OSError):
            os.fstat(fd)  # closed, not leaked


def test_subset_and_tuple_keys(syn):
    ds = ShardDataset(syn, indices=[5, 7], transform=resize_transform(24))
    a, b = ds[(1, 123)], ds[(1, 123)]
    assert a["meta"]["index"] == 7 and torch.equal(a["fg_bg"], b["fg_bg"]) and torch.equal(a["depth"], b["depth"])
    with pytest.raises(BadInputError):
        ShardDataset(syn, indices=[999])


@pytest.mark.parametrize("by", ["bg", "fg", "bg+fg"])
def test_splits_hold_out_ids(syn, by):
    ds = ShardDataset(syn)
    sp = make_splits(ds, by=by, fractions=(0.6, 0.2, 0.2), seed=3)
    assert sp["info"]["by"] == by and sp["info"]["seed"] == 3
    parts = {k: set(sp[k]) for k in ("train", "val", "test")}
    assert all(parts.values())  # each split non-empty
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"])
    assert not (parts["val"] & parts["test"])
    for kind in ("bg", "fg"):
        if kind not in by:
            continue
        ids = {k: {ds.records[p][f"{kind}_id"] for p in v} for k, v in parts.items()}
        assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    n_used = sum(len(v) for v in parts.values())
    assert n_used == 48 - sp["info"]["dropped"] and (by == "bg+fg") == (sp["info"]["dropped"] > 0)
    assert make_splits(syn, by=by, fractions=(0.6, 0.2, 0.2), seed=3)["test"] == sp["test"]  # seed -> same split


def test_splits_reject_bad_args(syn):
    with pytest.raises(BadInputError):
        make_splits(syn, by="composite")
    with pytest.raises(BadInputError):
        make_splits(syn, fractions=(0.5, 0.5, 0.5))


def _epoch(loader):
    return [(b["fg_bg"].clone(), b["bg"].clone(), b["mask"].clone(), b["depth"].clone(),
             [m["index"] for m in b["meta"]]) for b in loader]


def test_workers_yield_same_bytes_as_main_process(syn):
    ds = ShardDataset(syn, transform=resize_transform(24))
    ref = make_loader(ds, 8, shuffle=True, num_workers=0, seed=11)
    par = make_loader(ds, 8, shuffle=True, num_workers=2, seed=11)
    for _ in range(2):  # two epochs: the order and the draws change per epoch, identically in both loaders
        a, b = _epoch(ref), _epoch(par)
        assert len(a) == len(b) == 6
        for x, y in zip(a, b):
            assert x[4] == y[4]
            assert all(torch.equal(u, v) for u, v in zip(x[:4], y[:4]))
    other = _epoch(make_loader(ds, 8, shuffle=True, num_workers=0, seed=12))
    assert [x[4] for x in other] != [x[4] for x in a]


def test_prepare_batch_normalises_images_once(syn):
    ds = ShardDataset(syn, transform=resize_transform(32))
    batch = next(iter(make_loader(ds, 4, num_workers=0)))
    assert isinstance(batch["meta"], list) and batch["meta"][0]["index"] == 0
    stats = {"bg": {"mean": [0.5] * 3, "std": [0.25] * 3}, "fg_bg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    x, t = model_batch(batch, "cpu", stats)
    assert x.shape == (4, 10, 32, 32) and x.dtype == torch.float32
    expect = (batch["fg_bg"].float() / 255 - 0.5) / 0.25
    assert torch.allclose(x[:, 3:6], expect)
    assert t["mask"].shape == (4, 1, 32, 32) and set(t["mask"].unique().tolist()) == {0.0, 1.0}
    assert 0 <= t["depth"].min() and t["depth"].max() <= 1 and t["depth"].max() > 0.99  # targets never normalised


def test_reads_a_dataset_from_the_real_builder(request, tmp_path):
    """Integration with eva_helpers.compositing.build (the conftest's embedded-sample dataset): records, decode, splits."""
    pytest.importorskip("eva_helpers.compositing.build")
    from eva_helpers.data.stats import compute_stats

    data = request.getfixturevalue("sample_dataset")
    ds = ShardDataset(data, transform=resize_transform(32))
    assert len(ds) == ds.manifest["counts"]["samples"] and [r["index"] for r in ds.records] == list(range(len(ds)))
    s = ds[(len(ds) - 1, 0)]
    assert s["fg_bg"].shape == (3, 32, 32) and set(s["mask"].unique().tolist()) <= {0.0, 1.0}
    raw = ShardDataset(data)[0]
    r = raw["meta"]
    assert raw["mask"][r["y"]:r["y"] + r["h"], r["x"]:r["x"] + r["w"]].sum() == raw["mask"].sum() > 0  # inside its box
    sp = make_splits(ds, by="bg")
    test_bgs = {ds.records[p]["bg_id"] for p in sp["test"]}
    assert test_bgs and not test_bgs & {ds.records[p]["bg_id"] for p in sp["train"]}
    st = compute_stats(data, limit=32, progress=False, write=False)
    assert 0 < st["mask_fraction"]["mean"] < 1 and all(0 < v < 1 for v in st["fg_bg"]["mean"])
