"""The columnar index: round-trips every index.jsonl field, written by the builder and covered by the manifest, rebuilt
into the cache when missing, caught when tampered or stale, and cheap to hold (no per-sample Python objects)."""
from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest

from _synthetic import write_synthetic_dataset
from eva_helpers.data import formats
from eva_helpers.atomic import sha256_file
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.errors import IntegrityError
from eva_helpers.data.columns import INDEX_FILE
from eva_helpers.data.verify import dataset_identity, open_dataset


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))


def _jsonl_rows(ds_dir):
    m = formats.read_manifest(ds_dir)
    rows = []
    for e in m["shards"]:
        with zipfile.ZipFile(ds_dir / e["file"]) as zf:
            rows += formats.read_jsonl(zf.read(formats.INDEX))
    return rows


def _check_round_trip(ds_dir):
    ds = ShardDataset(ds_dir)
    rows = _jsonl_rows(ds_dir)
    assert len(ds.records) == len(rows) > 0
    for i, r in enumerate(rows):
        got = ds.records[i]
        assert got == r and [type(v) for v in got.values()] == [type(r[k]) for k in got]  # same values and types
    return ds


def test_round_trips_every_field_of_a_synthetic_dataset(tmp_path):
    ds = _check_round_trip(write_synthetic_dataset(tmp_path / "syn", n_bg=3, n_fg=2, positions=3, size=32,
                                                   shard_size=7))
    assert ds.columns.path.parent == tmp_path / "cache" / ".index"  # no index.npz in that folder: rebuilt in the cache


def test_builder_writes_an_index_covered_by_the_manifest(sample_dataset):
    m = formats.read_manifest(sample_dataset)
    entry = m["index"]
    path = sample_dataset / INDEX_FILE
    assert entry["file"] == INDEX_FILE and sha256_file(path) == entry["sha256"]
    assert path.stat().st_size == entry["bytes"]
    assert entry["identity"] == dataset_identity(m)
    ds = _check_round_trip(sample_dataset)
    assert ds.columns.path == path
    with np.load(path) as z:  # a standard .npz: readable without eva_helpers
        assert len(z["r_index"]) == m["counts"]["samples"] and z["r_index"][-1] == m["counts"]["samples"] - 1
    raw = ds[len(ds) - 1]
    assert raw["fg_bg"].shape == (32, 32, 3) and raw["meta"]["index"] == len(ds) - 1


def test_same_dataset_gives_byte_identical_index(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", n_bg=2, n_fg=2, positions=2, size=32, shard_size=3)
    from eva_helpers.data.verify import write_index

    e1 = write_index(a, formats.read_manifest(a))
    e2 = write_index(a, formats.read_manifest(a))
    assert e1 == e2


def test_index_is_memory_mapped_and_views_hold_no_records(tmp_path):
    syn = write_synthetic_dataset(tmp_path / "syn", n_bg=3, n_fg=2, positions=2, size=32, shard_size=5)
    ds = ShardDataset(syn, indices=range(0, 12, 2))
    col = ds.columns.cols["r_x"]
    assert not col.flags.owndata and not col.flags.writeable  # a view over the file's mapping
    assert isinstance(ds.indices, np.ndarray) and ds.indices.dtype == np.int64
    assert not any(isinstance(v, list) and len(v) >= 12 for v in vars(ds).values())  # nothing per sample as objects
    clone = pickle.loads(pickle.dumps(ds))  # spawn workers: the mapping is reopened, not copied into the pickle
    assert len(pickle.dumps(ds)) < 4000 and clone[1]["meta"] == ds[1]["meta"]


def test_tampered_index_file_is_caught(sample_dataset, tmp_path):
    d = tmp_path / "copy"
    import shutil

    shutil.copytree(sample_dataset, d)
    data = bytearray((d / INDEX_FILE).read_bytes())
    data[-200] ^= 0xFF
    (d / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="index.npz") as e:
        ShardDataset(d)
    assert "\n" not in str(e.value)
    (d / INDEX_FILE).unlink()  # deleting it is the remedy: rebuilt in the cache, the folder untouched
    ds = ShardDataset(d)
    assert not (d / INDEX_FILE).exists() and ds.columns.path.parent == tmp_path / "cache" / ".index"


def test_stale_index_is_caught(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", n_bg=2, n_fg=2, positions=2, size=32, shard_size=3)
    b = write_synthetic_dataset(tmp_path / "b", n_bg=3, n_fg=2, positions=2, size=32, shard_size=3)
    from eva_helpers.data.verify import write_index

    ma = formats.read_manifest(a)
    ma["index"] = write_index(a, ma)
    formats.write_manifest(a, ma)
    mb = formats.read_manifest(b)
    (b / INDEX_FILE).write_bytes((a / INDEX_FILE).read_bytes())  # another dataset's index, hash made to agree
    mb["index"] = dict(ma["index"])
    formats.write_manifest(b, mb)
    with pytest.raises(IntegrityError, match="stale"):
        ShardDataset(b)


def test_corrupt_cached_index_is_rebuilt(tmp_path):
    syn = write_synthetic_dataset(tmp_path / "syn", n_bg=2, n_fg=2, positions=2, size=32, shard_size=3)
    path = ShardDataset(syn).columns.path
    path.write_bytes(b"junk")
    with pytest.warns(UserWarning, match="rebuilding"):
        ds = ShardDataset(syn)
    assert ds[3]["meta"]["index"] == 3 and path.stat().st_size > 100


def test_open_cost_does_not_parse_shards(tmp_path, monkeypatch):
    syn = write_synthetic_dataset(tmp_path / "syn", n_bg=2, n_fg=2, positions=2, size=32, shard_size=3)
    ShardDataset(syn)

    def boom(*a, **k):
        raise AssertionError("index.jsonl parsed at open")

    monkeypatch.setattr(formats, "read_jsonl", boom)
    m, idx = open_dataset(syn)
    assert idx.n == 8 and ShardDataset(syn)[7]["meta"]["index"] == 7
    assert json.loads(json.dumps(idx.record(5))) == idx.record(5)
