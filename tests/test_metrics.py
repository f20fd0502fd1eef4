"""Metric values by hand, the empty-mask conventions, the flattering pixel accuracy, per-image averaging."""
import math

import pytest
import torch

from eva_helpers.errors import EvaError

from eva_helpers.training.metrics import (DEPTH_CAP, DEPTH_KEYS, MetricAccumulator, binary_mask_metrics, depth_metrics,
                                 depth_pixel_metrics, fit_disparity, mask_metrics)

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


def test_depth_metrics_by_hand():
    # pred right up to scale and shift: the fit recovers the target exactly; labels 0 and 0.05 sit under 1 / cap
    pred, target = m([[0.1, 0.2], [0.3, 0.6]]), m([[0.0, 0.05], [0.5, 1.0]])
    got = vals(depth_pixel_metrics(2 * pred - 0.2, target))  # 2 * pred - 0.2 = [0, .2, .4, 1]
    assert got["depth_rmse"] == pytest.approx(math.sqrt((0 + 0.15 ** 2 + 0.1 ** 2 + 0) / 4))  # on the labels as given
    # fit of [0, .2, .4, 1] to [0, .05, .5, 1]: s = cov / var, t = mean_t - s mean_p, then depth = 1 / max(d, 0.1)
    p, t = torch.tensor([0.0, 0.2, 0.4, 1.0]), torch.tensor([0.0, 0.05, 0.5, 1.0])
    s = ((p - p.mean()) * (t - t.mean())).mean() / ((p - p.mean()) ** 2).mean()
    fitted = s * p + t.mean() - s * p.mean()
    dp, dt = 1 / fitted.clamp_min(0.1), 1 / t.clamp_min(0.1)
    assert got["depth_absrel"] == pytest.approx(((dp - dt).abs() / dt).mean().item(), rel=1e-5)
    assert got["depth_rmse_ssi"] == pytest.approx(((dp - dt) ** 2).mean().sqrt().item(), rel=1e-5)
    ratio = torch.maximum(dp / dt, dt / dp)
    for k in (1, 2, 3):
        assert got[f"depth_delta{k}"] == pytest.approx((ratio < 1.25 ** k).float().mean().item())
    assert DEPTH_CAP == 10.0 and dt.max() == pytest.approx(DEPTH_CAP)  # the farthest labels read as the cap
    # an exact affine copy scores perfectly, and a negative-scale fit is refused (s >= 0): the flat mean instead
    exact = vals(depth_pixel_metrics(0.5 * target + 0.3, target))
    assert exact["depth_absrel"] == pytest.approx(0, abs=1e-6) and exact["depth_delta1"] == 1
    flat_fit = fit_disparity(1 - target.flatten(1).double(), target.flatten(1).double())
    assert torch.allclose(flat_fit, target.double().mean().expand(1, 4))


def _scene(b=3, size=32, seed=0):
    """(B, 1, S, S) labels like ours: a ground plane (far third flat near 0) plus a raised object per image."""
    g = torch.Generator().manual_seed(seed)
    rows = ((torch.arange(size, dtype=torch.float32) - 0.4 * size) / (0.6 * size)).clamp(0, 1)
    t = rows.view(1, 1, size, 1).expand(b, 1, size, size).clone() * 0.9 + 0.02 * torch.rand(b, 1, size, size, generator=g)
    for i in range(b):
        y, x = (int(v) for v in torch.randint(2, size // 2, (2,), generator=g))
        t[i, 0, y:y + 10, x:x + 8] = t[i, 0, min(y + 9, size - 1), x] + 0.1
    return (t - t.amin((2, 3), keepdim=True)) / (t.amax((2, 3), keepdim=True) - t.amin((2, 3), keepdim=True))


def test_a_small_uniform_offset_costs_little():
    target = _scene()
    off = vals({k: v.mean() for k, v in depth_metrics((target + 0.02).clamp(0, 1), target).items()})
    assert off["depth_rmse"] < 0.021 and off["depth_ssim"] > 0.9  # SSIM on labels still sees the far offset
    assert off["depth_absrel"] < 0.02 and off["depth_delta1"] > 0.98 and off["depth_delta2"] > 0.99
    # the old raw protocol (AbsRel on labels with t > 0.01) scored this offset ~0.3: pin that it is not that
    assert off["depth_rmse_ssi"] < 0.1


@pytest.mark.parametrize("wrong", ["upside_down", "inverted", "flat"])
def test_flipped_or_flat_maps_cost_a_lot(wrong):
    target = _scene()
    pred = {"upside_down": target.flip(-2), "inverted": 1 - target,
            "flat": torch.full_like(target, 0.5)}[wrong]
    got = vals({k: v.mean() for k, v in depth_metrics(pred, target).items()})
    good = vals({k: v.mean() for k, v in depth_metrics((target + 0.02).clamp(0, 1), target).items()})
    assert got["depth_absrel"] > 0.5 and got["depth_delta1"] < 0.5, got
    assert got["depth_absrel"] > 20 * good["depth_absrel"] and got["depth_ssim"] < 0.6 and got["depth_rmse"] > 0.2


def test_accumulator_joint_keys():
    g = torch.Generator().manual_seed(1)
    depth_t = torch.rand(2, 1, 16, 16, generator=g) * 0.5 + 0.5
    depth_t[1] = 0  # an all-far image: still defined (depth = cap everywhere)
    outputs = {"mask": torch.randn(2, 1, 16, 16, generator=g), "depth": torch.rand(2, 1, 16, 16, generator=g)}
    targets = {"mask": (torch.rand(2, 1, 16, 16, generator=g) > 0.9).float(), "depth": depth_t}
    acc = MetricAccumulator(("mask", "depth"))
    acc.update(outputs, targets)
    out = acc.compute()
    for k in ("mask_iou", "mask_dice", "mask_pixel_acc") + DEPTH_KEYS:
        assert k in out and not math.isnan(out[k]), k
    assert {"depth_rmse", "depth_absrel", "depth_delta1", "depth_ssim"} <= set(DEPTH_KEYS)  # DESIGN section 5
    assert not any(k.startswith("baseline_") for k in out)
    assert "mask_iou" not in MetricAccumulator(("depth",)).compute()
    with pytest.raises(EvaError, match="lack"):
        MetricAccumulator(("mask", "depth")).update({"mask": outputs["mask"]}, targets)


def test_accumulator_scores_the_baseline_beside_the_model():
    bg = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    fg_bg = bg.clone()
    fg_bg[..., 2:6, 2:6] = 200
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    from eva_helpers.evaluation.baseline import FreeBaseline

    acc = MetricAccumulator(("mask",), baseline=FreeBaseline(threshold=0.1))
    acc.update({"mask": torch.full((1, 1, 8, 8), -BIG)}, {"mask": target}, bg=bg, fg_bg=fg_bg)
    out = acc.compute()
    assert out["mask_iou"] == 0 and out["baseline_mask_iou"] == 1 and out["baseline_mask_dice"] == 1
    assert "baseline_mask_pixel_acc" not in out


@pytest.mark.slow
def test_metrics_does_not_import_the_baseline():
    """One-way dependency: baseline uses metrics, never the reverse (no import cycle)."""
    import subprocess
    import sys

    code = "import sys, eva_helpers.training.metrics; print('eva_helpers.evaluation.baseline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
