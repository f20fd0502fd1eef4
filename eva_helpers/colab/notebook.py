"""One call per notebook step: 10-20 lines of notebook code (SMOKE overrides, teacher choice, dataset
lookup, stats kept on Drive, figures, uploads) lives here, so the five notebooks stay thin and the logic is tested.

SMOKE (every notebook): the dataset notebook 01 built with SMOKE when it exists, else the shipped 64 px sample, so
each notebook runs on its own. Without SMOKE, notebooks 02-05 use the dataset notebook 01 builds (`DEFAULT_DATASET`)
and say so plainly when it is not there yet.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eva_helpers.atomic import atomic_copy, atomic_write_text
from eva_helpers.colab.widgets import sample_browser
from eva_helpers.compositing.build import BUILD_DEFAULTS, build_dataset
from eva_helpers.compositing.cost import BUILD_RATE, estimate_build
from eva_helpers.compositing.params import check_build_bounds
from eva_helpers.compositing.teachers import dataset_labels
from eva_helpers.compositing.teachers import resolve_teacher as resolve
from eva_helpers.data.dataset import ShardDataset, make_splits
from eva_helpers.data.formats import MANIFEST
from eva_helpers.data.loaders import collate
from eva_helpers.data.resize import resize_transform
from eva_helpers.data.stats import compute_stats, describe_stats
from eva_helpers.errors import EvaError
from eva_helpers.fetching.locate import in_data, known_dataset, resolve_dataset
from eva_helpers.paths import Paths, require_drive_mounted, safe_name, sample_assets
from eva_helpers.plots import plot_stats, show_samples, spread_indices
from eva_helpers.training.config import TrainConfig, bound_problem

DEFAULT_DATASET = "my-dataset"  # the folder notebook 01 builds under <paths.data>
SAMPLE = "sample"  # the shipped 64 px sample (data_manifest.json)
ORIGIN = ".eva-origin"  # in a cached copy: the folder (on Drive) it was copied from
SMOKE_BUILD = {"size": 48, "positions": 1, "teacher": "geometric", "shard_size": 200}


# ---- 01: build ------------------------------------------------------------------------------------------------------
@dataclass
class BuildPlan:
    bg_dir: Path
    fg_dir: Path
    out_dir: Path
    size: int
    positions: int
    seed: int
    teacher: str
    mode: str
    scale_range: tuple[float, float]
    flips: bool
    shard_size: int

    def __str__(self) -> str:
        return (f"bg:      {self.bg_dir}\nfg:      {self.fg_dir}\nout:     {self.out_dir}\n"
                f"teacher: {self.teacher} ({self.mode})\nsize:    {self.size} px, {self.positions} positions per "
                f"(bg, fg{', flip' if self.flips else ''}), seed {self.seed}")


def resolve_teacher(teacher: str, out_dir: Path) -> str:
    """`teachers.resolve_teacher` with the teacher a started build in `out_dir` recorded: "auto" keeps it (a reconnect
    must not switch teachers), else picks Depth Anything V2 Small on a GPU and refuses a CPU runtime in one line."""
    try:
        recorded = json.loads((Path(out_dir) / "manifest.json").read_text())["params"]["teacher"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    return resolve(teacher, recorded, where=str(out_dir))


def build_plan(paths: Paths, smoke: bool = False, *, bg_dir: str = "", fg_dir: str = "",
               dataset: str = DEFAULT_DATASET, size: int = BUILD_DEFAULTS["size"],
               positions: int = BUILD_DEFAULTS["positions"], seed: int = BUILD_DEFAULTS["seed"], teacher: str = "auto",
               mode: str = BUILD_DEFAULTS["mode"], scale_range: tuple[float, float] = BUILD_DEFAULTS["scale_range"],
               flips: bool = BUILD_DEFAULTS["flips"], shard_size: int = BUILD_DEFAULTS["shard_size"]) -> BuildPlan:
    """Notebook 01's parameters made concrete: SMOKE sizes, the sample assets for empty folders, the teacher; then
    what the build will cost (composites, shards, bytes, time), refused in one line when the destination lacks space.
    SIZE, POSITIONS, SEED and SHARD_SIZE are range-checked first: the cost estimate builds a few composites."""
    safe_name(dataset, what="DATASET", source="notebook 01")  # the build goes to <paths.data>/<dataset>, nowhere else
    if smoke:
        size, positions, teacher, shard_size = (SMOKE_BUILD[k] for k in ("size", "positions", "teacher", "shard_size"))
        dataset += "-smoke"
    check_build_bounds(size=size, positions=positions, seed=seed, shard_size=shard_size)
    out = paths.data / dataset
    plan = BuildPlan(Path(bg_dir) if bg_dir else sample_assets() / "bg", Path(fg_dir) if fg_dir else sample_assets() / "fg",
                     out, size, positions, seed, resolve_teacher(teacher, out), mode, tuple(scale_range), flips,
                     shard_size)
    print(plan)
    require_drive_mounted(out, "the build")
    estimate_build(plan.bg_dir, plan.fg_dir, out, size=size, positions=positions, flips=flips, shard_size=shard_size,
                   seed=seed, mode=mode)
    return plan


def build(plan: BuildPlan) -> dict[str, Any]:
    """Build (or resume) the dataset of `plan`; returns its manifest."""
    require_drive_mounted(plan.out_dir, "the build")
    return build_dataset(plan.bg_dir, plan.fg_dir, plan.out_dir, size=plan.size, positions=plan.positions,
                         seed=plan.seed, teacher=plan.teacher, mode=plan.mode, scale_range=plan.scale_range,
                         flips=plan.flips, shard_size=plan.shard_size)


def shard_report(manifest: dict[str, Any], out_dir: str | Path, max_rows: int = 10) -> str:
    """Where the shards are: one line per shard (first `max_rows`), then totals."""
    shards = manifest["shards"]
    lines = [str(out_dir)] + [f'{s["file"]}  {s["samples"]:6d} samples  {s["bytes"] / 1e6:7.2f} MB  '
                              f'sha256 {s["sha256"][:12]}…' for s in shards[:max_rows]]
    if len(shards) > max_rows:
        lines.append(f"… {len(shards) - max_rows} more shards")
    lines.append(f"{manifest['counts']['samples']} samples, {sum(s['bytes'] for s in shards) / 1e6:.1f} MB in "
                 f"{len(shards)} shards")
    text = "\n".join(lines)
    print(text)
    return text


def show_samples_of(data_dir: str | Path, k: int = 6, seed: int = 0):
    """k random samples of a dataset: bg | fg_bg | mask | depth."""
    ds = ShardDataset(data_dir)
    labels = dataset_labels(data_dir)
    print(labels)  # which teacher made what the depth column shows, and whether it is synthetic
    return show_samples([ds[i] for i in spread_indices(len(ds), k, seed)], title=labels)


# ---- 02-05: which dataset ---------------------------------------------------------------------------------------------
def dataset_for(dataset: str, paths: Paths, smoke: bool = False) -> Path:
    """The local dataset folder a notebook reads (Drive datasets are copied to the local cache, stats.json too).

    SMOKE: notebook 01's SMOKE build of `dataset` when complete, else the shipped sample. Otherwise: a folder path, a
    dataset notebook 01 built under `paths.data`, or a name in data_manifest.json; none of these is a clear error.
    """
    name = dataset or DEFAULT_DATASET
    require_drive_mounted(paths.root, "reading and caching the dataset")

    def folder(n: str) -> Path:  # a plain name lives under paths.data; anything else is a folder path as given
        return paths.data / n if in_data(n) else Path(n).expanduser()

    if smoke:
        built = folder(f"{name}-smoke")
        name = str(built) if _complete(built) else SAMPLE
    else:
        own = folder(name)
        if (own / MANIFEST).is_file() and not _complete(own):
            raise EvaError(f"{own}: the build is not finished; run notebook 01 again with DATASET = {name!r} "
                           "(it resumes where it stopped)")
        known = known_dataset(name, paths)
        if not (Path(name).expanduser() / MANIFEST).is_file() and not (own / MANIFEST).is_file() and not known:
            raise EvaError(f"no dataset {name!r}: run notebook 01 first (it builds {own}; about "
                           f"{estimate_build_minutes(400_000):.0f} min of CPU work for 400k composites at 224 px), "
                           f"or set DATASET = {SAMPLE!r} for the shipped 64 px sample, or give a folder path")
    data_dir = resolve_dataset(name, paths)
    origin = folder(name)
    if (origin / MANIFEST).is_file() and origin.resolve() != Path(data_dir).resolve():

        require_drive_mounted(origin, "copying stats.json")
        atomic_write_text(Path(data_dir) / ORIGIN, str(origin.resolve()))  # where stats.json must go back to
        _sync_stats(origin, data_dir)
    print(f"dataset: {data_dir}" + ("  (the shipped 64 px sample)" if name == SAMPLE else ""))
    return data_dir


def _complete(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "manifest.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def _sync_stats(origin: Path, data_dir: Path) -> None:
    """stats.json computed earlier (kept on Drive beside the dataset) follows the dataset into the local cache."""
    src, dst = origin / "stats.json", Path(data_dir) / "stats.json"
    if src.is_file() and src.resolve() != dst.resolve() and (not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime):
        atomic_copy(src, dst)


def estimate_build_minutes(samples: int, rate: float = BUILD_RATE) -> float:
    return samples / rate / 60.0


# ---- 02: explore -----------------------------------------------------------------------------------------------------
def explore_stats(data_dir: str | Path, limit: int | None = None) -> dict[str, Any]:
    """Compute stats.json, print the table, keep a copy beside the Drive dataset (the cache is lost), plot."""
    stats = compute_stats(data_dir, limit=limit or None)
    print(describe_stats(stats))
    try:
        origin = Path((Path(data_dir) / ORIGIN).read_text().strip())
    except OSError:
        origin = None  # not a copy: stats.json was written in the dataset folder itself
    if origin is not None and (origin / "manifest.json").is_file():
        require_drive_mounted(origin, "keeping stats.json beside the dataset")
        atomic_copy(Path(data_dir) / "stats.json", origin / "stats.json")
        print(f"stats.json kept at {origin} (notebooks 03-05 normalise with it)")
    plot_stats(stats)
    return stats


def show_augmentation(data_dir: str | Path, size: int, seed: int = 0, k: int = 4, second_shot: str = "full"):
    """k raw samples, then one sample as training sees it, k draws (flip, brightness/contrast and a second shot of the
    scene, applied on the batch as `fit` does): mask and depth must move with fg_bg; bg looks like another photo."""
    import torch

    from eva_helpers.training.batch_augment import BatchAugment

    cfg = TrainConfig(second_shot=second_shot, size=size, seed=seed)  # SIZE and SEED range-checked, in one line
    show_samples_of(data_dir, k, seed)
    batch = collate([ShardDataset(data_dir, transform=resize_transform(size))[0]] * k)
    aug = BatchAugment.from_config(cfg)
    targets = {"mask": batch["mask"].float(), "depth": batch["depth"].float()}
    bg, fg_bg, t = aug(batch["bg"].float(), batch["fg_bg"].float(), targets,
                       aug.generator(seed, 0, 0, torch.device("cpu")))
    return show_samples([{"bg": bg[i].byte(), "fg_bg": fg_bg[i].byte(), "mask": t["mask"][i], "depth": t["depth"][i],
                          "meta": {"index": 0, "bg_id": f"draw {i + 1}"}} for i in range(k)])


def show_splits(data_dir: str | Path, by: str = "bg", seed: int = 0) -> dict:
    problem = bound_problem("seed", seed)
    if problem:
        raise EvaError(problem)
    splits = make_splits(data_dir, by=by, seed=seed)
    for k in ("train", "val", "test"):
        print(f"{k:5s} {len(splits[k]):6d} samples")
    print(splits["info"])
    return splits


def sample_browser_for(data_dir: str | Path, splits: dict):
    return sample_browser(ShardDataset(data_dir), splits)
