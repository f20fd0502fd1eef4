"""A mask from the model's mask logits: the run's threshold, then optionally a 3x3 open and close (the clean-up
`evaluation/calibrate.py` chooses on validation and `calibration.json` records)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def postprocess(logits: torch.Tensor, threshold: float = 0.5, morph: bool = False) -> torch.Tensor:
    """Binary mask (B, 1, H, W) bool from mask logits: sigmoid > threshold, optionally opened then closed (3x3)."""
    m = (logits.float().sigmoid() > threshold).float()
    return (open_close(m) if morph else m) > 0.5


def _dilate(m: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(m, 3, stride=1, padding=1)


def _erode(m: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-m, 3, stride=1, padding=1)  # min-pool (max_pool2d's padding never wins)


def open_close(m: torch.Tensor) -> torch.Tensor:
    """3x3 opening (drops specks from JPEG noise) then closing (fills pinholes); m (B, 1, H, W) float {0, 1}.

    Computed on a canvas padded with 4 zero pixels (the reach of the four 3x3 steps) and cropped back, so the
    frame behaves like background: a closing cannot smear an object along the border.
    """
    p = 4
    m = F.pad(m, (p, p, p, p))
    m = _erode(_dilate(_dilate(_erode(m))))
    return m[..., p:-p, p:-p]


def open_close_scores(score: torch.Tensor) -> torch.Tensor:
    """open_close for every threshold at once: `open_close((score > t).float()) > 0.5` equals
    `open_close_scores(score) > t` for every t, because a min or max over a window commutes with thresholding (flat
    morphology), and the canvas is padded with -inf, which no threshold passes. A sweep over thresholds then runs the
    morphology once instead of once per threshold. score (B, 1, H, W) float."""
    p = 4
    s = F.pad(score, (p, p, p, p), value=float("-inf"))
    s = _erode(_dilate(_dilate(_erode(s))))
    return s[..., p:-p, p:-p]
