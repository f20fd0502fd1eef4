"""Test-only helpers for the dataset build tests: small input folders made from the embedded sample or synthetic."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from eva_helpers.compositing.compose import cutout_chain, place_cutout
from eva_helpers.compositing.labels import ring_around, ring_px
from eva_helpers.data import formats
from eva_helpers.lease import FENCE_NAME
from eva_helpers.paths import sample_assets

BG = ["aitzgorri", "coffee", "wine_room"]  # a wide, a wide and a tall photo
FG = ["penguin", "zebra", "fireman200b"]  # a tall, a wide and a large cut-out


def sample_inputs(tmp: Path, n_bg: int = 3, n_fg: int = 3) -> tuple[Path, Path]:
    """Copy a few real backgrounds and cut-outs into tmp/bg and tmp/fg (plus a junk file in each)."""
    bg, fg = tmp / "bg", tmp / "fg"
    bg.mkdir(parents=True)
    fg.mkdir(parents=True)
    for name in BG[:n_bg]:
        shutil.copy(sample_assets() / "bg" / f"{name}.jpg", bg)
    for name in FG[:n_fg]:
        shutil.copy(sample_assets() / "fg" / f"{name}.png", fg)
    (bg / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (fg / "desktop.ini").write_text("[.ShellClassInfo]\n")
    return bg, fg


def rgba_disc(h: int = 40, w: int = 30, colour=(250, 40, 40)) -> np.ndarray:
    """(h, w, 4) uint8: an opaque ellipse with a soft 1-2 px edge on a transparent margin."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy - h / 2 + 0.5) / (h / 2 - 3)) ** 2 + ((xx - w / 2 + 0.5) / (w / 2 - 3)) ** 2)
    a = np.clip((1.0 - r) * 8.0, 0.0, 1.0)
    out = np.zeros((h, w, 4), np.uint8)
    out[..., :3] = colour
    out[..., 3] = np.round(a * 255).astype(np.uint8)
    return out


def save(arr_or_img, path: Path, **kw) -> Path:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, **kw)
    return path


def folder_state(folder: Path) -> dict[str, tuple[int, bytes]]:
    """name -> (mtime_ns, bytes) for every entry, recursively: proves a folder was not modified."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in sorted(folder.rglob("*"))}


def all_bytes(dataset: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file of a dataset folder but the lease's fence file (its number counts the
    builds that wrote the folder: a resumed build's is one higher)."""
    return {str(p.relative_to(dataset)): p.read_bytes() for p in sorted(dataset.rglob("*"))
            if p.is_file() and p.name != FENCE_NAME}


def read_shard(path: Path) -> tuple[list[dict], zipfile.ZipFile]:
    zf = zipfile.ZipFile(path)
    return formats.read_jsonl(zf.read(formats.INDEX)), zf


def build_killed_at_shard(bg: Path, fg: Path, out: Path, monkeypatch, shard: int, **kw) -> None:
    """`build_dataset` stopped (KeyboardInterrupt) as it starts shard `shard`, as a disconnect leaves it: the shards
    before it are built and recorded."""
    import pytest

    import eva_helpers.compositing.build as build_mod
    import eva_helpers.compositing.shards as shards_mod

    real = shards_mod.build_shard

    def dies(ctx, k):
        if k == shard:
            raise KeyboardInterrupt
        return real(ctx, k)

    with monkeypatch.context() as mp:
        mp.setattr(shards_mod, "build_shard", dies)
        with pytest.raises(KeyboardInterrupt):
            build_mod.build_dataset(bg, fg, out, **kw)


# ---- oracles: what a built sample must satisfy, computed independently of the build --------------------
def object_contrast(depth: np.ndarray, obj: np.ndarray, px: int | None = None) -> float:
    """mean(depth over the object) - mean(depth over the ring around it); NaN without object or ring."""
    ring = ring_around(obj, ring_px(max(obj.shape)) if px is None else px)
    if not obj.any() or not ring.any():
        return float("nan")
    return float(depth[obj].mean() - depth[ring].mean())


def placed_alpha(rgba: np.ndarray, flip: bool, w: int, h: int, size: int) -> np.ndarray:
    """The uint8 (h, w) alpha of a cut-out placed at (w, h) in a `size` frame, re-derived from the source file's
    pixels: exactly the mask inside the recorded box."""
    return (place_cutout(cutout_chain(rgba, size), w, h, flip)[1] * 255.0 + 0.5).astype(np.uint8)
