"""Honest metrics: computed per image, then averaged over images (never pooled or summed over a batch).

Conventions (the tests pin them):
- Masks: the prediction is sigmoid(logits) > 0.5, i.e. logits > 0. IoU = TP / (TP + FP + FN), Dice = 2 TP /
  (2 TP + FP + FN). An empty prediction on an empty target scores IoU = Dice = 1 (nothing to find, nothing
  found); a non-empty prediction on an empty target scores 0. Pixel accuracy is reported but flatters: on a 5 %
  foreground mask, predicting nothing scores 0.95 with IoU 0; read it beside IoU and the baseline.
- Depth labels are relative inverse depth (disparity-like) in [0, 1], near = 1, min-max normalised per background:
  the farthest pixel is 0, so AbsRel or delta on the raw labels would divide by ~0 and a uniform +0.02 offset
  would score AbsRel ~0.3. Two families of numbers, per image:
  * On the labels as they are (no fitting): `depth_rmse` (RMSE) and `depth_ssim` (SSIM with the loss's window:
    Gaussian 11x11, sigma 1.5, data_range 1, valid windows only). These see absolute errors, offsets included.
  * The relative-depth protocol of MiDaS (Ranftl et al. 2020) and Depth Anything (Yang et al. 2024): fit scale s
    and shift t per image by least squares in disparity space (s * pred + t ~ target over all pixels), with
    s >= 0 (a map upside-down in depth is wrong, not a relative-depth variant: a negative fit becomes s = 0, i.e.
    the flat mean); convert both maps to depth as 1 / max(disparity, 1 / DEPTH_CAP), so depth lies in
    [1, DEPTH_CAP] with the cap DEPTH_CAP = 10 (the farthest tenth of the disparity range, sky and far walls,
    all read as depth 10, as MiDaS caps its evaluation depth); then `depth_absrel` = mean |D_p - D_t| / D_t,
    `depth_delta1/2/3` = fraction of pixels with max(D_p / D_t, D_t / D_p) < 1.25, 1.25^2, 1.25^3, and
    `depth_rmse_ssi` = RMSE of D_p - D_t (depth units, 1 = the nearest pixel). A uniform offset or a rescaled
    map costs nothing here; a flipped or flat map costs a lot.
- A baseline (any callable `(bg, fg_bg) -> {"mask": bool, "depth": [0, 1]}` predictions, see baseline.py) can be
  scored on the same images: its keys get a `baseline_` prefix.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from eva_helpers.errors import EvaError
from eva_helpers.training.losses import ssim_per_image

DEPTH_CAP = 10.0  # depth = 1 / max(disparity, 1 / DEPTH_CAP): depth in [1, DEPTH_CAP]
MASK_KEYS = ("mask_iou", "mask_dice", "mask_pixel_acc")
DEPTH_KEYS = ("depth_rmse", "depth_ssim", "depth_absrel", "depth_delta1", "depth_delta2", "depth_delta3",
              "depth_rmse_ssi")


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


def inner_boundary(m: torch.Tensor, width: int) -> torch.Tensor:
    """(B, 1, H, W) bool: the pixels of mask m within `width` px (chessboard distance) of its outline; the frame's
    edge is not an outline (an object cut by the frame is scored on its real edges only)."""
    m = m.float()
    p = width
    padded = F.pad(m, (p, p, p, p), mode="replicate")
    eroded = -F.max_pool2d(-padded, 2 * width + 1, stride=1)  # min-pool: inside by at least `width`
    return (m > 0.5) & ~(eroded > 0.5)


def boundary_iou(pred: torch.Tensor, target: torch.Tensor, width: int = 3) -> torch.Tensor:
    """Per-image Boundary IoU (Cheng et al., 2021), (B,) float64: IoU of the two masks' inner bands of `width` px,
    each band cut to its own mask, so an edge a few px off costs as much for a large object as for a small one.
    Both bands empty (no object in either) = 1."""
    pb, tb = inner_boundary(pred.bool(), width), inner_boundary(target > 0.5, width)
    inter = (pb & tb).flatten(1).sum(1).double()
    union = (pb | tb).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def mask_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image mask metrics from logits (B, 1, H, W): threshold at probability 0.5 (logit 0)."""
    return binary_mask_metrics(logits > 0, target)


# ----------------------------------------------------------------------------------------------- depth
def fit_disparity(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image least-squares s * pred + t ~ target with s >= 0 (B, N) -> (B, N); a flat or anti-correlated
    prediction gets s = 0, i.e. the target's mean."""
    mp, mt = pred.mean(1, keepdim=True), target.mean(1, keepdim=True)
    dp = pred - mp
    var, cov = (dp * dp).mean(1, keepdim=True), (dp * (target - mt)).mean(1, keepdim=True)
    s = torch.where(var > 1e-12, cov / var.clamp_min(1e-12), torch.zeros_like(var)).clamp_min(0.0)
    return s * dp + mt  # = s * pred + (mt - s * mp)


def to_depth(disparity: torch.Tensor, cap: float = DEPTH_CAP) -> torch.Tensor:
    """Depth 1 / max(disparity, 1 / cap): in [1 / max(disparity), cap]."""
    return 1.0 / disparity.clamp_min(1.0 / cap)


def depth_pixel_metrics(pred: torch.Tensor, target: torch.Tensor, cap: float = DEPTH_CAP) -> dict[str, torch.Tensor]:
    """Per-image label RMSE and the protocol's AbsRel, delta1..3, RMSE (each (B,)); depth (B, 1, H, W) in [0, 1]."""
    b = pred.shape[0]
    p, t = pred.double().reshape(b, -1), target.double().reshape(b, -1)  # (B, N)
    dp, dt = to_depth(fit_disparity(p, t), cap), to_depth(t, cap)
    ratio = torch.maximum(dp / dt, dt / dp)
    out = {"depth_rmse": ((p - t) ** 2).mean(1).sqrt(), "depth_absrel": ((dp - dt).abs() / dt).mean(1)}
    for k in (1, 2, 3):
        out[f"depth_delta{k}"] = (ratio < 1.25 ** k).double().mean(1)
    out["depth_rmse_ssi"] = ((dp - dt) ** 2).mean(1).sqrt()
    return out


def depth_metrics(pred: torch.Tensor, target: torch.Tensor, cap: float = DEPTH_CAP) -> dict[str, torch.Tensor]:
    """Every DEPTH_KEYS metric per image (each (B,)); images need at least 11x11 pixels for SSIM."""
    out = depth_pixel_metrics(pred, target, cap)
    out["depth_ssim"] = ssim_per_image(pred.double(), target.double(), data_range=1.0)
    return out


# ----------------------------------------------------------------------------------------------- accumulator
Baseline = Callable[[torch.Tensor, torch.Tensor], dict]


class MetricAccumulator:
    """Collects per-image metrics over batches; compute() gives the mean over images (NaNs left out).

    update(outputs, targets, bg=None, fg_bg=None, ids=None): outputs is the model's dict, targets the dict of
    `data.loaders.batch_to_device`. With a `baseline` callable (e.g. `baseline.FreeBaseline`) and the *raw* images (uint8 or
    [0, 1], not normalised), its predictions `{"mask": bool (B, 1, H, W), "depth": (B, 1, H, W)}` are scored on the
    same images under `baseline_` keys (mask: IoU and Dice; depth: every depth key).
    """

    def __init__(self, tasks: Sequence[str], baseline: Baseline | None = None):
        self.tasks, self.baseline = tuple(tasks), baseline
        self.per_image: dict[str, list[float]] = {}
        self.ids: list = []

    def _add(self, values: dict[str, torch.Tensor], prefix: str = "") -> None:
        for k, v in values.items():
            self.per_image.setdefault(prefix + k, []).extend(v.detach().double().cpu().tolist())

    @torch.no_grad()
    def update(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               bg: torch.Tensor | None = None, fg_bg: torch.Tensor | None = None, ids: Sequence | None = None) -> None:
        missing = [t for t in self.tasks if t not in outputs or t not in targets]
        if missing:
            raise EvaError(f"metrics for tasks {list(self.tasks)}: outputs/targets lack {missing}")
        base = self.baseline(bg, fg_bg) if self.baseline is not None and bg is not None and fg_bg is not None else {}
        n = None
        if "mask" in self.tasks:
            self._add(mask_metrics(outputs["mask"].float(), targets["mask"]))
            n = outputs["mask"].shape[0]
            if "mask" in base:
                m = binary_mask_metrics(base["mask"].to(targets["mask"].device), targets["mask"])
                self._add({k: v for k, v in m.items() if k != "mask_pixel_acc"}, "baseline_")
        if "depth" in self.tasks:
            pred, target = outputs["depth"].float(), targets["depth"]
            self._add(depth_metrics(pred, target))
            if "depth" in base:
                self._add(depth_metrics(base["depth"].to(target.device).float(), target), "baseline_")
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
