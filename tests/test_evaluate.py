"""`eva eval`: metrics.json with the DESIGN keys on held-out backgrounds, baseline beside the model, a figure.

The values are checked, not just their ranges: recomputed here in numpy from the raw dataset (per image, then
averaged), and pinned on an oracle (a perfect prediction scores 1, an inverted one its known value).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

REQUIRED = ["mask_iou", "mask_dice", "mask_pixel_acc", "baseline_mask_iou", "depth_rmse", "depth_absrel",
            "depth_delta1", "depth_ssim", "baseline_depth_rmse", "baseline_depth_absrel", "baseline_depth_delta1",
            "baseline_depth_ssim"]
BASELINE = [k for k in REQUIRED if k.startswith("baseline_")] + ["baseline_threshold"]


# ----------------------------------------------------------------------------- independent numpy reference
def _morph(x: np.ndarray, dilate: bool) -> np.ndarray:
    """3x3 dilation (or erosion) of (N, H, W) bool; outside the frame never wins."""
    h, w = x.shape[1:]
    y = np.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=not dilate)
    views = [y[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]
    return np.logical_or.reduce(views) if dilate else np.logical_and.reduce(views)


def _open_close(m: np.ndarray) -> np.ndarray:
    """Opening then closing on a canvas padded with 4 background pixels (the frame counts as background)."""
    x = np.pad(m, ((0, 0), (4, 4), (4, 4)))
    x = _morph(_morph(_morph(_morph(x, False), True), True), False)
    return x[:, 4:-4, 4:-4]


def _mask_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean over images of IoU, Dice, pixel accuracy; (N, H, W) bool each; empty vs empty scores 1."""
    p, t = pred.reshape(len(pred), -1), target.reshape(len(target), -1)
    tp, fp, fn = (p & t).sum(1), (p & ~t).sum(1), (~p & t).sum(1)
    iou = np.where(tp + fp + fn > 0, tp / np.maximum(tp + fp + fn, 1), 1.0)
    dice = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)
    return {"iou": iou.mean(), "dice": dice.mean(), "acc": (p == t).mean(1).mean()}


def _depth_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean over images of label RMSE, and AbsRel / delta1 after a per-image least-squares fit (scale >= 0) in
    disparity, depth = 1 / max(disparity, 0.1)."""
    p, t = pred.reshape(len(pred), -1).astype(np.float64), target.reshape(len(target), -1).astype(np.float64)
    rmse = np.sqrt(((p - t) ** 2).mean(1))
    absrel, delta1 = [], []
    for pi, ti in zip(p, t):
        dp = pi - pi.mean()
        var = (dp * dp).mean()
        s = max((dp * (ti - ti.mean())).mean() / var, 0.0) if var > 1e-12 else 0.0
        dpred, dtrue = 1 / np.maximum(s * dp + ti.mean(), 0.1), 1 / np.maximum(ti, 0.1)
        absrel.append((np.abs(dpred - dtrue) / dtrue).mean())
        delta1.append((np.maximum(dpred / dtrue, dtrue / dpred) < 1.25).mean())
    return {"rmse": rmse.mean(), "absrel": float(np.mean(absrel)), "delta1": float(np.mean(delta1))}


def _raw(data_dir, positions) -> dict[str, np.ndarray]:
    """The untransformed samples at `positions`, stacked: bg, fg_bg (N, H, W, 3) uint8, mask (N, H, W) bool, depth."""
    from eva_helpers.data.dataset import ShardDataset

    ds = ShardDataset(data_dir)
    items = [ds.load(p) for p in positions]
    out = {k: np.stack([s[k] for s in items]) for k in ("bg", "fg_bg", "mask", "depth")}
    out["mask"] = out["mask"].astype(bool)
    return out


def _baseline_mask(raw: dict, threshold: float) -> np.ndarray:
    diff = np.abs(raw["fg_bg"].astype(np.float64) / 255 - raw["bg"].astype(np.float64) / 255).max(-1)
    return _open_close(diff > threshold)


def _paste_at_contact(mean_depth: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The mean training depth map with each mask set to the map's mean along the mask's lowest row."""
    out = np.repeat(mean_depth[None], len(masks), 0)
    for o, m in zip(out, masks):
        rows = np.flatnonzero(m.any(1))
        if len(rows):
            o[m] = mean_depth[rows[-1]][m[rows[-1]]].mean()
    return out


# ----------------------------------------------------------------------------- tests
def test_eval_writes_metrics_and_figure(trained_run, sample_dataset):
    from eva_helpers.evaluation.heldout import evaluate_run
    from eva_helpers.training.trainer import model_batch
    from eva_helpers.training.trained_run import load_run

    metrics = evaluate_run(trained_run, sample_dataset, which="last", progress=False)
    on_disk = json.loads((trained_run / "metrics.json").read_text())
    for key in REQUIRED:
        assert key in on_disk, key
        assert on_disk[key] == pytest.approx(metrics[key], rel=1e-12)
    model, cfg, _ = load_run(trained_run, which="last")
    splits = cfg.splits(sample_dataset)
    assert metrics["n_images"] == len(splits["test"]) > 0
    assert (trained_run / "eval_best_worst.png").stat().st_size > 1000

    # the model's numbers, recomputed from the raw test images with the calibration eval chose on val
    test = _raw(sample_dataset, splits["test"])
    stats = json.loads((trained_run / "stats.json").read_text())
    batch = {k: torch.from_numpy(test[k]).permute(0, 3, 1, 2).contiguous() for k in ("bg", "fg_bg")}
    x, _ = model_batch(batch, "cpu", stats)
    with torch.no_grad():
        out = model(x)
    prob = torch.sigmoid(out["mask"].float())[:, 0].numpy()
    pred = prob > metrics["mask_threshold"]
    pred = _open_close(pred) if metrics["mask_morph"] else pred
    m = _mask_scores(pred, test["mask"])
    assert metrics["mask_iou"] == pytest.approx(m["iou"], abs=1e-6)
    assert metrics["mask_dice"] == pytest.approx(m["dice"], abs=1e-6)
    assert metrics["mask_pixel_acc"] == pytest.approx(m["acc"], abs=1e-6)
    d = _depth_scores(out["depth"].float()[:, 0].numpy(), test["depth"])
    assert metrics["depth_rmse"] == pytest.approx(d["rmse"], rel=1e-5)
    assert metrics["depth_absrel"] == pytest.approx(d["absrel"], rel=1e-4)
    assert metrics["depth_delta1"] == pytest.approx(d["delta1"], abs=1e-4)

    # the baseline: |fg_bg - bg| cut at the threshold fitted on val; depth: the mean *training* label map
    bmask = _baseline_mask(test, metrics["baseline_threshold"])
    b = _mask_scores(bmask, test["mask"])
    assert metrics["baseline_mask_iou"] == pytest.approx(b["iou"], abs=1e-9)
    assert metrics["baseline_mask_dice"] == pytest.approx(b["dice"], abs=1e-9)
    assert metrics["baseline_mask_iou"] > 0.5  # clean composites: the free |fg_bg - bg| signal finds the object
    assert len(splits["train"]) <= 512  # so the depth baseline averages the whole training split
    mean_depth = _raw(sample_dataset, splits["train"])["depth"].astype(np.float64).mean(0)
    bd = _depth_scores(_paste_at_contact(mean_depth, bmask), test["depth"])
    assert metrics["baseline_depth_rmse"] == pytest.approx(bd["rmse"], rel=1e-4)
    assert metrics["baseline_depth_delta1"] == pytest.approx(bd["delta1"], abs=1e-4)


def _oracle(monkeypatch, data_dir, invert: bool) -> None:
    """evaluate's predictions replaced by the raw labels of each batch's samples (looked up by index, not taken
    from evaluate's own targets), or by their inverse."""
    import eva_helpers.evaluation.heldout as E
    from eva_helpers.data.dataset import ShardDataset

    ds, real = ShardDataset(data_dir), E.predict_loader

    def predict_loader(*args, **kwargs):
        for batch, x, targets, _ in real(*args, **kwargs):
            items = [ds.load(meta["index"]) for meta in batch["meta"]]
            mask = torch.from_numpy(np.stack([s["mask"] for s in items]))[:, None].bool()  # (B, 1, H, W)
            depth = torch.from_numpy(np.stack([s["depth"] for s in items]))[:, None].float()
            if invert:
                mask, depth = ~mask, 1 - depth
            yield batch, x, targets, {"mask": torch.where(mask, 20.0, -20.0), "depth": depth}

    monkeypatch.setattr(E, "predict_loader", predict_loader)


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """eval writes metrics.json and calibration.json into the run: keep the session's run as it was."""
    return shutil.copytree(trained_run, tmp_path / "run")


def test_a_perfect_prediction_scores_one_and_an_inverted_one_its_known_value(run_copy, sample_dataset, monkeypatch):
    from eva_helpers.evaluation.heldout import evaluate_run
    from eva_helpers.training.trained_run import load_run

    with monkeypatch.context() as mp:
        _oracle(mp, sample_dataset, invert=False)
        good = evaluate_run(run_copy, sample_dataset, which="last", figure=False, progress=False)
    assert good["mask_iou"] == good["mask_dice"] == good["mask_pixel_acc"] == good["mask_val_iou"] == 1.0
    assert good["depth_rmse"] == 0.0 and good["depth_delta1"] == 1.0
    assert good["depth_absrel"] == pytest.approx(0.0, abs=1e-9) and good["depth_ssim"] == pytest.approx(1.0, abs=1e-6)

    with monkeypatch.context() as mp:
        _oracle(mp, sample_dataset, invert=True)
        bad = evaluate_run(run_copy, sample_dataset, which="last", figure=False, progress=False)
    # every pixel wrong: no threshold or open/close on val recovers anything, so the plain cut stays
    assert bad["mask_iou"] == bad["mask_dice"] == bad["mask_pixel_acc"] == 0.0
    _, cfg, _ = load_run(run_copy, which="last")
    t = _raw(sample_dataset, cfg.splits(sample_dataset)["test"])["depth"].astype(np.float64)
    want = np.sqrt(((1 - 2 * t) ** 2).reshape(len(t), -1).mean(1)).mean()  # |(1 - t) - t| per pixel, per image
    assert bad["depth_rmse"] == pytest.approx(want, rel=1e-5) and bad["depth_rmse"] > 0.1
    assert bad["depth_delta1"] < good["depth_delta1"]
    assert bad["n_images"] == good["n_images"] > 0
    for key in BASELINE:  # the baseline never sees the model: identical beside a perfect and a hopeless model
        assert bad[key] == good[key], key


def test_metrics_name_the_checkpoint_actually_scored(run_copy, sample_dataset):
    """The default which="best" on a run without best.pt scores the newest checkpoint: metrics.json must say so (the
    first version wrote checkpoint="best" alone, naming a file that did not exist)."""
    from eva_helpers.training.checkpoint import read_sidecar
    from eva_helpers.evaluation.heldout import evaluate_run

    ck = run_copy / "checkpoints"
    assert not (ck / "best.pt").exists()  # max_steps stopped it before its first epoch end
    metrics = evaluate_run(run_copy, sample_dataset, figure=False, progress=False)  # default which="best"
    on_disk = json.loads((run_copy / "metrics.json").read_text())
    assert on_disk["checkpoint_file"] == metrics["checkpoint_file"] == "last.pt"
    assert on_disk["checkpoint_step"] == read_sidecar(ck / "last.pt")["global_step"] == 3


def test_one_freshness_rule_for_what_was_scored_from_best(tmp_path):
    """metrics.json, the photo-size metrics and the notebook's evaluation all reuse a file by this one rule."""
    import os

    from eva_helpers.training.run_folder import checkpoint_path, fresh_for_best

    run, scored = tmp_path / "run", tmp_path / "run" / "metrics.json"
    run.mkdir()
    assert not fresh_for_best(run, scored)  # nothing scored yet
    scored.write_text("{}")
    assert fresh_for_best(run, scored)  # no best.pt to be older than
    best = checkpoint_path(run, "best")
    best.parent.mkdir()
    best.write_bytes(b"weights")
    os.utime(scored, (1_000, 1_000))
    assert not fresh_for_best(run, scored)  # a newer best.pt: score again
    os.utime(scored, (best.stat().st_mtime + 1,) * 2)
    assert fresh_for_best(run, scored)
