"""`eva eval`: metrics.json with the DESIGN keys on held-out backgrounds, baseline beside the model, a figure."""
from __future__ import annotations

import json

REQUIRED = ["mask_iou", "mask_dice", "mask_pixel_acc", "baseline_mask_iou", "depth_rmse", "depth_absrel",
            "depth_delta1", "depth_ssim", "baseline_depth_rmse", "baseline_depth_absrel", "baseline_depth_delta1",
            "baseline_depth_ssim"]


def test_eval_writes_metrics_and_figure(trained_run, sample_dataset):
    from eva_helpers.evaluate import evaluate_run, split_positions
    from eva_helpers.train import load_run

    metrics = evaluate_run(trained_run, sample_dataset, which="last")
    on_disk = json.loads((trained_run / "metrics.json").read_text())
    for key in REQUIRED:
        assert key in on_disk, key
        assert 0.0 <= on_disk[key] or key in ("depth_rmse", "depth_absrel")
    for key in ("mask_iou", "mask_dice", "mask_pixel_acc", "baseline_mask_iou", "depth_delta1"):
        assert 0.0 <= metrics[key] <= 1.0
    # the baseline on clean composites is strong: the free |fg_bg - bg| signal finds the object
    assert metrics["baseline_mask_iou"] > 0.5
    _, cfg, _ = load_run(trained_run, which="last")
    splits = split_positions(cfg, sample_dataset)
    assert metrics["n_images"] == len(splits["test"]) > 0
    assert (trained_run / "eval_best_worst.png").stat().st_size > 1000
