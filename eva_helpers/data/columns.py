"""The columnar index file: every sample's record as flat numpy columns in one memory-mapped file.

Why: parsing every shard's index.jsonl into dicts cost seconds and kilobytes per sample at every open (gigabytes at
400k samples, copied into each DataLoader worker as reference counting dirtied the pages; bench/scale.py). Here a
dataset's records are a few dozen bytes per sample in `index.npz`, mapped read-only (pages are shared by the main process and its workers and only the
ones touched are resident), and a record dict is produced only when a sample is read.

File format: a standard `.npz` (np.load reads it anywhere) written by hand: members ZIP_STORED with a fixed date, each
`.npy` payload aligned to 64 bytes, so a column is `np.frombuffer` over one `mmap` of the file, no copy. Members:
`meta.npy` (uint8 JSON: schema, identity, n, key kinds), `r_<key>.npy` one per index.jsonl field (strings as codes
into `t_<key>.npy`), `shard.npy` (shard number), `m_<kind>_{off,len,crc}.npy` (data offset, size and CRC-32 of the
fg_bg/mask/depth members inside the shard, read with one `os.pread` each). `id` is not stored: the format fixes it to
`sample_id(index)`, and that is checked when the index is built.

Written by `eva build` beside manifest.json; verify.py opens, checks and, for datasets without one, rebuilds it.
"""
from __future__ import annotations

import io
import json
import mmap
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from eva_helpers.data import formats
from eva_helpers.errors import IntegrityError

INDEX_FILE = "index.npz"
INDEX_SCHEMA = "eva-index/1"
KINDS = ("fg_bg", "mask", "depth")  # sample members, in zip order
_ALIGN = 64
_PAD_ID = 0xD935  # extra-field id used for alignment padding (as Android's zipalign)


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


def smallest(col: np.ndarray) -> np.ndarray:
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
        values, codes = np.unique(col, return_inverse=True)  # numeric ids: compared as their str, as index.jsonl's readers do
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


