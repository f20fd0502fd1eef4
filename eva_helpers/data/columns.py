"""The columnar index: every sample's record as flat numpy columns in one memory-mapped file, and verified opening.

Why: parsing every shard's index.jsonl into dicts cost ~15 s and ~4.5 KB per sample at every open (1.8 GB at 400k
samples, copied into each DataLoader worker as reference counting dirtied the pages). Here a dataset's records are ~80
bytes per sample in `index.npz`, mapped read-only (pages are shared by the main process and its workers and only the
ones touched are resident), and a record dict is produced only when a sample is read.

File format: a standard `.npz` (np.load reads it anywhere) written by hand: members ZIP_STORED with a fixed date, each
`.npy` payload aligned to 64 bytes, so a column is `np.frombuffer` over one `mmap` of the file, no copy. Members:
`meta.npy` (uint8 JSON: schema, identity, n, key kinds), `r_<key>.npy` one per index.jsonl field (strings as codes
into `t_<key>.npy`), `shard.npy` (shard number), `m_<kind>_{off,len,crc}.npy` (data offset, size and CRC-32 of the
fg_bg/mask/depth members inside the shard, read with one `os.pread` each). `id` is not stored: the format fixes it to
`sample_id(index)`, and that is checked when the index is built.

Where it lives: written by `eva build` beside manifest.json (the manifest's `index` entry holds its sha256). Datasets
without one (older builds, the embedded sample) get it rebuilt once from the shards into the local cache, keyed by the
dataset's content identity: a dataset folder is never written to when it is opened (it may be read-only, packaged, on
Drive or not ours).

Verified opening (`open_dataset`): `complete: false` refused unless `partial=True`; every listed file must exist with
its recorded size; each file's sha256 is checked once and the result recorded in the local cache as (size, mtime_ns,
ctime_ns, inode, sha256), so a later open only stats the files, yet any rewrite (which changes the mtime or ctime) is
hashed again. The record lives in the cache rather than beside the data because the folder may be read-only, packaged
or on Drive (slow, late-syncing small writes), and because a record that travels with a copied folder would vouch for
bytes it never saw. The index is cross-checked against the manifest through the identity it was built for.
"""
from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from eva_helpers.data import formats
from eva_helpers.atomic import atomic_write_bytes, atomic_write_text
from eva_helpers.errors import BadInputError, IntegrityError

INDEX_FILE = "index.npz"
INDEX_SCHEMA = "eva-index/1"
KINDS = ("fg_bg", "mask", "depth")  # sample members, in zip order
_ALIGN = 64
_PAD_ID = 0xD935  # extra-field id used for alignment padding (as Android's zipalign)


# ---- identity and the verification record ---------------------------------------------------------------------
def dataset_identity(manifest: dict[str, Any]) -> str:
    """Content identity of a dataset: sha256 over the backgrounds' and every shard's hash, size and sample range.

    Same bytes -> same identity wherever the folder lives (Drive, /content, another machine)."""
    bg = manifest.get("backgrounds") or {}
    body = {"backgrounds": bg.get("sha256"),
            "shards": [[e.get("file"), e.get("sha256"), e.get("bytes"), e.get("samples"), e.get("first_index")]
                       for e in manifest.get("shards", [])]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _cache_root() -> Path:
    from eva_helpers.paths import default_cache

    return default_cache()


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
        self.path = _cache_root() / ".verified" / f"{key}.json"
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
    from eva_helpers.atomic import sha256_file
    from eva_helpers.paths import path_problem

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


# ---- building the columns from shards ---------------------------------------------------------------------------
def _member_table(data: bytes) -> dict[str, tuple[int, int, int]]:
    """name -> (data offset, size, crc32) of every member of a stored zip given as bytes."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            h = info.header_offset
            if data[h:h + 4] != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"bad local header for {info.filename}")
            n, e = struct.unpack_from("<HH", data, h + 26)
            out[info.filename] = (h + 30 + n + e, info.compress_size, info.CRC)
            if info.compress_type != zipfile.ZIP_STORED:
                out[info.filename] = (-1, info.compress_size, info.CRC)  # readable only through zipfile
    return out


def shard_columns(data: bytes, entry: dict[str, Any], k: int, where: Path) -> dict[str, np.ndarray]:
    """The columns of shard k from its bytes; the index.jsonl rows are cross-checked against the manifest entry."""
    try:
        table = _member_table(data)
    except (zipfile.BadZipFile, ValueError, struct.error) as e:
        raise IntegrityError(f"{where}: not a valid zip ({e}); delete it and fetch or rebuild the dataset") from None
    if formats.INDEX not in table or table[formats.INDEX][0] < 0:
        raise IntegrityError(f"{where}: member {formats.INDEX!r} missing; delete it and fetch or rebuild the dataset")
    off, size, _ = table[formats.INDEX]
    try:
        rows = formats.read_jsonl(data[off:off + size])
    except ValueError as e:
        raise IntegrityError(f"{where}: {formats.INDEX} is not valid JSON lines ({e})") from None
    if "samples" in entry and len(rows) != int(entry["samples"]):
        raise IntegrityError(f"{where}: index has {len(rows)} samples, manifest says {entry['samples']}")
    first = entry.get("first_index")
    keys = sorted(rows[0]) if rows else []
    cols: dict[str, np.ndarray] = {}
    for key in keys:
        if key == "id":
            continue
        try:
            col = np.array([r[key] for r in rows])
        except KeyError:
            raise IntegrityError(f"{where}: {formats.INDEX} rows do not all have the field {key!r}") from None
        if col.dtype.kind not in "biufU" or col.ndim != 1:
            raise IntegrityError(f"{where}: {formats.INDEX} field {key!r} holds values of an unsupported type")
        cols["r_" + key] = col
    if any(len(r) != len(keys) for r in rows):
        raise IntegrityError(f"{where}: {formats.INDEX} rows do not all have the same fields")
    idx = cols.get("r_index")
    if rows and (idx is None or idx.dtype.kind not in "iu"):
        raise IntegrityError(f"{where}: {formats.INDEX} rows have no integer 'index'")
    for j, r in enumerate(rows):
        if first is not None and int(r["index"]) != int(first) + j:
            raise IntegrityError(f"{where}: {formats.INDEX} row {j} has index {r['index']}, manifest says the shard "
                                 f"starts at {first}; the shard does not match manifest.json: fetch or rebuild it")
        if "id" in r and r["id"] != formats.sample_id(int(r["index"])):
            raise IntegrityError(f"{where}: {formats.INDEX} row {j} has id {r['id']!r} for index {r['index']}")
    for kind in KINDS:
        got = []
        for r in rows:
            name = formats.member(kind, formats.sample_id(int(r["index"])))
            m = table.get(name)
            if m is None or m[0] < 0:
                raise IntegrityError(f"{where}: member {name!r} missing (or compressed); fetch or rebuild the dataset")
            got.append(m)
        arr = np.array(got, dtype=np.int64).reshape(-1, 3)
        cols[f"m_{kind}_off"], cols[f"m_{kind}_len"], cols[f"m_{kind}_crc"] = arr[:, 0], arr[:, 1], arr[:, 2]
    cols["shard"] = np.full(len(rows), k, np.int64)
    return cols


def _smallest(col: np.ndarray) -> np.ndarray:
    """The same values in the smallest lossless dtype (ints by range, floats as float32 when exact)."""
    if col.dtype.kind in "iu" and col.size:
        lo, hi = int(col.min()), int(col.max())
        for dt in (np.uint8, np.uint16, np.uint32) if lo >= 0 else (np.int8, np.int16, np.int32):
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                return col.astype(dt)
        return col.astype(np.int64)
    if col.dtype.kind == "f":
        c32 = col.astype(np.float32)
        return c32 if np.array_equal(c32.astype(np.float64), col.astype(np.float64)) else col.astype(np.float64)
    return col


def build_columns(data_dir: Path, manifest: dict[str, Any], record: VerifyRecord | None,
                  progress: bool = False) -> dict[str, np.ndarray]:
    """All columns of a dataset, read from its shards (each one hashed against the manifest on the way)."""
    from tqdm.auto import tqdm

    from eva_helpers.atomic import sha256_bytes

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
        cols[key] = _smallest(col)
    if "shard" not in cols:
        cols["shard"] = np.zeros(0, np.uint8)
    return cols


# ---- the file: an aligned, stored .npz -------------------------------------------------------------------------
def index_bytes(cols: dict[str, np.ndarray], identity: str) -> bytes:
    """Byte-reproducible .npz of the columns plus a meta member (schema, identity, n)."""
    n = int(len(cols["shard"]))
    meta = {"schema": INDEX_SCHEMA, "identity": identity, "samples": n,
            "string_keys": sorted(k[2:] for k in cols if k.startswith("t_"))}
    members = {"meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8), **cols}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(members):
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(members[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=formats.ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            pad = -(buf.tell() + 30 + len(info.filename) + 4) % _ALIGN  # npy headers are 64-byte multiples too
            info.extra = struct.pack("<HH", _PAD_ID, pad) + b"\0" * pad
            zf.writestr(info, npy.getvalue())
    return buf.getvalue()


class ColumnarIndex:
    """Read-only view of an index file: columns are numpy arrays over one mmap (or plain arrays when rebuilt in memory).

    `record(i)` -> the index.jsonl dict of sample i; `member(i, kind)` -> (offset, size, crc32) inside its shard.
    """

    def __init__(self, cols: dict[str, np.ndarray], meta: dict[str, Any], path: Path | None = None):
        self.cols, self.meta, self.path = cols, meta, path
        self.n = int(meta["samples"])
        self.keys = sorted(["id"] + [k[2:] for k in cols if k.startswith("r_")])
        self.tables = {k[2:]: v.tolist() for k, v in cols.items() if k.startswith("t_")}  # few: bg/fg ids
        self.shard = cols["shard"]
        self._rcols = [(k, cols["r_" + k], self.tables.get(k)) for k in self.keys if k != "id"]
        self._mcols = {kind: (cols[f"m_{kind}_off"], cols[f"m_{kind}_len"], cols[f"m_{kind}_crc"]) for kind in KINDS}
        if any(len(c) != self.n for c in cols.values() if not c.dtype.kind == "U") or "r_index" not in cols:
            raise IntegrityError(f"{path}: columns of unequal length or no 'index' column; delete it (it is rebuilt "
                                 "from the shards)")

    @classmethod
    def load(cls, path: Path) -> "ColumnarIndex":
        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            cols = {}
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    h = info.header_offset
                    n, e = struct.unpack_from("<HH", mm, h + 26)
                    start = h + 30 + n + e
                    fobj = io.BytesIO(mm[start:start + min(info.file_size, 4096)])
                    version = np.lib.format.read_magic(fobj)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = read(fobj)
                    if fortran or dtype.hasobject or info.compress_type != zipfile.ZIP_STORED:
                        raise ValueError(f"unsupported member {info.filename}")
                    count = int(np.prod(shape))
                    cols[info.filename[:-4]] = np.frombuffer(mm, dtype, count, start + fobj.tell()).reshape(shape)
            meta = json.loads(cols.pop("meta").tobytes())
        except (OSError, ValueError, KeyError, struct.error, zipfile.BadZipFile) as e:
            raise IntegrityError(f"{path}: unreadable columnar index ({e}); delete it (it is rebuilt from the "
                                 "shards)") from None
        if meta.get("schema") != INDEX_SCHEMA:
            raise IntegrityError(f"{path}: index schema {meta.get('schema')!r}, expected {INDEX_SCHEMA!r}; delete it")
        return cls(cols, meta, path)

    def bg_codes(self) -> tuple[list[str], np.ndarray]:
        return self.codes("bg_id")

    def codes(self, key: str) -> tuple[list[str], np.ndarray]:
        """(sorted distinct values as str, per-sample code) of a field, e.g. 'bg_id'."""
        col = self.cols["r_" + key]
        if key in self.tables:
            return [str(v) for v in self.tables[key]], col
        values, codes = np.unique(col, return_inverse=True)  # numeric ids: compare as their str like the old code
        names = [str(v.item()) for v in values]
        order = sorted(range(len(names)), key=names.__getitem__)
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        return sorted(names), rank[codes.reshape(-1)]

    def record(self, i: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, col, table in self._rcols:
            v = col[i]
            out[key] = table[int(v)] if table is not None else v.item()
        out["id"] = formats.sample_id(int(out["index"]))
        return out

    def member(self, i: int, kind: str) -> tuple[int, int, int]:
        off, size, crc = self._mcols[kind]
        return int(off[i]), int(size[i]), int(crc[i])


# ---- opening a dataset -----------------------------------------------------------------------------------------
def _cached_index_path(identity: str) -> Path:
    return _cache_root() / ".index" / f"{identity[:32]}.npz"


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
            _verify_listed(data_dir, manifest, shards, record)
        index = _locate_index(data_dir, manifest, record, verify, progress)
        if not own_index:  # a rebuild above hashed the shards while reading them: a stat each here
            _verify_listed(data_dir, manifest, shards, record)
    finally:
        if record is not None:
            record.save()
    return manifest, index


def _verify_listed(data_dir: Path, manifest: dict, shards: list[dict], record: VerifyRecord | None) -> None:
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
