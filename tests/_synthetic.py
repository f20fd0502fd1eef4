"""A tiny dataset folder in exactly the `eva_helpers.data.formats` layout, with known geometry (test helper).

Each background is a flat colour (distinct per bg), its depth a vertical ramp (0.1 at the top .. 0.6 at the
bottom). The object is a pure colour rectangle (distinct per fg) with full alpha and depth 1.0 (nearest), so
after any geometric augmentation: mask == 1 exactly where fg_bg shows the object colour and where depth ~= 1.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from eva_helpers.data import formats
from eva_helpers.atomic import sha256_file

BG_COLOURS = [(40, 60, 200), (200, 40, 40), (40, 180, 60), (150, 110, 60), (200, 200, 40), (40, 200, 200)]
FG_COLOURS = [(250, 250, 250), (10, 10, 10), (128, 128, 128), (190, 190, 190)]  # achromatic: JPEG 4:2:0 keeps them
RAMP = (0.1, 0.6)  # background depth range; the object sits at 1.0


def bg_id(b: int) -> str:
    return f"bg{b:03d}"


def fg_id(f: int) -> str:
    return f"fg{f:03d}"


def _bg_depth(size: int) -> np.ndarray:
    ramp = np.linspace(RAMP[0], RAMP[1], size, dtype=np.float32)  # (H,)
    return np.repeat(ramp[:, None], size, axis=1)  # (H, W)


def sample_layout(i: int, n_bg: int, n_fg: int, size: int) -> dict:
    """Provenance of sample i: which bg/fg, where the rectangle is (x, y, w, h)."""
    b, f = i % n_bg, (i // n_bg) % n_fg
    rng = np.random.default_rng([7, i])
    w = int(rng.integers(size // 4, size // 2))
    h = int(rng.integers(size // 4, size // 2))
    x = int(rng.integers(0, size - w))
    y = int(rng.integers(0, size - h))
    return {"b": b, "f": f, "x": x, "y": y, "w": w, "h": h}


def write_synthetic_dataset(out_dir: str | Path, n_bg: int = 4, n_fg: int = 3, positions: int = 2,
                            size: int = 48, shard_size: int = 8) -> Path:
    """Write manifest.json, backgrounds.zip and shards/*.zip; n = n_bg * n_fg * positions samples."""
    out = Path(out_dir)
    (out / formats.SHARD_DIR).mkdir(parents=True, exist_ok=True)
    n = n_bg * n_fg * positions
    bg_depth = _bg_depth(size)
    with zipfile.ZipFile(out / formats.BACKGROUNDS, "w") as zf:
        rows = []
        for b in range(n_bg):
            img = np.empty((size, size, 3), np.uint8)
            img[:] = BG_COLOURS[b % len(BG_COLOURS)]
            formats.zip_write(zf, formats.member("bg", bg_id(b)), formats.encode_png(img))
            formats.zip_write(zf, formats.member("bg_depth", bg_id(b)), formats.encode_depth(bg_depth))
            rows.append({"bg_id": bg_id(b), "depth_min": 0.0, "depth_max": 1.0})
        formats.zip_write(zf, formats.INDEX, formats.jsonl_bytes(rows))
    shards = []
    for k, start in enumerate(range(0, n, shard_size)):
        idx = list(range(start, min(n, start + shard_size)))
        path = out / formats.shard_name(k)
        rows = []
        with zipfile.ZipFile(path, "w") as zf:
            for i in idx:
                L = sample_layout(i, n_bg, n_fg, size)
                sid = formats.sample_id(i)
                img = np.empty((size, size, 3), np.uint8)
                img[:] = BG_COLOURS[L["b"] % len(BG_COLOURS)]
                alpha = np.zeros((size, size), np.uint8)
                depth = bg_depth.copy()
                ys, xs = slice(L["y"], L["y"] + L["h"]), slice(L["x"], L["x"] + L["w"])
                img[ys, xs] = FG_COLOURS[L["f"] % len(FG_COLOURS)]
                alpha[ys, xs] = 255
                depth[ys, xs] = 1.0
                formats.zip_write(zf, formats.member("fg_bg", sid), formats.encode_jpeg(img, 98))
                formats.zip_write(zf, formats.member("mask", sid), formats.encode_mask(alpha))
                formats.zip_write(zf, formats.member("depth", sid), formats.encode_depth(depth))
                rows.append({"id": sid, "index": i, "bg_id": bg_id(L["b"]), "fg_id": fg_id(L["f"]), "flip": False,
                             "scale": L["h"] / size, "x": L["x"], "y": L["y"], "w": L["w"], "h": L["h"],
                             "depth_min": 0.0, "depth_max": 1.0})
            formats.zip_write(zf, formats.INDEX, formats.jsonl_bytes(rows))
        shards.append({"file": formats.shard_name(k), "sha256": sha256_file(path), "bytes": path.stat().st_size,
                       "samples": len(idx), "first_index": start})
    bgz = out / formats.BACKGROUNDS
    manifest = {"schema": formats.SCHEMA, "params": {"size": size, "seed": 0, "teacher": "synthetic",
                                                     "shard_size": shard_size},
                "counts": {"samples": n, "backgrounds": n_bg, "foregrounds": n_fg},
                "backgrounds": {"file": formats.BACKGROUNDS, "sha256": sha256_file(bgz), "bytes": bgz.stat().st_size},
                "shards": shards}
    formats.write_manifest(out, manifest)
    return out
