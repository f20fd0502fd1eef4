"""A trained run, loaded whole for scoring and prediction: `load_trained_run(run_dir)` gives the model, its config,
the normalisation stats it trained with and the mask post-processing chosen on validation, each checked.

The pieces load alone too: `load_run` (model, config, checkpoint), `load_run_stats`, `load_calibration`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eva_helpers.data.stats import STATS, load_stats, read_stats_file
from eva_helpers.errors import EvaError, IntegrityError
from eva_helpers.models import rebuild_model
from eva_helpers.training.checkpoint import CheckpointManager
from eva_helpers.training.config import TrainConfig
from eva_helpers.training.run_folder import CALIBRATION, resolve_data

DEFAULT_CALIBRATION = {"threshold": 0.5, "morph": False, "chosen_on": "default (no validation split scored)"}


@dataclass
class TrainedRun:
    """What scoring and prediction need of a trained run, loaded and checked together."""

    model: nn.Module  # in eval mode, on `device`
    cfg: TrainConfig
    stats: dict  # the normalisation it trained with
    calibration: dict  # {"threshold", "morph", "chosen_on"}
    checkpoint: dict  # the checkpoint dict; "loaded_from" names its file
    device: torch.device


def load_trained_run(run_dir: str | os.PathLike, which: str = "best", device: str | torch.device | None = None,
                     data: str | os.PathLike | None = None) -> TrainedRun:
    """The run's model (best.pt or the newest checkpoint), config, stats and calibration, every piece checked before
    the caller writes anything. `device` None: the GPU when there is one. `data`: the dataset whose stats.json stands in
    when the run folder has none (default: the dataset the run trained on, where it still is)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, ckpt = load_run(run_dir, which=which, device=str(dev))
    data_dir = Path(data) if data is not None else resolve_data(cfg.data, run_dir)
    stats = load_run_stats(Path(run_dir), data_dir)
    return TrainedRun(model, cfg, stats, load_calibration(run_dir), ckpt, dev)


def load_run(run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu", *,
             build_fn: Any = None) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild a trained model from a run folder: `(model in eval mode, its TrainConfig, the checkpoint dict)`.

    `build_fn(**model_args)` (for models outside the registry) defaults to `eva_helpers.models.rebuild_model`.
    The checkpoint dict's "loaded_from" names the file used: "best" is best.pt, or the newest checkpoint while a run
    has none yet (stopped by max_steps before its first evaluation); a damaged best.pt is an error, never silently
    replaced by another checkpoint. "last" is the newest checkpoint that verifies (damaged newer ones are skipped with
    a warning).
    """
    if which not in ("best", "last"):
        raise EvaError(f"which={which!r}: use 'best' or 'last'")
    if not Path(run_dir).is_dir():
        raise EvaError(f"{run_dir}: no such run folder; give the folder `eva train --run-dir` (or a notebook) wrote")
    manager = CheckpointManager(run_dir, is_main=False)  # reading only: nothing is created or cleaned
    ckpt, path = None, manager.dir / f"{which}.pt"
    if which == "best" and path.exists():
        try:
            ckpt = manager.load_best(map_location=device)
        except IntegrityError as e:
            raise IntegrityError(f"{e}; score the newest checkpoint with --which last (which='last'), or restore "
                                 "best.pt from a backup") from None
    if ckpt is None:
        ckpt = manager.load_latest(map_location=device)
        path = manager.loaded_from or path
    if ckpt is None:
        found = manager.candidates()
        if found:
            raise IntegrityError(f"{manager.dir}: every checkpoint is damaged ({', '.join(p.name for p in found)}); "
                                 "restore one from a backup, or train again into a new run folder")
        raise EvaError(f"{Path(run_dir)}: no checkpoint in checkpoints/ (has this run folder been trained?)")
    ckpt["loaded_from"] = str(path)
    if not ckpt.get("model_args"):
        raise EvaError(f"{path}: the checkpoint has no model_args, so the model cannot be rebuilt")
    if build_fn is None:
        model = rebuild_model(ckpt["model_args"])
    else:
        model = build_fn(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, TrainConfig.from_dict(ckpt["config"], source=str(path)), ckpt


def load_run_stats(run_dir: Path, data_dir: Path | None) -> dict:
    """Normalisation stats the run trained with: the run folder's copy, else its dataset's stats.json. Neither is an
    error saying how to get them back, never a silent fallback to ImageNet's (the outputs would quietly differ)."""
    p = Path(run_dir) / STATS
    if p.is_file():
        return read_stats_file(p)
    stats = load_stats(str(data_dir)) if data_dir is not None and Path(data_dir).is_dir() else None
    if stats is None:
        where = f"{data_dir}/{STATS}" if data_dir is not None else "the run's dataset"
        raise EvaError(f"{p}: missing, and {where} is not there either, so the normalisation this run trained with is "
                       f"unknown; copy the dataset's {STATS} into {run_dir}, or run `eva stats --data DATASET` on the "
                       "dataset the run trained on")
    return stats


def check_calibration(calib: Any, path: Path | str) -> dict[str, Any]:
    """The usable part of a calibration dict: a finite threshold in (0, 1) and a true/false morph; anything else is a
    one-line error naming the file (a threshold of 5 or NaN would give an empty mask, -1 a full one)."""
    redo = "delete it and run `eva eval` again to recalibrate on the validation split"
    if not isinstance(calib, dict):
        raise EvaError(f"{path}: not a calibration (a JSON object expected); {redo}")
    t, morph = calib.get("threshold"), calib.get("morph")
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0 < t < 1):
        raise EvaError(f"{path}: threshold {t!r} is not a probability in (0, 1); {redo}")
    if not isinstance(morph, bool):
        raise EvaError(f"{path}: morph {morph!r} is not true or false; {redo}")
    return {"threshold": float(t), "morph": morph, "chosen_on": str(calib.get("chosen_on", "val"))}


def load_calibration(run_dir: str | Path) -> dict[str, Any]:
    """The run's chosen post-processing, or the plain 0.5 cut when the run has not been evaluated yet; a damaged file
    is a one-line error (check_calibration), never a silently empty or full mask."""
    path = Path(run_dir) / CALIBRATION
    if not path.is_file():
        return dict(DEFAULT_CALIBRATION)
    try:
        calib = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise EvaError(f"{path}: unreadable calibration ({type(e).__name__}: {str(e).splitlines()[0]}); delete it and "
                       "run `eva eval` again to recalibrate on the validation split") from None
    return check_calibration(calib, path)


def _no_constant(name: str) -> Any:
    """json's NaN / Infinity / -Infinity are not JSON: refused (load_calibration says how to recalibrate)."""
    raise ValueError(f"{name} is not a number in strict JSON")
