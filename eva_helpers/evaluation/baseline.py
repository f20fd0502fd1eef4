"""The free baselines every number sits beside: no learning, fitted on one split, scored on another.

Mask: threshold max_c |fg_bg - bg|, then a 3x3 open and close. The clean background is an input, so this rule
already finds most pasted objects; a model earns its keep only by beating it. The threshold is chosen by grid search
maximising mean per-image IoU on a split other than the scored one, then applied unchanged. Morphology uses
max_pool2d so it runs batched on CPU or GPU.

Depth: the mean depth label of the training split (per pixel: a scene prior, e.g. a ground plane rising towards the
bottom), with the baseline mask pasted in as one flat layer at the mean map's value along the mask's lowest row
(where a standing object touches the ground). It needs the raw images only; a depth model must beat it on every
depth metric, or it has learned nothing a per-pixel average does not know.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from eva_helpers.errors import EvaError
from eva_helpers.predict.masks import open_close, open_close_scores
from eva_helpers.training.metrics import binary_mask_metrics

THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(1, 51))  # 0.01 .. 0.50 in image units [0, 1]


def _to_float01(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] from uint8 or float tensors/arrays; (H, W, 3) / (3, H, W) get a batch axis."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:  # a dataset's shared arrays: torch wants its own
        x = x.copy()
    x = torch.as_tensor(x)
    if x.dim() == 3:
        x = x.permute(2, 0, 1) if x.shape[-1] == 3 and x.shape[0] != 3 else x
        x = x[None]
    if x.dim() == 4 and x.shape[1] != 3 and x.shape[-1] == 3:  # (B, H, W, 3) from numpy batches
        x = x.permute(0, 3, 1, 2)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _to_mask(m: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B, 1, H, W) float {0, 1} from (H, W), (1, H, W), (B, H, W) or (B, 1, H, W)."""
    m = torch.as_tensor(m).float()
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None] if m.shape[0] != 1 else m[None]
    return (m > 0.5).float()


def bg_difference(bg: torch.Tensor, fg_bg: torch.Tensor) -> torch.Tensor:
    """Per-pixel max over channels of |fg_bg - bg|: (B, 1, H, W) in [0, 1]."""
    return (_to_float01(fg_bg) - _to_float01(bg)).abs().amax(1, keepdim=True)


def threshold_sweep(score: torch.Tensor, target: torch.Tensor, thresholds: Iterable[float]) -> list[dict]:
    """binary_mask_metrics of `score > t` against `target` for each t, in order: per-image (B,) tensors each.
    Pass open_close_scores(score) for the opened and closed masks."""
    return [binary_mask_metrics(score > t, target) for t in thresholds]


def bg_difference_mask(bg: torch.Tensor, fg_bg: torch.Tensor, threshold: float, morph: bool = True) -> torch.Tensor:
    """Binary mask (B, 1, H, W) bool: max_c |fg_bg - bg| > threshold, optionally opened then closed (3x3)."""
    m = (bg_difference(bg, fg_bg) > threshold).float()
    return (open_close(m) if morph else m) > 0.5


def _iter_batches(data: Any) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (bg, fg_bg, mask) from a DataLoader of dict batches, a dataset, or an iterable of dicts / tuples."""
    for item in data:
        if isinstance(item, dict):
            yield item["bg"], item["fg_bg"], item["mask"]
        else:
            bg, fg_bg, mask = item[:3]
            yield bg, fg_bg, mask


def _scores(data: Any, thresholds: tuple[float, ...], morph: bool, device: str | None, desc: str) -> dict[str, np.ndarray]:
    """Mean per-image IoU and Dice for every threshold (arrays (T,)) and the image count."""
    iou, dice, n = torch.zeros(len(thresholds), dtype=torch.float64), torch.zeros(len(thresholds), dtype=torch.float64), 0
    for bg, fg_bg, mask in tqdm(_iter_batches(data), desc=desc, leave=False):
        bg, fg_bg, mask = (torch.as_tensor(a).to(device) if device else torch.as_tensor(a) for a in (bg, fg_bg, mask))
        diff = bg_difference(bg, fg_bg)  # (B, 1, H, W)
        for i, met in enumerate(threshold_sweep(open_close_scores(diff) if morph else diff, _to_mask(mask),
                                                thresholds)):
            iou[i] += met["mask_iou"].sum().cpu()  # one small copy per threshold; sums stay exact in float64
            dice[i] += met["mask_dice"].sum().cpu()
        n += diff.shape[0]
    if n == 0:
        raise EvaError("baseline: no images to score (the split is empty)")
    return {"iou": (iou / n).numpy(), "dice": (dice / n).numpy(), "n": n}


def fit_threshold(train: Any, thresholds: tuple[float, ...] = THRESHOLDS, morph: bool = True,
                  device: str | None = None) -> float:
    """The threshold (image units, [0, 1]) maximising mean per-image IoU on the training data.

    One scalar needs few images: on a big dataset pass a loader over a seeded subset of the training split
    (a few thousand images); every threshold of the grid costs one open/close pass over each batch.
    """
    s = _scores(train, tuple(thresholds), morph, device, "baseline: fitting threshold")
    return float(thresholds[int(np.argmax(s["iou"]))])


def evaluate_baseline(data: Any, threshold: float | None = None, *, train: Any = None, morph: bool = True,
                      device: str | None = None) -> dict[str, float]:
    """Score the baseline on `data` with a given threshold, or one fitted on `train` first (never on `data`).

    Returns baseline_mask_iou, baseline_mask_dice (per-image means), baseline_threshold, baseline_n_images.
    """
    if threshold is None:
        if train is None:
            raise EvaError("evaluate_baseline needs a threshold or a training split to fit one on")
        threshold = fit_threshold(train, morph=morph, device=device)
    s = _scores(data, (float(threshold),), morph, device, "baseline: scoring")
    return {"baseline_mask_iou": float(s["iou"][0]), "baseline_mask_dice": float(s["dice"][0]),
            "baseline_threshold": float(threshold), "baseline_n_images": int(s["n"])}


# ----------------------------------------------------------------------------------------------- depth
def _iter_depth(data: Any) -> Iterable[torch.Tensor]:
    for item in data:
        yield item["depth"] if isinstance(item, dict) else item[3]


def fit_mean_depth(train: Any, device: str | None = None) -> torch.Tensor:
    """Per-pixel mean depth label (1, 1, H, W) float32 over the training data (loader batches or dataset items)."""
    total, n = None, 0
    for d in tqdm(_iter_depth(train), desc="baseline: mean depth", leave=False):
        d = torch.as_tensor(d).to(device) if device else torch.as_tensor(d)
        d = d.double().reshape(-1, 1, *d.shape[-2:])  # (B, 1, H, W) from (H, W), (1, H, W) or batches
        total = d.sum(0, keepdim=True) if total is None else total + d.sum(0, keepdim=True)
        n += d.shape[0]
    if not n:
        raise EvaError("depth baseline: no training images to average (the split is empty)")
    return (total / n).float()


def paste_at_contact(mean_depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) depth: mean_depth (1, 1, H, W) with each image's mask (B, 1, H, W) set to the mean map's average
    along the mask's lowest row (its ground contact). An empty mask leaves the mean map as it is."""
    m = _to_mask(mask).to(mean_depth.device) > 0.5  # (B, 1, H, W) bool
    b, _, h, w = m.shape
    base = mean_depth.to(torch.float32).expand(b, 1, h, w)
    rows = m.any(-1)[:, 0]  # (B, H): rows the mask touches
    low = (rows * torch.arange(1, h + 1, device=m.device)).amax(1).clamp_min(1) - 1  # (B,) lowest row index
    on_row = m[torch.arange(b), 0, low]  # (B, W) the mask along that row
    row_vals = base[torch.arange(b), 0, low]  # (B, W)
    value = (row_vals * on_row).sum(1) / on_row.sum(1).clamp_min(1)  # (B,)
    return torch.where(m, value.view(b, 1, 1, 1), base)


@dataclass
class FreeBaseline:
    """The no-learning predictor, callable on raw image batches: `(bg, fg_bg) -> {"mask": bool, "depth": float}`.

    `threshold` (image units) gives the mask; `mean_depth` (1, 1, H, W) from `fit_mean_depth` adds the depth map
    (it needs the threshold too: the mask is pasted into it). Each key appears only when its parts are set.
    """

    threshold: float | None = None
    mean_depth: torch.Tensor | None = None
    morph: bool = True

    def __call__(self, bg: torch.Tensor, fg_bg: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.threshold is None:
            return {}
        mask = bg_difference_mask(bg, fg_bg, self.threshold, self.morph)  # (B, 1, H, W) bool
        out = {"mask": mask}
        if self.mean_depth is not None:
            if tuple(self.mean_depth.shape[-2:]) != tuple(mask.shape[-2:]):
                raise EvaError(f"depth baseline was fitted at {tuple(self.mean_depth.shape[-2:])} px but the images "
                               f"are {tuple(mask.shape[-2:])}: fit it on the same image size")
            out["depth"] = paste_at_contact(self.mean_depth.to(mask.device), mask)
        return out


