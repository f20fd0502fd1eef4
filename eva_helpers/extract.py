"""Safe, idempotent extraction of a dataset's zips to plain folders (for users who want files, not shards).

Order: verify every zip against manifest.json (size + sha256), check every member (no path escaping the target, no
absolute or drive-letter paths, no symlinks, no absurd sizes or compression ratios), then extract into a temp folder
beside the target and rename it into place with a completion marker. A refused or killed extraction leaves no
target folder behind; a finished one is skipped next time.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from . import formats
from .atomic import TMP_PREFIX, atomic_write_text, fsync_dir, sha256_file
from .errors import EvaError, IntegrityError

MARKER = ".eva-extracted.json"
MAX_TOTAL_BYTES = 64 << 30  # 64 GiB uncompressed: far above the 400k-sample dataset
MAX_RATIO = 200.0  # JPEG/PNG members are stored, ratio ~1; deflated JSON ~10
MAX_MEMBERS = 1_000_000
_CHUNK = 1 << 20


class UnsafeArchiveError(EvaError):
    """A zip member would escape the target, is a link, or the archive is a zip bomb."""


def _check_member(zpath: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")):
        raise UnsafeArchiveError(f"{zpath}: member {name!r} has an absolute path; refusing to extract")
    if ":" in name:  # C:foo, C:\\foo, alternate data streams
        raise UnsafeArchiveError(f"{zpath}: member {name!r} has a drive letter or ':'; refusing to extract")
    if ".." in p.parts:
        raise UnsafeArchiveError(f"{zpath}: member {name!r} escapes the target folder (zip slip); refusing")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"{zpath}: member {name!r} is a symbolic link; refusing to extract")


def check_archive(zpath: Path, max_total: int = MAX_TOTAL_BYTES, max_ratio: float = MAX_RATIO) -> int:
    """Raise UnsafeArchiveError for any unsafe member or a bomb; returns the total uncompressed size."""
    try:
        with zipfile.ZipFile(zpath) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile:
        raise IntegrityError(f"{zpath}: not a valid zip (truncated?); fetch it again") from None
    if len(infos) > MAX_MEMBERS:
        raise UnsafeArchiveError(f"{zpath}: {len(infos)} members, over the limit {MAX_MEMBERS}")
    total = 0
    for info in infos:
        _check_member(zpath, info)
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > 1 << 20 and ratio > max_ratio:
            raise UnsafeArchiveError(f"{zpath}: member {info.filename!r} expands {ratio:.0f}x "
                                     f"(limit {max_ratio:.0f}x): zip bomb? refusing")
    if total > max_total:
        raise UnsafeArchiveError(f"{zpath}: {total} bytes uncompressed, over the limit {max_total}: zip bomb? refusing")
    return total


def _verify(dataset_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    specs = list(manifest.get("shards", []))
    bg = manifest.get("backgrounds")
    zips: list[tuple[Path, dict]] = [(dataset_dir / formats.BACKGROUNDS, bg if isinstance(bg, dict) else {})]
    zips += [(dataset_dir / s["file"], s) for s in specs]
    for path, spec in zips:
        if not path.is_file():
            raise IntegrityError(f"{path}: missing; fetch the dataset again")
        if "bytes" in spec and path.stat().st_size != int(spec["bytes"]):
            raise IntegrityError(f"{path}: {path.stat().st_size} bytes, manifest says {spec['bytes']} "
                                 "(truncated?); fetch it again")
        if "sha256" in spec and sha256_file(path) != spec["sha256"]:
            raise IntegrityError(f"{path}: sha256 does not match manifest.json; fetch it again")
    return [p for p, _ in zips]


def _extract_one(zpath: Path, dest: Path, max_total: int) -> None:
    """Stream members out with a running size cap (header sizes can lie)."""
    with zipfile.ZipFile(zpath) as zf:
        written = 0
        for info in zf.infolist():
            if info.is_dir():
                continue
            rel = os.path.normpath(info.filename.replace("\\", "/"))  # names were checked; this is a second belt
            if rel.startswith(("..", "/")) or os.path.isabs(rel):
                raise UnsafeArchiveError(f"{zpath}: member {info.filename!r} escapes the target; refusing")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as fin, open(out, "xb") as fout:  # "x": a duplicate member name is refused
                while chunk := fin.read(_CHUNK):
                    written += len(chunk)
                    if written > max_total:
                        raise UnsafeArchiveError(f"{zpath}: expands past {max_total} bytes: zip bomb? refusing")
                    fout.write(chunk)


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
    for z in zips:
        budget -= check_archive(z, budget, max_ratio)  # raises on the first unsafe member or bomb
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + "extract-", dir=target.parent))
    try:
        for z in tqdm(zips, desc="extract", unit="zip", disable=not progress):
            sub = tmp / ("shard-index" if z.name != formats.BACKGROUNDS else "bg-index")
            _extract_one(z, tmp, max_total)
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
