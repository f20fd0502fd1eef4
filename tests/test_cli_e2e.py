"""One end-to-end pass through the `eva` entry point: build -> stats -> train -> eval -> predict, tiny and offline.

Training stops one step into its second epoch, so the run has a best.pt (written at the end of epoch 1) that differs
from last.pt: the default `eva eval` (and `eva predict`) must score best.pt, not the newest file.
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch

MASK_KEYS = ["mask_iou", "mask_dice", "mask_pixel_acc", "baseline_mask_iou", "baseline_mask_dice"]
DEPTH_KEYS = ["depth_rmse", "depth_absrel", "depth_delta1", "depth_delta2", "depth_delta3", "depth_ssim",
              "baseline_depth_rmse", "baseline_depth_absrel", "baseline_depth_delta1", "baseline_depth_ssim"]


def test_build_stats_train_eval_predict_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))  # nothing goes to ~/.cache
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _pipeline(tmp_path, monkeypatch, capsys)
    finally:
        torch.set_num_threads(threads)


def _pipeline(tmp_path, monkeypatch, capsys) -> None:
    from PIL import Image

    import eva_helpers.evaluation.heldout as heldout_mod
    import eva_helpers.training.trained_run as trained_run
    from eva_helpers.data import formats
    from eva_helpers.training.checkpoint import read_sidecar
    from eva_helpers.cli import main
    from eva_helpers.training.config import TrainConfig
    from eva_helpers.data.dataset import ShardDataset
    from eva_helpers.paths import sample_assets

    data, run = tmp_path / "ds", tmp_path / "run"

    # build: the first 48 samples without flips are 3 backgrounds x 16 cut-outs (train / val / test: one bg each)
    assert main(["build", "--bg", str(sample_assets() / "bg"), "--fg", str(sample_assets() / "fg"), "--out", str(data),
                 "--size", "32", "--positions", "1", "--no-flips", "--limit", "48", "--shard-size", "16",
                 "--workers", "1"]) == 0
    manifest = formats.read_manifest(data)
    assert manifest["complete"] and manifest["counts"]["samples"] == 48 and len(manifest["shards"]) == 3
    assert all((data / e["file"]).is_file() for e in manifest["shards"])
    assert len({r["bg_id"] for r in ShardDataset(data).records}) == 3

    # stats
    assert not (data / "stats.json").exists()
    assert main(["stats", "--data", str(data)]) == 0
    stats = json.loads((data / "stats.json").read_text())
    assert stats["samples"] == stats["of_samples"] == 48 and sum(stats["mask_fraction"]["hist"]) == 48
    assert all(0 < v < 1 for v in stats["fg_bg"]["mean"] + stats["fg_bg"]["std"]) and len(stats["fg_bg"]["std"]) == 3

    # train: one full epoch (-> best.pt), then one step of the second (-> last.pt only)
    cfg = TrainConfig(task="joint", data=str(data), run_dir=str(run), model="unet_small", epochs=2, batch_size=8,
                      size=32, seed=0, workers=0)
    splits = cfg.splits(data)
    per_epoch = math.ceil(len(splits["train"]) / 8)
    assert len(splits["train"]) == len(splits["test"]) == 16 and per_epoch == 2
    capsys.readouterr()
    assert main(["train", "--task", "joint", "--data", str(data), "--run-dir", str(run), "--model", "unet_small",
                 "--epochs", "2", "--batch-size", "8", "--size", "32", "--seed", "0", "--workers", "0",
                 "--max-steps", str(per_epoch + 1)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["global_step"] == per_epoch + 1 and summary["epochs_completed"] == 1 and not summary["finished"]
    ck = run / "checkpoints"
    best, last = read_sidecar(ck / "best.pt"), read_sidecar(ck / "last.pt")
    assert (ck / "best.pt").is_file() and (ck / "last.pt").is_file()
    assert best["global_step"] == per_epoch and last["global_step"] == per_epoch + 1
    assert summary["best"]["epoch"] == 0 and summary["best"]["metric"] == "val_loss"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0] and history[0]["global_step"] == per_epoch
    assert math.isfinite(history[0]["train_loss"]) and math.isfinite(history[0]["val_loss"])
    assert json.loads((run / "stats.json").read_text()) == stats  # the run froze the stats `eva stats` wrote
    assert json.loads((run / "config.json").read_text())["model"] == "unet_small"

    # eval with the default --which: best.pt is what gets scored
    loaded = []
    real_load_run = heldout_mod.load_run

    def spy(*args, **kwargs):
        out = real_load_run(*args, **kwargs)
        loaded.append(int(out[2]["global_step"]))
        return out

    monkeypatch.setattr(heldout_mod, "load_run", spy)
    monkeypatch.setattr(trained_run, "load_run", spy)  # load_trained_run's, for eva predict
    assert main(["eval", "--run-dir", str(run), "--data", str(data)]) == 0
    assert loaded == [best["global_step"]] != [last["global_step"]]
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert printed == metrics and metrics["checkpoint"] == "best" and metrics["task"] == "joint"
    assert metrics["checkpoint_file"] == "best.pt" and metrics["checkpoint_step"] == best["global_step"]
    assert metrics["n_images"] == len(splits["test"]) == 16
    for key in MASK_KEYS + DEPTH_KEYS:
        assert math.isfinite(metrics[key]), key
    assert metrics["mask_iou"] <= metrics["mask_dice"]  # per image IoU <= Dice, so the means too
    assert metrics["depth_delta1"] <= metrics["depth_delta2"] <= metrics["depth_delta3"]
    assert metrics["baseline_mask_iou"] > 0.5  # clean composites: |fg_bg - bg| finds the object
    assert (run / "calibration.json").is_file() and (run / "eval_best_worst.png").stat().st_size > 1000

    # predict on a held-out pair at another size, with the default checkpoint (best.pt)
    s = ShardDataset(data).load(splits["test"][3])
    Image.fromarray(s["bg"]).resize((48, 36)).save(tmp_path / "bg.png")
    Image.fromarray(s["fg_bg"]).resize((48, 36)).save(tmp_path / "fg_bg.png")
    loaded.clear()
    assert main(["predict", "--run-dir", str(run), "--bg", str(tmp_path / "bg.png"), "--fg-bg",
                 str(tmp_path / "fg_bg.png"), "--out", str(tmp_path / "pred")]) == 0
    assert loaded == [best["global_step"]]
    with Image.open(tmp_path / "pred" / "mask.png") as mask, Image.open(tmp_path / "pred" / "depth.png") as depth:
        mask.load()
        depth.load()
        assert mask.size == depth.size == (48, 36)
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255} and depth.mode.startswith("I")
    assert (tmp_path / "pred" / "prediction.png").stat().st_size > 0
