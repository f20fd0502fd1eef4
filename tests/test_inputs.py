"""Difference-aware inputs: the |fg_bg - bg| channels, each input representation through a checkpoint, the residual
mask head, and the mask post-processing chosen on validation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _synthetic import write_synthetic_dataset
from eva_helpers.data.resize import resize_transform
from eva_helpers.evaluation.calibrate import fit_postprocess
from eva_helpers.predict.masks import postprocess
from eva_helpers.training.trained_run import load_calibration
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.data.loaders import batch_to_device, collate
from eva_helpers.training.trainer import model_batch
from eva_helpers.models import build_model, rebuild_model
from eva_helpers.models.inputs import DIFF_SCALE, max_difference, model_input
from eva_helpers.training.batch_augment import BatchAugment

WEIRD = {"bg": {"mean": [0.1, 0.9, 0.3], "std": [0.05, 0.5, 2.0]},
         "fg_bg": {"mean": [0.7, 0.2, 0.5], "std": [0.3, 0.01, 0.2]}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_bg=3, n_fg=2, positions=2, size=48)


def test_difference_channels_come_from_raw_pixels_and_stay_aligned_after_augmentation(syn):
    ds = ShardDataset(syn, transform=resize_transform(40))
    bg, fg_bg, t = batch_to_device(collate([ds[i] for i in range(len(ds))]), "cpu")
    augment = BatchAugment(crop_scale=(0.6, 1.0))  # the training loop's: flip, crop and resize, jitter
    bg, fg_bg, t = augment(bg, fg_bg, t, augment.generator(0, 100, 0, torch.device("cpu")))
    raw = (fg_bg - bg).abs() / 255  # (B, 3, H, W) from the augmented images (whole numbers on 0..255)
    for stats in (None, WEIRD):  # normalisation never reaches the difference channels
        x = model_input(bg, fg_bg, stats)
        assert x.shape[1] == 10
        assert torch.allclose(x[:, 6:9] / DIFF_SCALE, raw, atol=1e-6)
        assert (x[:, 9:10] <= x[:, 6:9].mean(1, keepdim=True) + 1e-5).all()  # offset 0 is among those tried
    # aligned: the difference lights up on the (augmented) object and nowhere else
    diff = max_difference(x)  # (B, 1, H, W) in [0, 1]
    mask = t["mask"]
    inner = -F.max_pool2d(-mask, 3, 1, 1)  # eroded: off the resampled edge
    outer = F.max_pool2d(mask, 5, 1, 2)  # dilated: the crop's bilinear upscale blurs the images' edges, not the mask's
    assert inner.sum() > 100 and (1 - outer).sum() > 1000
    assert diff[inner > 0].min() > 0.15
    assert diff[outer == 0].max() < 0.08


def test_channels_last_gives_the_same_numbers_in_the_channels_last_layout(syn):
    """The GPU path asks for channels_last: same values as the default layout, and the layout asked for."""
    ds = ShardDataset(syn, transform=resize_transform(48))
    batch = collate([ds[i] for i in range(4)])
    plain, _ = model_batch(batch, "cpu", WEIRD)
    last, _ = model_batch(batch, "cpu", WEIRD, channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last) and plain.is_contiguous()
    assert torch.equal(plain, last)
    bg, fg = batch["bg"].float(), batch["fg_bg"].float()  # by hand: (x / 255 - mean) / std on the images
    mean, std = torch.tensor(WEIRD["fg_bg"]["mean"]).view(1, 3, 1, 1), torch.tensor(WEIRD["fg_bg"]["std"]).view(1, 3, 1, 1)
    assert torch.allclose(last[:, 3:6], (fg / 255 - mean) / std, atol=1e-4)
    assert torch.equal(last[:, 6:9], (fg - bg).abs() * (DIFF_SCALE / 255.0))


@pytest.mark.parametrize("inputs,head", [("concat", "plain"), ("diff", "residual"), ("tolerant", "plain"),
                                         ("siamese", "residual")])
def test_each_input_representation_round_trips_through_a_checkpoint(sample_dataset, tmp_path, inputs, head):
    from eva_helpers.training.config import TrainConfig
    from eva_helpers.training.trainer import fit
    from eva_helpers.training.trained_run import load_run

    cfg = TrainConfig(task="joint", data=str(sample_dataset), run_dir=str(tmp_path / inputs), model="unet_small",
                      model_kwargs={"inputs": inputs, "mask_head": head}, epochs=1, batch_size=8, size=32, seed=0,
                      workers=0, max_steps=2, progress=False)
    fit(cfg)
    model, cfg2, ckpt = load_run(cfg.run_dir, which="last")
    assert ckpt["model_args"]["inputs"] == inputs and ckpt["model_args"]["mask_head"] == head
    assert model.inputs == inputs and (model.prior is not None) == (head == "residual")
    twin = build_model("unet_small", tasks=("mask", "depth"), inputs=inputs, mask_head=head)
    twin.load_state_dict(ckpt["model"])
    twin.eval()
    x = torch.randn(2, 10, 32, 32)
    with torch.no_grad():
        a, b = model(x), twin(x)
    assert set(a) == set(b) == {"mask", "depth"} and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_from_before_the_choice_rebuilds_as_concat():
    old_args = {"name": "unet_small", "tasks": ["mask"], "in_channels": 6}  # first-round model_args
    m = rebuild_model(old_args)
    assert m.inputs == "concat" and m.prior is None and m.model_args == old_args
    assert m.encoder.stem[0][0].in_channels == 6
    x = torch.randn(1, 9, 32, 32)  # model_input's tensor: the concat model reads its first 6 channels
    assert torch.equal(m.eval()(x)["mask"], m(x[:, :6])["mask"])


def test_the_residual_head_starts_at_the_thresholded_difference():
    torch.manual_seed(0)
    m = build_model("unet_small", tasks=("mask", "depth"), inputs="diff", mask_head="residual").eval()
    bg = torch.randint(0, 200, (2, 3, 32, 32), dtype=torch.uint8)
    fg = bg.clone()
    fg[:, :, 8:20, 10:24] += 50  # the object
    fg[:, 1, 0, 0] += 5  # a speck below the threshold
    x, _ = model_batch({"bg": bg, "fg_bg": fg}, "cpu")
    with torch.no_grad():
        pred = m(x)["mask"] > 0
    expect = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    expect[:, :, 8:20, 10:24] = True
    assert torch.equal(pred, expect)


def test_post_processing_is_chosen_by_validation_iou():
    target = torch.zeros(4, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    logits = (target * 2 - 1) + 1.5  # over-confident: a 0.5 cut marks every pixel as object
    assert postprocess(logits).all()
    calib = fit_postprocess([(logits, target)])
    assert calib["threshold"] > torch.sigmoid(torch.tensor(0.5)).item() and calib["val_iou"] == 1.0
    assert postprocess(logits, calib["threshold"], calib["morph"]).eq(target > 0).all()
    speckled = logits.clone()
    speckled[:, :, 0, 0] = 10.0  # an isolated false pixel: only the open/close removes it
    assert fit_postprocess([(speckled, target)])["morph"] is True


def test_a_small_validation_gain_does_not_move_the_threshold():
    """One image of twenty gains from a lower cut: the best grid point on validation, but not a clear gain."""
    target = torch.zeros(20, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    logits = torch.where(target > 0, 3.0, -3.0)
    target[0, :, 3, 4:12] = 1  # a row of object pixels the model is unsure about (p = 0.45) in one image only
    logits[0, :, 3, 4:12] = -0.2
    calib = fit_postprocess([(logits, target)])
    assert calib["best_on_val"]["threshold"] < 0.45 and calib["best_on_val"]["val_iou"] > calib["val_iou_plain"]
    assert calib["threshold"] == 0.5 and calib["morph"] is False  # kept: the gain is ~1 standard error


def test_backgrounds_not_images_are_the_unit_of_evidence():
    """Every image of two backgrounds gains from a lower cut: with images as the unit that is overwhelming, with
    backgrounds as the unit (1 degree of freedom) it is not, unless both backgrounds gain almost exactly alike."""
    target = torch.zeros(40, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    logits = torch.where(target > 0, 3.0, -3.0)
    target[:, :, 3, 4:12] = 1
    logits[:20, :, 3, 4:12] = -0.2  # background "a": 8 unsure object pixels per image
    logits[20:, :, 3, 4:10] = -0.2  # background "b": 6 of them, the other 2 stay missed at any threshold
    logits[20:, :, 3, 10:12] = -9.0
    groups = ["a"] * 20 + ["b"] * 20
    assert fit_postprocess([(logits, target)])["threshold"] < 0.45  # 40 "independent" images: moved
    calib = fit_postprocess([(logits, target, groups)])
    assert calib["n_groups"] == 2 and calib["threshold"] == 0.5 and calib["best_on_val"]["t_needed"] > 12


def test_eval_chooses_the_threshold_on_validation_and_predict_applies_it(trained_run, sample_dataset, tmp_path):
    from eva_helpers.evaluation.heldout import evaluate_run
    from eva_helpers.predict.pair import predict_one

    metrics = evaluate_run(trained_run, sample_dataset, figure=False)
    calib = load_calibration(trained_run)
    saved = json.loads((trained_run / "calibration.json").read_text())
    assert saved["chosen_on"] == "val" and calib["threshold"] == metrics["mask_threshold"]
    # predict reads the same file: a threshold this tiny run's probabilities never exceed gives an empty mask
    (trained_run / "calibration.json").write_text(json.dumps({**saved, "threshold": 0.999999, "morph": False}))
    bg = np.full((32, 32, 3), 90, np.uint8)
    fg = bg.copy()
    fg[8:24, 8:24] = 250
    import cv2

    cv2.imwrite(str(tmp_path / "bg.png"), bg)
    cv2.imwrite(str(tmp_path / "fg.png"), fg)
    predict_one(trained_run, tmp_path / "bg.png", tmp_path / "fg.png", tmp_path / "out")
    mask = cv2.imread(str(tmp_path / "out" / "mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (32, 32) and mask.max() == 0
    (trained_run / "calibration.json").write_text(json.dumps(saved))


def test_the_tolerant_difference_ignores_a_small_shake_but_not_the_object():
    """bg moved 2 px: the plain difference lights up every edge of the scene, the tolerant one only the object."""
    import cv2

    from eva_helpers.paths import sample_assets

    img = cv2.cvtColor(cv2.resize(cv2.imread(str(sample_assets() / "bg" / "china.jpg")), (64, 64),
                                  interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    bg = torch.from_numpy(img).permute(2, 0, 1)[None]
    fg = bg.roll((2, -1), (2, 3)).clone()  # the second shot moved 2 px down, 1 px left
    fg[:, :, 20:36, 24:36] = torch.tensor([255, 0, 255], dtype=torch.uint8).view(1, 3, 1, 1)  # the object
    x, _ = model_batch({"bg": bg, "fg_bg": fg}, "cpu")
    plain, tolerant = x[0, 6:9].mean(0) / DIFF_SCALE, x[0, 9] / DIFF_SCALE  # (H, W) in [0, 1]
    obj = torch.zeros(64, 64, dtype=torch.bool)
    obj[20:36, 24:36] = True
    inner = torch.zeros_like(obj)
    inner[3:-3, 3:-3] = True  # away from the rolled-in border rows
    background = inner & ~obj
    assert tolerant[background].mean() < 0.25 * plain[background].mean()
    assert tolerant[background].quantile(0.95) < 0.03 and tolerant[20:36, 24:36].min() > 0.1
