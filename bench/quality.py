"""Model quality: every candidate design trained under one fixed CPU budget, several seeds, held-out backgrounds.

    python bench/quality.py                       # every candidate, seeds 0 1 2, the demo's data and budget
    python bench/quality.py --only joint-diff-residual --seeds 0
    python bench/quality.py --write               # also replace the quality section of bench/RESULTS.md
    python bench/quality.py --lr-range joint-diff-residual   # lr range test (Smith 2017) for one candidate

The data, split and budget are `eva demo`'s (DemoConfig: the embedded sample at 64 px, 4 positions, 2 held-out
backgrounds for validation and 2 for the test, 15 epochs of batch 32): a row here is what the demo would report for
that design. Seeds vary the initialisation, the sample order and the augmentation; the held-out backgrounds stay the
demo's (split_seed = 0). Each run is `fit` + `evaluate_run`, so thresholds are chosen on validation exactly as in the
product; the baseline rows are scored on the same test images. Runs resume, so an interrupted bench picks up.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (task, model kwargs, TrainConfig overrides), in table order. The recipe (TrainConfig's defaults: lr 1e-2 for UNets, no crop)
# and the unet_small preset (widths 16.., one decoder shared by the heads) apply to every row unless the row overrides
# them; FIRST_ROUND and NARROW are the first round's recipe and preset.
FIRST_ROUND = {"lr": 1e-3, "crop_scale": [0.6, 1.0]}
NARROW = {"widths": [10, 20, 40, 80, 160], "decoder": "per_task"}  # the first round's unet_small preset
DIFF = {"inputs": "diff", "mask_head": "plain"}
DIFF_RES = {"inputs": "diff", "mask_head": "residual"}
TOL = {"inputs": "tolerant", "mask_head": "plain"}  # diff + the shift-tolerant difference
W1 = {"loss_weights": {}}  # losses.DEFAULT_WEIGHTS as they are (depth 1), not TrainConfig's default depth x2
P08, SHAKE2 = {"p": 0.8}, {"shift": 2.0, "p_shift": 0.5}
DEFAULT = {"second_shot": "full", "loss_weights": {"depth": 2.0}, "second_shot_opts": {"p": 0.5, **SHAKE2}}
LIGHT = {"p_cast": 0.5, "p_blobs": 0.8, "p_motion": 0.3, "blur": 2.0}
CANDIDATES: dict[str, tuple[str, dict, dict]] = {
    "joint-first-round": ("joint", {"inputs": "concat", "mask_head": "plain", **NARROW}, FIRST_ROUND),
    "joint-diff-lr1e-3": ("joint", DIFF, {"lr": 1e-3}),
    "joint-diff-crop0.6": ("joint", DIFF, {"crop_scale": [0.6, 1.0]}),
    "joint-diff-narrow": ("joint", {**DIFF, **NARROW}, {}),
    "joint-diff-uncertainty": ("joint", DIFF, {"loss_weighting": "uncertainty"}),
    "mask-concat": ("mask", {"inputs": "concat", "mask_head": "plain"}, {}),
    "mask-diff": ("mask", {"inputs": "diff", "mask_head": "plain"}, {}),
    "mask-diff-residual": ("mask", DIFF_RES, {}),
    "mask-siamese": ("mask", {"inputs": "siamese", "mask_head": "plain"}, {}),
    "joint-concat": ("joint", {"inputs": "concat", "mask_head": "plain"}, {}),
    "joint-siamese": ("joint", {"inputs": "siamese", "mask_head": "plain"}, {}),
    "joint-diff-residual": ("joint", DIFF_RES, {}),
    "joint-diff": ("joint", DIFF, {}),
    "depth-diff": ("depth", {"inputs": "diff"}, {}),
    # second-shot training (second_shot.py), every option spelled out so a row does not move with the presets;
    # W1 = the loss weights before depth x2 became the default
    "joint-shot-off": ("joint", DIFF, {"second_shot": "off", **W1}),
    "joint-shot-tone": ("joint", DIFF, {"second_shot": "tone", **W1}),
    "joint-shot-full": ("joint", DIFF, {"second_shot": "full", **W1, "second_shot_opts": {**P08, "shift": 1.0,
                                                                                          "p_shift": 0.3}}),
    "joint-shot-shift2": ("joint", DIFF, {"second_shot": "full", **W1, "second_shot_opts": {**P08, **SHAKE2}}),
    "joint-tol-off": ("joint", TOL, {"second_shot": "off", **W1}),
    "joint-tol-full": ("joint", TOL, {"second_shot": "full", **W1, "second_shot_opts": {**P08, **SHAKE2}}),
    "joint-tol-p05": ("joint", TOL, {"second_shot": "full", **W1, "second_shot_opts": {"p": 0.5, **SHAKE2}}),
    "joint-tol-noshadow": ("joint", TOL, {"second_shot": "full", **W1,
                                          "second_shot_opts": {"p": 0.5, **SHAKE2, "p_shadow": 0.0}}),
    "joint-tol-depth2": ("joint", TOL, {"second_shot": "full", "loss_weights": {"depth": 2.0},
                                        "second_shot_opts": {"p": 0.5, **SHAKE2}}),  # the default
    "joint-tol-full-depth2": ("joint", TOL, {"second_shot": "full", "loss_weights": {"depth": 2.0},
                                             "second_shot_opts": {**P08, **SHAKE2}}),
    "joint-tol-gamma": ("joint", TOL, {"second_shot": "full", "loss_weights": {"depth": 2.0},
                                       "second_shot_opts": {"p": 0.5, **SHAKE2, "gamma": 0.4}}),
    "joint-tol-shake": ("joint", TOL, {"second_shot": "full", "loss_weights": {"depth": 2.0},
                                       "second_shot_opts": {"p": 0.5, "shift": 2.0, "p_shift": 0.8}}),
    "joint-tol-jpeg": ("joint", TOL, {"second_shot": "full", **W1, "second_shot_opts": {
        **P08, "shift": 3.0, "p_shift": 0.5, "p_jpeg": 0.8, "jpeg_quality": [20, 90]}}),
    # light and blur a real second shot brings (shot_light.py): the object's cast silhouette, light and shadow patches
    # anywhere, motion blur, and Gaussian blur up to sigma 2 (defocus)
    "joint-light": ("joint", TOL, {**DEFAULT, "second_shot_opts": {**DEFAULT["second_shot_opts"], **LIGHT}}),
    # warm starts and progressive resizing (warm_start.py, TrainConfig.size_stages): the default's recipe (DEFAULT)
    # with a start or a size schedule; "@NAME" in init_from is candidate NAME's run of the same seed (trained first)
    "mask-tol-depth2": ("mask", TOL, DEFAULT),  # the demo's mask run with today's defaults
    "joint-from-mask": ("joint", TOL, {**DEFAULT, "init_from": "@mask-tol-depth2"}),
    "joint-prog32": ("joint", TOL, {**DEFAULT, "size_stages": [[32, 8]]}),  # 8 epochs at 32 px, then 7 at 64
    "joint-prog32-e24": ("joint", TOL, {**DEFAULT, "epochs": 24, "size_stages": [[32, 12]]}),  # about 15's compute
    # the demo's schedule (issue 32): the joint model first (joint-prog32-e24), then mask and depth models fine-tuned
    # from its best.pt; demo-joint-from-mask-e6 screened the other order (a fresh depth head needs more than 6 epochs)
    "demo-mask-prog32": ("mask", TOL, {**DEFAULT, "size_stages": [[32, 8]]}),
    "demo-joint-from-mask-e6": ("joint", TOL, {**DEFAULT, "init_from": "@demo-mask-prog32", "epochs": 6}),
    "demo-mask-ft3": ("mask", TOL, {**DEFAULT, "init_from": "@joint-prog32-e24", "epochs": 3}),
    "demo-depth-ft3": ("depth", TOL, {**DEFAULT, "init_from": "@joint-prog32-e24", "epochs": 3}),
}
LABELS = {"joint-first-round": "joint-concat, first round (widths 10.., decoder per task, lr 1e-3, crop 0.6)",
          "joint-diff-narrow": "joint-diff, first-round preset (widths 10.., decoder per task)",
          "joint-diff-lr1e-3": "joint-diff, lr 1e-3", "joint-diff-crop0.6": "joint-diff, crop 0.6",
          "joint-diff-uncertainty": "joint-diff, uncertainty loss weighting",
          "joint-diff": "joint-diff (inputs diff; on exact pairs it was the default: joint-shot-off)",
          "joint-tol-depth2": "**joint-tol-depth2 (the default)**"}
KEYS = ("mask_iou", "mask_dice", "depth_rmse", "depth_absrel", "depth_delta1", "depth_ssim", "train_images_per_s")
BASELINE_KEYS = ("baseline_mask_iou", "baseline_mask_dice", "baseline_depth_rmse", "baseline_depth_absrel",
                 "baseline_depth_delta1", "baseline_depth_ssim")
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


def train_config(name: str, seed: int, data: Path, out: Path, demo, lr: float | None, epochs: int | None,
                 sets: dict | None = None):
    from eva_helpers.training.config import TrainConfig

    task, model_kwargs, overrides = CANDIDATES[name]
    sets = dict(sets or {})
    model_kwargs = {**model_kwargs, **sets.pop("model_kwargs", {})}
    overrides = {**overrides, **sets}
    tag = (f"{name}-lr{lr:g}" if lr else name) + "".join(f"-{k}={v}" for k, v in sorted(sets.items()))
    tag += "".join(f"-{k}={v}" for k, v in sorted(model_kwargs.items()) if CANDIDATES[name][1].get(k) != v)
    fields = dict(task=task, data=str(data), run_dir=str(out / "runs" / f"{tag}-e{epochs or demo.epochs}-s{seed}"),
                  model="unet_small", model_kwargs=dict(model_kwargs), epochs=epochs or demo.epochs,
                  batch_size=demo.batch_size, size=demo.size, seed=seed, split_seed=demo.seed, workers=demo.workers,
                  val_fraction=demo.val_fraction, test_fraction=demo.test_fraction, checkpoint_interval_s=600.0,
                  progress=False)
    fields.update({**demo.train_overrides, **overrides})
    if str(fields.get("init_from") or "").startswith("@"):  # another candidate's run of this seed
        fields["init_from"] = train_config(fields["init_from"][1:], seed, data, out, demo, lr, epochs).run_dir
    if "epochs" in overrides:
        fields["run_dir"] = str(out / "runs" / f"{tag}-e{overrides['epochs']}-s{seed}")
    if lr:
        fields["lr"] = lr
    return TrainConfig(**fields)


def sources(name: str, seed: int, data: Path, out: Path, demo, lr: float | None, epochs: int | None) -> list:
    """The configs of the runs candidate `name` starts from ("@NAME" in init_from), the first one first."""
    src = str(CANDIDATES[name][2].get("init_from") or "")
    if not src.startswith("@"):
        return []
    return [*sources(src[1:], seed, data, out, demo, lr, epochs), train_config(src[1:], seed, data, out, demo, lr, epochs)]


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the loader's workers): on a shared machine a fairer
    clock than the wall's, which counts the time other jobs held the cores."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_one(cfg, before=()) -> dict:
    """Train (or reuse) one run and score it; `before`: the configs of the runs it starts from, trained first."""
    from eva_helpers.evaluation.heldout import evaluate_run
    from eva_helpers.training.trainer import fit

    for source in before:
        run_one(source)
    t0, c0 = time.perf_counter(), _cpu_s()
    fit(cfg)
    train_s, cpu_s = time.perf_counter() - t0, _cpu_s() - c0
    metrics_path = Path(cfg.run_dir) / "metrics.json"
    if metrics_path.is_file():
        m = json.loads(metrics_path.read_text())
    else:
        m = evaluate_run(cfg.run_dir, cfg.data, figure=False)
        m["wall_train_s"], m["cpu_train_s"] = train_s, cpu_s
        from eva_helpers.atomic import atomic_write_text

        atomic_write_text(metrics_path, json.dumps(m, indent=1, sort_keys=True, default=str) + "\n")
    return m


def lr_range_test(name: str, data: Path, demo, steps: int = 120, lo: float = 1e-5, hi: float = 1e-1) -> list[tuple]:
    """Train `steps` batches with the lr rising geometrically lo -> hi; returns (lr, smoothed loss) pairs."""
    import torch

    from eva_helpers.training.losses import build_criterion
    from eva_helpers.models import build_model
    from eva_helpers.training.trainer import build_data, seed_everything
    from eva_helpers.data.loaders import BackgroundBank, seeded_loader
    from eva_helpers.training.trainer import model_batch
    from eva_helpers.data.sampler import ResumableSampler

    cfg = train_config(name, 0, data, Path("/tmp"), demo, None, None)
    seed_everything(0)
    train_set, _, stats = build_data(cfg)
    model = build_model(cfg.model, tasks=cfg.tasks, **cfg.model_kwargs)
    crit = build_criterion(cfg.tasks, weighting=cfg.loss_weighting)
    opt = torch.optim.AdamW(list(model.parameters()) + list(crit.parameters()), lr=lo, weight_decay=cfg.weight_decay)
    loader = seeded_loader(train_set, cfg.batch_size, sampler=ResumableSampler(len(train_set), seed=0),
                           workers=cfg.workers, seed=0)
    backgrounds = BackgroundBank(train_set, cfg.size)  # the workers ship no bg (fit does the same)
    out, avg, step = [], None, 0
    while step < steps:
        for batch in loader:
            lr = lo * (hi / lo) ** (step / (steps - 1))
            for g in opt.param_groups:
                g["lr"] = lr
            x, t = model_batch(batch, "cpu", stats=stats, backgrounds=backgrounds)
            loss, _ = crit(model(x), t)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or 1e9)
            opt.step()
            avg = float(loss) if avg is None else 0.9 * avg + 0.1 * float(loss)
            out.append((lr, avg))
            step += 1
            if step >= steps or not math.isfinite(avg) or avg > 4 * min(a for _, a in out):
                return out
        loader.sampler.set_epoch(loader.sampler.epoch + 1)
    return out


def fmt(vals: list[float], nd: int = 3) -> str:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{nd}f}"
    return f"{statistics.mean(vals):.{nd}f} ± {statistics.stdev(vals):.{nd}f}"


def table(rows: dict[str, list[dict]]) -> str:
    head = ("| candidate | seeds | mask IoU | min IoU | mask Dice | depth RMSE | AbsRel | δ<1.25 | depth SSIM | "
            "train img/s | train s | train CPU s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for name, ms in rows.items():
        col = lambda k: [m.get(k) for m in ms]
        ious = [v for v in col("mask_iou") if v is not None]
        lines.append(f"| {name} | {len(ms)} | {fmt(col('mask_iou'))} | {min(ious):.3f} | {fmt(col('mask_dice'))} | "
                     if ious else f"| {name} | {len(ms)} | – | – | – | ")
        lines[-1] += (f"{fmt(col('depth_rmse'))} | {fmt(col('depth_absrel'))} | {fmt(col('depth_delta1'))} | "
                      f"{fmt(col('depth_ssim'))} | {fmt(col('train_images_per_s'), 0)} | {fmt(col('wall_train_s'), 0)} | "
                      f"{fmt(col('cpu_train_s'), 0)} |")
    every = [m for ms in rows.values() for m in ms]
    mb = [m for m in every if "baseline_mask_iou" in m]
    if mb:
        lines.append(f"| bg-difference baseline (no learning; threshold chosen on validation) | – | "
                     f"{fmt([mb[0]['baseline_mask_iou']])} | – | {fmt([mb[0]['baseline_mask_dice']])} | – | – | – | – | – | – | – |")
    db = [m for m in every if "baseline_depth_rmse" in m]
    if db:
        b = db[0]
        lines.append(f"| free depth baseline (no learning) | – | – | – | – | {fmt([b['baseline_depth_rmse']])} | "
                     f"{fmt([b.get('baseline_depth_absrel')])} | {fmt([b.get('baseline_depth_delta1')])} | "
                     f"{fmt([b.get('baseline_depth_ssim')])} | – | – | – |")
    return head + "\n".join(lines) + "\n"


def write_section(text: str, begin: str = BEGIN, end: str = END, heading: str | None = None) -> None:
    """Replace the block between `begin` and `end` in bench/RESULTS.md with `text` (append it, under `heading`, when
    missing); written atomically. Every bench that records a table uses this."""
    from eva_helpers.atomic import atomic_write_text

    path = ROOT / "bench" / "RESULTS.md"
    old = path.read_text(encoding="utf-8")
    block = f"{begin}\n{text}{end}"
    if begin in old and end in old:
        new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    else:
        new = old.rstrip("\n") + (f"\n\n{heading}" if heading else "") + f"\n\n{block}\n"
    atomic_write_text(path, new)


def write_results(text: str) -> None:
    write_section(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="candidates to run (default: all)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=None, help="override the peak learning rate (sweeps)")
    ap.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                    help="TrainConfig overrides, e.g. batch_size=16 loss_weighting='\"uncertainty\"'")
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "quality"))
    ap.add_argument("--write", action="store_true", help="replace the quality section of bench/RESULTS.md")
    ap.add_argument("--lr-range", default=None, metavar="CANDIDATE", help="run an lr range test instead")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 on a shared machine: 2 threads stall each other when a core is busy)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from eva_helpers.demo import DemoConfig, build_sample, ensure_stats

    demo = DemoConfig(out=args.out)
    data = build_sample(demo)
    ensure_stats(data)
    if args.lr_range:
        for lr, loss in lr_range_test(args.lr_range, data, demo)[::5]:
            print(f"lr {lr:.2e}  loss {loss:.4f}")
        return
    sets = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    names = args.only or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        sys.exit(f"unknown candidate(s) {unknown}: choose from {list(CANDIDATES)}")
    rows: dict[str, list[dict]] = {}
    for name in names:
        for seed in args.seeds:
            cfg = train_config(name, seed, data, Path(args.out), demo, args.lr, args.epochs, sets)
            m = run_one(cfg, sources(name, seed, data, Path(args.out), demo, args.lr, args.epochs))
            label = LABELS.get(name, name) + "".join(f", {k}={v}" for k, v in (("lr", args.lr), *sets.items()) if v is not None)
            rows.setdefault(label, []).append(m)
            print(json.dumps({"candidate": name, "seed": seed, **{k: m.get(k) for k in KEYS + BASELINE_KEYS},
                              "mask_threshold": m.get("mask_threshold"), "mask_morph": m.get("mask_morph")}),
                  flush=True)
    text = (f"`python bench/quality.py {' '.join(sys.argv[1:])}`: {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}; test split = the demo's 2 held-out backgrounds; mean ± sample std over "
            f"seeds {args.seeds}.\n\n" + table(rows))
    print(text)
    if args.write:
        write_results(text)


if __name__ == "__main__":
    main()
