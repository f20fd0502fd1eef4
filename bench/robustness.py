"""Robustness: the quality bench's models scored clean and under every second-shot change, beside the baseline.

    python bench/robustness.py --only joint-diff --seeds 0 1 2 --threads 1            # the table
    python bench/robustness.py --only joint-diff mask-diff --seeds 0 1 2 --threads 1 --align --write
    python bench/robustness.py --only joint-diff --seeds 0 --epochs 1 --perturb clean phone   # a quick smoke run

Our composites have bg and fg_bg pixel-identical outside the object; two real photos never are. Each candidate of
`bench/quality.py` is trained exactly as there (the demo's data, split and budget; the same run folders under --out,
so a run trained by either bench is reused, and training resumes) and then scored by `evaluate_run(perturb=...)` for
every name in `perturb.SUITE`: the held-out test pairs' fg_bg changed as a second shot would (the labels move only with
a shake), thresholds and calibration still chosen on the clean validation split, the baseline scored on the same
changed pairs. `--align` adds rows where each pair is registered first (`align.align_pair`, as `eva predict` does).
Scores are kept in each run folder (`metrics-<name>[-aligned].json`) and reused while they name the checkpoint step
the run's clean metrics scored. Table: mean ± sample std over seeds; "IoU − clean" is the per-seed difference to the
model's clean (unaligned) IoU, averaged.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (bench/quality.py: candidates, configs, run folders; puts the repo on sys.path)

ROOT = quality.ROOT
BEGIN, END = "<!-- robustness:begin -->", "<!-- robustness:end -->"
HEADING = "## Robustness to a real second shot (`bench/robustness.py`)"


def score(cfg, clean: dict, perturb: str, align: bool, reuse: dict) -> dict:
    """The run's metrics under one change: the stored file when it scored the same checkpoint, else a fresh eval."""
    from eva_helpers.evaluation.heldout import evaluate_run, metrics_name

    path = Path(cfg.run_dir) / metrics_name(perturb, align)
    if path.is_file():
        try:
            m = json.loads(path.read_text())
            same_ckpt = all(m.get(k) == clean.get(k) for k in ("checkpoint_file", "checkpoint_step"))
            current = not align or "align_jpeg_applied_fraction" in m  # scored by the alignment that matches JPEG
            if same_ckpt and current and m.get("perturb_ops") == perturb_ops(perturb):  # the change as defined today
                return m
        except (OSError, ValueError):
            pass  # damaged or stale: score again (atomic writes make this rare)
    return evaluate_run(cfg.run_dir, cfg.data, figure=False, progress=False, perturb=perturb, align=align, reuse=reuse)


def perturb_ops(name: str) -> list:
    """The change's definition as metrics files store it (JSON round trip)."""
    from eva_helpers.evaluation.perturb import PERTURBATIONS

    return json.loads(json.dumps(PERTURBATIONS[name].ops))


def _values(ms: list[dict], key: str) -> list[float]:
    return [m[key] for m in ms if isinstance(m.get(key), (int, float)) and not math.isnan(m[key])]


def fmt_delta(vals: list[float], nd: int = 3) -> str:
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:+.{nd}f}"
    return f"{statistics.mean(vals):+.{nd}f} ± {statistics.stdev(vals):.{nd}f}"


def table(rows: list[str], results: dict[str, dict[str, list[dict]]], clean: dict[str, list[dict]]) -> str:
    """Rows: changes; per candidate: model IoU, its change from clean, baseline IoU, depth RMSE, baseline RMSE."""
    cands = list(clean)
    cols = ("IoU", "IoU − clean", "baseline IoU", "depth RMSE", "baseline RMSE")
    head = "| second shot | " + " | ".join(f"{c}: {h}" if len(cands) > 1 else h for c in cands for h in cols) + " |\n"
    head += "|---|" + "---:|" * (len(cols) * len(cands)) + "\n"
    lines = []
    for row in rows:
        cells = []
        for c in cands:
            ms = results[c][row]
            deltas = [m["mask_iou"] - base["mask_iou"] for m, base in zip(ms, clean[c])
                      if "mask_iou" in m and "mask_iou" in base]
            cells += [quality.fmt(_values(ms, "mask_iou")), fmt_delta(deltas),
                      quality.fmt(_values(ms, "baseline_mask_iou")), quality.fmt(_values(ms, "depth_rmse")),
                      quality.fmt(_values(ms, "baseline_depth_rmse"))]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def write_results(text: str) -> None:
    """Replace this bench's section of bench/RESULTS.md (append it, with a heading, when missing)."""
    quality.write_section(text, BEGIN, END, HEADING)


def main() -> None:
    from eva_helpers.evaluation.perturb import PERTURBATIONS, SUITE, describe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=["joint-diff"], metavar="CANDIDATE",
                    help="candidates of bench/quality.py (default: joint-diff, the product's default model)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--perturb", nargs="+", default=list(SUITE), metavar="NAME",
                    help="changes to score (default: the whole suite, in table order; 'clean' is always scored)")
    ap.add_argument("--align", action="store_true", help="add rows with each pair registered first (align.py)")
    ap.add_argument("--epochs", type=int, default=None, help="override the demo's epochs (smoke runs)")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON", help="TrainConfig overrides, as quality.py")
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "quality"),
                    help="bench folder (quality.py's default: its trained runs are reused)")
    ap.add_argument("--write", action="store_true", help="replace the robustness section of bench/RESULTS.md")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 on a shared machine: 2 threads stall each other when a core is busy)")
    args = ap.parse_args()

    unknown = [n for n in args.only if n not in quality.CANDIDATES]
    if unknown:
        sys.exit(f"unknown candidate(s) {unknown}: choose from {list(quality.CANDIDATES)}")
    bad = [n for n in args.perturb if n not in PERTURBATIONS]
    if bad:
        sys.exit(f"unknown perturbation(s) {bad}; choose from:\n{describe()}")
    names = ["clean"] + [n for n in SUITE if n in args.perturb and n != "clean"]
    rows = [(n, False) for n in names] + ([(n, True) for n in names] if args.align else [])
    label = {r: r[0] + (" (aligned)" if r[1] else "") for r in rows}

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from eva_helpers.demo import DemoConfig, build_sample, ensure_stats

    demo = DemoConfig(out=args.out)
    data = build_sample(demo)
    ensure_stats(data)
    sets = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    results: dict[str, dict[str, list[dict]]] = {}
    clean: dict[str, list[dict]] = {}
    for cand in args.only:
        for seed in args.seeds:
            cfg = quality.train_config(cand, seed, data, Path(args.out), demo, None, args.epochs, sets)
            base = quality.run_one(cfg)  # trains (resumes) and scores the clean test split once: metrics.json
            reuse: dict = {}  # the choices made on validation, fitted once for the whole suite
            for r in rows:
                t0 = time.perf_counter()
                m = score(cfg, base, *r, reuse)
                results.setdefault(cand, {}).setdefault(label[r], []).append(m)
                if r == ("clean", False):
                    clean.setdefault(cand, []).append(m)
                print(json.dumps({"candidate": cand, "seed": seed, "perturb": label[r],
                                  **{k: m.get(k) for k in ("mask_iou", "baseline_mask_iou", "depth_rmse",
                                                           "baseline_depth_rmse", "align_applied_fraction")},
                                  "s": round(time.perf_counter() - t0, 1)}), flush=True)
    note = (" Aligned rows: each pair registered by `align.align_pair` first; `IoU − clean` against the clean "
            "unaligned model." if args.align else "")
    text = (f"`python bench/robustness.py {' '.join(sys.argv[1:])}`: {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}; test split = the demo's 2 held-out backgrounds, fg_bg changed as a second "
            f"shot would (`eva eval --perturb list`), thresholds chosen on clean validation; mean ± sample std over "
            f"seeds {args.seeds}.{note}\n\n" + table([label[r] for r in rows], results, clean))
    print(text)
    if args.write:
        write_results(text)


if __name__ == "__main__":
    main()
