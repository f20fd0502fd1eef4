"""Dataset statistics streamed shard by shard (never a whole-dataset array) -> stats.json beside manifest.json.

Per-channel mean/std of bg and fg_bg on the 0-1 scale (what `models.inputs.model_input` normalises with), the mask foreground
fraction (mean and a histogram of per-sample fractions: masks are 5-9 % foreground, so pixel accuracy alone
misleads) and a depth histogram. Sums are float64 over pixel counts, so the result does not depend on order.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from eva_helpers.atomic import atomic_write_text, json_text
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.errors import EvaError

STATS = "stats.json"
STATS_SCHEMA = "eva-stats/1"
MAX_LIMIT = 10**9  # samples `eva stats --limit` takes: 2500x the 400k-sample target build (the build's limit too)


class _Moments:
    """Streamed per-channel sum and sum of squares (float64)."""
    def __init__(self) -> None:
        self.s = np.zeros(3)
        self.s2 = np.zeros(3)
        self.n = 0

    def add(self, img: np.ndarray, weight: int = 1) -> None:
        x = img.reshape(-1, 3).astype(np.float64) / 255.0  # (H*W, 3)
        self.s += weight * x.sum(0)
        self.s2 += weight * np.square(x).sum(0)
        self.n += weight * x.shape[0]

    def result(self) -> dict[str, list[float]]:
        mean = self.s / max(self.n, 1)
        var = np.maximum(self.s2 / max(self.n, 1) - mean**2, 0.0)
        return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in np.sqrt(var)]}


def check_stats(stats: dict[str, Any], source: str) -> dict[str, Any]:
    """Refuse normalisation stats that would make every input NaN or infinite: a std of 0 (e.g. computed on a build
    killed before its first shard, or on one flat image) or a non-finite mean/std. Returns the stats unchanged."""
    try:
        values = {f"{k}.{m}": [float(v) for v in stats[k][m]] for k in ("bg", "fg_bg") for m in ("mean", "std")}
    except (KeyError, TypeError, ValueError) as e:
        raise EvaError(f"{source}: not normalisation stats ({type(e).__name__}: {e}); delete it and run "
                       "`eva stats --data DATASET` again") from None
    bad = [k for k, vs in values.items() if len(vs) != 3 or not all(np.isfinite(vs))
           or (k.endswith("std") and min(vs) <= 0)]
    if bad:
        raise EvaError(f"{source}: unusable normalisation stats ({', '.join(f'{k}={values[k]}' for k in bad)}): a std "
                       "of 0 or a non-finite value would turn every input into NaN; run `eva stats --data DATASET` "
                       "on a complete dataset (more than one distinct image)")
    return stats


def read_stats_file(path: str | os.PathLike) -> dict[str, Any]:
    """A run's frozen stats.json, checked: unreadable JSON or unusable values are one-line errors naming the file."""
    try:
        stats = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EvaError(f"{path}: unreadable normalisation stats ({type(e).__name__}: {e}); restore it from a "
                       "backup, or move it away and run `eva stats --data DATASET` again") from None
    if not isinstance(stats, dict):
        raise EvaError(f"{path}: not normalisation stats (a JSON object expected)")
    return check_stats(stats, str(path))


def compute_stats(data_dir: str | os.PathLike, *, limit: int | None = None, depth_bins: int = 32,
                  fraction_bins: int = 20, progress: bool = True, write: bool = True) -> dict[str, Any]:
    """Stream over the dataset (or `limit` evenly spaced samples) and write stats.json atomically."""
    from tqdm.auto import tqdm

    if limit is not None and not (isinstance(limit, (int, np.integer)) and 1 <= limit <= MAX_LIMIT):
        raise EvaError(f"stats limit={limit!r}: give a whole number of samples from 1 to {MAX_LIMIT} (or none: all of "
                       "them)")
    ds = ShardDataset(data_dir)
    n = len(ds) if limit is None else min(int(limit), len(ds))
    # a limit takes evenly spaced samples: the sample order is background-major, so a prefix would see few backgrounds
    positions = np.linspace(0, len(ds) - 1, n).round().astype(np.int64) if n < len(ds) else np.arange(n)
    fg_m, bg_m = _Moments(), _Moments()
    bg_names, bg_codes = ds.columns.codes("bg_id")  # backgrounds repeat: count uses from the index column, decode once
    uses = np.bincount(np.asarray(bg_codes)[positions], minlength=len(bg_names))
    bg_uses = {bg_names[c]: int(u) for c, u in enumerate(uses) if u}
    depth_hist = np.zeros(depth_bins, np.int64)
    frac_hist = np.zeros(fraction_bins, np.int64)
    frac_sum, frac_min, frac_max = 0.0, 1.0, 0.0
    for i in tqdm(positions, desc="stats", unit="sample", disable=not progress):
        s = ds.load(i)  # in record order: shard by shard, each zip read sequentially
        fg_m.add(s["fg_bg"])
        depth_hist += np.histogram(s["depth"], bins=depth_bins, range=(0.0, 1.0))[0]
        f = float(s["mask"].mean())
        frac_sum, frac_min, frac_max = frac_sum + f, min(frac_min, f), max(frac_max, f)
        frac_hist[min(int(f * fraction_bins), fraction_bins - 1)] += 1
    for bid, uses in bg_uses.items():
        bg_m.add(ds.background(bid), weight=uses)
    ds.close()
    stats = {
        "schema": STATS_SCHEMA,
        "samples": n,
        "of_samples": len(ds),
        "bg": bg_m.result(),
        "fg_bg": fg_m.result(),
        "mask_fraction": {"mean": frac_sum / max(n, 1), "min": frac_min if n else 0.0, "max": frac_max,
                          "hist": frac_hist.tolist(), "bins": fraction_bins},
        "depth_hist": {"counts": depth_hist.tolist(), "edges": np.linspace(0, 1, depth_bins + 1).round(6).tolist()},
        "dataset_schema": ds.manifest.get("schema"),
    }
    check_stats(stats, f"{data_dir} (stats of {n} samples)")  # before anything is written
    if write:
        atomic_write_text(Path(data_dir) / STATS, json_text(stats))
    return stats


def load_stats(data_dir: str | os.PathLike) -> dict[str, Any] | None:
    """stats.json of a dataset folder, or None when it has not been computed. A damaged one is an error, never
    recomputed over: it may be the only record of what a run was normalised with."""
    path = Path(data_dir) / STATS
    if not path.exists():
        return None
    stats = read_stats_file(path)
    if stats.get("schema") != STATS_SCHEMA:

        raise EvaError(f"{path}: not a stats file of this version (schema {stats.get('schema')!r}, expected "
                       f"{STATS_SCHEMA!r}); move it away and run `eva stats --data {data_dir}` again")
    return stats


def describe_stats(stats: dict) -> str:
    """What `eva stats` and notebook 02 print: per-channel mean/std of bg and fg_bg, the mean foreground fraction."""
    lines = [f"{k:6s} mean {[round(v, 4) for v in stats[k]['mean']]}  std {[round(v, 4) for v in stats[k]['std']]}"
             for k in ("bg", "fg_bg")]
    return "\n".join(lines + [f"foreground fraction: mean {stats['mask_fraction']['mean']:.4f}  "
                              f"({stats['samples']} samples)"])
