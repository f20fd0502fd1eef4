"""The on-disk dataset format: names, codecs and the manifest. Writers (the build, the tests) and readers share it.

Layout of a dataset folder::

    manifest.json                 schema, version, build params (seed, teacher...), counts, one entry per shard
    backgrounds.zip               bg/<bg_id>.png (prepared RGB, lossless), bg_depth/<bg_id>.png, index.jsonl with
                                  one row per input: {"kind": "bg", bg_id, file, sha256, bytes, width, height,
                                  depth_min, depth_max} and {"kind": "fg", fg_id, ...}: filter on "kind"
    shards/shard-NNNNN.zip        fg_bg/<sid>.jpg, mask/<sid>.png, depth/<sid>.png, index.jsonl
    index.npz                     every index.jsonl record as columns (columns.py), listed in the manifest's `index`
                                  entry (file, sha256, bytes, identity); optional: rebuilt into the cache if absent

Conventions:
- sample id `sid` is the global sample index, zero-padded to 8 digits; shard k holds indices
  [k * shard_size, (k + 1) * shard_size).
- mask PNG: 8-bit grayscale, exactly the alpha placed on the background (0..255, soft edges kept);
  readers binarise at 128 for the training target.
- depth PNG: 16-bit grayscale of *relative inverse depth* (disparity-like): **near = bright**.
  value = round(d * 65535) with d in [0, 1] the teacher's map of the clean background min-max
  normalised per background, in every labelling mode: layered and hybrid labels keep it exactly off the
  object; per-composite (and hybrid object) pixels are the teacher's composite map aligned to it by
  scale and shift fitted outside the object, clipped to [0, 1]. The background's raw teacher range is
  recorded in the index as `depth_min`/`depth_max`, so raw = depth_min + d * (depth_max - depth_min).
  Units are the teacher's (relative, not metres).
- mask and depth PNGs use fixed PNG filters chosen for encoding speed; any PNG decoder reads them.
- Zip members are written in a fixed order with a fixed timestamp and ZIP_STORED (JPEG/PNG are compressed
  already), so the same seed gives byte-identical shards.
"""
from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from eva_helpers.atomic import atomic_write_text
from eva_helpers.errors import BadInputError

SCHEMA = "eva-dataset/1"
# The version of the code that turns (parameters, seed, i) into a sample's bytes (compositing, teachers, labels, codecs).
# Bumped whenever the same parameters would give other bytes; a resumed build compares this, not the package version,
# so an upgrade that leaves samples alone (a fix in training, a new notebook) still resumes a half-built dataset.
# 2: objects in depth labels with relief and a contrast guard (labels.py), hybrid mode, teachers at their own size.
GENERATOR = 2
MANIFEST = "manifest.json"
BACKGROUNDS = "backgrounds.zip"
SHARD_DIR = "shards"
INDEX = "index.jsonl"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
DEPTH_MAX = 65535
MASK_THRESHOLD = 128
PNG_LEVEL = 1  # fast zlib level: PNG encoding is most of a sample's cost


def sample_id(index: int) -> str:
    return f"{index:08d}"


def shard_name(k: int) -> str:
    return f"{SHARD_DIR}/shard-{k:05d}.zip"


def member(kind: str, sid: str) -> str:
    """Zip member name for a sample: kind is 'fg_bg', 'mask' or 'depth' (or 'bg'/'bg_depth' in backgrounds.zip)."""
    return f"{kind}/{sid}.{'jpg' if kind == 'fg_bg' else 'png'}"


def _cv2():
    import cv2  # imported lazily: keeps `import eva_helpers` light

    cv2.setNumThreads(1)  # we parallelise across processes; cv2's own threads only contend
    return cv2


def encode_jpeg(rgb: np.ndarray, quality: int = 95, subsampled: bool = False) -> bytes:
    """RGB JPEG, by default without chroma subsampling (4:4:4: 4:2:0 roughly doubles the noise in |fg_bg - bg| around
    objects); `subsampled` gives 4:2:0, as phones and chat apps save (the second-shot changes, alignment)."""
    cv2 = _cv2()
    sampling = cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420 if subsampled else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], params)
    assert ok
    return buf.tobytes()


def encode_png(arr: np.ndarray, compression: int = 1) -> bytes:
    """Lossless PNG of an (H, W) uint8/uint16 array or an (H, W, 3) RGB uint8 array."""
    cv2 = _cv2()
    if arr.ndim == 3:
        arr = arr[..., ::-1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    assert ok
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) RGB uint8, or (H, W) for single-channel files (uint8 or uint16 kept)."""
    cv2 = _cv2()
    buf = np.frombuffer(data, np.uint8)
    if data[:3] == b"\xff\xd8\xff" and hasattr(cv2, "IMREAD_COLOR_RGB"):  # JPEG: decode straight to RGB (cv2 >= 4.10)
        arr = cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB)
        if arr is None:
            raise ValueError("undecodable image data")
        return arr
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("undecodable image data")
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.shape[2] == 3 else cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return arr


_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _inflate():
    try:  # ISA-L inflates our PNGs faster than zlib; the depth PNG is the largest decode cost per sample
        from isal.isal_zlib import decompress
    except ImportError:
        from zlib import decompress
    return decompress


def _running_sum(px: np.ndarray, axis: int) -> np.ndarray:
    """uint8 cumulative sum (mod 256) along `axis`: torch's is several times faster than numpy's on a 224 px map, and
    this is a quarter of a training sample's decode; numpy where torch is absent."""
    try:
        import torch
    except ImportError:
        return np.cumsum(px, axis=axis, dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(px)).cumsum(axis, dtype=torch.uint8).numpy()


def _decode_gray_png(data: bytes) -> np.ndarray | None:
    """Fast path for the grayscale PNGs we write (8/16-bit, not interlaced, one filter type for all rows: none, sub
    or up): inflate + numpy un-filtering. Returns None for anything else, and the caller falls back to OpenCV."""
    if data[:8] != _PNG_SIG or data[12:16] != b"IHDR":
        return None
    w, h, bits, ctype, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if ctype != 0 or bits not in (8, 16) or interlace:
        return None
    parts, pos = [], 8
    while pos + 8 <= len(data):
        (n,), kind = struct.unpack_from(">I", data, pos), data[pos + 4:pos + 8]
        if kind == b"IDAT":
            parts.append(data[pos + 8:pos + 8 + n])
        elif kind == b"IEND":
            break
        pos += 12 + n
    bpp = bits // 8
    try:
        raw = np.frombuffer(_inflate()(b"".join(parts)), np.uint8).reshape(h, 1 + w * bpp)
    except Exception:  # truncated or corrupt (zlib.error, IsalError, bad size): OpenCV then reports it
        return None
    filt = int(raw[0, 0])
    if filt not in (0, 1, 2) or not (raw[:, 0] == filt).all():
        return None
    px = raw[:, 1:].reshape(h, w, bpp)
    if filt:  # sub: running sum along the row per byte lane; up: running sum down the columns (mod 256 in uint8)
        px = _running_sum(px, 1 if filt == 1 else 0)
    return px[..., 0].copy() if bpp == 1 else px.view(">u2")[..., 0].astype(np.uint16)


def encode_depth(depth01: np.ndarray) -> bytes:
    """(H, W) float in [0, 1] (near = 1) -> 16-bit PNG bytes."""
    d = np.clip(np.asarray(depth01, dtype=np.float64), 0.0, 1.0)
    return encode_depth16(np.round(d * DEPTH_MAX).astype(np.uint16))


def encode_depth16(depth16: np.ndarray) -> bytes:
    """(H, W) uint16 depth (near = DEPTH_MAX) -> PNG with the Sub filter on every row: depth is smooth, and a fixed
    filter skips libpng's adaptive search (faster). `BandPNG` writes the same pixels, faster, for layered labels."""
    return _png(np.asarray(depth16, dtype=np.uint16), mask=False)


def decode_depth(data: bytes) -> np.ndarray:
    """16-bit PNG bytes -> (H, W) float32 in [0, 1], near = 1."""
    arr = _decode_gray_png(data)
    arr = decode_image(data) if arr is None else arr
    if arr.dtype != np.uint16:
        raise ValueError("depth PNG must be 16-bit")
    return arr.astype(np.float32) / DEPTH_MAX


def encode_mask(alpha: np.ndarray) -> bytes:
    """(H, W) uint8 alpha (0..255) -> 8-bit PNG: Up filter and run-length deflate, the fastest measured for masks
    (mostly zeros) at a fair size."""
    return _png(np.asarray(alpha, dtype=np.uint8), mask=True)


def decode_mask(data: bytes) -> np.ndarray:
    """8-bit PNG bytes -> (H, W) uint8 alpha 0..255 (binarise with >= MASK_THRESHOLD)."""
    arr = _decode_gray_png(data)
    arr = decode_image(data) if arr is None else arr
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError("mask PNG must be 8-bit single-channel")
    return arr


def _png(arr: np.ndarray, mask: bool = False) -> bytes:
    """Grayscale PNG with a fixed filter at PNG_LEVEL (encode_mask, encode_depth16)."""
    cv2 = _cv2()
    flags = [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
        flags += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP if mask else cv2.IMWRITE_PNG_FILTER_SUB]
    if mask:
        flags += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), flags)
    assert ok
    return buf.tobytes()


def zip_write(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    """Write a member with a fixed timestamp and permissions so that archives are byte-reproducible."""
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def read_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise BadInputError(f"{path}: no dataset manifest here (build one with `eva build` or notebook 01)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInputError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise BadInputError(f"{path}: not a dataset manifest (a JSON object expected); fetch or rebuild the dataset")
    if manifest.get("schema") != SCHEMA:
        raise BadInputError(f"{path}: schema {manifest.get('schema')!r}, expected {SCHEMA!r}")
    return manifest


def write_manifest(dataset_dir: str | Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(Path(dataset_dir) / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _deflate(raw: bytes) -> bytes:
    """Raw deflate ending on a byte boundary with an empty dictionary (full flush): blocks that concatenate."""
    c = zlib.compressobj(PNG_LEVEL, zlib.DEFLATED, -15)
    return c.compress(raw) + c.flush(zlib.Z_FULL_FLUSH)


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(tag)))


class BandPNG:
    """Grayscale PNG encoder for images equal to a fixed `base` except in a band of rows (layered depth).

    A PNG's pixels are one zlib stream of filtered rows; deflate blocks ended by a full flush are byte-aligned and
    independent, so bands of base rows compressed once are concatenated with the freshly compressed changed rows.
    About half the cost of a full encode for our samples; standard PNG (Sub filter) that any decoder reads.
    """

    BAND = 8  # rows per cached block

    def __init__(self, base: np.ndarray):  # (H, W) uint8 or uint16
        self.h, self.w = base.shape
        rows = self.filter_rows(base)  # (H, 1 + W * bytes) uint8
        self.raw = [rows[b:b + self.BAND].tobytes() for b in range(0, self.h, self.BAND)]
        self.comp = [_deflate(r) for r in self.raw]
        bits = 8 * base.dtype.itemsize
        self.head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, bits, 0, 0, 0, 0))

    @staticmethod
    def filter_rows(img: np.ndarray) -> np.ndarray:
        """(h, W) uint8/uint16 -> (h, 1 + W * bpp) uint8: big-endian bytes, PNG filter 1 (Sub) on every row."""
        bpp = img.dtype.itemsize
        be = img.astype(f">u{bpp}").view(np.uint8).reshape(img.shape[0], -1)
        out = np.empty((be.shape[0], be.shape[1] + 1), np.uint8)
        out[:, 0] = 1
        out[:, 1:1 + bpp] = be[:, :bpp]
        np.subtract(be[:, bpp:], be[:, :-bpp], out=out[:, 1 + bpp:])  # wraps mod 256, as PNG wants
        return out

    def encode(self, img: np.ndarray, y0: int, y1: int) -> bytes:
        """PNG bytes of `img`, which may differ from the base only in rows [y0, y1)."""
        b0, b1 = y0 // self.BAND, -(-y1 // self.BAND)
        dirty = self.filter_rows(img[b0 * self.BAND:min(self.h, b1 * self.BAND)]).tobytes()
        adler = 1
        for r in self.raw[:b0]:
            adler = zlib.adler32(r, adler)
        adler = zlib.adler32(dirty, adler)
        for r in self.raw[b1:]:
            adler = zlib.adler32(r, adler)
        idat = b"\x78\x01" + b"".join(self.comp[:b0] + [_deflate(dirty)] + self.comp[b1:]) + b"\x03\x00"
        return self.head + _chunk(b"IDAT", idat + struct.pack(">I", adler)) + _chunk(b"IEND", b"")
