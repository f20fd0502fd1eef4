"""Scoring where users meet the model: the run's held-out backgrounds built larger than the model, predicted as
`eva predict` predicts a photo, beside the free baseline at that size.

`eva eval` scores at the model's size (the split resized to it). A user's photo is larger: 4x for the demo's 64 px
model on a 256 px photo, 16-50x for a 224 px model on a phone photo. Here the run's own dataset is built again at a
larger size from the same sources and seed (every choice of sample i comes from (seed, i), so sample i is the same
composite, checked on its provenance), and each pair of the run's split goes through `predict.prepare_pair` ->
the model at its size -> the mask at the photo's size, both as the model's answer resized ("upsampled") and with its
outline decided by the photo's pixels (refine.py, "refined", what `eva predict` writes). The baseline (max_c
|fg_bg - bg| > t, 3x3 open/close) runs at the photo's size with t chosen on the run's validation backgrounds at that
size. Per image: mask IoU and Boundary IoU (3 px); the file: `metrics-photo-<size>px[-<split other than test>]
[-<change>][-aligned].json`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eva_helpers.atomic import atomic_write_json
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.data.formats import read_manifest
from eva_helpers.errors import EvaError
from eva_helpers.evaluation.baseline import THRESHOLDS, bg_difference, open_close_scores, threshold_sweep
from eva_helpers.evaluation.perturb import check_name, perturb_sample
from eva_helpers.predict.pair import finish, prepare_pair, run_model, single_threaded
from eva_helpers.training.metrics import binary_mask_metrics, boundary_iou
from eva_helpers.training.run_folder import resolve_data
from eva_helpers.training.trained_run import load_trained_run

SAME_BUILD = ("flips", "mode", "positions", "scale_range", "seed", "teacher", "limit")  # params that fix the composites
BOUNDARY_PX = 3


def check_same_composites(small: Path, large: Path) -> None:
    """One line when `large` is not `small`'s composites at another size (other sources, seed or layout)."""
    a, b = read_manifest(small), read_manifest(large)
    differ = [k for k in SAME_BUILD if a["params"].get(k) != b["params"].get(k)]
    if a.get("sources_sha256") != b.get("sources_sha256"):
        differ.append("source photos")
    if differ or a["counts"]["samples"] != b["counts"]["samples"]:
        raise EvaError(f"{large} is not the run's dataset {small} at another size ({', '.join(differ) or 'samples'} "
                       f"differ): build it with the same sources, seed and settings and only --size changed")
    if int(b["params"]["size"]) <= int(a["params"]["size"]):
        raise EvaError(f"{large} is {b['params']['size']} px, not larger than the run's {a['params']['size']} px data")


def _scores(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    p = torch.from_numpy(np.ascontiguousarray(pred > 0))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(target > 0)).float()[None, None]
    return float(binary_mask_metrics(p, t)["mask_iou"][0]), float(boundary_iou(p, t, BOUNDARY_PX)[0])


def fit_baseline(large: ShardDataset, positions: list[int]) -> float:
    """The baseline's threshold with the best mean IoU over `positions` (validation pairs) at the photo's size."""
    total = torch.zeros(len(THRESHOLDS), dtype=torch.float64)
    for pos in positions:
        s = large.load(pos)
        d = open_close_scores(bg_difference(s["bg"], s["fg_bg"]))  # (1, 1, H, W)
        target = torch.from_numpy(s["mask"]).float()[None, None]
        total += torch.cat([m["mask_iou"] for m in threshold_sweep(d, target, THRESHOLDS)])
    return float(THRESHOLDS[int(torch.argmax(total))])


def score_at_photo_size(run_dir: str | Path, large_dir: str | Path, *, split: str = "test", perturb: str = "clean",
                        align: bool = False, which: str = "best", limit: int | None = None, max_fit: int = 128,
                        progress: bool = True, reuse: dict | None = None) -> dict[str, Any]:
    """Score the run's `split` at the size `large_dir` was built at (module docstring); write and return the metrics.
    `reuse`: a dict the caller keeps between calls on one run and dataset; the baseline's threshold is chosen once."""
    from tqdm.auto import tqdm

    from eva_helpers.evaluation.baseline import bg_difference_mask

    check_name(perturb)
    run_dir, large_dir = Path(run_dir), Path(large_dir)
    trained = load_trained_run(run_dir, which, "cpu")
    model, cfg, stats, calib, dev = trained.model, trained.cfg, trained.stats, trained.calibration, trained.device
    small_dir = resolve_data(cfg.data, run_dir)
    if small_dir is None or not Path(small_dir).is_dir():
        raise EvaError(f"{run_dir}: the run's own dataset ({cfg.data}) is not there, so its split is unknown")
    check_same_composites(Path(small_dir), large_dir)
    small, large = ShardDataset(str(small_dir)), ShardDataset(str(large_dir))
    splits = cfg.splits(small_dir)
    scored = [int(p) for p in splits[split]][:limit]
    rng = np.random.default_rng(cfg.seed)
    val = [int(p) for p in splits["val"]]
    key = (str(run_dir), str(large_dir), max_fit)
    if reuse is not None and reuse.get("key") == key:
        threshold = reuse["threshold"]
    else:
        threshold = fit_baseline(large, sorted(rng.choice(val, size=min(max_fit, len(val)), replace=False).tolist()))
        if reuse is not None:
            reuse.update(key=key, threshold=threshold)
    rows: dict[str, list[tuple[float, float]]] = {"upsampled": [], "refined": [], "baseline": []}
    refine_s, pixels = 0.0, 0
    model.eval()
    with single_threaded():
        for pos in tqdm(scored, desc=f"photo size {split}", unit="img", disable=not progress):
            raw = large.load(pos)
            small_meta = small.load(pos)["meta"]
            if any(raw["meta"].get(k) != small_meta.get(k) for k in ("bg_id", "fg_id", "flip")):
                raise EvaError(f"{large_dir}: sample {pos} is not the run's composite at another size; rebuild it")
            s = perturb_sample(raw, perturb, pos)
            prep = prepare_pair(s["bg"], s["fg_bg"], cfg.size, align)
            out = run_model(model, prep, stats, dev)
            rows["upsampled"].append(_scores(finish(out, prep.shape, calib)["mask"], s["mask"]))
            t0 = time.perf_counter()
            refined = finish({"mask": out["mask"]}, prep.shape, calib, prep.full)["mask"]
            refine_s, pixels = refine_s + time.perf_counter() - t0, pixels + prep.shape[0] * prep.shape[1]
            rows["refined"].append(_scores(refined, s["mask"]))
            base = bg_difference_mask(prep.full[0] if prep.full else s["bg"], s["fg_bg"], threshold)
            rows["baseline"].append(_scores(base[0, 0].numpy(), s["mask"]))
    size = int(read_manifest(large_dir)["params"]["size"])
    metrics: dict[str, Any] = {"photo_size": size, "model_size": cfg.size, "split": split, "n_images": len(scored),
                               "perturb": perturb, "aligned": align, "baseline_threshold": threshold,
                               "refine_s_per_megapixel": refine_s / max(pixels / 1e6, 1e-9),
                               "dataset": str(large_dir.resolve()), "checkpoint": which}
    for who, vals in rows.items():
        metrics[f"{who}_mask_iou"] = float(np.mean([v[0] for v in vals])) if vals else None
        metrics[f"{who}_boundary_iou"] = float(np.mean([v[1] for v in vals])) if vals else None
    tag = ("" if split == "test" else f"-{split}") + ("" if perturb == "clean" else f"-{perturb}") + (
        "-aligned" if align else "")
    atomic_write_json(run_dir / f"metrics-photo-{size}px{tag}.json", metrics, sort_keys=True)
    return metrics


def photo_metrics_path(run_dir: str | Path, size: int) -> Path:
    """Where the clean test split's score at `size` px is kept."""
    return Path(run_dir) / f"metrics-photo-{size}px.json"


def load_photo_metrics(run_dir: str | Path, size: int) -> dict | None:
    p = photo_metrics_path(run_dir, size)
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
