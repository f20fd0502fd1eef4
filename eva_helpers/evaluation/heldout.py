"""`eva eval`: a trained run measured on held-out backgrounds, always beside the no-learning baseline.

Writes `<run_dir>/metrics.json` (keys: docs/architecture.md, "Contracts") and `<run_dir>/eval_best_worst.png`. Under a second-shot
change (`perturb`, see perturb.py) and/or with registration (`align`), the scored split's pairs change, the choices
made on the clean validation split do not, and the results go to `metrics-<name>[-aligned].json` beside them.

Another dataset than the run's (by content identity, as `eva train` checks it) is scored as unseen data: every sample
of it, with the thresholds, calibration and baseline still chosen on the run's own dataset (its validation split; the
depth baseline from its training labels), into `metrics-data-<folder name>-<identity>.json` (`unseen_tag`: its own
prefix, so no folder name, `jpeg40` or `.`, can take a perturbation's file); calibration.json is left alone. A dataset
sharing backgrounds (by content) with the run's training split is refused: that is not unseen data. Every metrics file
names the dataset it scored (path and identity).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eva_helpers.atomic import atomic_write_json, sha256_bytes
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.data.formats import BACKGROUNDS, read_manifest
from eva_helpers.data.loaders import collate, make_loader
from eva_helpers.data.resize import resize_transform
from eva_helpers.data.verify import dataset_identity
from eva_helpers.errors import EvaError
from eva_helpers.evaluation.baseline import FreeBaseline, fit_mean_depth, fit_threshold
from eva_helpers.evaluation.calibrate import fit_postprocess, save_calibration
from eva_helpers.evaluation.perturb import PERTURBATIONS, PerturbedDataset, check_name
from eva_helpers.plots import save_figure, show_predictions
from eva_helpers.predict.masks import postprocess
from eva_helpers.training.metrics import MetricAccumulator
from eva_helpers.training.run_folder import (
    METRICS,
    fresh_for_best,
    metrics_file,
    read_history,
    recorded_identity,
    resolve_data,
)
from eva_helpers.training.trained_run import load_run, load_run_stats
from eva_helpers.training.trainer import model_batch


def _loader(data_dir, positions, cfg, batch_size: int, workers: int | None = 0, perturb: str | None = None,
            align: bool = False):
    """The split at `positions` with the test transform; `perturb` / `align` change its pairs (perturb.py)."""
    ds = ShardDataset(str(data_dir), indices=positions, transform=resize_transform(cfg.size))
    if perturb is not None or align:

        ds = PerturbedDataset(ds, perturb or "clean", ds.transform, align=align)
    return ds, make_loader(ds, batch_size, shuffle=False, num_workers=workers)


def change_tag(perturb: str | None, align: bool) -> str | None:
    """None for the split as it is; else `<perturbation or clean>[-aligned]`, the suffix of the files it writes."""
    if perturb is None and not align:
        return None
    return f"{perturb or 'clean'}{'-aligned' if align else ''}"


def metrics_name(perturb: str | None, align: bool) -> str:
    """metrics.json for the split as it is; metrics-<tag>.json otherwise (never the clean file)."""
    tag = change_tag(perturb, align)
    return metrics_file(tag)


UNSEEN_PREFIX = "data"  # no perturbation name starts so (tests/test_bad_inputs.py checks)


def unseen_tag(data_dir: str | Path, identity: str, change: str | None = None) -> str:
    """`data-<folder name>-<identity, 8 hex>[-<change>]`: the file-name tag of an unseen dataset's scores. The folder
    is named as resolved (`--data .` names the folder) and the content identity tells apart two folders of one name."""
    name = Path(data_dir).resolve().name or "root"
    return f"{UNSEEN_PREFIX}-{name}-{identity[:8]}" + (f"-{change}" if change else "")


@torch.no_grad()
def predict_loader(model, loader, device, stats, channels_last: bool = False):
    """Yields (batch, x, targets, outputs) with outputs in float32 on CPU-friendly devices."""
    model.eval()
    for batch in loader:
        x, targets = model_batch(batch, device, stats, channels_last=channels_last)
        outputs = {k: v.float() for k, v in model(x).items()}
        yield batch, x, targets, outputs


def _fit_positions(splits: dict, cfg, max_fit: int) -> list[int]:
    """Up to max_fit seeded positions of the validation split: where thresholds and post-processing are chosen."""
    val = list(splits["val"])
    if not val:
        raise EvaError("the validation split is empty, so the mask threshold cannot be chosen on it: "
                       "train with val_fraction > 0 (never choose on the test split)")
    rng = np.random.default_rng(cfg.seed)
    return sorted(rng.choice(val, size=min(max_fit, len(val)), replace=False).tolist())


def fit_baseline_threshold(data_dir, splits: dict, cfg, max_fit: int = 512) -> float:
    """The |fg_bg - bg| threshold chosen on (up to max_fit) validation samples: never on the split it is scored on."""
    _, fit_loader = _loader(data_dir, _fit_positions(splits, cfg, max_fit), cfg, 64)
    return float(fit_threshold(fit_loader))


def fit_model_postprocess(model, data_dir, splits: dict, cfg, device, stats, max_fit: int = 512) -> dict[str, Any]:
    """The model's mask threshold and open/close choice, made on the same validation samples as the baseline's."""
    _, fit_loader = _loader(data_dir, _fit_positions(splits, cfg, max_fit), cfg, 64)
    batches = ((out["mask"], t["mask"], [m.get("bg_id") for m in b["meta"]])  # backgrounds: the unit of evidence
               for b, _, t, out in predict_loader(model, fit_loader, device, stats))
    return fit_postprocess(batches)


def free_baseline(data_dir, splits: dict, cfg, threshold: float | None, max_fit: int = 512):
    """The no-learning predictor scored beside the model: the mask threshold given, plus (for runs with a depth task)
    the mean depth label of up to max_fit seeded *training* samples; a depth-only run still fits a threshold to paste
    the object's mask into that map."""
    if "depth" not in cfg.tasks:
        return FreeBaseline(threshold)
    if threshold is None:
        threshold = fit_baseline_threshold(data_dir, splits, cfg, max_fit)
    train = list(splits["train"])
    if not train:
        raise EvaError(f"{data_dir}: the training split is empty, so the depth baseline cannot be fitted")
    rng = np.random.default_rng(cfg.seed)
    fit_pos = sorted(rng.choice(train, size=min(max_fit, len(train)), replace=False).tolist())
    _, fit_loader = _loader(data_dir, fit_pos, cfg, 64)
    return FreeBaseline(threshold, fit_mean_depth(fit_loader))


def fit_on_validation(model, data_dir, splits: dict, cfg, device, stats) -> dict[str, Any]:
    """Everything chosen before the scored split is seen: the baseline's threshold and the model's post-processing
    (clean validation split), and the free baseline (its depth map from training labels)."""
    threshold = fit_baseline_threshold(data_dir, splits, cfg) if "mask" in cfg.tasks else None
    calib = fit_model_postprocess(model, data_dir, splits, cfg, device, stats) if "mask" in cfg.tasks else None
    return {"threshold": threshold, "calib": calib, "baseline": free_baseline(data_dir, splits, cfg, threshold)}


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, *, split: str = "test", which: str = "best",
                 device: str | None = None, batch_size: int = 32, figure: bool = True,
                 progress: bool = True, perturb: str | None = None, align: bool = False,
                 reuse: dict | None = None) -> dict[str, Any]:
    """Score a run folder's checkpoint on a split; write metrics.json and the best/worst figure; return the metrics.

    `perturb` (a name in perturb.PERTURBATIONS) changes the scored split's fg_bg as a second shot would; `align`
    registers each scored pair's bg to its fg_bg first (`align.align_pair`). The model and the baseline see the same
    pairs; thresholds and calibration are still chosen on the clean validation split, and the results go to
    `metrics_name(perturb, align)` (calibration.json is left alone). `reuse`: a dict the caller keeps between calls on
    one run; what was chosen on validation is kept there and reused while the checkpoint and data are the same (a
    suite of changes fits once instead of once per change). `data_dir` holding another dataset than the run's is scored
    whole as unseen data (module docstring; `split` does not apply), into `metrics-<unseen_tag>.json`.
    """
    from tqdm.auto import tqdm

    if perturb is not None:

        check_name(perturb)
    tag = change_tag(perturb, align)
    run_dir = Path(run_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, ckpt = load_run(run_dir, which=which, device=str(dev))
    run_data = resolve_data(cfg.data, run_dir)
    data_dir = Path(data_dir) if data_dir is not None else run_data
    if data_dir is None:
        raise EvaError(f"{run_dir}: the run records no dataset; give the dataset to score (--data)")
    ident = _identity(data_dir)
    run_ident = recorded_identity(run_dir) or (_identity(run_data) if run_data and run_data.is_dir() else None)
    unseen = run_ident is not None and ident != run_ident
    if unseen:

        whole = ShardDataset(str(data_dir))  # opened against its manifest first: damage is reported as such
        scored = list(range(len(whole)))
        whole.close()
        run_data = _check_unseen(run_dir, cfg, run_data, run_ident, data_dir)
    else:
        run_data = data_dir
    stats = load_run_stats(run_dir, run_data)
    splits = cfg.splits(run_data)  # thresholds and baselines are the run's own: chosen on its dataset
    if not unseen:
        scored = splits[split]
    if not scored:
        raise EvaError(f"{data_dir}: the {split} split is empty (too few backgrounds for held-out splits)")
    ds, loader = _loader(data_dir, scored, cfg, batch_size, perturb=perturb, align=align)
    key = (str(ckpt["loaded_from"]), int(ckpt.get("global_step", -1)), str(run_data))
    fitted = reuse if reuse is not None and reuse.get("key") == key else None
    if fitted is None:
        fitted = {**fit_on_validation(model, run_data, splits, cfg, dev, stats), "key": key}
        if reuse is not None:
            reuse.clear()
            reuse.update(fitted)
    threshold, calib = fitted["threshold"], fitted["calib"]
    acc = MetricAccumulator(cfg.tasks, baseline=fitted["baseline"])
    n, aligned, toned, recompressed, t0 = 0, 0, 0, 0, time.perf_counter()
    what = f"{data_dir.resolve().name} (unseen)" if unseen else split
    bar = tqdm(total=len(ds), desc=f"eval {what}" + (f" ({tag})" if tag else ""), unit="img", disable=not progress)
    for batch, x, targets, outputs in predict_loader(model, loader, dev, stats):
        bar.update(x.shape[0])
        if calib is not None:  # the accumulator cuts logits at 0: hand it the post-processed decision as +-1
            outputs["mask"] = postprocess(outputs["mask"], calib["threshold"], calib["morph"]).float() * 2 - 1
        acc.update(outputs, targets, bg=batch["bg"], fg_bg=batch["fg_bg"])  # raw uint8 images for the baseline
        n += x.shape[0]
        aligned += sum(bool(m.get("align_applied")) for m in batch["meta"])
        toned += sum(bool(m.get("align_tone_applied")) for m in batch["meta"])
        recompressed += sum(bool(m.get("align_jpeg_applied")) for m in batch["meta"])
    bar.close()
    seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {k: float(v) for k, v in acc.compute().items()}
    if threshold is not None:
        metrics["baseline_threshold"] = threshold
    if calib is not None:
        if tag is None and not unseen:  # the same choice either way (the run's validation); recorded once
            save_calibration(run_dir, calib)
        metrics.update(mask_threshold=calib["threshold"], mask_morph=calib["morph"], mask_val_iou=calib["val_iou"])
    metrics["train_images_per_s"] = training_speed(run_dir)
    held_out = splits["info"].get("bg_ids", {}).get(split) if not unseen else None
    metrics.update({
        "split": "all (unseen dataset)" if unseen else split, "checkpoint": which,
        "checkpoint_file": Path(ckpt["loaded_from"]).name,
        "checkpoint_step": int(ckpt.get("global_step", -1)), "n_images": n, "eval_images_per_s": n / max(seconds, 1e-9),
        "parameters": int(sum(p.numel() for p in model.parameters())), "model": cfg.model, "task": cfg.task,
        "device": str(dev), "held_out_backgrounds": held_out,
        "dataset": {"path": str(data_dir.resolve()), "identity": ident, "is_the_runs": not unseen},
    })
    if unseen:
        metrics["thresholds_chosen_on"] = {"path": str(run_data.resolve()), "identity": run_ident,
                                           "split": "val (mask), train (depth baseline)"}
    if tag is not None:

        name = perturb or "clean"
        metrics.update(perturb=name, perturb_ops=PERTURBATIONS[name].ops, aligned=align)
    if align:
        metrics.update(align_applied_fraction=aligned / max(n, 1), align_tone_applied_fraction=toned / max(n, 1),
                       align_jpeg_applied_fraction=recompressed / max(n, 1))
    out_name = metrics_file(unseen_tag(data_dir, ident, tag)) if unseen else metrics_name(perturb, align)
    atomic_write_json(run_dir / out_name, metrics, sort_keys=True)
    if figure and n:
        fig_tag = unseen_tag(data_dir, ident, tag) if unseen else tag
        fig_name = f"eval_best_worst-{fig_tag}.png" if fig_tag else "eval_best_worst.png"
        best_worst_figure(model, ds, acc, cfg, dev, stats, run_dir / fig_name)
    return metrics


def _identity(data_dir: Path) -> str:
    """Content identity of the dataset at `data_dir` (its manifest; a missing one is a one-line error)."""
    return dataset_identity(read_manifest(data_dir))


def _background_keys(data_dir: Path) -> dict[str, str]:
    """{bg_id: content key} of a dataset's backgrounds: the source photo's sha256 as the build recorded it, else the
    prepared background's bytes (hashed)."""
    import zipfile

    keys: dict[str, str] = {}
    try:
        with zipfile.ZipFile(data_dir / BACKGROUNDS) as z:
            names = set(z.namelist())
            rows = [json.loads(ln) for ln in z.read("index.jsonl").decode("utf-8").splitlines() if ln.strip()]
            for r in rows:
                if r.get("kind", "bg") != "bg" or "bg_id" not in r:
                    continue
                member = f"bg/{r['bg_id']}.png"
                keys[str(r["bg_id"])] = r.get("sha256") or (
                    "png:" + sha256_bytes(z.read(member)) if member in names else f"id:{r['bg_id']}")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise EvaError(f"{data_dir / BACKGROUNDS}: cannot list the backgrounds ({type(e).__name__}: {e}); fetch or "
                       "build the dataset again") from None
    return keys


def _check_unseen(run_dir: Path, cfg, run_data: Path | None, run_ident: str, data_dir: Path) -> Path:
    """The run's own dataset (where thresholds are chosen), after checking that `data_dir` is unseen: no background of
    it is one the run trained on. Each refusal is one line."""
    if run_data is None or not run_data.is_dir() or _identity(run_data) != run_ident:
        raise EvaError(f"{data_dir} is dataset {_identity(data_dir)[:12]}, not the run's ({run_ident[:12]}): scoring it "
                       f"as unseen data needs the run's own dataset to choose thresholds on its validation split, and "
                       f"it is not at {cfg.data}; fetch or copy it there (or give the run's dataset to --data)")
    train_ids = set(cfg.splits(run_data)["info"].get("bg_ids", {}).get("train", []))
    run_keys = _background_keys(run_data)
    seen = {run_keys[b] for b in map(str, train_ids) if b in run_keys}
    shared = sorted(b for b, k in _background_keys(data_dir).items() if k in seen)
    if shared:
        raise EvaError(f"{data_dir} shares {len(shared)} background(s) with the training split of {run_dir} (first "
                       f"{shared[0]!r}): that is not unseen data; score the run's held-out split (--data {run_data}) "
                       "or a dataset built from other backgrounds")
    return run_data


def training_speed(run_dir: Path) -> float | None:
    """Mean training samples/s over the run's epochs (history.jsonl), for the comparison tables."""
    speeds = [r["samples_per_s"] for r in read_history(run_dir) if isinstance(r.get("samples_per_s"), (int, float))]
    return sum(speeds) / len(speeds) if speeds else None


def _score_key(tasks) -> str:
    return "mask_iou" if "mask" in tasks else "depth_ssim"


def best_worst_figure(model, ds, acc, cfg, device, stats, path: Path, k: int = 3) -> Path:
    """Rows: the k best and k worst test images by mask IoU (or depth SSIM), predictions against targets."""
    key = _score_key(cfg.tasks)
    scores = np.asarray(acc.per_image[key], dtype=np.float64)
    ranked = np.argsort(-scores)
    picks = list(ranked[:k]) + [i for i in ranked[::-1][:k] if i not in ranked[:k]]
    samples = [ds[int(i)] for i in picks]
    batch = collate(samples)
    with torch.no_grad():
        model.eval()
        x, targets = model_batch(batch, device, stats)
        outputs = {kk: v.float().cpu() for kk, v in model(x).items()}
    labels = [f"{'best' if j < k else 'worst'} {key}={scores[i]:.3f}" for j, i in enumerate(picks)]
    fig = show_predictions(batch["fg_bg"], {kk: v.cpu() for kk, v in targets.items()}, outputs, labels, max_rows=len(picks))
    return save_figure(fig, path)


def current_metrics(run_dir: str | Path, data_dir: str | Path | None = None, **eval_kw: Any) -> dict[str, Any]:
    """metrics.json when it is newer than the best checkpoint, else a fresh `evaluate_run` (which rewrites it)."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS
    if fresh_for_best(run_dir, path):
        metrics = json.loads(path.read_text())
    else:
        metrics = evaluate_run(run_dir, data_dir, **eval_kw)
    metrics["run_dir"] = str(run_dir)
    return metrics
