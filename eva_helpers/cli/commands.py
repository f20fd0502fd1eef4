"""What each `eva` command does with its parsed flags: one call into the package, then a short report."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def cmd_build(a: argparse.Namespace) -> None:
    from eva_helpers.compositing.build import build_dataset

    manifest = build_dataset(
        a.bg, a.fg, a.out, size=a.size, positions=a.positions, seed=a.seed, teacher=a.teacher, mode=a.mode,
        scale_range=a.scale_range, flips=not a.no_flips, shard_size=a.shard_size, jpeg_quality=a.jpeg_quality,
        workers=a.workers, on_bad=a.on_bad, limit=a.limit,
        teacher_kwargs={k: v for k, v in (("model_dir", a.teacher_model_dir), ("input_size", a.teacher_input_size))
                        if v is not None} or None,
    )
    c = manifest["counts"]
    print(f"built {c['samples']} samples in {c['shards']} shards -> {a.out}")
    for kind, folder in (("bg", a.bg), ("fg", a.fg)):
        bad = (c.get(f"skipped_{kind}") or {}).get("bad", 0)
        if bad:  # --on-bad skip: say how many inputs were left out, and where the list is
            print(f"skipped {bad} unreadable file(s) in {folder}: listed under 'skipped' in "
                  f"{Path(a.out) / 'manifest.json'}", file=sys.stderr)


def cmd_fetch(a: argparse.Namespace) -> None:
    from eva_helpers.fetching.fetch import fetch_dataset

    path = fetch_dataset(a.name, data_manifest=a.manifest, cache=a.cache)
    print(path)


def cmd_stats(a: argparse.Namespace) -> None:
    from eva_helpers.data.stats import STATS, compute_stats, describe_stats

    print(describe_stats(compute_stats(a.data, limit=a.limit)))
    print(f"written: {Path(a.data) / STATS}")


def train_config_from_args(a: argparse.Namespace):
    from eva_helpers.training.config import TrainConfig

    cfg = TrainConfig(task=a.task, data=a.data, run_dir=a.run_dir, model=a.model,
                      epochs=a.epochs, batch_size=a.batch_size, size=a.size,
                      seed=a.seed, lr=a.lr, schedule=a.schedule, loss_weighting=a.loss_weighting,
                      checkpoint_interval_s=a.checkpoint_interval, max_steps=a.max_steps, workers=a.workers,
                      compile=a.compile, deterministic=a.deterministic, pretrained=a.pretrained,
                      tensorboard=a.tensorboard, device=a.device, second_shot=a.second_shot,
                      init_from=a.init_from, init_which=a.init_which, size_stages=a.size_stages)
    for key in ("stem", "inputs", "mask_head"):
        if getattr(a, key, None):
            cfg.model_kwargs[key] = getattr(a, key)
    return cfg


def cmd_train(a: argparse.Namespace) -> None:
    from eva_helpers.training.sessions import check_device
    from eva_helpers.training.trainer import fit

    cfg = train_config_from_args(a)
    check_device(cfg, a.allow_cpu, how="train it where its GPU is, or pass --allow-cpu")
    summary = fit(cfg, force_takeover=a.force_takeover)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns; one summary is enough
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1, default=str))


def cmd_eval(a: argparse.Namespace) -> None:
    from eva_helpers.evaluation.heldout import evaluate_run

    if a.photo_size:
        from eva_helpers.evaluation.photo_size import score_at_photo_size

        metrics = score_at_photo_size(a.run_dir, a.photo_size, split=a.split, perturb=a.perturb or "clean",
                                      align=a.align, which=a.which)
        print(json.dumps(metrics, indent=1))
        return
    metrics = evaluate_run(a.run_dir, a.data, split=a.split, which=a.which, perturb=a.perturb, align=a.align)
    print(json.dumps(metrics, indent=1))


def _predict_video(a: argparse.Namespace) -> None:
    """--video CLIP: every selected frame against --bg or a plate from the clip (predict/footage.py)."""
    from eva_helpers.errors import BadInputError
    from eva_helpers.predict.footage import predict_video

    if a.fg_bg is not None:
        raise BadInputError(f"--video {a.video} and --fg-bg {a.fg_bg}: give one (the clip's frames are the fg_bg "
                            "photos)")
    if a.pair_by != "name":
        raise BadInputError(f"--pair-by {a.pair_by}: pairs the photos of two folders, not a clip's frames")
    r = predict_video(a.run_dir, a.video, a.out, bg=a.bg, every=a.every, start=a.start, end=a.end,
                      batch_size=a.batch_size, align=not a.no_align, refine=not a.no_refine,
                      frames_png=a.frames_png, plate_window=a.plate_window, which=a.which)
    print(r.line())
    print(r.alignment_line)
    for note in r.notes:
        print(note)


def cmd_predict(a: argparse.Namespace) -> None:
    """Two photos -> one pair; two folders -> every pair (--pair-by name, order or a CSV; exit 2 at the end if any
    failed)."""
    from eva_helpers.errors import BadInputError, EvaError
    from eva_helpers.predict.align import describe_alignment
    from eva_helpers.predict.folders import predict_folders
    from eva_helpers.predict.pair import predict_one

    if a.video is not None:
        return _predict_video(a)
    if a.bg is None or a.fg_bg is None:
        raise BadInputError("give --bg and --fg-bg (two photos or two folders), or --video CLIP (with --bg optional)")
    if a.every != 1 or a.start or a.end is not None or a.plate_window or a.frames_png:
        raise BadInputError("--every, --start, --end, --plate-window and --frames-png go with --video CLIP")
    folders = {flag: Path(p).is_dir() for flag, p in (("--bg", a.bg), ("--fg-bg", a.fg_bg))}
    if any(folders.values()):
        if not all(folders.values()):
            d, f = ("--bg", "--fg-bg") if folders["--bg"] else ("--fg-bg", "--bg")
            path = {"--bg": a.bg, "--fg-bg": a.fg_bg}
            raise BadInputError(f"{path[d]}: {d} is a folder but {f} {path[f]} is not: give two folders (a shoot, "
                                "pairs matched by file name) or two photos (one pair)")
        report = predict_folders(a.run_dir, a.bg, a.fg_bg, a.out, which=a.which, batch_size=a.batch_size,
                                 align=not a.no_align, refine=not a.no_refine, pair_by=a.pair_by)
        print(report.summary(a.out))
        print(report.alignment_line)
        if report.failed:
            raise EvaError(f"{len(report.failed)} of {report.pairs} pairs failed: see {report.csv}")
        return
    if a.pair_by != "name":
        raise BadInputError(f"--pair-by {a.pair_by}: pairs the photos of two folders; --bg and --fg-bg are one pair")
    written, alignment = predict_one(a.run_dir, a.bg, a.fg_bg, a.out, which=a.which, align=not a.no_align,
                                     refine=not a.no_refine)
    print(describe_alignment(alignment))
    for p in written:
        print(p)


def cmd_demo(a: argparse.Namespace) -> None:
    from eva_helpers.demo import run_demo

    report = run_demo(a.out, minutes=a.minutes, seed=a.seed)
    print(f"report: {report}")
