"""Verified reads: one tamper test per kind of damage; each ends in a one-line IntegrityError naming the file."""
from __future__ import annotations

import json
import os
import shutil
import zipfile

import numpy as np
import pytest

from _synthetic import write_synthetic_dataset
from eva_helpers.data import formats
from eva_helpers.atomic import sha256_file
from eva_helpers.data.dataset import ShardDataset, make_splits
from eva_helpers.errors import EvaError, IntegrityError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def syn(tmp_path):
    return write_synthetic_dataset(tmp_path / "ds", n_bg=4, n_fg=2, positions=2, size=32, shard_size=8)


def _rewrite_zip(path, replace: dict[str, bytes]) -> None:
    """Rewrite a zip in the dataset's member order, some members' bytes replaced (what an editor of a shard does)."""
    with zipfile.ZipFile(path) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members:
            formats.zip_write(zf, n, replace.get(n, data))


def _fix_manifest(ds_dir, file: str) -> None:
    """Make the manifest agree with an edited file (a consistent tamper: only content checks can catch it)."""
    m = json.loads((ds_dir / formats.MANIFEST).read_text())
    for e in m["shards"] + [m["backgrounds"]]:
        if e["file"] == file:
            e["sha256"], e["bytes"] = sha256_file(ds_dir / file), (ds_dir / file).stat().st_size
    formats.write_manifest(ds_dir, m)


def _one_line(err: pytest.ExceptionInfo, name: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and name in msg, msg


def test_member_replaced_by_another_valid_image(syn):
    ShardDataset(syn)  # verified once and recorded: the tamper below must still be caught
    shard = syn / formats.shard_name(0)
    with zipfile.ZipFile(shard) as zf:
        other = zf.read(formats.member("fg_bg", formats.sample_id(1)))
    _rewrite_zip(shard, {formats.member("fg_bg", formats.sample_id(0)): other})
    with pytest.raises(IntegrityError) as e:
        ShardDataset(syn)
    _one_line(e, "shard-00000.zip")


def test_background_swapped_inside_backgrounds_zip(syn):
    ShardDataset(syn)
    bgz = syn / formats.BACKGROUNDS
    with zipfile.ZipFile(bgz) as zf:
        other = zf.read(formats.member("bg", "bg001"))
    _rewrite_zip(bgz, {formats.member("bg", "bg000"): other})
    with pytest.raises(IntegrityError) as e:
        make_splits(syn)
    _one_line(e, "backgrounds.zip")


def test_edited_index_jsonl(syn):
    shard = syn / formats.shard_name(1)
    with zipfile.ZipFile(shard) as zf:
        rows = formats.read_jsonl(zf.read(formats.INDEX))
    rows[0]["bg_id"] = "bg003"  # a plausible edit: another existing background
    _rewrite_zip(shard, {formats.INDEX: formats.jsonl_bytes(rows)})
    with pytest.raises(IntegrityError) as e:
        ShardDataset(syn)
    _one_line(e, "shard-00001.zip")
    rows[0]["bg_id"], rows[0]["index"] = "bg000", 0  # consistent with the manifest's hash, not with its ranges
    _rewrite_zip(shard, {formats.INDEX: formats.jsonl_bytes(rows)})
    _fix_manifest(syn, formats.shard_name(1))
    with pytest.raises(IntegrityError, match="starts at 8") as e:
        ShardDataset(syn)
    _one_line(e, "shard-00001.zip")


def test_wrong_sha256_in_manifest(syn):
    m = json.loads((syn / formats.MANIFEST).read_text())
    m["shards"][1]["sha256"] = "0" * 64
    formats.write_manifest(syn, m)
    with pytest.raises(IntegrityError) as e:
        ShardDataset(syn)
    _one_line(e, "shard-00001.zip")


def test_member_of_another_size(syn):
    shard = syn / formats.shard_name(0)
    big = formats.encode_mask(np.zeros((40, 40), np.uint8))
    _rewrite_zip(shard, {formats.member("mask", formats.sample_id(3)): big})
    _fix_manifest(syn, formats.shard_name(0))  # hashes agree: only the shape check can tell
    ds = ShardDataset(syn)
    ds[2]  # its neighbours still read
    with pytest.raises(IntegrityError) as e:
        ds[3]
    _one_line(e, "mask/00000003.png")
    assert "shard-00000.zip" in str(e.value) and "40x40" in str(e.value)


def test_missing_shard(syn):
    (syn / formats.shard_name(1)).unlink()
    with pytest.raises(IntegrityError) as e:
        ShardDataset(syn)
    _one_line(e, "shard-00001.zip")
    assert "fetch" in str(e.value)


def test_incomplete_build_refused_unless_asked(syn):
    m = json.loads((syn / formats.MANIFEST).read_text())
    m["complete"], m["counts"]["shards"] = False, 5
    m["shards"] = m["shards"][:1]
    formats.write_manifest(syn, m)
    with pytest.raises(IntegrityError) as e:
        ShardDataset(syn)
    _one_line(e, "manifest.json")
    assert "partial=True" in str(e.value) and "1 of 5" in str(e.value)
    with pytest.raises(IntegrityError):
        make_splits(syn)
    ds = ShardDataset(syn, partial=True)
    assert len(ds) == 8 and ds[7]["meta"]["index"] == 7
    assert sum(make_splits(syn, partial=True)["info"]["counts"].values()) == 8


def test_member_changed_in_place_after_verification_is_caught_on_read(syn):
    ds = ShardDataset(syn)
    shard = syn / formats.shard_name(0)
    off, size, _ = ds.columns.member(5, "fg_bg")
    st = shard.stat()
    with open(shard, "r+b") as f:  # same size, bytes flipped inside the member, mtime put back
        f.seek(off + size // 2)
        b = f.read(1)
        f.seek(off + size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(IntegrityError) as e:
        ds[5]
    _one_line(e, "fg_bg/00000005.jpg")
    with pytest.raises(IntegrityError):  # a new open hashes again: the ctime changed with the write
        ShardDataset(syn)


def test_verification_is_recorded_and_not_repeated(syn, monkeypatch):
    calls = []
    import eva_helpers.data.verify as verify

    orig = verify.sha256_file
    monkeypatch.setattr(verify, "sha256_file", lambda p: calls.append(p) or orig(p))
    ShardDataset(syn)
    first = len(calls)
    assert first >= 1  # backgrounds.zip at least (the shards were hashed while the index was rebuilt)
    calls.clear()
    ShardDataset(syn)
    make_splits(syn)
    assert calls == []
    os.utime(syn / formats.shard_name(1))  # touched: the record no longer vouches for it
    ShardDataset(syn)
    assert [p.name for p in calls] == ["shard-00001.zip"]


def test_worker_error_names_the_shard(syn):
    """A damaged member read inside a DataLoader worker still surfaces as an EvaError naming the file."""
    from eva_helpers.data.loaders import make_loader

    shard = syn / formats.shard_name(0)
    _rewrite_zip(shard, {formats.member("depth", formats.sample_id(2)): b"not a png"})
    _fix_manifest(syn, formats.shard_name(0))
    ds = ShardDataset(syn, indices=[2])
    batches = iter(make_loader(ds, 1, num_workers=1))
    try:
        with pytest.raises(EvaError, match="depth/00000002.png"):
            next(batches)
    finally:  # stop the worker now: left to the garbage collector, torch's shutdown waits 5 s for it in a later test
        batches._shutdown_workers()


def test_read_only_and_packaged_datasets_are_never_written(syn, tmp_path):
    ro = tmp_path / "ro"
    shutil.copytree(syn, ro)
    before = sorted(p.relative_to(ro) for p in ro.rglob("*"))
    for p in [ro, ro / "shards"]:
        p.chmod(0o555)
    try:
        ds = ShardDataset(ro)
        assert ds.columns.path is not None and (tmp_path / "cache") in ds.columns.path.parents  # rebuilt in the cache
        assert len(ds) == 16 and ds[3]["meta"]["index"] == 3
    finally:
        for p in [ro, ro / "shards"]:
            p.chmod(0o755)
    assert sorted(p.relative_to(ro) for p in ro.rglob("*")) == before


@pytest.mark.parametrize("text", ["[1, 2]", '{"schema": "eva-dataset/1", "shards": {"a": 1}}',
                                  '{"schema": "eva-dataset/1", "shards": [{"file": "shards/x.zip", "samples": "3"}]}',
                                  '{"schema": "eva-dataset/1", "shards": [{"file": "../../etc/passwd"}]}'])
def test_manifest_of_the_wrong_shape_is_one_line(syn, text):
    (syn / formats.MANIFEST).write_text(text)
    with pytest.raises(EvaError) as e:
        ShardDataset(syn)
    _one_line(e, "manifest.json")
