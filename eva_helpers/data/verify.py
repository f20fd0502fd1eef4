"""Opening a dataset folder verified: its content identity, the one record of which files were hashed, the checks.

Verified opening (`open_dataset`): `complete: false` refused unless `partial=True`; every listed file must exist with
its recorded size; each file's sha256 is checked once and the result recorded in the local cache as (size, mtime_ns,
ctime_ns, inode, sha256), so a later open only stats the files, yet any rewrite (which changes the mtime or ctime) is
hashed again. The record lives in the cache rather than beside the data because the folder may be read-only, packaged
or on Drive (slow, late-syncing small writes), and because a record that travels with a copied folder would vouch for
bytes it never saw. The same record (`VerifyRecord`, `verify_file`) serves the build's resume, fetched files and
extraction.

The columnar index (columns.py) is the dataset's own `index.npz` when the build wrote one (the manifest holds its
sha256), else rebuilt once from the shards into the local cache, keyed by the dataset's content identity: a dataset
folder is never written to when it is opened. The index is cross-checked against the manifest through that identity.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from eva_helpers.atomic import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file
from eva_helpers.data import formats
from eva_helpers.data.columns import INDEX_FILE, INDEX_SCHEMA, ColumnarIndex, index_bytes, shard_columns, smallest
from eva_helpers.errors import BadInputError, EvaError, IntegrityError
from eva_helpers.paths import default_cache, path_problem


# ---- identity and the verification record ---------------------------------------------------------------------
def dataset_identity(manifest: dict[str, Any]) -> str:
    """Content identity of a dataset: sha256 over the backgrounds' and every shard's hash, size and sample range.

    Same bytes -> same identity wherever the folder lives (Drive, /content, another machine)."""
    bg = manifest.get("backgrounds") or {}
    body = {"backgrounds": bg.get("sha256"),
            "shards": [[e.get("file"), e.get("sha256"), e.get("bytes"), e.get("samples"), e.get("first_index")]
                       for e in manifest.get("shards", [])]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _prune(folder: Path, keep: int) -> None:
    """Keep the `keep` most recently written files of one of our cache folders (.verified, .index): tests and
    experiments open many short-lived datasets, and nothing else ever removes these records."""
    try:
        files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".npz")),
                       key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for p in files[keep:]:
            p.unlink()
    except OSError:
        pass


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class VerifyRecord:
    """Which files of one dataset folder were hashed, and what they looked like then (local cache, one JSON file)."""

    def __init__(self, data_dir: Path):
        self.dir = data_dir.resolve()
        key = hashlib.sha256(str(self.dir).encode()).hexdigest()[:24]
        self.path = default_cache() / ".verified" / f"{key}.json"
        try:
            rec = json.loads(self.path.read_text(encoding="utf-8"))
            self.files = rec["files"] if rec.get("dir") == str(self.dir) else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.files = {}
        self.dirty = False

    def ok(self, rel: str, st: os.stat_result, sha: str) -> bool:
        return self.files.get(rel) == _stamp(st) + [sha]

    def add(self, rel: str, st: os.stat_result, sha: str) -> None:
        self.files[rel] = _stamp(st) + [sha]
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            new = not self.path.exists()
            atomic_write_text(self.path, json.dumps({"dir": str(self.dir), "files": self.files}) + "\n")
            self.dirty = False
            if new:
                _prune(self.path.parent, keep=256)
        except OSError as e:  # a read-only or full cache costs a re-hash next time, nothing else
            warnings.warn(f"{self.path}: cannot record verified files ({e}); they will be hashed again next time")


def verify_file(data_dir: Path, entry: dict[str, Any], record: VerifyRecord | None, what: str) -> Path:
    """Check one manifest-listed file: present, recorded size, sha256 (hashed only when the record cannot vouch)."""
    rel = entry.get("file")
    problem = path_problem(rel)  # the file must stay inside the dataset folder
    if problem:
        raise BadInputError(f"{data_dir / formats.MANIFEST}: {what} entry has a bad file name {rel!r} ({problem}); "
                            "the manifest is damaged: fetch or rebuild the dataset")
    path = data_dir / rel
    try:
        st = path.stat()
    except OSError:
        raise IntegrityError(f"{path}: {what} listed in manifest.json is missing; fetch the dataset again "
                             "(`eva fetch`) or finish the build with the same `eva build` command") from None
    if entry.get("bytes") is not None and st.st_size != int(entry["bytes"]):
        raise IntegrityError(f"{path}: {st.st_size} bytes, manifest.json says {entry['bytes']} (truncated or "
                             "replaced); delete it and fetch or rebuild the dataset")
    sha = entry.get("sha256")
    if record is not None and sha and not record.ok(rel, st, sha):
        if sha256_file(path) != sha:
            raise IntegrityError(f"{path}: sha256 does not match manifest.json (damaged or modified); delete it and "
                                 "fetch or rebuild the dataset")
        record.add(rel, st, sha)
    return path


def is_verified(data_dir: Path, entry: dict[str, Any], record: VerifyRecord | None) -> bool:
    """Whether the file `entry` lists is there and matches it (hashed unless the record vouches for it): a resumed
    build or fetch keeps it, anything else is made again."""
    try:
        verify_file(data_dir, entry, record, str(entry.get("file")))
    except EvaError:
        return False
    return True


def build_columns(data_dir: Path, manifest: dict[str, Any], record: VerifyRecord | None,
                  progress: bool = False) -> dict[str, np.ndarray]:
    """All columns of a dataset, read from its shards (each one hashed against the manifest on the way)."""
    from tqdm.auto import tqdm

    parts: list[dict[str, np.ndarray]] = []
    for k, entry in enumerate(tqdm(manifest.get("shards", []), desc="index", unit="shard", disable=not progress)):
        path = verify_file(data_dir, entry, None, f"shard {k}")  # present, right size
        st = path.stat()
        data = path.read_bytes()
        sha = entry.get("sha256")
        if record is not None and sha and not record.ok(entry["file"], st, sha):  # hashed while we hold the bytes
            if sha256_bytes(data) != sha:
                raise IntegrityError(f"{path}: sha256 does not match manifest.json (damaged or modified); delete it "
                                     "and fetch or rebuild the dataset")
            record.add(entry["file"], st, sha)
        parts.append(shard_columns(data, entry, k, path))
    parts = [p for p in parts if len(p["shard"])]
    keys = sorted({key for p in parts for key in p})
    cols: dict[str, np.ndarray] = {}
    for key in keys:
        if any(key not in p for p in parts):
            raise IntegrityError(f"{data_dir}: shards disagree on the index.jsonl field {key[2:]!r}")
        chunks = [p[key] for p in parts]
        kinds = {c.dtype.kind for c in chunks}
        if len(kinds) > 1 and not kinds <= {"i", "u", "f"}:  # ints and floats mix (JSON 0 vs 0.5); nothing else
            raise IntegrityError(f"{data_dir}: shards disagree on the type of the index.jsonl field {key[2:]!r}")
        col = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        if col.dtype.kind == "U":
            table, codes = np.unique(col, return_inverse=True)  # codepoint order, as Python's sorted()
            cols["t_" + key[2:]] = table
            col = codes.reshape(-1)
        cols[key] = smallest(col)
    if "shard" not in cols:
        cols["shard"] = np.zeros(0, np.uint8)
    return cols


# ---- opening a dataset -----------------------------------------------------------------------------------------
def _cached_index_path(identity: str) -> Path:
    return default_cache() / ".index" / f"{identity[:32]}.npz"


def _load_checked(path: Path, identity: str, manifest: dict, where: str) -> ColumnarIndex:
    idx = ColumnarIndex.load(path)
    n = sum(int(e.get("samples", 0)) for e in manifest.get("shards", []))
    if idx.meta.get("identity") != identity or idx.n != n:
        raise IntegrityError(f"{path}: {where} was built for other shards than manifest.json lists (stale); delete "
                             "it and it is rebuilt from the shards")
    return idx


def open_dataset(data_dir: str | os.PathLike, *, partial: bool = False, verify: bool = True,
                 progress: bool = False) -> tuple[dict[str, Any], ColumnarIndex]:
    """(manifest, columnar index) of a verified dataset folder; see the module docstring for what is checked."""
    data_dir = Path(data_dir)
    manifest = formats.read_manifest(data_dir)
    mpath = data_dir / formats.MANIFEST
    shards = manifest.get("shards", [])
    if not isinstance(shards, list) or not all(isinstance(e, dict) for e in shards):
        raise BadInputError(f"{mpath}: 'shards' is not a list of entries; the manifest is damaged: fetch or rebuild")
    for k, e in enumerate(shards):
        if not (isinstance(e.get("samples", 0), int) and isinstance(e.get("bytes", 0), int)
                and isinstance(e.get("first_index", 0), int) and isinstance(e.get("sha256", ""), str)):
            raise BadInputError(f"{mpath}: shard entry {k} has values of the wrong type; the manifest is damaged: "
                                "fetch or rebuild the dataset")
    if manifest.get("complete") is False and not partial:
        total = (manifest.get("counts") or {}).get("shards", "?")
        raise IntegrityError(f"{mpath}: the build is not complete ({len(shards)} of {total} shards); finish it by "
                             "running the same `eva build` again, or open it with partial=True to use what is there")
    record = VerifyRecord(data_dir) if verify else None
    entry = manifest.get("index")
    own_index = isinstance(entry, dict) and (data_dir / str(entry.get("file", ""))).is_file()
    try:
        if own_index:  # files first: a damaged shard is named as such, not as a "stale" index
            verify_listed(data_dir, manifest, shards, record)
        index = _locate_index(data_dir, manifest, record, verify, progress)
        if not own_index:  # a rebuild above hashed the shards while reading them: a stat each here
            verify_listed(data_dir, manifest, shards, record)
    finally:
        if record is not None:
            record.save()
    return manifest, index


def verify_listed(data_dir: Path, manifest: dict, shards: list[dict], record: VerifyRecord | None) -> None:
    """Every shard and backgrounds.zip against the manifest (size always; sha256 when the record cannot vouch)."""
    for k, entry in enumerate(shards):
        verify_file(data_dir, entry, record, f"shard {k}")
    if isinstance(manifest.get("backgrounds"), dict):
        verify_file(data_dir, manifest["backgrounds"], record, "backgrounds")
    elif not (data_dir / formats.BACKGROUNDS).is_file():
        raise IntegrityError(f"{data_dir / formats.BACKGROUNDS}: missing; fetch or rebuild the dataset")


def _locate_index(data_dir: Path, manifest: dict, record: VerifyRecord | None, verify: bool,
                  progress: bool) -> ColumnarIndex:
    """The dataset's own index.npz (verified), else the cached rebuild for this identity, else a fresh rebuild."""
    identity = dataset_identity(manifest)
    entry = manifest.get("index")
    if isinstance(entry, dict) and (data_dir / str(entry.get("file", ""))).is_file():
        path = verify_file(data_dir, entry, record, "columnar index")
        return _load_checked(path, identity, manifest, "the columnar index")
    cached = _cached_index_path(identity)
    side = cached.with_suffix(".json")
    if cached.is_file():
        try:
            info = json.loads(side.read_text(encoding="utf-8"))
            crec = VerifyRecord(cached.parent) if verify else None
            verify_file(cached.parent, {"file": cached.name, "sha256": info["sha256"], "bytes": info["bytes"]},
                        crec, "cached columnar index")
            if crec is not None:
                crec.save()
            return _load_checked(cached, identity, manifest, "the cached columnar index")
        except (OSError, ValueError, KeyError, TypeError, IntegrityError) as e:
            warnings.warn(f"{cached}: cached index unusable ({str(e).splitlines()[0]}); rebuilding it")
    cols = build_columns(data_dir, manifest, record, progress=progress)
    data = index_bytes(cols, identity)
    try:
        sha = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(cached, data)
        atomic_write_text(side, json.dumps({"sha256": sha, "bytes": len(data),
                                            "dataset": str(data_dir.resolve())}) + "\n")
        _prune(cached.parent, keep=64)  # 32 indexes and their sidecars
        if verify:  # we hashed what we wrote: record it, so the next open only stats it
            crec = VerifyRecord(cached.parent)
            crec.add(cached.name, cached.stat(), sha)
            crec.save()
        return _load_checked(cached, identity, manifest, "the cached columnar index")
    except OSError as e:  # no writable cache: keep the columns in memory for this process
        warnings.warn(f"{cached}: cannot write the columnar index ({e}); keeping it in memory")
        meta = {"schema": INDEX_SCHEMA, "identity": identity, "samples": int(len(cols["shard"]))}
        return ColumnarIndex(cols, meta, None)


def write_index(data_dir: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write index.npz beside manifest.json (build time); returns the manifest's `index` entry (file, sha256, bytes).

    The builder has just written or verified every shard, so they are recorded as verified here too."""
    data_dir = Path(data_dir)
    record = VerifyRecord(data_dir)
    identity = dataset_identity(manifest)
    cols = build_columns(data_dir, manifest, record)
    data = index_bytes(cols, identity)
    atomic_write_bytes(data_dir / INDEX_FILE, data)
    entry = {"file": INDEX_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
             "identity": identity}
    record.add(INDEX_FILE, (data_dir / INDEX_FILE).stat(), entry["sha256"])
    record.save()
    return entry
