"""Metric values by hand, the empty-mask conventions, the flattering pixel accuracy, per-image averaging."""
import math

import pytest
import torch

from eva_helpers.errors import EvaError

from eva_helpers.metrics import (MetricAccumulator, aligned_depth_metrics, binary_mask_metrics, depth_metrics,
                                 depth_pixel_metrics, mask_metrics)

BIG = 30.0


def m(rows):
    """(1, 1, H, W) float tensor from nested lists."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def vals(d):
    return {k: v.item() for k, v in d.items()}


def test_mask_metrics_2x2_by_hand():
    # pred [[1,1],[0,0]] vs target [[1,0],[1,0]]: TP 1, FP 1, FN 1, TN 1
    got = vals(binary_mask_metrics(m([[1, 1], [0, 0]]), m([[1, 0], [1, 0]])))
    assert got == pytest.approx({"mask_iou": 1 / 3, "mask_dice": 2 / 4, "mask_pixel_acc": 2 / 4})


def test_empty_and_full_conventions():
    empty, full = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2, :] = 1
    # nothing to find, nothing found: IoU = Dice = 1
    assert vals(binary_mask_metrics(empty, empty)) == pytest.approx({"mask_iou": 1, "mask_dice": 1, "mask_pixel_acc": 1})
    # something predicted on an empty target: 0
    got = vals(binary_mask_metrics(half, empty))
    assert got["mask_iou"] == 0 and got["mask_dice"] == 0 and got["mask_pixel_acc"] == 0.5
    # all foreground predicted all foreground
    assert vals(binary_mask_metrics(full, full))["mask_iou"] == 1
    # all foreground predicted on a half mask: IoU 8/16, Dice 16/24, accuracy 8/16
    assert vals(binary_mask_metrics(full, half)) == pytest.approx({"mask_iou": 0.5, "mask_dice": 2 / 3, "mask_pixel_acc": 0.5})


def test_pixel_accuracy_flatters_an_empty_prediction():
    # 20 of 400 pixels foreground (5 %): predicting nothing is "95 % accurate" and finds nothing
    target = torch.zeros(1, 1, 20, 20)
    target[..., 5:9, 5:10] = 1
    got = vals(mask_metrics(torch.full((1, 1, 20, 20), -BIG), target))
    assert got["mask_pixel_acc"] == pytest.approx(0.95)
    assert got["mask_iou"] == 0 and got["mask_dice"] == 0


def test_threshold_is_probability_half():
    # logit 0 is probability 0.5, which is not foreground (p > 0.5); a tiny positive logit is
    got = vals(mask_metrics(m([[0.0, 1e-3]]), m([[1, 1]])))
    assert got["mask_iou"] == pytest.approx(0.5)


def _perfect_and_wrong():
    target = torch.zeros(2, 1, 4, 4)
    logits = torch.full((2, 1, 4, 4), -BIG)
    target[0, 0, :2, :2] = 1  # image A: 4 pixels, predicted exactly
    logits[0, 0, :2, :2] = BIG
    target[1, 0, 3, 3] = 1  # image B: 1 pixel, predicted elsewhere
    logits[1, 0, 0, 0] = BIG
    return logits, target


def test_accumulator_averages_per_image_not_pooled():
    logits, target = _perfect_and_wrong()
    acc = MetricAccumulator(("mask",))
    acc.update({"mask": logits}, {"mask": target}, ids=["a", "b"])
    out = acc.compute()
    # per image: (1 + 0) / 2 = 0.5; a pooled IoU would be 4 / (4 + 1 + 1) = 0.667
    assert out["mask_iou"] == pytest.approx(0.5)
    assert out["mask_dice"] == pytest.approx(0.5)
    assert out["n_images"] == 2 and acc.per_image["mask_iou"] == pytest.approx([1.0, 0.0]) and acc.ids == ["a", "b"]
    # the same two images in two batches of one give the same means (no batch-size dependence)
    acc2 = MetricAccumulator(("mask",))
    for i in range(2):
        acc2.update({"mask": logits[i:i + 1]}, {"mask": target[i:i + 1]})
    assert acc2.compute()["mask_iou"] == pytest.approx(0.5)
    acc2.reset()
    assert acc2.compute() == {"n_images": 0}


def test_depth_pixel_metrics_by_hand():
    pred = m([[0.5, 0.5], [0.5, 0.5]])
    target = m([[0.5, 1.0], [0.25, 0.005]])  # the last pixel is below DEPTH_EPS = 0.01: not valid for AbsRel/delta1
    got = vals(depth_pixel_metrics(pred, target))
    assert got["depth_rmse"] == pytest.approx(math.sqrt((0 + 0.25 + 0.0625 + 0.495 ** 2) / 4))
    assert got["depth_absrel"] == pytest.approx((0 + 0.5 + 1.0) / 3)  # |p-t|/t = 0, 0.5, 1
    assert got["depth_delta1"] == pytest.approx(1 / 3)  # ratios 1, 2, 2
    # a non-positive prediction fails delta1 (a naive max(p/t, t/p) of negatives would pass it)
    assert vals(depth_pixel_metrics(m([[-0.5]]), m([[0.5]])))["depth_delta1"] == 0
    # no valid pixel: NaN, left out of the accumulator's mean
    assert math.isnan(vals(depth_pixel_metrics(m([[0.5]]), m([[0.0]])))["depth_absrel"])


def test_depth_ssim_and_aligned_variants():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 16, 16, generator=g)
    assert depth_metrics(target, target)["depth_ssim"].tolist() == pytest.approx([1.0, 1.0])
    pred = 0.5 * target + 0.2  # right up to scale and shift
    raw, al = vals(depth_metrics(pred[:1], target[:1])), vals(aligned_depth_metrics(pred[:1], target[:1]))
    assert raw["depth_rmse"] > 0.05 and al["depth_rmse_aligned"] == pytest.approx(0.0, abs=1e-6)
    assert al["depth_delta1_aligned"] == 1.0 and al["depth_ssim_aligned"] == pytest.approx(1.0, abs=1e-6)


def test_accumulator_joint_keys_and_nan_skipping():
    g = torch.Generator().manual_seed(1)
    depth_t = torch.rand(2, 1, 16, 16, generator=g) * 0.5 + 0.5
    depth_t[1] = 0  # an all-far image: no valid AbsRel pixel
    outputs = {"mask": torch.randn(2, 1, 16, 16, generator=g), "depth": torch.rand(2, 1, 16, 16, generator=g)}
    targets = {"mask": (torch.rand(2, 1, 16, 16, generator=g) > 0.9).float(), "depth": depth_t}
    acc = MetricAccumulator(("mask", "depth"))
    acc.update(outputs, targets)
    out = acc.compute()
    for k in ("mask_iou", "mask_dice", "mask_pixel_acc", "depth_rmse", "depth_absrel", "depth_delta1", "depth_ssim",
              "depth_rmse_aligned", "depth_absrel_aligned", "depth_delta1_aligned", "depth_ssim_aligned"):
        assert k in out and not math.isnan(out[k]), k
    assert math.isnan(acc.per_image["depth_absrel"][1])
    assert out["depth_absrel"] == pytest.approx(acc.per_image["depth_absrel"][0])  # the NaN image is left out
    assert "mask_iou" not in MetricAccumulator(("depth",)).compute()
    with pytest.raises(EvaError, match="lack"):
        MetricAccumulator(("mask", "depth")).update({"mask": outputs["mask"]}, targets)


def test_accumulator_scores_the_baseline_beside_the_model():
    bg = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    fg_bg = bg.clone()
    fg_bg[..., 2:6, 2:6] = 200
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    acc = MetricAccumulator(("mask",), baseline_threshold=0.1)
    acc.update({"mask": torch.full((1, 1, 8, 8), -BIG)}, {"mask": target}, bg=bg, fg_bg=fg_bg)
    out = acc.compute()
    assert out["mask_iou"] == 0 and out["baseline_mask_iou"] == 1 and out["baseline_mask_dice"] == 1
