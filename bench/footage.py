"""Footage from a fixed camera: `eva predict --video` against what OpenCV gives users for free.

    python bench/footage.py                  # train (or reuse) the run, make the clips, score, print the table
    python bench/footage.py --write          # also replace this bench's section of bench/RESULTS.md
    python bench/footage.py --frames 60 --no-memory       # a quick smoke run

The runs are `eva demo`'s joint model (DEMO_RUNS' joint schedule on the embedded sample at 64 px, the default recipe),
one per training seed (--seeds; the split stays the demo's), with one change: the held-out split is by background AND
cut-out (split_by "bg+fg"), so the clips (demo/clips.py)
use only test backgrounds and test cut-outs, none seen in training. Three clips of 300 frames at 640x480: two cut-outs
walking across, one standing still for 40 % of its time in the third; cast shadows, a slow fade, shake, noise, MJPG
frames.

Scored per frame at 640x480 (mask IoU, empty vs empty = 1), mean over the clip:
  - ours: `footage.predict_video` as `eva predict --video` runs it (plate from the clip, alignment, 2 worker threads);
  - the bg-difference baseline (baseline.py: max_c |frame - bg| > t, 3x3 open/close) on the same plate, aligned the
    same way, t the best of a grid on each clip (chosen on the scored clip: generous);
  - cv2.createBackgroundSubtractorMOG2 / KNN with their defaults, shadow detection on (shadow pixels = background) and
    off, cold (learning as the clip plays, as users run them) or warm (one pass over the clip first), raw or with a
    3x3 open/close; each clip's best setting is taken (again generous).
frames/s: each method's own time per frame (ours: the whole loop from reading to writing, over the plate's estimate
too in "with plate"). Memory: peak RSS of a fresh process running predict_video on the first 60 and on all 600
frames of a longer clip.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (bench/quality.py: write_section; puts the repo on sys.path)

import numpy as np  # noqa: E402

from eva_helpers.demo.clips import ClipSpec, load_gt, make_clip, mask_ious  # noqa: E402

ROOT = quality.ROOT
BEGIN, END = "<!-- footage:begin -->", "<!-- footage:end -->"
HEADING = "## Footage from a fixed camera (`bench/footage.py`)"
THRESHOLDS = tuple(round(0.02 * i, 2) for i in range(1, 21))  # baseline grid, image units
RUN_NAME = "joint-unet_small-bgfg"


def train_run(out: Path, epochs: int | None, seed: int = 0) -> tuple[Path, dict]:
    """The demo's joint run of this training seed with held-out backgrounds and cut-outs (reused when trained); its
    test split's ids. `epochs`: a plain schedule of that many epochs instead (smoke runs)."""
    from eva_helpers.demo import DEMO_RUNS, DemoConfig, DemoRun, build_sample, ensure_stats, train_config
    from eva_helpers.evaluation.heldout import current_metrics
    from eva_helpers.training.trainer import fit
    from eva_helpers.training.trained_run import load_run

    demo = DemoConfig(out=str(out), train_overrides={"split_by": "bg+fg", "progress": False})
    run = DemoRun("joint", epochs) if epochs else next(r for r in DEMO_RUNS if r.task == "joint")
    data = build_sample(demo)
    ensure_stats(data)
    cfg = train_config(demo, "joint", "unet_small", run=run, data=str(data), seed=seed, split_seed=demo.seed,
                       run_dir=str(out / "runs" / f"{RUN_NAME}-e{run.epochs}-s{seed}"))
    fit(cfg)
    current_metrics(cfg.run_dir, data)  # calibration.json: the threshold eva predict applies
    _, cfg, _ = load_run(cfg.run_dir)
    return Path(cfg.run_dir), cfg.splits(data)["info"]


def clip_specs(info: dict, frames: int) -> list[ClipSpec]:
    bgs, fgs = info["bg_ids"]["test"], info["fg_ids"]["test"]
    return [ClipSpec(f"clip{k + 1}-{bgs[k % len(bgs)]}", bgs[k % len(bgs)],
                     (fgs[k % len(fgs)], fgs[(k + 1) % len(fgs)]), frames=frames, seed=k + 1,
                     pause=0.4 if k == 2 else 0.0) for k in range(3)]


def ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame IoU of (N, H, W) bool stacks or one frame; empty vs empty = 1."""
    inter = np.logical_and(pred, gt).sum(axis=(-2, -1))
    union = np.logical_or(pred, gt).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def score_ours(run: Path, clip: Path, gt: np.ndarray, out: Path) -> dict:
    from eva_helpers.predict.footage import predict_video

    t0 = time.perf_counter()
    rep = predict_video(run, clip, out, progress=False)
    wall = time.perf_counter() - t0
    return {"iou": mask_ious(rep.outputs["masks"], gt[:rep.frames]), "fps": rep.frames_per_s,
            "fps_plate": rep.frames / (rep.seconds + rep.plate_seconds), "wall_s": wall, "plate": rep.plate}


def score_baseline(clip: Path, plate_png: Path, gt: np.ndarray) -> dict:
    """baseline.py's rule on the plate aligned like ours; every threshold of the grid, the best kept."""
    import torch

    from eva_helpers.data.images import read_image
    from eva_helpers.evaluation.baseline import bg_difference, open_close
    from eva_helpers.predict.clip import open_clip, read_frames
    from eva_helpers.predict.frame_align import FrameAligner

    plate = read_image(plate_png)
    grid = torch.tensor(THRESHOLDS).view(-1, 1, 1, 1)
    per, aligner, secs = [], None, 0.0
    for i, _, frame in read_frames(open_clip(clip)):
        t0 = time.perf_counter()
        aligner = aligner or FrameAligner(plate, frame)
        bg, _ = aligner(plate, frame)
        d = bg_difference(bg, frame)  # (1, 1, H, W)
        one = open_close((d > THRESHOLDS[0]).float())  # timed: what one threshold costs
        secs += time.perf_counter() - t0
        masks = torch.cat([one, open_close((d > grid[1:]).float())]) > 0.5  # (T, 1, H, W)
        per.append(ious(masks[:, 0].numpy(), gt[i][None]))
    per = np.array(per)  # (N, T)
    best = int(per.mean(0).argmax())
    return {"iou": per[:, best].tolist(), "fps": len(per) / secs, "setting": f"t = {THRESHOLDS[best]:.2f}"}


def score_subtractor(kind: str, clip: Path, gt: np.ndarray) -> dict[str, dict]:
    """MOG2 or KNN at its defaults: {setting: {"iou": per frame, "fps"}} for shadows on/off x cold/warm x raw/morph."""
    import cv2

    from eva_helpers.predict.clip import open_clip, read_frames

    info = open_clip(clip)
    make = cv2.createBackgroundSubtractorMOG2 if kind == "MOG2" else cv2.createBackgroundSubtractorKNN
    kernel = np.ones((3, 3), np.uint8)
    out = {}
    for shadows in (True, False):
        for warm in (False, True):
            sub = make(detectShadows=shadows)
            if warm:
                for _, _, frame in read_frames(info):
                    sub.apply(frame[..., ::-1])
            raw, morph, secs, msecs = [], [], 0.0, 0.0
            for i, _, frame in read_frames(info):
                bgr = np.ascontiguousarray(frame[..., ::-1])
                t0 = time.perf_counter()
                fg = sub.apply(bgr) == 255  # shadows (127) count as background
                t1 = time.perf_counter()
                mm = cv2.morphologyEx(cv2.morphologyEx(fg.view(np.uint8), cv2.MORPH_OPEN, kernel),
                                      cv2.MORPH_CLOSE, kernel) > 0
                secs, msecs = secs + t1 - t0, msecs + time.perf_counter() - t1
                raw.append(float(ious(fg, gt[i])))
                morph.append(float(ious(mm, gt[i])))
            name = f"shadows {'on' if shadows else 'off'}, {'warm' if warm else 'cold'}"
            out[f"{name}, raw"] = {"iou": raw, "fps": len(raw) / secs}
            out[f"{name}, open/close"] = {"iou": morph, "fps": len(raw) / (secs + msecs)}
    return out


def peak_rss(run: Path, clip: Path, end: int | None) -> tuple[int, float]:
    """(frames, peak RSS in MB) of a fresh process predicting the clip's frames below `end`. VmHWM, not ru_maxrss:
    Linux carries a process's ru_maxrss across fork + exec, so a child's would start at this bench's own size."""
    code = ("import sys, tempfile; sys.path.insert(0, sys.argv[1]); "
            "from eva_helpers.predict.footage import predict_video; "
            "end = None if sys.argv[4] == 'None' else int(sys.argv[4]); "
            "r = predict_video(sys.argv[2], sys.argv[3], tempfile.mkdtemp(), end=end, progress=False); "
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]; "
            "print(r.frames, int(hwm) / 1024)")
    res = subprocess.run([sys.executable, "-c", code, str(ROOT), str(run), str(clip), str(end)], check=True,
                         capture_output=True, text=True)
    frames, mb = res.stdout.split()[-2:]
    return int(frames), float(mb)


def table(names: list[str], rows: dict[str, dict[str, dict]]) -> str:
    """rows: method -> clip -> {"iou", "fps", "setting"?}; the best setting of each peer is its own row set."""
    head = ("| method | " + " | ".join(f"{n}: IoU" for n in names) + " | frames/s (mean) |\n|---|"
            + "---:|" * (len(names) + 1) + "\n")
    lines = []
    for method, per in rows.items():
        cells = [f"{statistics.mean(per[n]['iou']):.3f}" + (f" ({per[n]['setting']})" if per[n].get("setting") else "")
                 for n in names]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {statistics.mean(per[n]['fps'] for n in names):.1f} |")
    return head + "\n".join(lines) + "\n"


def best_of(settings: dict[str, dict[str, dict]], names: list[str]) -> dict[str, dict]:
    """Per clip, the setting with the highest mean IoU."""
    out = {}
    for n in names:
        s = max(settings, key=lambda k: statistics.mean(settings[k][n]["iou"]))
        out[n] = {**settings[s][n], "setting": s}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "footage"))
    ap.add_argument("--frames", type=int, default=300, help="frames per clip (the issue asks for >= 300)")
    ap.add_argument("--epochs", type=int, default=None, help="override the demo's epochs (smoke runs)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="training seeds (one run each)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement (two extra processes)")
    ap.add_argument("--write", action="store_true", help="replace this section of bench/RESULTS.md")
    args = ap.parse_args()

    import torch

    from eva_helpers.paths import sample_assets

    out = Path(args.out)
    trained = [train_run(out, args.epochs, seed) for seed in args.seeds]
    run, info = trained[0]
    specs = clip_specs(info, args.frames)
    names = [s.name for s in specs]
    rows: dict[str, dict[str, dict]] = {"ours": {}, "bg-difference baseline (best t per clip)": {}}
    subs: dict[str, dict[str, dict[str, dict]]] = {"MOG2": {}, "KNN": {}}
    per_seed: dict[str, list[float]] = {}
    for spec in specs:
        clip, gt_path = make_clip(spec, sample_assets(), out / "clips")
        gt = load_gt(gt_path)
        seeds = []
        for seed_run, _ in trained:
            pred_dir = Path(tempfile.mkdtemp(prefix="footage-", dir=out))
            seeds.append(score_ours(seed_run, clip, gt, pred_dir))
            print(json.dumps({"clip": spec.name, "run": seed_run.name, "ours": statistics.mean(seeds[-1]["iou"]),
                              "fps": seeds[-1]["fps"]}), flush=True)
        per_seed[spec.name] = [statistics.mean(r["iou"]) for r in seeds]
        spread = statistics.stdev(per_seed[spec.name]) if len(seeds) > 1 else 0.0
        rows["ours"][spec.name] = {"iou": per_seed[spec.name], "fps": statistics.mean(r["fps"] for r in seeds),
                                   "fps_plate": statistics.mean(r["fps_plate"] for r in seeds),
                                   "setting": f"± {spread:.3f} over {len(seeds)} seeds"}
        rows["bg-difference baseline (best t per clip)"][spec.name] = score_baseline(clip, pred_dir / "bg_plate.png",
                                                                                     gt)
        for kind in subs:
            for setting, res in score_subtractor(kind, clip, gt).items():
                subs[kind].setdefault(setting, {})[spec.name] = res
    for kind, settings in subs.items():
        rows[f"{kind}, best setting per clip"] = best_of(settings, names)
    detail = {f"{kind} {s}": per for kind, settings in subs.items() for s, per in settings.items()}
    margins = {n: statistics.mean(rows["ours"][n]["iou"]) - max(
        statistics.mean(rows[f"{k}, best setting per clip"][n]["iou"]) for k in subs) for n in names}
    over_base = {n: statistics.mean(rows["ours"][n]["iou"]) - statistics.mean(
        rows["bg-difference baseline (best t per clip)"][n]["iou"]) for n in names}
    worst = {n: min(per_seed[n]) - max(statistics.mean(rows[f"{k}, best setting per clip"][n]["iou"]) for k in subs)
             for n in names}
    text = (f"`python bench/footage.py {' '.join(sys.argv[1:])}`: {os.cpu_count()} CPUs "
            f"({_cpu_name()}), load average {os.getloadavg()[0]:.1f} at the end, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}; runs {', '.join(r.name for r, _ in trained)} (the demo's joint model, 64 "
            f"px, training seeds {args.seeds}, split by background and "
            f"cut-out: clips use test backgrounds {info['bg_ids']['test']} and cut-outs {info['fg_ids']['test']}); "
            f"{len(specs)} clips x {args.frames} frames at 640x480; mean per-frame mask IoU.\n\n"
            + table(names, rows) + "\n"
            + "Ours (mean of the seeds) minus the best peer's best setting: "
            + f"{', '.join(f'{n} {m:+.3f}' for n, m in margins.items())} (the worst seed: "
            + f"{', '.join(f'{n} {m:+.3f}' for n, m in worst.items())}); "
            + f"minus the baseline: {', '.join(f'{n} {m:+.3f}' for n, m in over_base.items())}. Ours with the plate's "
            + "estimate counted: " + ", ".join(f"{rows['ours'][n]['fps_plate']:.1f}" for n in names) + " frames/s.\n")
    fps = statistics.mean(rows["ours"][n]["fps"] for n in names)
    text += (f"\nTargets (issue 30): ours above each peer's best setting by >= 0.05 on every clip: "
             f"{'met' if min(margins.values()) >= 0.05 else 'not met'} (worst {min(margins.values()):+.3f}); above the "
             f"baseline on every clip: {'met' if min(over_base.values()) > 0 else 'not met'}; >= 10 frames/s at "
             f"640x480 on this CPU: {'met' if fps >= 10 else 'not met'} ({fps:.1f}).\n")
    if not args.no_memory:
        mem = make_clip(ClipSpec("memory-600", specs[0].bg, specs[0].fgs, frames=600, seed=9), sample_assets(),
                        out / "clips")[0]
        short, long_ = peak_rss(run, mem, 60), peak_rss(run, mem, None)
        ratio = long_[1] / short[1]
        text += (f"\nMemory: peak RSS {short[1]:.0f} MB for {short[0]} frames, {long_[1]:.0f} MB for {long_[0]} "
                 f"frames ({ratio:.2f}x; target <= 1.2x: {'met' if ratio <= 1.2 else 'not met'}).\n")
    text += "\n<details><summary>every peer setting</summary>\n\n" + table(names, detail) + "\n</details>\n"
    print(text)
    if args.write:
        quality.write_section(text, BEGIN, END, HEADING)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
