"""extract: verify first, refuse zip slip / absolute / drive-letter / symlink members and bombs, idempotent."""
from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from _synthetic import write_synthetic_dataset
from eva_helpers.data import formats
from eva_helpers.atomic import sha256_file
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.errors import IntegrityError
from eva_helpers.data.extract import MARKER, UnsafeArchiveError, extract_dataset
from eva_helpers.atomic import TMP_PREFIX


@pytest.fixture()
def syn(tmp_path):
    return write_synthetic_dataset(tmp_path / "ds", n_bg=2, n_fg=2, positions=2, size=32, shard_size=4)


def _nothing_left(parent: Path, target: Path) -> bool:
    return not target.exists() and not any(p.name.startswith(TMP_PREFIX) for p in parent.iterdir())


def _add_member(ds: Path, info: zipfile.ZipInfo | str, data: bytes, shard: int = 1) -> None:
    """Append a member to a shard and refresh the manifest's checksum, so only the member check can refuse it."""
    path = ds / formats.shard_name(shard)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(info, data)
    m = formats.read_manifest(ds)
    m["shards"][shard].update(sha256=sha256_file(path), bytes=path.stat().st_size)
    formats.write_manifest(ds, m)


def test_extracts_everything_once(syn, tmp_path):
    target = extract_dataset(syn, tmp_path / "out", progress=False)
    n = len(ShardDataset(syn))
    for kind in ("fg_bg", "mask", "depth"):
        assert len(list((target / kind).iterdir())) == n
    assert len(list((target / "bg").iterdir())) == 2 and (target / MARKER).is_file()
    assert (target / "fg_bg" / "00000003.jpg").read_bytes() == ShardDataset(syn)._read(
        syn / formats.shard_name(0), "fg_bg/00000003.jpg")
    mtime = (target / MARKER).stat().st_mtime_ns
    assert extract_dataset(syn, target, progress=False) == target and (target / MARKER).stat().st_mtime_ns == mtime


@pytest.mark.parametrize("name,what", [("../evil.txt", "zip slip"), ("fg_bg/../../evil.txt", "zip slip"),
                                       ("/etc/evil.txt", "absolute"), ("C:/evil.txt", "drive letter"),
                                       ("C:evil.txt", "drive letter")])
def test_escaping_members_are_refused(syn, tmp_path, name, what):
    _add_member(syn, name, b"pwned")
    with pytest.raises(UnsafeArchiveError, match=what):
        extract_dataset(syn, tmp_path / "out", progress=False)
    assert _nothing_left(tmp_path, tmp_path / "out") and not (tmp_path / "evil.txt").exists()


def test_symlink_member_is_refused(syn, tmp_path):
    info = zipfile.ZipInfo("fg_bg/link.jpg")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    _add_member(syn, info, b"/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        extract_dataset(syn, tmp_path / "out", progress=False)
    assert _nothing_left(tmp_path, tmp_path / "out")


def test_zip_bomb_is_refused(syn, tmp_path):
    info = zipfile.ZipInfo("fg_bg/bomb.bin")
    info.compress_type = zipfile.ZIP_DEFLATED
    _add_member(syn, info, b"\0" * (8 << 20))  # 8 MB of zeros deflate ~1000x
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        extract_dataset(syn, tmp_path / "out", progress=False)
    assert _nothing_left(tmp_path, tmp_path / "out")
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):  # a total-size cap, too
        extract_dataset(syn, tmp_path / "out", max_total=1 << 20, max_ratio=1e9, progress=False)
    assert _nothing_left(tmp_path, tmp_path / "out")


def test_truncated_or_mismatched_shard_is_refused_before_extracting(syn, tmp_path):
    shard = syn / formats.shard_name(0)
    good = shard.read_bytes()
    shard.write_bytes(good[:-50])
    with pytest.raises(IntegrityError, match=r"shard-00000.zip: .*truncated"):
        extract_dataset(syn, tmp_path / "out", progress=False)
    assert _nothing_left(tmp_path, tmp_path / "out")
    shard.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])  # same size, one bit flipped
    with pytest.raises(IntegrityError, match="sha256"):
        extract_dataset(syn, tmp_path / "out", progress=False)
    assert _nothing_left(tmp_path, tmp_path / "out")


def test_reading_a_truncated_shard_is_a_clear_error(syn):
    shard = syn / formats.shard_name(1)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(IntegrityError, match="shard-00001.zip"):
        ShardDataset(syn)


def test_refuses_a_foreign_non_empty_target(syn, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(Exception, match="not empty"):
        extract_dataset(syn, out, progress=False)
    assert (out / "mine.txt").read_text() == "keep me"
    shutil.rmtree(out)


# ---- issue 11 item 7: total expansion, bounded reads, clear errors ------------------------------------------------
def _bomb_message_ok(e: pytest.ExceptionInfo, archive: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg and archive in msg and "zip bomb" in msg
    assert "max_ratio" in msg or "max_total" in msg  # says what to do when the archive is trusted


def test_many_small_members_that_expand_together_are_a_bomb(syn, tmp_path):
    """Each member is under the single-member threshold; the archive as a whole expands ~500x."""
    for j in range(24):
        info = zipfile.ZipInfo(f"fg_bg/pad{j:02d}.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        _add_member(syn, info, b"\0" * (512 << 10))  # 512 KiB of zeros deflate to ~0.5 KB
    with pytest.raises(UnsafeArchiveError) as e:
        extract_dataset(syn, tmp_path / "out", progress=False)
    _bomb_message_ok(e, "shard-00001.zip")
    assert _nothing_left(tmp_path, tmp_path / "out")


def test_the_whole_archive_ratio_is_checked_not_only_large_members(syn):
    from eva_helpers.data.extract import check_archive

    for j in range(8):
        info = zipfile.ZipInfo(f"fg_bg/pad{j}.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        _add_member(syn, info, b"\0" * (256 << 10))
    with pytest.raises(UnsafeArchiveError) as e:
        check_archive(syn / formats.shard_name(1), max_ratio=10)
    _bomb_message_ok(e, "shard-00001.zip")
    assert check_archive(syn / formats.shard_name(0), max_ratio=10) > 0  # stored JPEG/PNG members: ratio ~1


def test_bomb_messages_say_what_to_do(syn, tmp_path):
    info = zipfile.ZipInfo("fg_bg/bomb.bin")
    info.compress_type = zipfile.ZIP_DEFLATED
    _add_member(syn, info, b"\0" * (8 << 20))
    with pytest.raises(UnsafeArchiveError) as e:
        extract_dataset(syn, tmp_path / "out", progress=False)
    _bomb_message_ok(e, "shard-00001.zip")
    with pytest.raises(UnsafeArchiveError) as e:
        extract_dataset(syn, tmp_path / "out", max_total=1 << 20, max_ratio=1e9, progress=False)
    _bomb_message_ok(e, "zip")


def _understate_size(path: Path, member: str, declared: int) -> None:
    """Rewrite the central directory's uncompressed size of `member` (its bytes and CRC stay those of the real data)."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        n = int.from_bytes(data[pos + 28:pos + 30], "little")
        if bytes(data[pos + 46:pos + 46 + n]) == name:
            data[pos + 24:pos + 28] = declared.to_bytes(4, "little")
            break
        pos = data.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(data))


def test_a_member_expanding_past_its_declared_size_is_refused(syn, tmp_path):
    info = zipfile.ZipInfo("fg_bg/liar.bin")
    info.compress_type = zipfile.ZIP_DEFLATED
    _add_member(syn, info, b"\1" * 70_000)
    shard = syn / formats.shard_name(1)
    _understate_size(shard, "fg_bg/liar.bin", 1000)
    m = formats.read_manifest(syn)
    m["shards"][1].update(sha256=sha256_file(shard), bytes=shard.stat().st_size)
    formats.write_manifest(syn, m)
    with pytest.raises(UnsafeArchiveError) as e:
        extract_dataset(syn, tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "shard-00001.zip" in msg and "fg_bg/liar.bin" in msg
    assert _nothing_left(tmp_path, tmp_path / "out")


def test_a_member_name_given_twice_is_a_clear_error(syn, tmp_path):
    first = zipfile.ZipFile(syn / formats.shard_name(0)).namelist()[0]
    _add_member(syn, first, b"\xff\xd8\xff not the same bytes")  # shard 1 repeats a member of shard 0
    with pytest.raises(UnsafeArchiveError) as e:
        extract_dataset(syn, tmp_path / "out", progress=False)
    assert first in str(e.value) and "\n" not in str(e.value)
    assert _nothing_left(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("name", ["fg_bg\\..\\..\\evil.txt", "\\evil.txt", "fg_bg\\evil.txt", "fg_bg//evil.txt",
                                  "fg_bg/./evil.txt"])
def test_backslashes_and_odd_components_are_refused(syn, tmp_path, name):
    _add_member(syn, name, b"pwned")
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        extract_dataset(syn, tmp_path / "out", progress=False)
    assert _nothing_left(tmp_path, tmp_path / "out") and not (tmp_path / "evil.txt").exists()


def test_not_enough_disk_space_is_said_before_extracting(syn, tmp_path, monkeypatch):
    import collections

    from eva_helpers.data import extract
    from eva_helpers.errors import EvaError

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(EvaError, match="needs .* GB free") as e:
        extract_dataset(syn, tmp_path / "out", progress=False)
    assert "\n" not in str(e.value)
    assert _nothing_left(tmp_path, tmp_path / "out")
