"""`eva demo`: offline, on the embedded sample: build -> stats -> a joint model, then mask and depth models fine-tuned
from it -> evaluate -> report (the schedule: plan.py; the report: report.py).

Every step is resumable: a second run skips what is complete (verified shards, finished runs, fresh metrics) and picks up
an interrupted training from its last checkpoint.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eva_helpers.atomic import check_output_folder
from eva_helpers.compositing.build import build_dataset
from eva_helpers.data.loaders import load_stats
from eva_helpers.data.stats import compute_stats
from eva_helpers.demo.plan import DEMO_RUNS, FOOTAGE_FRAMES, PHOTO_SCALE, DemoRun, Progress, plan, print_plan
from eva_helpers.demo.report import write_report
from eva_helpers.errors import EvaError
from eva_helpers.estimate import duration_text
from eva_helpers.paths import sample_assets
from eva_helpers.plots import save_figure
from eva_helpers.training.config import TrainConfig, bound_problem

DEFAULT_MINUTES = 4.0  # the three trainings of DEMO_RUNS on 2 CPU cores, about (bench/RESULTS.md)
MAX_MINUTES = 24 * 60  # `minutes` scales the epochs; a day of CPU is far past what the sample's composites can teach


@dataclass
class DemoConfig:
    """The demo's sizes and schedule (DEMO_RUNS); about 4 minutes on 2 CPU cores (bench/RESULTS.md). The models and
    the recipe are the defaults, so the demo shows what a user gets."""

    out: str = "demo_output"
    size: int = 64
    positions: int = 4
    seed: int = 0
    epochs: int = 15  # a training from scratch (bench/quality.py's rows); the demo's own trainings: `runs`
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


def train_config(cfg: DemoConfig, task: str, model: str = "unet_small", *, run: DemoRun | None = None,
                 **where: Any) -> TrainConfig:
    """The TrainConfig of one of the demo's trainings, `run`'s schedule or cfg.epochs from scratch (range-checked:
    run_demo builds them all before the build)."""
    schedule = {} if run is None else {"epochs": run.epochs, "size_stages": [list(st) for st in run.size_stages] or None}
    return TrainConfig(**{**dict(task=task, model=model, epochs=cfg.epochs, batch_size=cfg.batch_size, size=cfg.size,
                                 seed=cfg.seed, workers=cfg.workers, val_fraction=cfg.val_fraction,
                                 test_fraction=cfg.test_fraction, checkpoint_interval_s=60.0),
                          **schedule, **where, **cfg.train_overrides})


def run_dir_of(cfg: DemoConfig, data: Path, run: DemoRun) -> Path:
    from eva_helpers.training.run_folder import run_folder

    return run_folder(Path(cfg.out) / "runs", run.task, run.model, cfg.size, data, name=run.name)


def train_and_evaluate(cfg: DemoConfig, data: Path, run: DemoRun) -> dict[str, Any]:
    from eva_helpers.evaluation.heldout import current_metrics
    from eva_helpers.training.trainer import fit

    start = next((r for r in cfg.runs if r.task == run.start_from), None)
    init = {"init_from": str(run_dir_of(cfg, data, start))} if start else {}
    run_dir = run_dir_of(cfg, data, run)
    fit(train_config(cfg, run.task, run.model, run=run, data=str(data), run_dir=str(run_dir), **init))
    return current_metrics(run_dir, data)  # fresh metrics.json reused, else evaluated (notebook 05 does the same)


def shown_run(results: dict[str, dict]) -> str | None:
    """The run the report's photo-size and footage sections show: the joint model, else the first with a mask."""
    masks = [name for name, m in results.items() if m.get("mask_iou") is not None]
    return next((n for n in masks if n.startswith("joint-")), masks[0]) if masks else None


def score_larger_photos(cfg: DemoConfig, data: Path, results: dict[str, dict]) -> dict | None:
    """The shown run's test split on photos PHOTO_SCALE x its size, as `eva predict` sees a photo (photo_size.py);
    reused while newer than the run's best checkpoint."""
    from eva_helpers.compositing.build import build_larger
    from eva_helpers.evaluation.photo_size import (
        load_photo_metrics,
        photo_metrics_path,
        score_at_photo_size,
    )
    from eva_helpers.training.run_folder import fresh_for_best

    name = shown_run(results)
    if name is None:
        return None
    run_dir = Path(results[name]["run_dir"])
    size = cfg.size * PHOTO_SCALE
    done = load_photo_metrics(run_dir, size)
    if done and fresh_for_best(run_dir, photo_metrics_path(run_dir, size)):
        return {**done, "run": run_dir.name}
    large = build_larger(data, PHOTO_SCALE, sample_assets())
    return {**score_at_photo_size(run_dir, large, progress=False), "run": run_dir.name}


def score_footage(cfg: DemoConfig, results: dict[str, dict]) -> dict | None:
    """The shown run on a clip made from a held-out background with cut-outs walking across it (clips.demo_clip),
    predicted as `eva predict --video` does: the strip figure and its mean per-frame IoU."""
    from eva_helpers.demo.clips import demo_clip, load_gt, mask_ious
    from eva_helpers.predict.footage import footage_strip, predict_video

    name = shown_run(results)
    if name is None:
        return None
    run_dir, folder = Path(results[name]["run_dir"]), Path(cfg.out) / "footage"
    clip, gt = demo_clip(run_dir, folder / "clip", frames=FOOTAGE_FRAMES, seed=cfg.seed, size=(320, 240))
    rep = predict_video(run_dir, clip, folder / "predicted", progress=False, say=lambda line: None)
    report = Path(cfg.out) / "report"
    report.mkdir(parents=True, exist_ok=True)
    save_figure(footage_strip(folder / "predicted"), report / "footage.png")
    ious = mask_ious(rep.outputs["masks"], load_gt(gt)[:rep.frames])
    return {"run": name, "frames": rep.frames, "width": rep.width, "height": rep.height,
            "mask_iou": sum(ious) / len(ious), "frames_per_s": rep.frames_per_s}


def run_demo(out: str | Path = "demo_output", minutes: float = DEFAULT_MINUTES, seed: int = 0, **overrides) -> Path:
    """The README's main job. `minutes` scales the epochs of the three trainings (DEFAULT_MINUTES: DEMO_RUNS as
    they are)."""
    from eva_helpers.training.run_folder import read_summary

    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and 0 < minutes <= MAX_MINUTES):
        raise EvaError(f"minutes={minutes!r} is not valid: give a CPU time budget > 0 and up to {MAX_MINUTES} (a day), "
                       f"e.g. {DEFAULT_MINUTES:g}")
    problem = bound_problem("seed", seed)
    if problem:
        raise EvaError(problem)
    check_output_folder(out, "demo")
    cfg = DemoConfig(out=str(out), seed=seed, **overrides)
    cfg.runs = tuple(run.scaled(minutes / DEFAULT_MINUTES) for run in cfg.runs)
    for run in cfg.runs:  # every training's settings in range before the build writes anything
        train_config(cfg, run.task, run.model, run=run)
    data = Path(cfg.out) / "data" / f"sample-{cfg.size}px"
    progress = Progress(plan(cfg, train_config(cfg, "joint"),  # the three models cost about the same: one decoder
                             lambda run: bool((read_summary(run_dir_of(cfg, data, run)) or {}).get("finished"))))
    print_plan(progress.parts)
    with progress:
        data = build_sample(cfg)
        stats = ensure_stats(data)
    results = {}
    for run in cfg.runs:
        with progress:
            results[run.name] = train_and_evaluate(cfg, data, run)
    with progress:
        report = write_report(cfg, data, stats, results, score_larger_photos(cfg, data, results),
                              score_footage(cfg, results))
    print(f"eva demo: done in {duration_text(time.perf_counter() - progress.start)}", flush=True)
    return report
