"""Losses as pure tensor functions first, thin nn.Modules second; the joint criterion the trainer calls.

Shapes: predictions and targets are (B, 1, H, W) (any C works for the depth/SSIM functions). Mask functions take
*logits*; depth functions take predictions in [0, 1] (the model's sigmoid output). Every function returns a scalar
mean unless it says "per image" ((B,) tensors). All are computed in float32 even under AMP (SSIM's variances lose
too much in fp16), so the criterion casts its inputs.

Defaults:
- mask = 1 * BCE-with-logits + 1 * soft Dice (Dice per image then mean; smooth = 1 keeps empty masks defined:
  an empty prediction on an empty target scores loss 0 instead of 0/0).
- depth = 0.1 * L1 + 1 * (1 - SSIM) / 2 + 1 * gradient-L1 (DenseDepth, Alhashim & Wonka 2018: lambda = 0.1 on the
  point-wise term; SSIM and edges carry the structure).
- joint: fixed task weights (1, 1) or Kendall et al. 2018 uncertainty weighting sum_i exp(-s_i) L_i + s_i, with
  learnable log-variances s_i (the criterion then has parameters: add them to the optimizer and the checkpoint).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eva_helpers.errors import EvaError
from eva_helpers.models.blocks import check_tasks

SSIM_WIN, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
DICE_SMOOTH = 1.0
DEFAULT_WEIGHTS = {"mask_bce": 1.0, "mask_dice": 1.0, "depth_l1": 0.1, "depth_ssim": 1.0, "depth_grad": 1.0,
                   "mask": 1.0, "depth": 1.0}


# ----------------------------------------------------------------------------------------------- mask
def bce_with_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy; logits and target {0, 1} of the same shape."""
    return F.binary_cross_entropy_with_logits(logits, target)


def soft_dice_per_image(logits: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Per-image soft Dice loss (B,): 1 - (2 sum(p t) + s) / (sum p + sum t + s), p = sigmoid(logits)."""
    p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)  # (B, N)
    inter = (p * t).sum(1)
    return 1 - (2 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Soft Dice per image, then the mean over the batch (a pooled Dice lets big masks drown small ones)."""
    return soft_dice_per_image(logits, target, smooth).mean()


# ----------------------------------------------------------------------------------------------- depth
def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def gaussian_window(win: int = SSIM_WIN, sigma: float = SSIM_SIGMA, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian (win,), the same taps as scipy's gaussian_filter with truncate=3.5 at sigma=1.5."""
    x = torch.arange(win, dtype=torch.float64, device=device) - (win - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype)


def _blur(x: torch.Tensor, g: torch.Tensor, padding: str) -> torch.Tensor:
    """Separable depthwise Gaussian blur of (B, C, H, W); "valid" shrinks by win - 1, "reflect" keeps the size."""
    c, k = x.shape[1], g.numel()
    if padding == "reflect":
        x = F.pad(x, (k // 2,) * 4, mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, win: int = SSIM_WIN,
             sigma: float = SSIM_SIGMA, padding: str = "valid") -> torch.Tensor:
    """SSIM map (Wang et al. 2004): Gaussian 11x11 sigma 1.5, C1 = (0.01 L)^2, C2 = (0.03 L)^2, population variances.

    padding "valid" (default) only uses windows fully inside the image: equal to scikit-image's
    structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False), which filters with
    reflect padding and then crops (win - 1) / 2 pixels per side. "reflect" keeps (H, W) (border windows reflected).
    """
    if padding not in ("valid", "reflect"):
        raise EvaError(f"SSIM padding={padding!r} is not valid: choose 'valid' or 'reflect'")
    if min(pred.shape[-2:]) < win:
        raise EvaError(f"SSIM needs images of at least {win}x{win} pixels, got {tuple(pred.shape[-2:])}")
    g = gaussian_window(win, sigma, pred.dtype, pred.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _blur(pred, g, padding), _blur(target, g, padding)
    sxx = _blur(pred * pred, g, padding) - mu_x ** 2
    syy = _blur(target * target, g, padding) - mu_y ** 2
    sxy = _blur(pred * target, g, padding) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, padding: str = "valid") -> torch.Tensor:
    """Mean SSIM per image (B,), over channels and (valid) pixels."""
    return ssim_map(pred, target, data_range, padding=padding).flatten(1).mean(1)


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, padding: str = "valid") -> torch.Tensor:
    """(1 - SSIM) / 2 averaged over the batch: 0 for identical images, at most 1."""
    return ((1 - ssim_per_image(pred, target, data_range, padding)) / 2).mean()


def gradient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences: mean|dx p - dx t| + mean|dy p - dy t|."""
    dx = lambda a: a[..., :, 1:] - a[..., :, :-1]  # (B, C, H, W-1)
    dy = lambda a: a[..., 1:, :] - a[..., :-1, :]  # (B, C, H-1, W)
    return (dx(pred) - dx(target)).abs().mean() + (dy(pred) - dy(target)).abs().mean()


class JointCriterion(nn.Module):
    """criterion(outputs, targets) -> (loss, parts); parts are detached float tensors for logging.

    With weighting="uncertainty" the task weights ("mask", "depth") are replaced by the learned exp(-s_i); the
    part weights inside each task still apply. parts then also holds "<task>_logvar".
    """

    def __init__(self, tasks: Sequence[str], weighting: str = "fixed", weights: dict[str, float] | None = None):
        super().__init__()

        if weighting not in ("fixed", "uncertainty"):
            raise EvaError(f"weighting={weighting!r} is not valid: choose 'fixed' or 'uncertainty'")
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise EvaError(f"unknown loss weight(s) {sorted(unknown)}: valid keys are {sorted(DEFAULT_WEIGHTS)}")
        self.tasks, self.weighting = check_tasks(tasks), weighting
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        # s_i = log sigma_i^2, start at 0 (weight 1); only created when used so a fixed criterion has no parameters
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks))) if weighting == "uncertainty" else None

    def task_parts(self, task: str, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        pred, target = pred.float(), target.float()
        if task == "mask":
            return {"mask_bce": bce_with_logits(pred, target), "mask_dice": soft_dice_loss(pred, target)}
        return {"depth_l1": l1_loss(pred, target), "depth_ssim": ssim_loss(pred, target),
                "depth_grad": gradient_loss(pred, target)}

    def forward(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        missing = [t for t in self.tasks if t not in outputs or t not in targets]
        if missing:
            raise EvaError(f"criterion for tasks {list(self.tasks)}: outputs/targets lack {missing}")
        total = outputs[self.tasks[0]].new_zeros((), dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {}
        for i, task in enumerate(self.tasks):
            comps = self.task_parts(task, outputs[task], targets[task])
            task_loss = sum(self.weights[k] * v for k, v in comps.items())
            parts.update({k: v.detach() for k, v in comps.items()})
            parts[task] = task_loss.detach()
            if self.log_vars is None:
                total = total + self.weights[task] * task_loss
            else:
                s = self.log_vars[i]
                total = total + torch.exp(-s) * task_loss + s
                parts[f"{task}_logvar"] = s.detach()
        return total, parts


def build_criterion(tasks: Sequence[str], weighting: str = "fixed", weights: dict[str, float] | None = None) -> JointCriterion:
    """The training loss for `tasks`; weights may override task weights ("mask", "depth") or parts ("depth_l1", ...)."""
    return JointCriterion(tasks, weighting, weights)
