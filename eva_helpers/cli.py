"""`eva build | fetch | stats | train | eval | predict | demo`: the same functions the notebooks call.

User errors (EvaError) print one line and exit 2; no tracebacks for them. Heavy imports happen per command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import EvaError


def _pair(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    return lo, hi


def cmd_build(a: argparse.Namespace) -> None:
    from .build import build_dataset

    manifest = build_dataset(
        a.bg, a.fg, a.out, size=a.size, positions=a.positions, seed=a.seed, teacher=a.teacher, mode=a.mode,
        scale_range=a.scale_range, flips=not a.no_flips, shard_size=a.shard_size, jpeg_quality=a.jpeg_quality,
        workers=a.workers, on_bad=a.on_bad, limit=a.limit,
        teacher_kwargs={"model_dir": a.teacher_model_dir} if a.teacher_model_dir else None,
    )
    c = manifest["counts"]
    print(f"built {c['samples']} samples in {c['shards']} shards -> {a.out}")


def cmd_fetch(a: argparse.Namespace) -> None:
    from .fetch import fetch_dataset

    path = fetch_dataset(a.name, data_manifest=a.manifest, cache=a.cache)
    print(path)


def cmd_stats(a: argparse.Namespace) -> None:
    from .stats import compute_stats

    stats = compute_stats(a.data, limit=a.limit)
    for k in ("bg", "fg_bg"):
        print(f"{k:6s} mean {[round(v, 4) for v in stats[k]['mean']]}  std {[round(v, 4) for v in stats[k]['std']]}")
    print(f"foreground fraction: mean {stats['mask_fraction']['mean']:.4f}  ({stats['samples']} samples)")
    print(f"written: {Path(a.data) / 'stats.json'}")


def train_config_from_args(a: argparse.Namespace):
    from .config import TrainConfig

    cfg = TrainConfig(task=a.task, data=a.data, run_dir=a.run_dir, epochs=a.epochs, batch_size=a.batch_size, size=a.size,
                      seed=a.seed, lr=a.lr, schedule=a.schedule, loss_weighting=a.loss_weighting,
                      checkpoint_interval_s=a.checkpoint_interval, max_steps=a.max_steps, workers=a.workers,
                      compile=a.compile, deterministic=a.deterministic, pretrained=a.pretrained,
                      tensorboard=a.tensorboard, device=a.device)
    if a.model:
        cfg.model = a.model
    if a.stem:
        cfg.model_kwargs["stem"] = a.stem
    return cfg


def cmd_train(a: argparse.Namespace) -> None:
    from .train import fit

    summary = fit(train_config_from_args(a))
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns; one summary is enough
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1, default=str))


def cmd_eval(a: argparse.Namespace) -> None:
    from .evaluate import evaluate_run

    metrics = evaluate_run(a.run_dir, a.data, split=a.split, which=a.which)
    print(json.dumps(metrics, indent=1))


def cmd_predict(a: argparse.Namespace) -> None:
    from .predict import predict_files

    for p in predict_files(a.run_dir, a.bg, a.fg_bg, a.out, which=a.which):
        print(p)


def cmd_demo(a: argparse.Namespace) -> None:
    from .demo import run_demo

    report = run_demo(a.out, minutes=a.minutes, seed=a.seed)
    print(f"report: {report}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eva", description="eva-maskdepth: masks and depth from (bg, fg_bg) pairs.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="composite bg/ + fg/ into verified zip shards with depth labels")
    b.add_argument("--bg", required=True, help="folder of background photos")
    b.add_argument("--fg", required=True, help="folder of cut-outs with an alpha channel")
    b.add_argument("--out", required=True, help="dataset folder to create (or resume)")
    b.add_argument("--size", type=int, default=224)
    b.add_argument("--positions", type=int, default=20, help="random placements per (bg, fg, flip)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--teacher", default="geometric", help="geometric | depth-anything-v2-small | midas-small")
    b.add_argument("--teacher-model-dir", default=None, help="load the Depth Anything teacher from a local folder")
    b.add_argument("--mode", default="layered", choices=["layered", "per-composite"])
    b.add_argument("--scale-range", type=_pair, default=(0.3, 0.7), help="object height as a fraction of the bg: LO,HI")
    b.add_argument("--no-flips", action="store_true", help="do not add mirrored cut-outs")
    b.add_argument("--shard-size", type=int, default=1000)
    b.add_argument("--jpeg-quality", type=int, default=95)
    b.add_argument("--workers", type=int, default=None)
    b.add_argument("--on-bad", choices=["error", "skip"], default="error", help="unreadable inputs: stop, or skip and report")
    b.add_argument("--limit", type=int, default=None, help="build only the first N samples")
    b.set_defaults(func=cmd_build)

    f = sub.add_parser("fetch", help="download/copy a dataset listed in data_manifest.json into the local cache, verified")
    f.add_argument("name", help="dataset name in data_manifest.json")
    f.add_argument("--manifest", default=None, help="data_manifest.json to read (default: the repository's)")
    f.add_argument("--cache", default=None, help="local cache folder (default: /content/eva_cache on Colab)")
    f.set_defaults(func=cmd_fetch)

    s = sub.add_parser("stats", help="per-channel mean/std, foreground fraction, depth histogram -> stats.json")
    s.add_argument("--data", required=True)
    s.add_argument("--limit", type=int, default=None, help="only the first N samples (a 400k build takes minutes)")
    s.set_defaults(func=cmd_stats)

    t = sub.add_parser("train", help="train (resumes from <run-dir>/checkpoints when present; works under torchrun)")
    t.add_argument("--task", choices=["mask", "depth", "joint"], required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--run-dir", required=True)
    t.add_argument("--model", default=None, help="registry name, e.g. unet_small, resnet18_unet")
    t.add_argument("--stem", choices=["concat", "two"], default=None,
                   help="UNet input: one stem over cat(bg, fg_bg) (default) or a stem per image")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--size", type=int, default=224)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--schedule", choices=["onecycle", "plateau", "none"], default="onecycle")
    t.add_argument("--loss-weighting", choices=["fixed", "uncertainty"], default="fixed")
    t.add_argument("--checkpoint-interval", type=float, default=300.0, help="seconds between mid-epoch checkpoints")
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--workers", type=int, default=None)
    t.add_argument("--compile", action="store_true")
    t.add_argument("--deterministic", action="store_true")
    t.add_argument("--pretrained", action="store_true", help="ImageNet weights for ResNet encoders (needs internet)")
    t.add_argument("--tensorboard", action="store_true")
    t.add_argument("--device", default="auto")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="metrics.json (+ baseline) and a best/worst figure for a run folder")
    e.add_argument("--run-dir", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--which", default="best", choices=["best", "last"])
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="apply a trained run to your own (bg, fg_bg) photos, any size")
    pr.add_argument("--run-dir", required=True)
    pr.add_argument("--bg", required=True)
    pr.add_argument("--fg-bg", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--which", default="best", choices=["best", "last"])
    pr.set_defaults(func=cmd_predict)

    d = sub.add_parser("demo", help="offline end-to-end run on the embedded sample -> report folder (resumes)")
    d.add_argument("--out", default="demo_output")
    d.add_argument("--minutes", type=float, default=10.0, help="rough CPU time budget for the three trainings")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EvaError as e:
        print(f"eva {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"eva {args.command}: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
