"""`eva demo`: offline, on the embedded sample: build -> stats -> train mask, depth and joint models -> evaluate -> report.

Every step is resumable: a second run skips what is complete (verified shards, finished runs, fresh metrics) and picks up
an interrupted training from its last checkpoint.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eva_helpers.atomic import atomic_write_text, check_output_folder
from eva_helpers.compositing.build import build_dataset
from eva_helpers.compositing.teachers import SYNTHETIC, describe_labels
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.data.loaders import load_stats
from eva_helpers.data.stats import compute_stats
from eva_helpers.errors import EvaError
from eva_helpers.paths import sample_assets
from eva_helpers.plots import plot_history, plot_stats, save_figure, show_samples, spread_indices
from eva_helpers.training.config import TrainConfig, bound_problem

# (task, model) trained by the demo; the joint model shares one encoder between a mask and a depth decoder.
DEMO_RUNS = (("mask", "unet_small"), ("depth", "unet_small"), ("joint", "unet_small"))
# `minutes` scales the trainings' epochs (15 per 10 minutes): a day of CPU, 2160 epochs, is far past what the sample's
# few hundred composites can teach
MAX_MINUTES = 24 * 60


@dataclass
class DemoConfig:
    """Sizes chosen so the whole demo takes about 5 minutes on 2 CPU cores (bench/RESULTS.md); the models and recipe
    are the defaults, so the demo shows what a user gets."""

    out: str = "demo_output"
    size: int = 64
    positions: int = 4
    seed: int = 0
    epochs: int = 15
    val_fraction: float = 0.17  # 2 of the 12 sample backgrounds for validation, 2 held out for the test
    test_fraction: float = 0.17
    batch_size: int = 32
    workers: int = 2
    runs: tuple = DEMO_RUNS
    train_overrides: dict = field(default_factory=dict)


def build_sample(cfg: DemoConfig) -> Path:
    data = Path(cfg.out) / "data" / f"sample-{cfg.size}px"
    assets = sample_assets()
    build_dataset(assets / "bg", assets / "fg", data, size=cfg.size, positions=cfg.positions, seed=cfg.seed,
                  teacher="geometric", mode="layered", shard_size=500)
    return data


def ensure_stats(data: Path) -> dict:
    return load_stats(str(data)) or compute_stats(str(data))


def train_config(cfg: DemoConfig, task: str, model: str, **where: str) -> TrainConfig:
    """The TrainConfig of one of the demo's trainings (range-checked: run_demo builds them all before the build)."""
    return TrainConfig(task=task, model=model, epochs=cfg.epochs, batch_size=cfg.batch_size, size=cfg.size,
                       seed=cfg.seed, workers=cfg.workers, val_fraction=cfg.val_fraction,
                       test_fraction=cfg.test_fraction, checkpoint_interval_s=60.0, **where, **cfg.train_overrides)


def train_and_evaluate(cfg: DemoConfig, data: Path, task: str, model: str) -> dict[str, Any]:
    from eva_helpers.evaluation.heldout import current_metrics
    from eva_helpers.training.fit import fit
    from eva_helpers.training.run_folder import run_folder

    run_dir = run_folder(Path(cfg.out) / "runs", task, model, cfg.size, data, name=f"{task}-{model}")
    fit(train_config(cfg, task, model, data=str(data), run_dir=str(run_dir)))
    return current_metrics(run_dir, data)  # fresh metrics.json reused, else evaluated (notebook 05 does the same)


PHOTO_SCALE = 4  # the report's photos larger than the model: 4x (256 px for the 64 px models)


def score_larger_photos(cfg: DemoConfig, data: Path, results: dict[str, dict]) -> dict | None:
    """The last mask model's test split on photos PHOTO_SCALE x its size, as `eva predict` sees a photo
    (photo_size.py); reused while newer than the run's best checkpoint."""
    from eva_helpers.evaluation.photo_size import (
        build_larger,
        load_photo_metrics,
        photo_metrics_path,
        score_at_photo_size,
    )
    from eva_helpers.training.run_folder import checkpoint_path

    masks = [m for m in results.values() if m.get("mask_iou") is not None]
    if not masks:
        return None
    run_dir = Path(masks[-1]["run_dir"])
    size = cfg.size * PHOTO_SCALE
    done = load_photo_metrics(run_dir, size)
    best = checkpoint_path(run_dir, "best")
    path = photo_metrics_path(run_dir, size)
    if done and (not best.is_file() or path.stat().st_mtime >= best.stat().st_mtime):
        return {**done, "run": run_dir.name}
    large = build_larger(data, PHOTO_SCALE, sample_assets())
    return {**score_at_photo_size(run_dir, large, progress=False), "run": run_dir.name}


def photo_size_lines(photo: dict | None) -> list[str]:
    """The report's section on photos larger than the model."""
    if not photo:
        return []
    row = "| {} | {:.3f} | {:.3f} |"
    return [f"## On photos {PHOTO_SCALE}x the model's size", "",
            f"Users give `eva predict` photos larger than the model. The same test composites built at "
            f"{photo['photo_size']} px, predicted as `eva predict` does ({photo['run']}, {photo['n_images']} pairs); "
            "the baseline thresholds |fg_bg - bg| at that size. Boundary IoU scores the 3 px along each outline.", "",
            "| mask | IoU | Boundary IoU |", "|---|---:|---:|",
            row.format("**model, outline from the photo (what `eva predict` writes)**", photo["refined_mask_iou"],
                       photo["refined_boundary_iou"]),
            row.format("model, its answer resized (`--no-refine`)", photo["upsampled_mask_iou"],
                       photo["upsampled_boundary_iou"]),
            row.format(f"bg-difference baseline (threshold {photo['baseline_threshold']:.2f})",
                       photo["baseline_mask_iou"], photo["baseline_boundary_iou"]), ""]


def _fmt(v: Any, nd: int = 3) -> str:
    return "–" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def results_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per model plus the bg-difference baseline row."""
    head = ("| model | params | mask IoU | mask Dice | pixel acc | depth RMSE | AbsRel | δ<1.25 | depth SSIM | train img/s |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = []
    for name, m in results.items():
        rows.append(f"| {name} | {m.get('parameters', 0) / 1e6:.2f}M | {_fmt(m.get('mask_iou'))} | {_fmt(m.get('mask_dice'))} | "
                    f"{_fmt(m.get('mask_pixel_acc'))} | {_fmt(m.get('depth_rmse'))} | {_fmt(m.get('depth_absrel'))} | "
                    f"{_fmt(m.get('depth_delta1'))} | {_fmt(m.get('depth_ssim'))} | {_fmt(m.get('train_images_per_s'), 0)} |")
    base = next((m for m in results.values() if "baseline_mask_iou" in m), None)
    if base:
        rows.append(f"| bg-difference baseline (threshold {base.get('baseline_threshold', float('nan')):.3f}, no learning) | 0 | "
                    f"{_fmt(base.get('baseline_mask_iou'))} | {_fmt(base.get('baseline_mask_dice'))} | – | – | – | – | – | – |")
    dbase = next((m for m in results.values() if "baseline_depth_rmse" in m), None)
    if dbase:  # scored on the same test images as the depth models
        rows.append(f"| mean-depth baseline (mean training label + baseline mask at its contact row, no learning) | 0 | – | – | – | "
                    f"{_fmt(dbase.get('baseline_depth_rmse'))} | {_fmt(dbase.get('baseline_depth_absrel'))} | "
                    f"{_fmt(dbase.get('baseline_depth_delta1'))} | {_fmt(dbase.get('baseline_depth_ssim'))} | – |")
    return head + "\n".join(rows) + "\n"


def margins(results: dict[str, dict]) -> list[str]:
    """One plain sentence per model: by how much it beats (or loses to) the free baselines on the same test images."""
    out = []
    for name, m in results.items():
        parts = []
        if m.get("mask_iou") is not None and m.get("baseline_mask_iou") is not None:
            d = m["mask_iou"] - m["baseline_mask_iou"]
            parts.append(f"mask IoU {m['mask_iou']:.3f} vs {m['baseline_mask_iou']:.3f} "
                         f"({'+' if d >= 0 else '−'}{abs(d):.3f}, {'beats' if d > 0 else 'does not beat'} the baseline)")
        if m.get("depth_rmse") is not None and m.get("baseline_depth_rmse") is not None:
            r, br = m["depth_rmse"], m["baseline_depth_rmse"]
            parts.append(f"depth RMSE {r:.3f} vs {br:.3f} ({r / br:.0%} of the baseline's), SSIM "
                         f"{_fmt(m.get('depth_ssim'))} vs {_fmt(m.get('baseline_depth_ssim'))}")
        if parts:
            out.append(f"- **{name}**: " + "; ".join(parts) + ".")
    return out


def write_report(cfg: DemoConfig, data: Path, stats: dict, results: dict[str, dict],
                 photo: dict | None = None) -> Path:
    """report/README.md + PNG figures + metrics.json: what a person opens first."""
    from eva_helpers.training.run_folder import read_history

    report = Path(cfg.out) / "report"
    report.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((data / "manifest.json").read_text())
    teacher = manifest.get("teacher") or {"name": manifest["params"]["teacher"]}  # as the build recorded it
    labels = describe_labels(teacher)
    ds = ShardDataset(str(data))
    save_figure(show_samples([ds[i] for i in spread_indices(len(ds), 6, cfg.seed)], title=labels),
                report / "samples.png")
    save_figure(plot_stats(stats), report / "stats.png")
    figures = []
    for name, m in results.items():
        run_dir = Path(m["run_dir"])
        hist = read_history(run_dir)
        if hist:
            save_figure(plot_history(hist), report / f"history_{name}.png")
        if (run_dir / "eval_best_worst.png").is_file():
            shutil.copyfile(run_dir / "eval_best_worst.png", report / f"best_worst_{name}.png")
        figures.append(name)
    record = {**results, **({"photo_size": photo} if photo else {})}
    atomic_write_text(report / "metrics.json", json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    params = manifest["params"]
    caveat = (" Depth scores here say how well a model reproduces that guess, not how well it measures real depth."
              if teacher.get("name") == SYNTHETIC else "")
    lines = [
        "# eva demo report", "",
        f"Embedded sample: {manifest['counts'].get('backgrounds')} backgrounds x {manifest['counts'].get('foregrounds')} "
        f"cut-outs, {manifest['counts']['samples']} composites at {params['size']} px (seed {params['seed']}, "
        f"{params['mode']} labels). Metrics on the **test split: held-out backgrounds** never seen in training; depth "
        "metrics compare the model with the teacher's labels.", "",
        f"**{labels[0].upper()}{labels[1:]}.**{caveat}", "",
        results_table(results),
        "Pixel accuracy is shown for completeness only: masks here are mostly background, so predicting nothing already "
        "scores high. Compare mask IoU with the bg-difference baseline row, which needs no learning.", "",
        "Depth RMSE and SSIM compare the predicted map with the label as it is (disparity-like, near = 1). AbsRel and "
        "δ<1.25 follow the MiDaS / Depth Anything relative-depth protocol: scale and shift fitted per image in "
        "disparity (scale >= 0), both maps converted to depth 1 / disparity capped at 10, so a uniform offset costs "
        "nothing and an inverted or flat map costs a lot. Compare them with the mean-depth baseline row.", "",
    ]
    lines += ["**Against the free baselines** (same test images; one training seed here, `bench/quality.py` gives the "
              "mean and spread over seeds):", "", *margins(results), ""]
    lines += photo_size_lines(photo)
    lines += ["## Figures", "", "![samples](samples.png)", "", "![stats](stats.png)", ""]
    for name in figures:
        for kind in ("history", "best_worst"):
            if (report / f"{kind}_{name}.png").is_file():
                lines += [f"### {name}: {kind.replace('_', '/')}", "", f"![{name} {kind}]({kind}_{name}.png)", ""]
    atomic_write_text(report / "README.md", "\n".join(lines))
    return report / "README.md"


def run_demo(out: str | Path = "demo_output", minutes: float = 10.0, seed: int = 0, **overrides) -> Path:
    """The README's main job. `minutes` scales the epochs of the three trainings (10 = the default sizes)."""
    import math

    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and 0 < minutes <= MAX_MINUTES):
        raise EvaError(f"minutes={minutes!r} is not valid: give a CPU time budget > 0 and up to {MAX_MINUTES} (a day), "
                       "e.g. 10")
    problem = bound_problem("seed", seed)
    if problem:
        raise EvaError(problem)
    check_output_folder(out, "demo")
    cfg = DemoConfig(out=str(out), seed=seed, **overrides)
    cfg.epochs = max(1, round(cfg.epochs * minutes / 10.0))
    for task, model in cfg.runs:  # every training's settings in range before the build writes anything
        train_config(cfg, task, model)
    data = build_sample(cfg)
    stats = ensure_stats(data)
    results = {f"{task}-{model}": train_and_evaluate(cfg, data, task, model) for task, model in cfg.runs}
    return write_report(cfg, data, stats, results, score_larger_photos(cfg, data, results))
