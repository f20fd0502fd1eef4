"""Loss values computed by hand on tiny tensors, SSIM against scikit-image, the joint criterion's weighting."""
import math

import numpy as np
import pytest
import torch

from eva_helpers.errors import EvaError
from eva_helpers.training.losses import (bce_with_logits, build_criterion, gradient_loss, l1_loss,
                                soft_dice_loss, soft_dice_per_image, ssim_loss,
                                ssim_per_image)

BIG = 30.0  # sigmoid(30) = 1 - 9e-14: a "certain" logit


def t(rows):
    """(1, 1, H, W) float64 tensor from nested lists."""
    return torch.tensor(rows, dtype=torch.float64)[None, None]


def test_bce_by_hand():
    # logit 0 -> p = 0.5 -> -log 0.5 = ln 2 whatever the target
    assert bce_with_logits(t([[0.0, 0.0], [0.0, 0.0]]), t([[1.0, 0.0], [0.0, 1.0]])).item() == pytest.approx(math.log(2))
    # logits [2, -2, 0, 0], targets [1, 0, 1, 0]: log(1 + e^-2) twice, ln 2 twice
    want = (2 * math.log1p(math.exp(-2)) + 2 * math.log(2)) / 4
    assert bce_with_logits(t([[2.0, -2.0], [0.0, 0.0]]), t([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(want)


def test_soft_dice_by_hand():
    # p = 0.5 everywhere, target one pixel of 4: 1 - (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5
    assert soft_dice_loss(t([[0.0, 0.0], [0.0, 0.0]]), t([[1.0, 0.0], [0.0, 0.0]])).item() == pytest.approx(0.5)
    # empty prediction on an empty target: 1 - (0 + 1) / (0 + 0 + 1) = 0 (the smooth term keeps it defined)
    assert soft_dice_loss(t([[-BIG, -BIG], [-BIG, -BIG]]), t([[0.0, 0.0], [0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-9)
    # all foreground, predicted all foreground: 1 - (8 + 1) / (4 + 4 + 1) = 0
    assert soft_dice_loss(t([[BIG, BIG], [BIG, BIG]]), t([[1.0, 1.0], [1.0, 1.0]])).item() == pytest.approx(0.0, abs=1e-9)


def test_soft_dice_is_per_image_then_mean():
    # image A: perfect 4-pixel mask -> loss 1 - 9/9 = 0; image B: 1 pixel predicted elsewhere -> 1 - 1/3 = 2/3
    target = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    logits = torch.full((2, 1, 4, 4), -BIG, dtype=torch.float64)
    target[0, 0, :2, :2] = 1
    logits[0, 0, :2, :2] = BIG
    target[1, 0, 3, 3] = 1
    logits[1, 0, 0, 0] = BIG
    per = soft_dice_per_image(logits, target)
    assert per.tolist() == pytest.approx([0.0, 2 / 3], abs=1e-9)
    # mean of per-image = 1/3; a pooled Dice would be 1 - (2*4 + 1) / (5 + 5 + 1) = 2/11
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 / 3, abs=1e-9)


def test_l1_and_gradient_by_hand():
    zero = t([[0.0, 0.0], [0.0, 0.0]])
    assert l1_loss(t([[0.0, 1.0], [2.0, 3.0]]), zero).item() == pytest.approx(1.5)
    # dx of [[0,1],[2,3]] = [1, 1] -> mean 1; dy = [2, 2] -> mean 2; total 3
    assert gradient_loss(t([[0.0, 1.0], [2.0, 3.0]]), zero).item() == pytest.approx(3.0)
    # a constant offset has no gradient: only L1 sees it
    assert gradient_loss(t([[5.0, 5.0], [5.0, 5.0]]), zero).item() == 0.0


def test_ssim_constant_images_by_hand():
    # two constant 11x11 images a, b: variances 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = 1e-4
    a, b = 0.5, 0.25
    x, y = torch.full((1, 1, 11, 11), a, dtype=torch.float64), torch.full((1, 1, 11, 11), b, dtype=torch.float64)
    want = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
    assert ssim_per_image(x, y).item() == pytest.approx(want, rel=1e-9)
    assert ssim_loss(x, y).item() == pytest.approx((1 - want) / 2, rel=1e-9)
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-12)


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    for h, w in [(32, 32), (40, 24)]:
        base = rng.random((h, w))
        x = np.clip(base + 0.1 * rng.standard_normal((h, w)), 0, 1)
        y = np.clip(np.roll(base, 1, axis=0) * 0.8 + 0.05, 0, 1)
        want = structural_similarity(x, y, data_range=1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
        for dtype in (torch.float64, torch.float32):
            got = ssim_per_image(torch.tensor(x, dtype=dtype)[None, None], torch.tensor(y, dtype=dtype)[None, None])
            assert got.item() == pytest.approx(want, abs=1e-4)
    with pytest.raises(EvaError, match="11x11"):
        ssim_per_image(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def _toy_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    outputs = {"mask": torch.randn(2, 1, 16, 16, generator=g, requires_grad=True),
               "depth": torch.rand(2, 1, 16, 16, generator=g).requires_grad_()}
    targets = {"mask": (torch.rand(2, 1, 16, 16, generator=g) > 0.8).float(), "depth": torch.rand(2, 1, 16, 16, generator=g)}
    return outputs, targets


def test_criterion_fixed_weights_compose_the_parts():
    outputs, targets = _toy_batch()
    loss, parts = build_criterion(("mask", "depth"))(outputs, targets)
    m = bce_with_logits(outputs["mask"], targets["mask"]) + soft_dice_loss(outputs["mask"], targets["mask"])
    d = (0.1 * l1_loss(outputs["depth"], targets["depth"]) + ssim_loss(outputs["depth"], targets["depth"])
         + gradient_loss(outputs["depth"], targets["depth"]))
    assert loss.item() == pytest.approx((m + d).item(), rel=1e-6)
    assert set(parts) == {"mask_bce", "mask_dice", "mask", "depth_l1", "depth_ssim", "depth_grad", "depth"}
    assert all(not v.requires_grad and v.dim() == 0 for v in parts.values())
    loss.backward()
    assert outputs["mask"].grad is not None and outputs["depth"].grad is not None
    # overrides of task and part weights
    loss2, parts2 = build_criterion(("mask", "depth"), weights={"depth": 2.0, "mask_dice": 0.0})(*_toy_batch())
    assert loss2.item() == pytest.approx((parts2["mask_bce"] + 2 * parts2["depth"]).item(), rel=1e-6)
    # a single task ignores the other's outputs
    loss3, parts3 = build_criterion(("depth",))(*_toy_batch())
    assert "mask" not in parts3 and loss3.item() == pytest.approx(parts3["depth"].item(), rel=1e-6)


def test_criterion_uncertainty_weighting():
    crit = build_criterion(("mask", "depth"), weighting="uncertainty")
    assert [n for n, _ in crit.named_parameters()] == ["log_vars"]
    assert len(list(build_criterion(("mask", "depth")).parameters())) == 0
    with torch.no_grad():
        crit.log_vars.copy_(torch.tensor([math.log(2.0), 0.0]))
    loss, parts = crit(*_toy_batch())
    # exp(-s) L + s: mask weighted 1/2 plus log 2, depth weighted 1 plus 0
    assert loss.item() == pytest.approx(0.5 * parts["mask"].item() + math.log(2) + parts["depth"].item(), rel=1e-6)
    loss.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    assert crit.log_vars.grad.tolist() == pytest.approx([1 - 0.5 * parts["mask"].item(), 1 - parts["depth"].item()], rel=1e-5)
    assert "mask_logvar" in parts and "depth_logvar" in parts


def test_criterion_errors():
    with pytest.raises(EvaError, match="weighting"):
        build_criterion(("mask",), weighting="magic")
    with pytest.raises(EvaError, match="valid keys"):
        build_criterion(("mask",), weights={"mask_focal": 1.0})
    with pytest.raises(EvaError, match="tasks"):
        build_criterion(("segmentation",))
    outputs, targets = _toy_batch()
    with pytest.raises(EvaError, match="lack"):
        build_criterion(("mask", "depth"))({"mask": outputs["mask"]}, targets)
