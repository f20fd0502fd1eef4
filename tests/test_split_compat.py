"""Splits are identical to the pre-columnar implementation's for the same seed, so existing run folders keep their
held-out backgrounds. The expected digests were produced by eva_helpers/data/dataset.py at commit da5ac18 (records parsed
from every index.jsonl) before the columnar index replaced it; they must never be regenerated from new code."""
from __future__ import annotations

import hashlib
import json

import pytest

from _synthetic import write_synthetic_dataset
from eva_helpers.data.dataset import make_splits

# sha256(json of train/val/test/info, sort_keys)[:16] from the da5ac18 implementation
SYN = {
    ("bg", 0, (0.8, 0.1, 0.1)): "f967487a022f166a", ("bg", 0, (0.6, 0.2, 0.2)): "7921a720b9da5e02",
    ("bg", 3, (0.8, 0.1, 0.1)): "0585bad028137649", ("bg", 3, (0.6, 0.2, 0.2)): "072e3d4a7f9569a7",
    ("fg", 0, (0.8, 0.1, 0.1)): "71d4ef8103641b32", ("fg", 0, (0.6, 0.2, 0.2)): "e37a63a6125d3f09",
    ("fg", 3, (0.8, 0.1, 0.1)): "d163f9a1c66073e6", ("fg", 3, (0.6, 0.2, 0.2)): "c133b97ecf360de1",
    ("bg+fg", 0, (0.8, 0.1, 0.1)): "008e75ee7e681c3a", ("bg+fg", 0, (0.6, 0.2, 0.2)): "25bca43ed7411f53",
    ("bg+fg", 3, (0.8, 0.1, 0.1)): "cefb14c2d61f3f87", ("bg+fg", 3, (0.6, 0.2, 0.2)): "bcbc079d88bed52a",
}
SAMPLE32 = {("bg", 0): "3c219d2982499209", ("bg", 1): "3ac09d43b3b49ce4", ("fg", 0): "4d4c2de85e50d7f2",
            ("fg", 1): "aafbe8c33eb1bdfd", ("bg+fg", 0): "525f2971293923cd", ("bg+fg", 1): "2632d36c5f1189b7"}


def _digest(sp: dict) -> str:
    body = {k: sp[k] for k in ("train", "val", "test", "info")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_bg=6, n_fg=4, positions=2, size=32)


@pytest.mark.parametrize("key", sorted(SYN, key=str))
def test_synthetic_splits_unchanged(syn, key):
    by, seed, fr = key
    sp = make_splits(syn, by=by, fractions=fr, seed=seed)
    assert sp["train"] and all(type(p) is int for p in sp["train"][:3])  # plain ints, as before (JSON-serialisable)
    assert _digest(sp) == SYN[key]


@pytest.mark.parametrize("key", sorted(SAMPLE32, key=str))
def test_built_sample_splits_unchanged(sample_dataset, key):
    by, seed = key
    sp = make_splits(sample_dataset, by=by, seed=seed)
    if (by, seed) == ("bg", 0):
        assert sp["test"] == list(range(32, 64))
    assert _digest(sp) == SAMPLE32[key]
