"""Training augmentation on the batch, on the device (the GPU in training): the loader's workers only read and decode.

Why here and not per sample in the workers: Colab has 2 vCPUs, and a GPU does these ops on a whole batch in
microseconds; the backgrounds a second shot perturbs are shared by thousands of samples. Everything is drawn from one
`torch.Generator` seeded by (run seed, global step, rank), so a resumed run draws exactly what an uninterrupted one
did, whatever the number of workers.

- geometric, one draw for bg, fg_bg, mask and depth: horizontal flip; an optional crop-and-resize (`crop_scale`) by one
  affine grid (bilinear for the images and depth, nearest for the mask, so it stays {0, 1});
- photometric, one draw for both images (the scene's lighting changes, the pair stays a pair): brightness/contrast;
  `independent_jitter` gives each image its own draw;
- a second shot (`second_shot.py`): bg perturbed as another photo of the scene, shadows on fg_bg outside the object.

Images stay on 0..255 and are rounded like 8-bit photos, so training sees what evaluation and prediction see.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from eva_helpers.training.second_shot import SecondShot, apply_second_shot, second_shot_from


@dataclass(frozen=True)
class BatchAugment:
    hflip: float = 0.5
    crop_scale: tuple = (1.0, 1.0)  # area range of a random crop, resized back; (1, 1): none
    jitter: float = 0.25  # brightness and contrast limits (albumentations' RandomBrightnessContrast)
    jitter_p: float = 0.8
    independent_jitter: bool = False
    second_shot: SecondShot | None = None

    @classmethod
    def from_config(cls, cfg) -> "BatchAugment":
        """The training augmentation a TrainConfig asks for."""
        return cls(crop_scale=tuple(cfg.crop_scale), independent_jitter=cfg.independent_jitter,
                   second_shot=second_shot_from(cfg.second_shot, cfg.second_shot_opts))

    @staticmethod
    def generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
        """The step's generator: a pure function of (run seed, global step, rank)."""
        s = int(np.random.SeedSequence([int(seed), int(step), int(rank), 0xBA7C]).generate_state(2, np.uint64)[0])
        gen = torch.Generator(device=device)
        gen.manual_seed(s & (2**63 - 1))
        return gen

    def __call__(self, bg: torch.Tensor, fg_bg: torch.Tensor, targets: dict[str, torch.Tensor],
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """bg, fg_bg (B, 3, H, W) float on 0..255, targets {"mask", "depth"} (B, 1, H, W) -> the same, augmented."""
        b, dev = bg.shape[0], bg.device
        flip = torch.rand(b, generator=gen, device=dev) < self.hflip  # (B,)
        if bool(flip.any()):
            f = flip.view(b, 1, 1, 1)
            bg, fg_bg = torch.where(f, bg.flip(-1), bg), torch.where(f, fg_bg.flip(-1), fg_bg)
            targets = {k: torch.where(f, v.flip(-1), v) for k, v in targets.items()}
        if tuple(self.crop_scale) != (1.0, 1.0):
            bg, fg_bg, targets = self._crop(bg, fg_bg, targets, gen)
        bg, fg_bg = self._jitter(bg, fg_bg, gen)
        if self.second_shot is not None:
            bg, fg_bg = apply_second_shot(bg, fg_bg, targets.get("mask", torch.zeros_like(bg[:, :1])), gen,
                                          self.second_shot)
        return bg, fg_bg, targets

    def _crop(self, bg, fg_bg, targets, gen):
        """A random crop of each sample (area in crop_scale, aspect 0.8-1.25), resized back to the batch's size."""
        b, _, h, w = bg.shape
        dev = bg.device
        area = torch.rand(b, generator=gen, device=dev) * (self.crop_scale[1] - self.crop_scale[0]) + self.crop_scale[0]
        logr = (torch.rand(b, generator=gen, device=dev) * 2 - 1) * math.log(1.25)
        cw = (area * logr.exp()).sqrt().clamp(max=1.0)  # crop size as a fraction of the side
        ch = (area / logr.exp()).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, generator=gen, device=dev) * 2 - 1) * (1 - cw)  # centre, normalised [-1, 1]
        cy = (torch.rand(b, generator=gen, device=dev) * 2 - 1) * (1 - ch)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw, cx, ch, cy
        grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)

        def resample(x, mode):
            return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="border", align_corners=False)

        out = {k: resample(v, "nearest" if k == "mask" else "bilinear") for k, v in targets.items()}
        return resample(bg, "bilinear").round(), resample(fg_bg, "bilinear").round(), out

    def _jitter(self, bg, fg_bg, gen):
        """Brightness and contrast: x * alpha + beta * 255, one draw for both images unless independent_jitter."""
        b, dev = bg.shape[0], bg.device
        draws = []
        for _ in range(2):
            on = torch.rand(b, generator=gen, device=dev) < self.jitter_p
            alpha = 1 + (torch.rand(b, generator=gen, device=dev) * 2 - 1) * self.jitter
            beta = (torch.rand(b, generator=gen, device=dev) * 2 - 1) * self.jitter
            draws.append((torch.where(on, alpha, 1.0).view(b, 1, 1, 1), torch.where(on, beta, 0.0).view(b, 1, 1, 1)))
        (a1, b1), (a2, b2) = draws[0], (draws[1] if self.independent_jitter else draws[0])
        if self.jitter_p <= 0 or self.jitter <= 0:
            return bg, fg_bg
        return (bg * a2 + b2 * 255).round().clamp(0, 255), (fg_bg * a1 + b1 * 255).round().clamp(0, 255)
