"""The free baselines: |fg_bg - bg| masks (threshold fitted on train only, morphology) and the mean-label depth."""
from typing import Any

import numpy as np
import pytest
import torch

from eva_helpers.evaluation.baseline import (FreeBaseline, bg_difference, bg_difference_mask, evaluate_baseline,
                                  fit_mean_depth, fit_threshold, open_close,
                                  paste_at_contact)
from eva_helpers.errors import EvaError
from eva_helpers.training.metrics import MetricAccumulator, binary_mask_metrics


def make_pairs(n, noise, seed, size=48):
    """n dataset-like samples: smooth random bg, a 14x14 object pasted at a random spot, uniform noise on fg_bg."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        bg = np.clip(rng.random((size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1) * 200 + 20, 0, 255)
        fg_bg = bg.copy()
        y, x = rng.integers(0, size - 14, 2)
        fg_bg[y:y + 14, x:x + 14] = np.where(bg[y:y + 14, x:x + 14] > 128, 0, 255)  # contrast >= ~0.5
        fg_bg = np.clip(fg_bg + rng.uniform(-noise, noise, fg_bg.shape) * 255, 0, 255)
        mask = np.zeros((size, size), np.uint8)
        mask[y:y + 14, x:x + 14] = 1
        out.append({"bg": bg.astype(np.uint8), "fg_bg": fg_bg.astype(np.uint8), "mask": mask})
    return out


def as_batch(pairs):
    """The loader's batch layout: (B, 3, H, W) uint8 images, (B, 1, H, W) float mask."""
    return {"bg": torch.from_numpy(np.stack([p["bg"] for p in pairs])).permute(0, 3, 1, 2),
            "fg_bg": torch.from_numpy(np.stack([p["fg_bg"] for p in pairs])).permute(0, 3, 1, 2),
            "mask": torch.from_numpy(np.stack([p["mask"] for p in pairs]))[:, None].float()}


def test_difference_is_channel_max_in_unit_range():
    bg = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    fg = bg.clone()
    fg[0, 1, 0, 0] = 51  # 0.2 in one channel
    fg[0, 2, 0, 0] = 102  # 0.4 in another: the max wins
    assert bg_difference(bg, fg).flatten().tolist() == pytest.approx([0.4, 0.0, 0.0, 0.0])
    # float inputs in [0, 1] give the same answer as uint8
    assert torch.allclose(bg_difference(bg.float() / 255, fg.float() / 255), bg_difference(bg, fg))


def test_open_close_removes_specks_and_fills_pinholes():
    m = torch.zeros(1, 1, 11, 11)
    m[..., 2:9, 2:9] = 1
    m[..., 5, 5] = 0  # pinhole inside the object
    m[..., 0, 10] = 1  # isolated speck
    want = torch.zeros(1, 1, 11, 11)
    want[..., 2:9, 2:9] = 1
    assert torch.equal(open_close(m), want)
    # an object touching the frame keeps its shape (the closing does not smear it along the border)
    m = torch.zeros(1, 1, 8, 8)
    m[..., 1:5, 0:4] = 1
    assert torch.equal(open_close(m), m)


def test_baseline_finds_a_clean_object():
    pairs = make_pairs(4, noise=0.02, seed=0)
    b = as_batch(pairs)
    pred = bg_difference_mask(b["bg"], b["fg_bg"], threshold=0.1)
    assert pred.dtype == torch.bool and pred.shape == (4, 1, 48, 48)
    res = evaluate_baseline([b], threshold=0.1)
    assert res["baseline_mask_iou"] > 0.99 and res["baseline_mask_dice"] > 0.99 and res["baseline_n_images"] == 4
    # without morphology it is still good here, and a threshold under the noise floor is not
    assert evaluate_baseline([b], threshold=0.1, morph=False)["baseline_mask_iou"] > 0.99
    assert evaluate_baseline([b], threshold=0.005, morph=False)["baseline_mask_iou"] < 0.5


def test_threshold_is_fitted_on_the_training_split():
    train = make_pairs(6, noise=0.15, seed=1)  # noisier train set: its best threshold sits above 0.15
    test = make_pairs(4, noise=0.02, seed=2)
    thr = fit_threshold([as_batch(train[:3]), as_batch(train[3:])])
    assert 0.15 <= thr < 0.5
    # evaluate_baseline(test, train=...) uses the train threshold, not one tuned on test
    res = evaluate_baseline([as_batch(test)], train=[as_batch(train)])
    assert res["baseline_threshold"] == thr
    assert evaluate_baseline([as_batch(test)], thr) == res  # threshold may be given positionally
    assert res["baseline_mask_iou"] > 0.95  # the object's contrast (>= 0.5) still clears it
    assert fit_threshold([as_batch(test)]) < thr
    # dataset items (numpy HWC uint8 dicts) work as well as loader batches
    assert fit_threshold(train) == thr
    with pytest.raises(EvaError, match="threshold"):
        evaluate_baseline([as_batch(test)])
    with pytest.raises(EvaError, match="empty"):
        fit_threshold([])


def with_depth(pairs, seed=0):
    """Add ground-plane depth labels (near = 1 at the bottom) with each object as a layer at its contact row + 0.1."""
    rng = np.random.default_rng(seed)
    size = pairs[0]["mask"].shape[0]
    plane = np.repeat(np.linspace(0, 1, size, dtype=np.float32)[:, None], size, 1)
    for p in pairs:
        d = np.clip(plane + rng.uniform(-0.02, 0.02, plane.shape).astype(np.float32), 0, 1)
        rows = np.flatnonzero(p["mask"].any(1))
        d[p["mask"] > 0] = min(1.0, plane[rows[-1], 0] + 0.1)
        p["depth"] = d
    return pairs


def test_paste_at_contact_by_hand():
    mean = torch.arange(4, dtype=torch.float32).view(1, 1, 4, 1).expand(1, 1, 4, 3) / 4  # rows 0, .25, .5, .75
    mask = torch.zeros(2, 1, 4, 3, dtype=torch.bool)
    mask[0, 0, 0:3, 1] = True  # lowest row 2 -> 0.5
    got = paste_at_contact(mean, mask)
    assert got.shape == (2, 1, 4, 3)
    assert got[0, 0, :3, 1].tolist() == [0.5, 0.5, 0.5] and torch.equal(got[0, 0, :, 0], mean[0, 0, :, 0])
    assert torch.equal(got[1], mean[0])  # an empty mask leaves the mean map


def test_depth_baseline_fitted_on_train_scored_on_test():
    train = with_depth(make_pairs(8, noise=0.02, seed=3), seed=3)
    test = with_depth(make_pairs(4, noise=0.02, seed=4), seed=4)
    mean = fit_mean_depth([as_batch_d(train[:5]), as_batch_d(train[5:])])
    assert mean.shape == (1, 1, 48, 48)
    # the training mean is about the plane: rows rise towards the bottom
    assert mean[0, 0, -1].mean() > mean[0, 0, 0].mean() + 0.8
    assert torch.allclose(fit_mean_depth(train), mean)  # dataset items work as well as batches
    base = FreeBaseline(threshold=0.1, mean_depth=mean)
    res = evaluate_depth_baseline([as_batch_d(test)], base)
    assert res["baseline_n_images"] == 4
    assert res["baseline_depth_rmse"] < 0.1 and res["baseline_depth_delta1"] > 0.7
    # pasting the object is worth something: the mean map alone is worse on the labels
    plain = evaluate_depth_baseline([as_batch_d(test)], FreeBaseline(threshold=1.0, mean_depth=mean))
    assert plain["baseline_depth_rmse"] > res["baseline_depth_rmse"]
    out = base(as_batch_d(test)["bg"], as_batch_d(test)["fg_bg"])
    assert set(out) == {"mask", "depth"} and out["depth"].shape == (4, 1, 48, 48)
    assert FreeBaseline()(as_batch_d(test)["bg"], as_batch_d(test)["fg_bg"]) == {}
    with pytest.raises(EvaError, match="same image size"):
        FreeBaseline(0.1, mean[..., :32, :32])(as_batch_d(test)["bg"], as_batch_d(test)["fg_bg"])
    with pytest.raises(EvaError, match="empty"):
        fit_mean_depth([])


def as_batch_d(pairs):
    b = as_batch(pairs)
    b["depth"] = torch.from_numpy(np.stack([p["depth"] for p in pairs]))[:, None]
    return b


def evaluate_depth_baseline(data: Any, baseline: FreeBaseline, device: str | None = None) -> dict[str, float]:
    """Score a fitted FreeBaseline's depth on `data` (batches with bg, fg_bg, depth): baseline_depth_* means."""
    acc = MetricAccumulator(("depth",))
    for item in data:
        bg, fg_bg, depth = (torch.as_tensor(item[k]) for k in ("bg", "fg_bg", "depth"))
        if device:
            bg, fg_bg, depth = bg.to(device), fg_bg.to(device), depth.to(device)
        depth = depth.float().reshape(-1, 1, *depth.shape[-2:])
        acc.update({"depth": baseline(bg, fg_bg)["depth"]}, {"depth": depth})
    out = acc.compute()
    return {"baseline_" + k: v for k, v in out.items() if k != "n_images"} | {"baseline_n_images": out["n_images"]}


def test_one_grey_open_close_equals_a_binary_one_per_threshold():
    """The threshold sweeps (fit_threshold, calibration, the photo-size baseline) run the morphology once on the
    scores; every threshold's mask must be exactly the binary open/close of that threshold, borders included."""
    from eva_helpers.evaluation.baseline import THRESHOLDS, open_close, open_close_scores, threshold_sweep

    g = torch.Generator().manual_seed(3)
    score = torch.rand(4, 1, 23, 31, generator=g) ** 3  # specks, pinholes and edges touching the frame
    score[0, 0, :, :5] = 0.9  # an object cut by the frame
    grey = open_close_scores(score)
    target = (torch.rand(4, 1, 23, 31, generator=g) > 0.5).float()
    for t, met in zip(THRESHOLDS + (-0.5, 0.0, 1.0), threshold_sweep(grey, target, THRESHOLDS + (-0.5, 0.0, 1.0))):
        binary = open_close((score > t).float()) > 0.5
        assert torch.equal(grey > t, binary), t
        assert torch.equal(met["mask_iou"], binary_mask_metrics(binary, target)["mask_iou"])
