"""Mask post-processing chosen on the validation split, never on test: a probability threshold and an optional 3x3
open/close, picked by mean per-image IoU over a grid, for a trained model exactly as for the free baseline.

A sigmoid at 0.5 is only the right cut when the model is calibrated; short CPU runs and Dice losses are not. But the
images of one background are not independent evidence: a validation split of two backgrounds can agree, image after
image, on a threshold that the test backgrounds disagree with (on the demo's split the best validation threshold,
0.25 with a gain of 9 per-image standard errors, moved test IoU from 0.929 to 0.920; bench/RESULTS.md). So the gain
over the plain 0.5 cut is tested with the *background* as the unit: the mean of the per-background gains must exceed
Student's t (95 %, two-sided, backgrounds - 1 degrees of freedom) times its standard error. With a handful of validation
backgrounds only a gain every background shows clearly moves the cut; with one, nothing does. The choice is a run's
property: `eva eval` writes it to `<run_dir>/calibration.json` and `eva predict` applies it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import torch

from eva_helpers.atomic import atomic_write_text, json_text
from eva_helpers.errors import EvaError
from eva_helpers.predict.masks import open_close_scores
from eva_helpers.training.metrics import binary_mask_metrics
from eva_helpers.training.run_folder import CALIBRATION
from eva_helpers.training.trained_run import check_calibration

PROB_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 19))  # 0.10 .. 0.90
# two-sided 95 % critical values of Student's t by degrees of freedom (larger df: the normal's 1.96)
T_CRIT = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 15: 2.13,
          20: 2.09, 30: 2.04, 60: 2.00}


def t_critical(df: int) -> float:
    """Student's t (95 %, two-sided) for df degrees of freedom, from T_CRIT (the next smaller tabulated df)."""
    if df < 1:
        return float("inf")
    return next((T_CRIT[k] for k in sorted(T_CRIT, reverse=True) if df >= k), 1.96) if df <= 60 else 1.96


def fit_postprocess(batches: Iterable[tuple], thresholds: tuple[float, ...] = PROB_THRESHOLDS) -> dict[str, Any]:
    """The (threshold, morph) maximising mean per-image IoU over validation batches, kept only when its gain over the
    plain 0.5 cut is significant with backgrounds as the unit (module docstring).

    Each batch is (logits (B, 1, H, W), target (B, 1, H, W)) or (logits, target, groups): `groups` names each image's
    background; without it every image counts as its own group.
    """
    combos = [(0.5, False)] + [(t, m) for m in (False, True) for t in thresholds if (t, m) != (0.5, False)]
    per_image: list[list[torch.Tensor]] = [[] for _ in combos]
    groups: list = []
    for item in batches:
        logits, target = item[0], item[1]
        groups.extend(item[2] if len(item) > 2 else range(len(groups), len(groups) + logits.shape[0]))
        prob = logits.float().sigmoid()  # as postprocess computes it; the morphology once for every threshold
        scores = {False: prob, True: open_close_scores(prob)}
        for i, (t, m) in enumerate(combos):
            per_image[i].append(binary_mask_metrics(scores[m] > t, target)["mask_iou"].cpu())
    if not groups:
        raise EvaError("calibration: the validation split is empty, so no mask threshold can be chosen on it")
    iou = torch.stack([torch.cat(p) for p in per_image]).double()  # (combos, images)
    best = int(torch.argmax(iou.mean(1)))  # first best: ties keep the earlier (plainer) choice
    keys = sorted(set(groups), key=str)
    gid = torch.tensor([keys.index(g) for g in groups])
    gain = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, gid, iou[best] - iou[0])
    gain /= torch.bincount(gid, minlength=len(keys)).double()  # (groups,) mean gain per background
    k = len(keys)
    se = float(gain.std(unbiased=True)) / k ** 0.5 if k > 1 else float("inf")
    t_stat = float(gain.mean()) / se if se > 0 else (float("inf") if float(gain.mean()) > 0 else 0.0)
    pick = best if best != 0 and t_stat > t_critical(k - 1) else 0
    t, m = combos[pick]
    return {"threshold": float(t), "morph": bool(m), "val_iou": float(iou[pick].mean()), "n_images": iou.shape[1],
            "n_groups": k, "chosen_on": "val", "val_iou_plain": float(iou[0].mean()),
            "best_on_val": {"threshold": float(combos[best][0]), "morph": bool(combos[best][1]),
                            "val_iou": float(iou[best].mean()), "t": round(t_stat, 2) if math.isfinite(t_stat) else None,
                            "t_needed": t_critical(k - 1) if k > 1 else None}}  # None: one group decides nothing


def save_calibration(run_dir: str | Path, calib: dict[str, Any]) -> Path:
    """calibration.json, strict JSON (no Infinity/NaN, which strict readers refuse), checked as load_calibration
    checks it: a file this writes always loads."""
    path = Path(run_dir) / CALIBRATION
    check_calibration(calib, path)
    atomic_write_text(path, json_text(calib, sort_keys=True))
    return path


