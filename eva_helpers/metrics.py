"""Honest metrics: computed per image, then averaged over images (never pooled or summed over a batch).

Conventions (the tests pin them):
- Masks: the prediction is sigmoid(logits) > 0.5, i.e. logits > 0. IoU = TP / (TP + FP + FN), Dice = 2 TP /
  (2 TP + FP + FN). An empty prediction on an empty target scores IoU = Dice = 1 (nothing to find, nothing
  found); a non-empty prediction on an empty target scores 0. Pixel accuracy is reported but flatters: on a 5 %
  foreground mask, predicting nothing scores 0.95 with IoU 0; read it beside IoU and the baseline.
- Depth (in [0, 1], near = 1): RMSE over all pixels; AbsRel = mean |p - t| / t and delta1 = fraction with
  max(p / t, t / p) < 1.25, both over pixels with t > DEPTH_EPS = 0.01 only (the dataset's depth is normalised so
  its farthest pixel is 0, where relative error is undefined; a 16-bit step is 1.5e-5, so 0.01 excludes just the
  far end). A prediction <= 0 fails delta1. An image with no valid pixel gives NaN and is left out of that mean.
  SSIM uses the loss's window (Gaussian 11x11, sigma 1.5, data_range 1, valid windows only).
- Aligned variants (`*_aligned`): the prediction is first fitted to the target per image by least-squares scale
  and shift (fair to relative-depth models), then clamped to [0, 1] (the target's range: clamping can only move a
  value closer to any target in [0, 1]).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .errors import EvaError
from .losses import align_scale_shift, ssim_per_image

DEPTH_EPS = 0.01
MASK_KEYS = ("mask_iou", "mask_dice", "mask_pixel_acc")
DEPTH_BASE = ("depth_rmse", "depth_absrel", "depth_delta1", "depth_ssim")
DEPTH_KEYS = DEPTH_BASE + tuple(k + "_aligned" for k in DEPTH_BASE)


# ----------------------------------------------------------------------------------------------- masks
def confusion(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-image TP, FP, FN, TN counts (each (B,)) for binary pred and target (B, 1, H, W)."""
    p, t = pred.flatten(1).bool(), target.flatten(1) > 0.5
    tp, fp, fn = (p & t).sum(1), (p & ~t).sum(1), (~p & t).sum(1)
    return tp, fp, fn, p.shape[1] - tp - fp - fn


def binary_mask_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image IoU, Dice, pixel accuracy (each (B,) float) for a binary prediction (bool or {0, 1})."""
    tp, fp, fn, tn = (c.double() for c in confusion(pred, target))
    union, dice_den = tp + fp + fn, 2 * tp + fp + fn
    one = torch.ones_like(tp)
    return {
        "mask_iou": torch.where(union > 0, tp / union.clamp_min(1), one),  # empty vs empty = 1
        "mask_dice": torch.where(dice_den > 0, 2 * tp / dice_den.clamp_min(1), one),
        "mask_pixel_acc": (tp + tn) / (tp + fp + fn + tn),
    }


def mask_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image mask metrics from logits (B, 1, H, W): threshold at probability 0.5 (logit 0)."""
    return binary_mask_metrics(logits > 0, target)


# ----------------------------------------------------------------------------------------------- depth
def _masked_mean(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean of v over m per image (B,); NaN where an image has no valid pixel."""
    n = m.sum(1)
    return torch.where(n > 0, (v * m).sum(1) / n.clamp_min(1), torch.full_like(n, math.nan))


def depth_pixel_metrics(pred: torch.Tensor, target: torch.Tensor, eps: float = DEPTH_EPS) -> dict[str, torch.Tensor]:
    """Per-image RMSE, AbsRel, delta1 (each (B,)) for depth (B, 1, H, W) in [0, 1]."""
    pred, target = pred.double(), target.double()
    b = pred.shape[0]
    p, t = pred.reshape(b, -1), target.reshape(b, -1)  # (B, N)
    valid = (t > eps).double()
    t_safe = t.clamp_min(eps)
    ratio = torch.where(p > 0, torch.maximum(p / t_safe, t_safe / p.clamp_min(1e-12)), torch.full_like(p, math.inf))
    return {
        "depth_rmse": ((p - t) ** 2).mean(1).sqrt(),
        "depth_absrel": _masked_mean((p - t).abs() / t_safe, valid),
        "depth_delta1": _masked_mean((ratio < 1.25).double(), valid),
    }


def depth_metrics(pred: torch.Tensor, target: torch.Tensor, eps: float = DEPTH_EPS) -> dict[str, torch.Tensor]:
    """Per-image RMSE, AbsRel, delta1 and SSIM (each (B,)); images need at least 11x11 pixels for SSIM."""
    out = depth_pixel_metrics(pred, target, eps)
    out["depth_ssim"] = ssim_per_image(pred.double(), target.double(), data_range=1.0)
    return out


def aligned_depth_metrics(pred: torch.Tensor, target: torch.Tensor, eps: float = DEPTH_EPS) -> dict[str, torch.Tensor]:
    """depth_metrics after a per-image least-squares scale-and-shift fit, clamped to [0, 1]; keys end in _aligned."""
    aligned = align_scale_shift(pred.double(), target.double()).clamp(0, 1)
    return {k + "_aligned": v for k, v in depth_metrics(aligned, target, eps).items()}


# ----------------------------------------------------------------------------------------------- accumulator
class MetricAccumulator:
    """Collects per-image metrics over batches; compute() gives the mean over images (NaNs left out).

    update(outputs, targets, bg=None, fg_bg=None, ids=None): outputs is the model's dict, targets the dict from
    prepare_batch. When `baseline_threshold` is set and the *raw* images (uint8 or [0, 1], not normalised) are
    given, the free |fg_bg - bg| baseline is scored on the same images (keys baseline_mask_iou, baseline_mask_dice).
    """

    def __init__(self, tasks: Sequence[str], baseline_threshold: float | None = None, aligned: bool = True):
        self.tasks, self.baseline_threshold, self.aligned = tuple(tasks), baseline_threshold, aligned
        self.per_image: dict[str, list[float]] = {}
        self.ids: list = []

    def _add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            self.per_image.setdefault(k, []).extend(v.detach().double().cpu().tolist())

    @torch.no_grad()
    def update(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               bg: torch.Tensor | None = None, fg_bg: torch.Tensor | None = None, ids: Sequence | None = None) -> None:
        missing = [t for t in self.tasks if t not in outputs or t not in targets]
        if missing:
            raise EvaError(f"metrics for tasks {list(self.tasks)}: outputs/targets lack {missing}")
        n = None
        if "mask" in self.tasks:
            self._add(mask_metrics(outputs["mask"].float(), targets["mask"]))
            n = outputs["mask"].shape[0]
            if self.baseline_threshold is not None and bg is not None and fg_bg is not None:
                from .baseline import bg_difference_mask

                pred = bg_difference_mask(bg, fg_bg, self.baseline_threshold)
                self._add({"baseline_" + k: v for k, v in binary_mask_metrics(pred, targets["mask"]).items()
                           if k != "mask_pixel_acc"})
        if "depth" in self.tasks:
            pred, target = outputs["depth"].float(), targets["depth"]
            self._add(depth_metrics(pred, target))
            if self.aligned:
                self._add(aligned_depth_metrics(pred, target))
            n = pred.shape[0]
        self.ids.extend(ids if ids is not None else [None] * (n or 0))

    def compute(self) -> dict[str, float]:
        """Mean over images of every metric (NaN entries skipped), plus n_images."""
        out: dict[str, float] = {}
        for k, vals in self.per_image.items():
            good = [v for v in vals if not math.isnan(v)]
            out[k] = sum(good) / len(good) if good else math.nan
        out["n_images"] = len(self.ids)
        return out

    def reset(self) -> None:
        self.per_image, self.ids = {}, []
