"""Augmentation on the batch: labels stay with fg_bg, the second shot changes bg (and fg_bg only outside the object),
draws are a pure function of (seed, step, rank), the JPEG simulation behaves like real JPEG, old runs resume as trained."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from eva_helpers.training.batch_augment import BatchAugment
from eva_helpers.training.config import TrainConfig, result_changing_differences
from eva_helpers.errors import EvaError
from eva_helpers.paths import sample_assets
from eva_helpers.training.second_shot import PRESETS, SecondShot, jpeg_like, second_shot_from, warp_similarity

CPU = torch.device("cpu")


def _photo(size: int = 64) -> np.ndarray:
    img = cv2.imread(str(sample_assets() / "bg" / "china.jpg"))
    return cv2.cvtColor(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def _batch(b: int = 8, size: int = 48):
    """A textured bg, fg_bg with a pure-magenta box (the object) where the mask is 1, a depth ramp."""
    bg = torch.from_numpy(_photo(size)).permute(2, 0, 1).float()[None].repeat(b, 1, 1, 1)
    mask = torch.zeros(b, 1, size, size)
    for i in range(b):
        y, x = 6 + 3 * i % 20, 4 + 5 * i % 24
        mask[i, :, y:y + 14, x:x + 10] = 1
    fg = torch.where(mask.bool(), torch.tensor([255.0, 0.0, 255.0]).view(1, 3, 1, 1), bg)
    depth = torch.linspace(0, 1, size).view(1, 1, size, 1).expand(b, 1, size, size).clone()
    depth = torch.where(mask.bool(), torch.ones_like(depth), depth)
    return bg, fg, {"mask": mask, "depth": depth}


def _gen(step: int = 0, seed: int = 0, rank: int = 0) -> torch.Generator:
    return BatchAugment.generator(seed, step, rank, CPU)


@pytest.mark.parametrize("crop", [(1.0, 1.0), (0.6, 1.0)])
def test_geometry_keeps_labels_with_fg_bg(crop):
    bg, fg, t = _batch()
    aug = BatchAugment(crop_scale=crop, jitter_p=0.0, second_shot=None)
    flipped = 0
    for step in range(4):
        abg, afg, at = aug(bg, fg, t, _gen(step))
        magenta = (afg[:, 0] > 200) & (afg[:, 1] < 60) & (afg[:, 2] > 200)  # (B, H, W)
        m = at["mask"][:, 0].bool()
        assert set(at["mask"].unique().tolist()) <= {0.0, 1.0}
        edge = torch.from_numpy(np.stack([
            cv2.dilate(mi.numpy().astype(np.uint8), np.ones((3, 3))) != cv2.erode(mi.numpy().astype(np.uint8), np.ones((3, 3)))
            for mi in m]))
        assert torch.equal(magenta[~edge], m[~edge])  # the object's pixels are where the mask says
        assert (at["depth"][:, 0][m & ~edge] > 0.99).all() and 0 <= at["depth"].min() and at["depth"].max() <= 1
        flipped += int(not torch.equal(at["mask"], t["mask"]))
    assert flipped >= 1


def test_second_shot_changes_bg_and_shadows_fall_outside_the_object():
    bg, fg, t = _batch()
    shot = SecondShot(p=1.0, p_shift=1.0, shift=2.0, rotate=0.5, scale=0.01, p_shadow=1.0, p_jpeg=0.0, p_blur=0.0,
                      noise=0.0)  # only what is meant to spare the object: tone and shake on bg, shadows on fg_bg
    aug = BatchAugment(hflip=0.0, jitter_p=0.0, second_shot=shot)
    abg, afg, at = aug(bg, fg, t, _gen(3))
    inside = t["mask"].bool().expand_as(fg)
    assert torch.equal(afg[inside], fg[inside])  # the object itself never changes
    assert (afg[~inside] != fg[~inside]).float().mean() > 0.1  # shadows and light changes outside it
    assert ((abg - bg).abs().mean((1, 2, 3)) > 1).all()  # every bg looks like another shot
    assert all(torch.equal(at[k], t[k]) for k in t)  # labels untouched
    for x in (abg, afg):
        assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= 255  # 8-bit photos, as eval sees them


def test_degradations_land_on_either_photo():
    """Blur, noise and JPEG on bg only would teach "the softer image is bg": fg_bg gets them too (sometimes alone)."""
    bg, fg, t = _batch(b=32)
    shot = SecondShot(p=1.0, gain=0.0, gamma=0.0, wb=0.0, p_blur=1.0, noise=0.0, p_jpeg=1.0)
    abg, afg, _ = BatchAugment(hflip=0.0, jitter_p=0.0, second_shot=shot)(bg, fg, t, _gen(4))
    bg_changed = (abg != bg).flatten(1).any(1)
    fg_changed = (afg != fg).flatten(1).any(1)
    assert fg_changed.any() and (fg_changed & ~bg_changed).any() and (bg_changed & ~fg_changed).any()


def test_p_zero_keeps_exact_pairs_and_draws_are_a_function_of_seed_step_rank():
    bg, fg, t = _batch()
    off = BatchAugment(hflip=0.0, jitter_p=0.0, second_shot=SecondShot(p=0.0))
    abg, afg, _ = off(bg, fg, t, _gen(1))
    assert torch.equal(abg, bg) and torch.equal(afg, fg)
    full = BatchAugment(second_shot=PRESETS["full"])
    a = full(bg, fg, t, _gen(5))
    b = full(bg, fg, t, _gen(5))
    assert all(torch.equal(x, y) for x, y in zip(a[:2], b[:2]))
    for other in (_gen(6), _gen(5, seed=1), _gen(5, rank=1)):
        assert not torch.equal(full(bg, fg, t, other)[0], a[0])


def test_jpeg_simulation_is_close_to_real_jpeg():
    img = _photo(64)
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    for q in (40, 90):
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, q, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420])
        real = cv2.cvtColor(cv2.imdecode(enc, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float64)
        sim = jpeg_like(x, torch.tensor([q]), torch.tensor([True]))[0].permute(1, 2, 0).numpy()
        loss_real, loss_sim = np.abs(real - img).mean(), np.abs(sim - img).mean()
        assert abs(loss_sim - loss_real) < 0.25 * loss_real  # as lossy as the real thing
        assert np.abs(sim - real).mean() < 0.4 * loss_real  # and lossy in the same places


def test_warp_moves_content_by_the_shift():
    x = torch.from_numpy(_photo(64)).permute(2, 0, 1).float()[None]
    w = warp_similarity(x, torch.tensor([3.0]), torch.tensor([-2.0]), torch.zeros(1), torch.ones(1))
    assert (w[0, :, 4:60, 5:60] - x[0, :, 6:62, 2:57]).abs().max() < 0.01
    same = warp_similarity(x, torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.ones(1))
    assert (same - x).abs().max() < 0.01


def test_options_are_checked():
    assert second_shot_from("off") is None and second_shot_from("full", {"shift": 2}).shift == 2
    with pytest.raises(EvaError, match="unknown field"):
        second_shot_from("full", {"shfit": 2})
    with pytest.raises(EvaError, match="probability"):
        second_shot_from("tone", {"p_jpeg": 2})
    with pytest.raises(EvaError, match="second_shot='off'"):
        second_shot_from("off", {"shift": 1})
    with pytest.raises(EvaError, match="second_shot="):
        TrainConfig(second_shot="some")


def test_bad_options_create_no_run_folder(tmp_path, sample_dataset):
    from eva_helpers.training.trainer import fit

    run = tmp_path / "run"
    cfg = TrainConfig(task="mask", data=str(sample_dataset), run_dir=str(run), size=32, epochs=1, max_steps=1,
                      second_shot_opts={"shfit": 1.0}, progress=False)
    with pytest.raises(EvaError, match="shfit"):
        fit(cfg)
    assert not run.exists()


def test_a_run_from_before_second_shot_resumes_as_it_trained():
    new = TrainConfig(task="mask").to_dict()
    old = {k: v for k, v in new.items() if k not in ("second_shot", "second_shot_opts")}
    assert TrainConfig.from_dict(old).second_shot == "off"
    assert result_changing_differences(old, new) == ["second_shot"]  # refused with the default ...
    assert result_changing_differences(old, {**new, "second_shot": "off"}) == []  # ... resumes as it was trained


def test_training_workers_only_decode(tmp_path, sample_dataset):
    """The training dataset's transform draws nothing (every augmentation happens on the batch) and ships no bg: the
    BackgroundBank gives the same bytes the val transform would have shipped."""
    from eva_helpers.data.resize import resize_transform
    from eva_helpers.data.dataset import ShardDataset
    from eva_helpers.data.loaders import BackgroundBank, collate
    from eva_helpers.training.trainer import model_batch
    from eva_helpers.training.trainer import build_data

    for size in (32, 48):  # the dataset's own size, and one the workers resize to
        cfg = TrainConfig(task="joint", data=str(sample_dataset), run_dir=str(tmp_path / "r"), size=size)
        train_set, _, _ = build_data(cfg)
        a, b = train_set[(3, 1)], train_set[(3, 2)]
        assert "bg" not in a and all(torch.equal(a[k], b[k]) for k in ("fg_bg", "mask", "depth"))
        assert a["mask"].dtype == torch.uint8 and a["depth"].dtype == torch.float16  # compact out of the workers
        full = ShardDataset(str(sample_dataset), indices=train_set.indices, transform=resize_transform(size))
        items = [train_set[i] for i in range(0, 40, 5)]
        bank = BackgroundBank(train_set, size)
        assert torch.equal(bank([it["meta"] for it in items], "cpu"), torch.stack([full[i]["bg"] for i in range(0, 40, 5)]))
        x_bank, _ = model_batch(collate(items), "cpu", backgrounds=bank)
        x_full, _ = model_batch(collate([full[i] for i in range(0, 40, 5)]), "cpu")
        assert torch.equal(x_bank, x_full)
