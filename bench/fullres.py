"""Masks at the photo's resolution: the demo's models on photos 4x their size, beside the baseline at that size.

    python bench/fullres.py --seeds 0 1 2 --threads 1                       # clean and noise, the table
    python bench/fullres.py --seeds 0 1 2 --threads 1 --perturb clean noise4 shadow-strong --align --write
    python bench/fullres.py --seeds 0 --limit 16 --perturb clean             # a quick smoke run

Users meet the model on photos larger than it (a 64 px demo model, a 224 px Colab model; 12 MP phone photos). The
embedded sample is built again at `--scale` x the demo's size (256 px for the 64 px model: the same composites, as
every choice of sample i comes from (seed, i), checked on each scored pair's provenance). Each quality-bench run
(`bench/quality.py`'s candidate, trained there or here, reused) scores its own held-out test backgrounds at that size,
as `eva predict` does: `photo_size.score_at_photo_size`: `predict.prepare_pair` (alignment with --align) -> the model at its size -> the mask
  - "upsampled": the run's calibrated decision resized to the photo (the answer before refine.py),
  - "refined": the outline decided by the photo's pixels (`refine.refine_mask`, the default of `eva predict`),
beside the free baseline at the photo's size (max_c |fg_bg - bg| > t, 3x3 open/close, t chosen on the run's
validation backgrounds at the same size). fg_bg changes as `eva eval --perturb` makes them (`perturb.perturb_sample`,
at the photo's size). Per image: mask IoU and Boundary IoU (3 px, `metrics.boundary_iou`); per run the mean; the table
gives mean ± sample std over seeds and the ms per pair of refine.py. About 1 minute per run and change on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (bench/quality.py: candidates, run folders; puts the repo on sys.path)

ROOT = quality.ROOT
BEGIN, END = "<!-- fullres:begin -->", "<!-- fullres:end -->"
HEADING = "## Masks at the photo's resolution (`bench/fullres.py`)"
WHO = ("upsampled", "refined", "baseline")


def score_run(cfg, large: Path, perturbs: list[str], align: bool, limit: int | None, split: str = "test") -> dict:
    """{change: {who: (IoU, BIoU)}, "_ms_refine": ...}: `photo_size.score_at_photo_size` per change."""
    from eva_helpers.evaluation.photo_size import score_at_photo_size

    out: dict = {}
    reuse: dict = {}
    for name in perturbs:
        m = score_at_photo_size(cfg.run_dir, large, split=split, perturb=name, align=align, limit=limit,
                                progress=False, reuse=reuse)
        out[name] = {w: (m[f"{w}_mask_iou"], m[f"{w}_boundary_iou"]) for w in WHO}
        out["_baseline_threshold"] = m["baseline_threshold"]
        out.setdefault("_s_per_mp", []).append(m["refine_s_per_megapixel"])
        print(f"  {Path(cfg.run_dir).name} {name}{' aligned' if align else ''}: " + ", ".join(
            f"{w} {v[0]:.4f}/{v[1]:.4f}" for w, v in out[name].items()), flush=True)
    out["_ms_refine"] = 1000 * statistics.mean(out.pop("_s_per_mp"))
    return out


def fmt(vals: list[float]) -> str:
    return quality.fmt(vals) if vals else "–"


def table(perturbs: list[str], per_seed: list[dict]) -> str:
    head = ("| fg_bg changed by | model, upsampled: IoU | BIoU | **model, refined: IoU** | **BIoU** | baseline: IoU | "
            "BIoU | refined − baseline (IoU) |\n|---|" + "---:|" * 7 + "\n")
    lines = []
    for name in perturbs:
        cells = []
        for w in WHO:
            cells += [fmt([r[name][w][0] for r in per_seed]), fmt([r[name][w][1] for r in per_seed])]
        d = [r[name]["refined"][0] - r[name]["baseline"][0] for r in per_seed]
        cells.append(f"{statistics.mean(d):+.3f}" + (f" ± {statistics.stdev(d):.3f}" if len(d) > 1 else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def write_results(text: str) -> None:
    """Replace this bench's section of bench/RESULTS.md (append it, with a heading, when missing)."""
    quality.write_section(text, BEGIN, END, HEADING)


# refine.py's design, screened on the validation backgrounds (--screen): each row adds one step to the one above
SCREEN = (
    ("band 1 model px, plain threshold", {"band": 1, "edge_fraction": 0.0, "smooth": 0}, 1.0),
    ("band 2", {"band": 2, "edge_fraction": 0.0, "smooth": 0}, 1.0),
    ("+ 3x3 close/open", {"band": 2, "edge_fraction": 0.0, "smooth": 3}, 1.0),
    ("+ rim rule (0.4 of the largest difference within 1 px)", {"band": 2, "edge_fraction": 0.4, "smooth": 3}, 1.0),
    ("+ the pair vouches for itself (<= 5 % beside the band differs): the default", {}, 0.05),
)


def screen(cfgs: list, large: Path, perturbs: list[str], align: bool, limit: int | None) -> str:
    """The rows of SCREEN on the runs' validation split: mean refined IoU per change (the upsampled answer first)."""
    import functools

    from eva_helpers.predict import pair as predict, refine

    plain, default_gate = refine.refine_mask, refine.MAX_OUTSIDE
    rows: dict[str, dict[str, list[float]]] = {}
    try:
        for label, kwargs, gate in SCREEN:
            predict.refine_mask, refine.MAX_OUTSIDE = functools.partial(plain, **kwargs), gate
            for cfg in cfgs:
                res = score_run(cfg, large, perturbs, align, limit, split="val")
                for name in perturbs:
                    rows.setdefault("model's answer resized", {}).setdefault(name, []).append(res[name]["upsampled"][0])
                    rows.setdefault(label, {}).setdefault(name, []).append(res[name]["refined"][0])
                    rows.setdefault("baseline", {}).setdefault(name, []).append(res[name]["baseline"][0])
    finally:
        predict.refine_mask, refine.MAX_OUTSIDE = plain, default_gate
    order = ["model's answer resized"] + [r[0] for r in SCREEN] + ["baseline"]
    head = "| refine (validation IoU) | " + " | ".join(perturbs) + " |\n|---|" + "---:|" * len(perturbs) + "\n"
    return head + "\n".join(
        f"| {r} | " + " | ".join(f"{statistics.mean(rows[r][p]):.3f}" for p in perturbs) + " |" for r in order) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="joint-tol-depth2", metavar="CANDIDATE",
                    help="a candidate of bench/quality.py (default: the product's default model)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--scale", type=int, default=4, help="photo size / model size (default 4: 256 px photos)")
    ap.add_argument("--perturb", nargs="+", default=["clean", "noise4"], metavar="NAME")
    ap.add_argument("--align", action="store_true", help="register each pair first, as eva predict does")
    ap.add_argument("--limit", type=int, default=None, help="score at most this many test (and validation) pairs")
    ap.add_argument("--epochs", type=int, default=None, help="override the demo's epochs (smoke runs)")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON", help="TrainConfig overrides, as quality.py")
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "quality"),
                    help="bench folder (quality.py's default: its trained runs are reused)")
    ap.add_argument("--write", action="store_true", help="replace this section of bench/RESULTS.md")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for training")
    ap.add_argument("--screen", action="store_true",
                    help="score refine.py's design steps (SCREEN) on the validation backgrounds instead")
    args = ap.parse_args()

    import json

    import torch

    from eva_helpers.demo import DemoConfig, build_sample, ensure_stats
    from eva_helpers.evaluation.perturb import check_name
    from eva_helpers.compositing.build import build_larger
    from eva_helpers.paths import sample_assets

    for name in args.perturb:
        check_name(name)
    if args.threads:
        torch.set_num_threads(args.threads)
    demo = DemoConfig(out=args.out)
    data = build_sample(demo)
    ensure_stats(data)
    large = build_larger(data, args.scale, sample_assets())
    sets = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    cfgs = [quality.train_config(args.only, seed, data, Path(args.out), demo, None, args.epochs, sets)
            for seed in args.seeds]
    for cfg in cfgs:
        quality.run_one(cfg)
    if args.screen:
        print(f"`python bench/fullres.py {' '.join(sys.argv[1:])}`: {time.strftime('%Y-%m-%d')}, validation "
              f"backgrounds at {demo.size * args.scale} px, mean over seeds {args.seeds}\n\n"
              + screen(cfgs, large, args.perturb, args.align, args.limit))
        return
    per_seed = [score_run(cfg, large, args.perturb, args.align, args.limit) for cfg in cfgs]
    ms = statistics.mean(r["_ms_refine"] for r in per_seed)
    px = demo.size * args.scale
    text = (f"`python bench/fullres.py {' '.join(sys.argv[1:])}`: {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}; candidate {args.only} ({demo.size} px model), its 2 held-out test "
            f"backgrounds built at {px} px ({args.scale}x), scored at {px} px{' with alignment' if args.align else ''}; "
            f"mean ± sample std over seeds {args.seeds}; BIoU = Boundary IoU, 3 px. refine.py: {ms:.0f} ms per "
            f"megapixel (one thread); baseline thresholds chosen on validation at {px} px: "
            f"{sorted({r['_baseline_threshold'] for r in per_seed})}.\n\n" + table(args.perturb, per_seed))
    print(text)
    if args.write:
        write_results(text)


if __name__ == "__main__":
    main()
