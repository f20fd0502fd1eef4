"""ShardDataset: samples read straight from the zip shards (no extraction), and leak-free splits.

Zip handles are opened lazily and per process: a handle inherited through fork shares its file offset with the
parent, and workers reading through it interleave seeks ("Bad CRC-32"). So every handle is stored with the pid that
opened it and reopened when the pid changes (the pattern of timm's tar reader). Backgrounds are few: each process
decodes each one once and keeps it.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import formats
from .errors import BadInputError, IntegrityError

RECORD_KEYS = ("id", "index", "bg_id", "fg_id", "flip", "scale", "x", "y", "w", "h", "depth_min", "depth_max")


class ShardDataset:
    """Map-style dataset over a dataset folder; `ds[pos]` or `ds[(pos, sample_seed)]` -> sample dict.

    Args:
        data_dir: folder with manifest.json, backgrounds.zip and shards/.
        indices: positions into the whole dataset that this view exposes (a split); None = all samples.
        transform: callable(sample, seed) -> sample (see `augment.build_transforms`); None = raw numpy arrays.
    """

    def __init__(self, data_dir: str | os.PathLike, indices: Sequence[int] | None = None,
                 transform: Callable[[dict, int | None], dict] | None = None):
        self.data_dir = Path(data_dir)
        self.manifest: dict[str, Any] = formats.read_manifest(self.data_dir)
        self.transform = transform
        self._handles: dict[Path, zipfile.ZipFile] = {}
        self._pid = os.getpid()
        self._bg_cache: dict[str, np.ndarray] = {}
        self._bg_names: dict[str, str] | None = None
        self._shard_files: list[Path] = []
        self.records: list[dict[str, Any]] = []
        self._where: list[int] = []  # record position -> shard number
        for k, entry in enumerate(self.manifest.get("shards", [])):
            path = self.data_dir / entry["file"]
            self._shard_files.append(path)
            rows = formats.read_jsonl(self._read(path, formats.INDEX))
            if "samples" in entry and len(rows) != int(entry["samples"]):
                raise IntegrityError(f"{path}: index has {len(rows)} samples, manifest says {entry['samples']}")
            self.records.extend(rows)
            self._where.extend([k] * len(rows))
        self.indices = list(range(len(self.records))) if indices is None else [int(i) for i in indices]
        if self.indices and not 0 <= min(self.indices) <= max(self.indices) < len(self.records):
            raise BadInputError(f"{self.data_dir}: split indices out of range 0..{len(self.records) - 1}")
        self.close()  # index reading opened every shard: don't hand open handles to forked workers

    # ---- lazy, per-process zip access -------------------------------------------------------------
    def _zip(self, path: Path) -> zipfile.ZipFile:
        if self._pid != os.getpid():  # forked worker: never reuse the parent's handles
            self._handles, self._pid = {}, os.getpid()  # decoded backgrounds inherited by fork stay valid
        zf = self._handles.get(path)
        if zf is None:
            if not path.is_file():
                raise BadInputError(f"{path}: shard missing (fetch the dataset again: `eva fetch`)")
            try:
                zf = zipfile.ZipFile(path)
            except zipfile.BadZipFile:
                raise IntegrityError(f"{path}: not a valid zip (truncated download? delete it and fetch "
                                     "again)") from None
            self._handles[path] = zf
        return zf

    def _read(self, path: Path, name: str) -> bytes:
        try:
            return self._zip(path).read(name)
        except KeyError:
            raise IntegrityError(f"{path}: member {name!r} missing") from None
        except (zipfile.BadZipFile, OSError) as e:
            raise IntegrityError(f"{path}: cannot read {name!r} ({e}); verify or fetch the dataset again") from None

    def close(self) -> None:
        for zf in self._handles.values():
            zf.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"], state["_bg_cache"] = {}, {}  # spawn workers open their own
        return state

    # ---- samples ----------------------------------------------------------------------------------
    def background(self, bg_id: Any) -> np.ndarray:
        """(H, W, 3) uint8 RGB of a prepared background, decoded once per process (read-only)."""
        key = str(bg_id)
        img = self._bg_cache.get(key)
        if img is None:
            bgz = self.data_dir / formats.BACKGROUNDS
            if self._bg_names is None:
                names = [n for n in self._zip(bgz).namelist() if n.startswith("bg/")]
                self._bg_names = {Path(n).stem: n for n in names}
            name = self._bg_names.get(key)
            if name is None and key.isdigit():  # integer ids: match zero-padded stems
                name = next((n for s, n in self._bg_names.items() if s.isdigit() and int(s) == int(key)), None)
            if name is None:
                raise IntegrityError(f"{bgz}: no background {key!r}")
            img = formats.decode_image(self._read(bgz, name))
            img.setflags(write=False)  # shared by every sample: transforms must copy, never write in place
            self._bg_cache[key] = img
        return img

    def load(self, idx: int) -> dict[str, Any]:
        """Sample at record position `idx` of the whole dataset, untransformed."""
        rec = self.records[idx]
        path = self._shard_files[self._where[idx]]
        sid = rec.get("id") or formats.sample_id(int(rec["index"]))
        fg_bg = formats.decode_image(self._read(path, formats.member("fg_bg", sid)))  # (H, W, 3) uint8
        alpha = formats.decode_mask(self._read(path, formats.member("mask", sid)))  # (H, W) uint8 0..255
        depth = formats.decode_depth(self._read(path, formats.member("depth", sid)))  # (H, W) float32 [0, 1]
        mask = (alpha >= formats.MASK_THRESHOLD).view(np.uint8)  # (H, W) {0, 1}
        return {"bg": self.background(rec["bg_id"]), "fg_bg": fg_bg, "mask": mask, "depth": depth,
                "meta": dict(rec)}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        pos, seed = (key if isinstance(key, tuple) else (key, None))
        sample = self.load(self.indices[int(pos)])
        if self.transform is not None:
            sample = self.transform(sample, None if seed is None else int(seed))
        return sample

    def subset(self, positions: Sequence[int], transform: Callable | None = None) -> "ShardDataset":
        """A view over full-dataset `positions` (e.g. a split) sharing this manifest; cheap (no re-read)."""
        view = object.__new__(ShardDataset)
        view.__dict__.update(self.__getstate__())
        view.indices = [int(i) for i in positions]
        view.transform = transform if transform is not None else self.transform
        view._handles, view._bg_cache, view._pid = {}, {}, os.getpid()
        return view


# ---- splits ---------------------------------------------------------------------------------------
def _partition(ids: list, fractions: Sequence[float], rng: np.random.Generator) -> list[set]:
    """Shuffle `ids` and cut them into len(fractions) groups; val/test get >= 1 id when there are enough."""
    ids = [ids[i] for i in rng.permutation(len(ids))]
    n = len(ids)
    counts = [int(round(f * n)) for f in fractions]
    for j in range(1, len(counts)):  # each held-out group non-empty when possible (train keeps >= 1)
        if counts[j] == 0 and fractions[j] > 0 and n - sum(counts[1:]) > 1:
            counts[j] = 1
    counts[0] = n - sum(counts[1:])
    out, start = [], 0
    for c in counts:
        out.append(set(ids[start:start + c]))
        start += c
    return out


def make_splits(dataset_or_dir: "ShardDataset | str | os.PathLike", by: str = "bg",
                fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, Any]:
    """Train/val/test positions with held-out backgrounds ("bg"), foregrounds ("fg") or both ("bg+fg").

    "bg+fg": val/test samples have a held-out bg AND a held-out fg; samples mixing held-out and seen ids go nowhere
    (they would leak one of the two into training). Never a random split over composites.
    """
    ds = dataset_or_dir if isinstance(dataset_or_dir, ShardDataset) else ShardDataset(dataset_or_dir)
    if by not in ("bg", "fg", "bg+fg"):
        raise BadInputError(f"split by={by!r}: use 'bg', 'fg' or 'bg+fg'")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise BadInputError(f"split fractions {tuple(fractions)}: need three non-negative numbers summing to 1")
    rng = np.random.default_rng(seed)
    recs = ds.records
    bgs = sorted({str(r["bg_id"]) for r in recs})
    fgs = sorted({str(r["fg_id"]) for r in recs})
    groups: dict[str, list[set]] = {}
    if "bg" in by:
        groups["bg"] = _partition(bgs, fractions, rng)
    if "fg" in by:
        groups["fg"] = _partition(fgs, fractions, rng)

    def side(r: dict, kind: str) -> int:
        gid = str(r[f"{kind}_id"])
        return next(j for j, g in enumerate(groups[kind]) if gid in g)

    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    names = ("train", "val", "test")
    dropped = 0
    for pos, r in enumerate(recs):
        sides = {side(r, kind) for kind in groups}
        if len(sides) == 1:
            out[names[sides.pop()]].append(pos)
        else:
            dropped += 1
    info = {"by": by, "fractions": list(fractions), "seed": seed, "dropped": dropped,
            "counts": {k: len(v) for k, v in out.items()}}
    for kind, g in groups.items():
        info[f"{kind}_ids"] = {n: sorted(s) for n, s in zip(names, g)}
    out["info"] = info  # type: ignore[assignment]
    return out
