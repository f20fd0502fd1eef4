"""Safe, idempotent extraction of a dataset's zips to plain folders (for users who want files, not shards).

Order: verify every zip against manifest.json (size + sha256, data/verify.py), check every member name (paths.path_problem: no '..',
absolute, drive-letter or backslash paths) and no symlinks, check the sizes the archives declare (all members of all
archives together against one budget, the expansion ratio of each archive as a whole and of each large member) and the
free disk space, then extract into a temp folder beside the target, each member read bounded by its declared size and
checked against its CRC, and rename it into place with a completion marker. A refused or killed extraction leaves no
target folder behind; a finished one is skipped next time.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

from eva_helpers.atomic import TMP_PREFIX, atomic_write_text, fsync_dir, sha256_file
from eva_helpers.data import formats
from eva_helpers.data.verify import VerifyRecord, verify_listed
from eva_helpers.errors import EvaError, IntegrityError, WriteError, os_error_line
from eva_helpers.paths import path_problem

MARKER = ".eva-extracted.json"
# The limits, in one place. Real datasets are far inside them: a 400k-sample dataset is ~20 GB in ~400 shards of ~3000
# stored (ratio ~1) JPEG/PNG members; backgrounds.zip holds ~100 stored PNGs.
MAX_TOTAL_BYTES = 64 << 30  # uncompressed, all archives of a dataset together
MAX_RATIO = 200.0  # uncompressed / compressed, of any large member and of each archive as a whole; deflated JSON ~10
RATIO_FLOOR = 1 << 20  # members and archives expanding to less than this are too small to be a bomb
MAX_MEMBERS = 1_000_000  # per archive
_CHUNK = 1 << 20
_TRUST = "if you trust this archive, pass larger max_total/max_ratio to extract_dataset; otherwise delete it and " \
         "fetch the dataset again"


class UnsafeArchiveError(EvaError):
    """A zip member would escape the target, is a link, or the archive is a zip bomb."""


def _check_member(zpath: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    problem = path_problem(name[:-1] if info.is_dir() else name)  # a folder entry ends with "/"
    if problem:
        raise UnsafeArchiveError(f"{zpath}: member {name!r} {problem} (zip slip guard); refusing to extract: delete "
                                 "the archive and fetch the dataset again")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"{zpath}: member {name!r} is a symbolic link; refusing to extract")


def check_archive(zpath: Path, max_total: int = MAX_TOTAL_BYTES, max_ratio: float = MAX_RATIO) -> int:
    """Raise UnsafeArchiveError for any unsafe member or a bomb; returns the total declared uncompressed size.

    A bomb is an archive whose members declare more than `max_total` bytes together, or that expands more than
    `max_ratio` times, as a whole or in one large member (many small members add up as well as one big one).
    """
    try:
        with zipfile.ZipFile(zpath) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise IntegrityError(f"{zpath}: not a valid zip ({e}; truncated?); fetch it again") from None
    if len(infos) > MAX_MEMBERS:
        raise UnsafeArchiveError(f"{zpath}: {len(infos)} members, over the limit {MAX_MEMBERS}: zip bomb? refusing; "
                                 "delete it and fetch the dataset again")
    total = 0
    for info in infos:
        _check_member(zpath, info)
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and ratio > max_ratio:
            raise UnsafeArchiveError(f"{zpath}: member {info.filename!r} expands {ratio:.0f}x (limit "
                                     f"max_ratio={max_ratio:.0f}x): zip bomb? refusing; {_TRUST}")
    size = zpath.stat().st_size
    ratio = total / max(size, 1)
    if total > RATIO_FLOOR and ratio > max_ratio:
        raise UnsafeArchiveError(f"{zpath}: {len(infos)} members expand {ratio:.0f}x together ({total} bytes from "
                                 f"{size}; limit max_ratio={max_ratio:.0f}x): zip bomb? refusing; {_TRUST}")
    if total > max_total:
        raise UnsafeArchiveError(f"{zpath}: {total} bytes uncompressed, over the limit max_total={max_total} for the "
                                 f"whole dataset: zip bomb? refusing; {_TRUST}")
    return total


def _verify(dataset_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """Every zip checked against manifest.json as `open_dataset` checks them (one record: hashed once); their paths."""
    record = VerifyRecord(dataset_dir)
    try:
        verify_listed(dataset_dir, manifest, manifest.get("shards", []), record)
    finally:
        record.save()
    return [dataset_dir / formats.BACKGROUNDS] + [dataset_dir / s["file"] for s in manifest.get("shards", [])]


def _extract_one(zpath: Path, dest: Path) -> None:
    """Stream every member out, each read bounded by its declared size (checked by `check_archive`; headers can lie)."""
    with zipfile.ZipFile(zpath) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            rel = os.path.normpath(info.filename)  # names were checked; this is a second belt
            if rel.startswith(("..", "/")) or os.path.isabs(rel):
                raise UnsafeArchiveError(f"{zpath}: member {info.filename!r} escapes the target; refusing")
            _extract_member(zf, info, dest / rel, zpath)


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path, zpath: Path) -> None:
    name, left = info.filename, info.file_size
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as fin, open(out, "xb") as fout:  # "x": a member given twice is refused
            while chunk := fin.read(min(_CHUNK, left + 1)):  # never more than declared (+1 byte to notice)
                left -= len(chunk)
                if left < 0:
                    raise UnsafeArchiveError(f"{zpath}: member {name!r} expands past its declared {info.file_size} "
                                             "bytes: zip bomb? refusing; delete it and fetch the dataset again")
                fout.write(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:  # bad CRC: the data is not what the header declares
        raise UnsafeArchiveError(f"{zpath}: member {name!r} does not match its declared size and CRC "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__}): damaged or a zip bomb; "
                                 "refusing: delete the archive and fetch the dataset again") from None
    except (FileExistsError, IsADirectoryError, NotADirectoryError):
        raise UnsafeArchiveError(f"{zpath}: member {name!r} is given twice in the dataset (or clashes with a folder "
                                 "of that name); refusing: delete the archive and fetch the dataset again") from None
    except OSError as e:
        raise WriteError(f"cannot write {os_error_line(e, out)}") from None
    if left:
        raise UnsafeArchiveError(f"{zpath}: member {name!r} is {info.file_size - left} bytes, its header declares "
                                 f"{info.file_size}: damaged; refusing: delete it and fetch the dataset again")


def _check_space(target: Path, needed: int) -> None:
    where = target
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if needed > free:
        raise EvaError(f"{target}: extracting needs {needed / 1e9:.2f} GB, {where} has {free / 1e9:.2f} GB free; "
                       "free some space or choose a target folder on another disk")


def extract_dataset(dataset_dir: str | os.PathLike, target_dir: str | os.PathLike, *,
                    max_total: int = MAX_TOTAL_BYTES, max_ratio: float = MAX_RATIO, progress: bool = True) -> Path:
    """Extract backgrounds.zip and every shard into `target_dir` (bg/, bg_depth/, fg_bg/, mask/, depth/).

    Idempotent: a target with a completion marker for the same manifest is returned as is.
    """
    from tqdm.auto import tqdm

    src, target = Path(dataset_dir), Path(target_dir)
    manifest = formats.read_manifest(src)
    msha = sha256_file(src / formats.MANIFEST)
    marker = target / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("manifest_sha256") == msha:
                return target
        except ValueError:
            pass
        raise EvaError(f"{target}: holds a different or unfinished extraction; delete it or choose another folder")
    if target.exists() and any(target.iterdir()):
        raise EvaError(f"{target}: exists and is not empty; delete it or choose another folder")
    zips = _verify(src, manifest)  # verify first: never extract a corrupt download
    budget = max_total
    for z in zips:  # the budget is for the whole dataset: what one archive declares, the next one cannot
        budget -= check_archive(z, budget, max_ratio)  # raises on the first unsafe member or bomb
    _check_space(target, max_total - budget)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + "extract-", dir=target.parent))
    try:
        for z in tqdm(zips, desc="extract", unit="zip", disable=not progress):
            sub = tmp / ("shard-index" if z.name != formats.BACKGROUNDS else "bg-index")
            _extract_one(z, tmp)
            idx = tmp / formats.INDEX
            if idx.exists():  # every zip has an index.jsonl: keep each, named after its zip
                sub.mkdir(exist_ok=True)
                os.replace(idx, sub / (z.stem + ".jsonl"))
        atomic_write_text(tmp / MARKER, json.dumps({"manifest_sha256": msha, "zips": len(zips)}) + "\n")
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
