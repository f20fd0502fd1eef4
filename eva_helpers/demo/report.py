"""The demo report: report/README.md, its figures and metrics.json, what a person opens first after `eva demo`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from eva_helpers.atomic import atomic_write_text
from eva_helpers.compositing.teachers import SYNTHETIC, describe_labels
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.demo.plan import PHOTO_SCALE, describe
from eva_helpers.plots import plot_history, plot_stats, save_figure, show_samples, spread_indices


def footage_lines(footage: dict | None) -> list[str]:
    """The report's section on one clip from a fixed camera (run.score_footage)."""
    if not footage:
        return []
    return ["## Footage from a fixed camera", "",
            f"`eva predict --video` on a clip made from a held-out background with cut-outs walking across it "
            f"({footage['frames']} frames at {footage['width']}x{footage['height']}, shadows, a light fade, shake, noise "
            f"and JPEG; bg: a plate estimated from the clip), {footage['run']}: mean mask IoU "
            f"{footage['mask_iou']:.3f} per frame, {footage['frames_per_s']:.0f} frames/s on this machine. "
            "bench/footage.py sets it beside OpenCV's MOG2 and KNN subtractors.", "", "![footage](footage.png)", ""]


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


def write_report(cfg: Any, data: Path, stats: dict, results: dict[str, dict],
                 photo: dict | None = None, footage: dict | None = None) -> Path:
    """report/README.md + PNG figures + metrics.json (cfg: run.DemoConfig)."""
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
    record = {**results, **({"photo_size": photo} if photo else {}), **({"footage": footage} if footage else {})}
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
    lines += ["**How each model was trained** (one seed here; `bench/quality.py` has these runs over 3 seeds):", "",
              *[f"- {describe(run, cfg.size)}." for run in cfg.runs], ""]
    lines += ["**Against the free baselines** (same test images; one training seed here, `bench/quality.py` gives the "
              "mean and spread over seeds):", "", *margins(results), ""]
    lines += photo_size_lines(photo)
    lines += footage_lines(footage)
    lines += ["## Figures", "", "![samples](samples.png)", "", "![stats](stats.png)", ""]
    for name in figures:
        for kind in ("history", "best_worst"):
            if (report / f"{kind}_{name}.png").is_file():
                lines += [f"### {name}: {kind.replace('_', '/')}", "", f"![{name} {kind}]({kind}_{name}.png)", ""]
    atomic_write_text(report / "README.md", "\n".join(lines))
    return report / "README.md"
