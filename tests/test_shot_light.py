"""Light and motion of a real second shot, simulated on the batch (training/shot_light.py through second_shot.py): the
object's cast silhouette and light patches land on fg_bg outside the object only, the other draws of a run stay as
they were, and the same seed gives the same bytes."""
from __future__ import annotations

import dataclasses

import torch

from eva_helpers.training.second_shot import SecondShot, apply_second_shot
from eva_helpers.training.shot_light import cast_silhouette, motion_blur


def _batch(b: int = 4, size: int = 48):
    g = torch.Generator().manual_seed(1)
    bg = torch.rand(b, 3, size, size, generator=g) * 200 + 20
    bg = bg.round()
    mask = torch.zeros(b, 1, size, size)
    mask[:, :, 10:30, 15:28] = 1
    fg_bg = torch.where(mask > 0, torch.tensor([250.0, 0.0, 250.0]).view(1, 3, 1, 1), bg)
    return bg, fg_bg, mask


LIGHT = SecondShot(p=1.0, p_blur=0.0, noise=0.0, p_jpeg=0.0, p_cast=1.0, p_blobs=1.0)


def _run(opts, seed: int = 0):
    bg, fg_bg, mask = _batch()
    return apply_second_shot(bg, fg_bg, mask, torch.Generator().manual_seed(seed), opts)


def test_cast_shadows_and_light_patches_touch_fg_bg_outside_the_object_only():
    bg, fg_bg, mask = _batch()
    out_bg, out_fg = _run(LIGHT)
    inside = mask.expand_as(fg_bg) > 0
    assert torch.equal(out_fg[inside], fg_bg[inside])
    assert (out_fg[~inside] != fg_bg[~inside]).float().mean() > 0.1  # every pair got patches of light or shadow
    assert torch.equal(out_bg, _run(dataclasses.replace(LIGHT, p_cast=0.0, p_blobs=0.0))[0])  # bg: same draws


def test_the_same_seed_gives_the_same_bytes_and_runs_without_the_options_keep_their_stream():
    assert all(torch.equal(a, b) for a, b in zip(_run(LIGHT, 3), _run(LIGHT, 3)))
    assert not torch.equal(_run(LIGHT, 3)[1], _run(LIGHT, 4)[1])
    plain = SecondShot(p=1.0, p_shadow=0.5)
    with_motion_off = dataclasses.replace(plain, p_motion=0.0, motion=0.2)  # an option that is off draws nothing
    assert all(torch.equal(a, b) for a, b in zip(_run(plain, 5), _run(with_motion_off, 5)))


def test_the_silhouette_falls_on_the_ground_side_of_its_contact_row():
    _, _, mask = _batch(2)
    shadow = cast_silhouette(mask, torch.Generator().manual_seed(0), (0.4, 0.4))
    assert shadow.shape == mask.shape and 0 <= float(shadow.min()) and float(shadow.max()) <= 0.4 + 1e-6
    assert float(shadow[:, :, 33:].max()) < 0.05  # below the contact row (29) only the penumbra's tail
    assert float(shadow[:, :, :29].sum()) > 0
    assert float(cast_silhouette(torch.zeros_like(mask), torch.Generator().manual_seed(0), (0.4, 0.4)).max()) == 0


def test_motion_blur_keeps_flat_areas_and_smears_edges():
    x = torch.zeros(2, 3, 32, 32)
    x[..., :, 16:] = 200.0
    y = motion_blur(x, torch.Generator().manual_seed(0), 0.2)
    assert torch.allclose(y[..., :, :4], x[..., :, :4]) and torch.allclose(y[..., :, -4:], x[..., :, -4:])
    edge = y[..., 16, 13:19]
    assert ((edge > 1) & (edge < 199)).any()
